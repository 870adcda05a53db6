"""The single-level RPN: anchors, the RPN head and test-time proposal selection.

Anchors come from the old Detectron generator (sizes rounded per aspect ratio, then scaled),
ordered by aspect ratio then size and laid over the stride-16 grid location-major. At test time
the official selection is: sigmoid objectness, top ``PRE_NMS_TOP_N_TEST`` by score, decode with
unit weights, clip to the resized image, drop boxes smaller than ``MIN_SIZE``, NMS at
``NMS_THRESH`` (the +1 / ``>=`` rule) and keep the first ``POST_NMS_TOP_N_TEST``.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from . import boxes as box_ops
from .config import DetectorConfig


def _ratio_and_scale(anchor: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Boxes of the given widths/heights sharing ``anchor``'s centre (inclusive-corner convention)."""
    ctr_x = anchor[0] + 0.5 * (anchor[2] - anchor[0])
    ctr_y = anchor[1] + 0.5 * (anchor[3] - anchor[1])
    half_w, half_h = 0.5 * (widths - 1), 0.5 * (heights - 1)
    return np.stack([ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h], axis=1)


def cell_anchors(stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """``[len(ratios) * len(sizes), 4]`` float32 anchors around the cell ``(0, 0, stride-1, stride-1)``.

    For each aspect ratio (h/w): a box of the cell's area with ``w = round(sqrt(area / ratio))`` and
    ``h = round(w * ratio)``; then for each size that box scaled by ``size / stride``.
    """
    base = np.array([0.0, 0.0, stride - 1.0, stride - 1.0])
    area = float(stride * stride)
    ratios = np.asarray(aspect_ratios, dtype=np.float64)
    widths = np.round(np.sqrt(area / ratios))
    heights = np.round(widths * ratios)
    per_ratio = _ratio_and_scale(base, widths, heights)
    scales = np.asarray(sizes, dtype=np.float64) / stride
    out = []
    for anchor in per_ratio:
        w, h = anchor[2] - anchor[0] + 1, anchor[3] - anchor[1] + 1
        out.append(_ratio_and_scale(anchor, w * scales, h * scales))
    return np.concatenate(out).astype(np.float32)


def grid_anchors(cells: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """``[height * width * A, 4]`` anchors: every cell anchor shifted to every grid location (row-major)."""
    shift_x = np.arange(0, width * stride, stride, dtype=np.float32)
    shift_y = np.arange(0, height * stride, stride, dtype=np.float32)
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    return (shifts[:, None, :] + cells[None, :, :]).reshape(-1, 4)


class RPNHead(nn.Layer):
    """3x3 conv + ReLU, then 1x1 convs to A objectness logits and 4A box deltas per location."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2D(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2D(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2D(in_channels, num_anchors * 4, 1)

    def forward(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        t = F.relu(self.conv(x))
        return self.cls_logits(t), self.bbox_pred(t)


class ProposalSelector:
    """The RPN's test-time selection from its head's outputs (numpy): what runs after the head,
    whichever runtime computed it."""

    def __init__(self, config: DetectorConfig) -> None:
        self.stride = config["MODEL.RPN.ANCHOR_STRIDE"][0]
        self.cells = cell_anchors(self.stride, config["MODEL.RPN.ANCHOR_SIZES"], config["MODEL.RPN.ASPECT_RATIOS"])
        self.pre_nms_top_n = config["MODEL.RPN.PRE_NMS_TOP_N_TEST"]
        self.post_nms_top_n = config["MODEL.RPN.POST_NMS_TOP_N_TEST"]
        self.nms_thresh = config["MODEL.RPN.NMS_THRESH"]
        self.min_size = config["MODEL.RPN.MIN_SIZE"]

    def __call__(self, logits: np.ndarray, deltas: np.ndarray, image_size: Tuple[int, int]) -> np.ndarray:
        """``[P, 4]`` float32 proposals (resized-image pixels), best objectness first, from the head's
        ``[1, A, H, W]`` objectness logits and ``[1, 4A, H, W]`` box deltas."""
        _, num_anchors, height, width = logits.shape
        # [1, A, H, W] -> [H * W * A] and [1, 4A, H, W] -> [H * W * A, 4]: the anchors' order
        objectness = logits[0].transpose(1, 2, 0).reshape(-1)
        deltas = deltas[0].reshape(num_anchors, 4, height, width).transpose(2, 3, 0, 1).reshape(-1, 4)
        anchors = grid_anchors(self.cells, self.stride, height, width)
        return select_proposals(
            anchors, objectness, deltas, image_size, self.pre_nms_top_n, self.post_nms_top_n, self.nms_thresh, self.min_size
        )


class RPN(nn.Layer):
    """Proposals for one image from the res4 feature map (official name ``rpn.head``)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.selector = ProposalSelector(config)
        self.stride, self.cells = self.selector.stride, self.selector.cells
        self.head = RPNHead(config["MODEL.RESNETS.BACKBONE_OUT_CHANNELS"], len(self.cells))

    def forward(self, features: paddle.Tensor, image_size: Tuple[int, int]) -> np.ndarray:
        """``[P, 4]`` float32 proposals (resized-image pixels), best objectness first."""
        logits, deltas = self.head(features)
        return self.selector(logits.numpy(), deltas.numpy(), image_size)


def select_proposals(
    anchors: np.ndarray,
    logits: np.ndarray,
    deltas: np.ndarray,
    image_size: Tuple[int, int],
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float,
) -> np.ndarray:
    """The official RPN test-time selection for one image and one feature level (see module doc)."""
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative logits: the sigmoid is then 0
        scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float32)))
    top = np.argsort(-scores, kind="stable")[: min(pre_nms_top_n, len(scores))]
    proposals = box_ops.decode(deltas[top], anchors[top], (1.0, 1.0, 1.0, 1.0))
    proposals = box_ops.clip(proposals, *image_size)
    widths = proposals[:, 2] - proposals[:, 0] + 1
    heights = proposals[:, 3] - proposals[:, 1] + 1
    big = (widths >= min_size) & (heights >= min_size)
    proposals, kept_scores = proposals[big], scores[top][big]
    keep = box_ops.nms(proposals, kept_scores, nms_thresh)
    if post_nms_top_n > 0:
        keep = keep[:post_nms_top_n]
    return proposals[keep]
