"""RoI heads: the pooler, the res5 box head with its class/box predictor, and the attribute predictor.

The pooler is the legacy RoIAlign (no half-pixel offset, RoI sides clamped to at least 1, a
sampling grid of ``ceil(roi size / output size)`` when the sampling ratio is 0), which is
``paddle.vision.ops.roi_align`` with ``aligned=False`` (checked against a hand-written RoIAlign
in the tests). Sub-layer names follow the official tree (``roi_heads.box.feature_extractor.head``,
``roi_heads.box.predictor.cls_score``, ``attribute.predictor.fc_attr``, ...).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddle.vision.ops import roi_align

from .backbone import ResNetHead
from .config import DetectorConfig

# RoIs run through the res5 head at a time: bounds the head's activation memory per image. The head's
# CPU time per RoI is flat from 32 to 128 RoIs a chunk (X152-C4, 1 thread); 128 adds ~110 MB of peak RSS.
ROI_CHUNK = 64


def pool(features: paddle.Tensor, boxes: np.ndarray, resolution: int, scale: float, sampling_ratio: int) -> paddle.Tensor:
    """Legacy RoIAlign of ``[K, 4]`` boxes (image pixels) on a one-image feature map -> ``[K, C, res, res]``."""
    rois = paddle.to_tensor(np.ascontiguousarray(boxes, dtype=np.float32))
    boxes_num = paddle.to_tensor(np.array([len(boxes)], dtype=np.int32))
    return roi_align(features, rois, boxes_num, resolution, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=False)


class RoIFeatureExtractor(nn.Layer):
    """Pooler + res5 head, average-pooled: ``[K, 4]`` boxes -> ``[K, 2048]`` box features."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.resolution = config["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"]
        self.scale = config["MODEL.ROI_BOX_HEAD.POOLER_SCALES"][0]
        self.sampling_ratio = config["MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO"]
        self.head = ResNetHead(config)

    def forward(self, features: paddle.Tensor, boxes: np.ndarray) -> paddle.Tensor:
        chunks = []
        for start in range(0, len(boxes), ROI_CHUNK):
            pooled = pool(features, boxes[start : start + ROI_CHUNK], self.resolution, self.scale, self.sampling_ratio)
            chunks.append(self.head(pooled).mean(axis=[2, 3]))
        return paddle.concat(chunks, axis=0)


class BoxPredictor(nn.Layer):
    """``cls_score`` (NUM_CLASSES logits) and ``bbox_pred`` (4 deltas per class, or per fg/bg when agnostic)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        num_classes = config.num_classes
        reg_classes = 2 if config["MODEL.CLS_AGNOSTIC_BBOX_REG"] else num_classes
        self.cls_score = nn.Linear(config.feature_dim, num_classes)
        self.bbox_pred = nn.Linear(config.feature_dim, reg_classes * 4)
        self.ignore_box_regression = config["TEST.IGNORE_BOX_REGRESSION"]

    def forward(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, Optional[paddle.Tensor]]:
        deltas = None if self.ignore_box_regression else self.bbox_pred(x)
        return self.cls_score(x), deltas


class BoxHead(nn.Layer):
    """``roi_heads.box``: feature extractor and predictor."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.feature_extractor = RoIFeatureExtractor(config)
        self.predictor = BoxPredictor(config)


class RoIHeads(nn.Layer):
    """``roi_heads`` (the official CombinedROIHeads holds only ``box`` here)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.box = BoxHead(config)


class AttributePredictor(nn.Layer):
    """Attribute logits from a box feature and its predicted class: ``[feature, embed(label)] -> fc -> ReLU -> scores``."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        emb = config["MODEL.ROI_ATTRIBUTE_HEAD.CLS_EMD_DIM"]
        hidden = config["MODEL.ROI_ATTRIBUTE_HEAD.ATTR_EMD_DIM"]
        self.cls_embedding = nn.Embedding(config.num_classes, emb)
        self.fc_attr = nn.Linear(config.feature_dim + emb, hidden)
        self.attr_score = nn.Linear(hidden, config.num_attributes)

    def forward(self, features: paddle.Tensor, labels: np.ndarray) -> paddle.Tensor:
        embedded = self.cls_embedding(paddle.to_tensor(np.asarray(labels, dtype=np.int64)))
        hidden = F.relu(self.fc_attr(paddle.concat([features, embedded], axis=1)))
        return self.attr_score(hidden)


class AttributeHead(nn.Layer):
    """``attribute``: the predictor, plus its own feature extractor when the config does not share the box one."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.shares_box_features = config["MODEL.ROI_ATTRIBUTE_HEAD.SHARE_BOX_FEATURE_EXTRACTOR"]
        if not self.shares_box_features:
            self.feature_extractor = RoIFeatureExtractor(config)
        self.predictor = AttributePredictor(config)
