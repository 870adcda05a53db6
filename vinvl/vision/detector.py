"""The VinVL object-attribute detector (scene_graph_benchmark's AttrRCNN) at test time, on Paddle.

``VinVLDetector.from_pretrained(dir).detect([rgb_uint8_array, ...])`` -> one :class:`Detections`
per image: transforms -> ResNe(X)t C4 body -> RPN proposals -> pooled res5 box features -> class
scores -> ``filter_results_peter`` -> attribute head -> boxes in original-image pixels.

A detector directory holds ``config.json`` (official yaml keys, see :mod:`vinvl.vision.config`)
and ``model.safetensors`` (official parameter names, Paddle layout). A directory with only the
config gives a randomly initialised detector (the official init distributions, seeded), which is
what the tiny test detector and the speed benchmark run.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import paddle
from paddle import nn

from ..assets import LABELMAP_PATH, resolve_config
from ..errors import UserError
from ..oscar.model_dir import SAFE_WEIGHTS_NAME
from . import boxes as box_ops
from .backbone import Backbone
from .config import DetectorConfig, DetectorConfigError
from .postprocess import rescale_boxes, select_attributes, select_boxes, softmax
from .proposals import RPN, ProposalSelector
from .roi_heads import AttributeHead, RoIHeads
from .structures import Detections
from .transforms import check_image, normalize, resize_image

# Seed of the random initialisation of a config-only detector directory.
INIT_SEED = 0


def has_weights(path: str) -> bool:
    """Whether the detector directory ``path`` holds weights (without them it runs randomly initialised)."""
    return os.path.isfile(os.path.join(path, SAFE_WEIGHTS_NAME))


class DetectorWeightsError(UserError, ValueError):
    """Weights that do not fit the detector's config; the message names every tensor at fault."""


def load_label_names(path: str = LABELMAP_PATH) -> Dict[str, List[str]]:
    """VinVL label-map names indexed as the detector's outputs: ``classes[0]`` / ``attributes[0]`` are background."""
    with open(path, "r", encoding="utf-8") as handle:
        labelmap = json.load(handle)
    classes = ["__background__"] + [labelmap["idx_to_label"][str(i)] for i in range(1, len(labelmap["idx_to_label"]) + 1)]
    attributes = ["__no_attribute__"] + [
        labelmap["idx_to_attribute"][str(i)] for i in range(1, len(labelmap["idx_to_attribute"]) + 1)
    ]
    return {"classes": classes, "attributes": attributes}


class DetectionPipeline:
    """What happens around the network, whichever runtime runs it: resizing, proposal selection,
    ``filter_results_peter``, attribute selection and rescaling, all in numpy.

    A subclass sets ``config``, ``class_names``, ``attribute_names`` and ``proposal_selector`` and
    provides the three network stages (:meth:`_body`, :meth:`_box_head`, :meth:`_attribute_logits`):
    :class:`VinVLDetector` in Paddle's dygraph, :class:`vinvl.vision.inference.InferenceDetector` on
    Paddle Inference at a chosen precision.
    """

    config: DetectorConfig
    class_names: List[str]
    attribute_names: List[str]
    proposal_selector: ProposalSelector

    def _body(self, pixels: np.ndarray) -> Tuple[Any, np.ndarray, np.ndarray]:
        """``[1, 3, H, W]`` normalised pixels -> (res4 features in the runtime's own type, RPN objectness
        logits ``[1, A, h, w]``, RPN box deltas ``[1, 4A, h, w]``)."""
        raise NotImplementedError

    def _box_head(self, features: Any, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Pooled res5 features ``[K, D]``, class logits ``[K, C]`` and box deltas (None when
        ``TEST.IGNORE_BOX_REGRESSION``) of ``[K, 4]`` boxes."""
        raise NotImplementedError

    def _attribute_logits(self, features: Any, boxes: np.ndarray, labels: np.ndarray, box_features: np.ndarray) -> np.ndarray:
        """``[N, num_attributes]`` attribute logits of kept boxes, their classes and their box features."""
        raise NotImplementedError

    def detect(self, images: Sequence[np.ndarray]) -> List[Detections]:
        """One :class:`Detections` per RGB uint8 ``HxWx3`` image, each run alone (as the official batch of one)."""
        for index, image in enumerate(images):
            check_image(image, index, self.config["INPUT.MIN_SIZE_TEST"], self.config["INPUT.MAX_SIZE_TEST"])
        with paddle.no_grad():
            return [self._detect_one(image) for image in images]

    def _detect_one(self, image: np.ndarray) -> Detections:
        config = self.config
        height, width = image.shape[:2]
        resized = resize_image(image, config["INPUT.MIN_SIZE_TEST"], config["INPUT.MAX_SIZE_TEST"])
        size = resized.shape[:2]
        pixels = normalize(resized, config["INPUT.PIXEL_MEAN"], config["INPUT.PIXEL_STD"])
        features, rpn_logits, rpn_deltas = self._body(pixels[None])
        proposals = self.proposal_selector(rpn_logits, rpn_deltas, size)
        if len(proposals) == 0:
            return self._empty((height, width))

        box_features, logits, deltas = self._box_head(features, proposals)
        probs = softmax(logits)
        candidates = self._candidate_boxes(proposals, deltas, size, probs.shape[1])
        chosen = select_boxes(
            candidates,
            probs,
            config["MODEL.ROI_HEADS.SCORE_THRESH"],
            config["MODEL.ROI_HEADS.MIN_DETECTIONS_PER_IMG"],
            config["MODEL.ROI_HEADS.DETECTIONS_PER_IMG"],
        )
        kept_features = box_features[chosen.index]
        attr_labels, attr_scores = self._attributes(features, chosen.boxes, chosen.labels, kept_features)
        return Detections(
            image_size=(height, width),
            boxes=rescale_boxes(chosen.boxes, size, (height, width)),
            scores=chosen.scores.astype(np.float32),
            labels=chosen.labels,
            class_names=[self.class_names[j] for j in chosen.labels],
            attr_labels=attr_labels,
            attr_scores=attr_scores,
            attr_names=[[self.attribute_names[a] for a in row] for row in attr_labels],
            features=kept_features.astype(np.float32),
        )

    def _candidate_boxes(self, proposals: np.ndarray, deltas: Optional[np.ndarray], size, num_classes: int) -> np.ndarray:
        """Boxes the classes score: the proposals themselves (IGNORE_BOX_REGRESSION), else decoded per class."""
        if deltas is None:
            return box_ops.clip(proposals, *size)
        weights = self.config["MODEL.ROI_HEADS.BBOX_REG_WEIGHTS"]
        if self.config["MODEL.CLS_AGNOSTIC_BBOX_REG"]:
            return box_ops.clip(box_ops.decode(deltas[:, -4:], proposals, weights), *size)
        decoded = box_ops.decode(deltas, proposals, weights).reshape(-1, 4)
        return box_ops.clip(decoded, *size).reshape(len(proposals), num_classes, 4)

    def _attributes(self, features: Any, boxes: np.ndarray, labels: np.ndarray, box_features: np.ndarray):
        """Attribute indices and scores per kept box (empty lists when the attribute head is off)."""
        if not self.config["MODEL.ATTRIBUTE_ON"] or len(boxes) == 0:
            empty = [np.zeros(0, dtype=np.int64) for _ in range(len(boxes))]
            return empty, [np.zeros(0, dtype=np.float32) for _ in range(len(boxes))]
        probs = softmax(self._attribute_logits(features, boxes, labels, box_features))
        config = self.config
        return select_attributes(
            probs,
            config["MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD"],
            config["MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_IMG"],
            config["MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_OBJ"],
        )

    def _empty(self, image_size) -> Detections:
        return Detections(
            image_size=image_size,
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros(0, dtype=np.float32),
            labels=np.zeros(0, dtype=np.int64),
            class_names=[],
            attr_labels=[],
            attr_scores=[],
            attr_names=[],
            features=np.zeros((0, self.config.feature_dim), dtype=np.float32),
        )


class VinVLDetector(nn.Layer, DetectionPipeline):
    """AttrRCNN with the official module names (``backbone.body``, ``rpn.head``, ``roi_heads.box``, ``attribute``)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        names = load_label_names()
        self.class_names, self.attribute_names = names["classes"], names["attributes"]
        if config.num_classes != len(self.class_names):
            raise DetectorConfigError(
                f"MODEL.ROI_BOX_HEAD.NUM_CLASSES is {config.num_classes} but the VinVL label map has "
                f"{len(self.class_names) - 1} classes + background = {len(self.class_names)}"
            )
        if config["MODEL.ATTRIBUTE_ON"] and config.num_attributes != len(self.attribute_names):
            raise DetectorConfigError(
                f"MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES is {config.num_attributes} but the VinVL label map has "
                f"{len(self.attribute_names) - 1} attributes + no-attribute = {len(self.attribute_names)}"
            )
        self.backbone = Backbone(config)
        self.rpn = RPN(config)
        self.proposal_selector = self.rpn.selector
        self.roi_heads = RoIHeads(config)
        self.attribute = AttributeHead(config) if config["MODEL.ATTRIBUTE_ON"] else None
        self.eval()

    # ------------------------------------------------------------------ weights

    def init_weights(self, seed: int = INIT_SEED) -> "VinVLDetector":
        """The official initialisations, drawn from a seeded numpy generator (reproducible across runs).

        Body convs: kaiming-uniform with a=1; RPN convs and the class, embedding and attribute layers:
        normal(0, 0.01); box regression: normal(0, 0.001); biases 0; frozen-BN statistics identity.
        One departure: the RPN's box deltas start at zero, so proposals are anchors. With the official
        normal(0, 0.01) on the un-normalised activations of an untrained body, every delta hits the
        scale clamp, all proposals collapse onto the image border and NMS leaves a few dozen of the
        300 a trained RPN gives, which would make the random detector's boxes and speed unrepresentative.
        """
        rng = np.random.default_rng(seed)
        for name, param in self.named_parameters():
            shape = list(param.shape)
            if name.endswith(".bias") or name == "rpn.head.bbox_pred.weight":
                value = np.zeros(shape, dtype=np.float32)
            elif name.startswith("backbone.") or ".feature_extractor.head." in name:
                bound = np.sqrt(3.0 / np.prod(shape[1:]))
                value = rng.uniform(-bound, bound, size=shape)
            else:
                std = 0.001 if name.endswith("bbox_pred.weight") and name.startswith("roi_heads.") else 0.01
                value = rng.normal(0.0, std, size=shape)
            param.set_value(value.astype(np.float32))
        return self

    def load_weights(self, state: Mapping[str, np.ndarray], source: str) -> None:
        """Set every parameter and buffer from ``state`` (official names, Paddle layout).

        Raises :class:`DetectorWeightsError` naming each missing, unexpected or mis-shaped tensor;
        nothing is set unless all fit.
        """
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mismatched = [
            f"{k} {list(np.shape(state[k]))} (expected {list(own[k].shape)})"
            for k in sorted(set(own) & set(state))
            if list(np.shape(state[k])) != list(own[k].shape)
        ]
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensors: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} tensors: {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"wrong shape: {', '.join(mismatched)}")
        if problems:
            raise DetectorWeightsError(f"{source} does not fit the detector config: " + "; ".join(problems))
        self.set_state_dict({k: np.asarray(v, dtype=np.float32) for k, v in state.items()})

    def weights(self) -> Dict[str, np.ndarray]:
        """Every parameter and buffer as float32 numpy arrays, under the official names."""
        return {name: tensor.numpy().astype(np.float32) for name, tensor in self.state_dict().items()}

    @classmethod
    def from_pretrained(cls, path: str) -> "VinVLDetector":
        """A detector from a directory: ``config.json`` plus ``model.safetensors``, or the config only (random,
        seeded); a shipped detector config's name (``vinvl-detector-x152c4``) stands for its packaged directory."""
        path = resolve_config(path, kind="config")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a detector directory")
        model = cls(DetectorConfig.from_dir(path)).init_weights()
        if has_weights(path):
            from safetensors.numpy import load_file

            weights_file = os.path.join(path, SAFE_WEIGHTS_NAME)
            model.load_weights(load_file(weights_file), weights_file)
        return model

    def save_pretrained(self, path: str) -> str:
        """Write ``config.json`` and ``model.safetensors`` into ``path``; returns ``path``."""
        from safetensors.numpy import save_file

        os.makedirs(path, exist_ok=True)
        self.config.save(path)
        save_file(self.weights(), os.path.join(path, SAFE_WEIGHTS_NAME), metadata={"format": "np"})
        return path

    # ------------------------------------------------------------------ the network stages, in dygraph

    def _body(self, pixels: np.ndarray) -> Tuple[paddle.Tensor, np.ndarray, np.ndarray]:
        features = self.backbone(paddle.to_tensor(pixels))
        logits, deltas = self.rpn.head(features)
        return features, logits.numpy(), deltas.numpy()

    def _box_head(self, features: paddle.Tensor, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        box_head = self.roi_heads.box
        box_features = box_head.feature_extractor(features, boxes)
        logits, deltas = box_head.predictor(box_features)
        return box_features.numpy(), logits.numpy(), None if deltas is None else deltas.numpy()

    def _attribute_logits(
        self, features: paddle.Tensor, boxes: np.ndarray, labels: np.ndarray, box_features: np.ndarray
    ) -> np.ndarray:
        """The official head re-pools the kept boxes; when it shares the box head's extractor and the
        boxes are the proposals themselves (IGNORE_BOX_REGRESSION), that gives the box features already
        computed, so they are reused."""
        head = self.attribute
        if not head.shares_box_features:
            pooled = head.feature_extractor(features, boxes)
        elif not self.config["TEST.IGNORE_BOX_REGRESSION"]:
            pooled = self.roi_heads.box.feature_extractor(features, boxes)
        else:
            pooled = paddle.to_tensor(box_features)
        return head.predictor(pooled, labels).numpy()
