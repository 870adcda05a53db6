"""The detector's configuration: scene_graph_benchmark's yaml keys, read from an official yaml or a model directory.

The configuration is a flat mapping from the official dotted keys (``MODEL.RESNETS.NUM_GROUPS``)
to values, so an official ``sgg_configs/...yaml`` plus command-line ``KEY VALUE`` pairs describe
a detector exactly as they do for ``tools/test_sg_net.py``. Only keys that change the test-time
pipeline are kept; training, data and solver settings are ignored. Keys naming architectures
this port does not implement (FPN, masks, relations, ...) must keep their default value.

One key is an extension of this port: ``MODEL.RESNETS.BLOCK_COUNTS`` (residual blocks of res2,
res3, res4 and the res5 head) lets a tiny test config use shallow stages; ``null`` means the
official counts of ``MODEL.BACKBONE.CONV_BODY`` and a 3-block res5 head.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from ..errors import UserError

CONFIG_NAME = "config.json"
MODEL_TYPE = "vinvl-detector"

# Official defaults (maskrcnn_benchmark/config/defaults.py, scene_graph_benchmark/config/sg_defaults.py)
# for every key the test-time pipeline reads.
DEFAULTS: Dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.BACKBONE.CONV_BODY": "R-50-C4",
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": 1024,
    "MODEL.RESNETS.BLOCK_COUNTS": None,
    "MODEL.RPN.ANCHOR_SIZES": [32, 64, 128, 256, 512],
    "MODEL.RPN.ANCHOR_STRIDE": [16],
    "MODEL.RPN.ASPECT_RATIOS": [0.5, 1.0, 2.0],
    "MODEL.RPN.PRE_NMS_TOP_N_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOP_N_TEST": 1000,
    "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.RPN.MIN_SIZE": 0,
    "MODEL.ROI_HEADS.BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0],
    "MODEL.ROI_HEADS.SCORE_THRESH": 0.05,
    "MODEL.ROI_HEADS.DETECTIONS_PER_IMG": 100,
    "MODEL.ROI_HEADS.MIN_DETECTIONS_PER_IMG": 0,
    "MODEL.ROI_HEADS.NMS_FILTER": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_SCALES": [1.0 / 16],
    "MODEL.ROI_BOX_HEAD.NUM_CLASSES": 81,
    "MODEL.CLS_AGNOSTIC_BBOX_REG": False,
    "MODEL.ATTRIBUTE_ON": False,
    "MODEL.ROI_ATTRIBUTE_HEAD.SHARE_BOX_FEATURE_EXTRACTOR": True,
    "MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES": 401,
    "MODEL.ROI_ATTRIBUTE_HEAD.CLS_EMD_DIM": 256,
    "MODEL.ROI_ATTRIBUTE_HEAD.ATTR_EMD_DIM": 512,
    "MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_IMG": 100,
    "MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_OBJ": 16,
    "MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD": 0.0,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "INPUT.PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
    "INPUT.PIXEL_STD": [1.0, 1.0, 1.0],
    "TEST.IGNORE_BOX_REGRESSION": False,
    "TEST.OUTPUT_FEATURE": False,
}

# Keys whose official default is the only value this port implements (key -> allowed values).
FIXED: Dict[str, Tuple[Any, ...]] = {
    "MODEL.META_ARCHITECTURE": ("GeneralizedRCNN", "AttrRCNN"),
    "MODEL.BACKBONE.CONV_BODY": ("R-50-C4", "R-101-C4", "R-152-C4"),
    "MODEL.RESNETS.TRANS_FUNC": ("BottleneckWithFixedBatchNorm",),
    "MODEL.RESNETS.STEM_FUNC": ("StemWithFixedBatchNorm",),
    "MODEL.RESNETS.RES5_DILATION": (1,),
    "MODEL.RESNETS.STAGE_WITH_DCN": ([False, False, False, False],),
    "MODEL.RPN.USE_FPN": (False,),
    "MODEL.RPN.RPN_HEAD": ("SingleConvRPNHead",),
    "MODEL.ROI_HEADS.USE_FPN": (False,),
    "MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR": ("ResNet50Conv5ROIFeatureExtractor",),
    "MODEL.ROI_BOX_HEAD.PREDICTOR": ("FastRCNNPredictor",),
    "MODEL.ROI_BOX_HEAD.FORCE_BOXES": (False,),
    "MODEL.ROI_ATTRIBUTE_HEAD.FEATURE_EXTRACTOR": ("ResNet50Conv5ROIFeatureExtractor",),
    "MODEL.ROI_ATTRIBUTE_HEAD.PREDICTOR": ("AttributeRCNNPredictor",),
    "MODEL.RPN_ONLY": (False,),
    "MODEL.MASK_ON": (False,),
    "MODEL.KEYPOINT_ON": (False,),
    "MODEL.RETINANET_ON": (False,),
    "MODEL.RELATION_ON": (False,),
    "TEST.BBOX_AUG.ENABLED": (False,),
    "INPUT.TO_BGR255": (True,),
    "DATALOADER.SIZE_DIVISIBILITY": (0,),
}

# What the VinVL features were extracted with (the VinVL README's test_sg_net.py command line).
VINVL_EXTRACTION: Dict[str, Any] = {
    "MODEL.ROI_HEADS.NMS_FILTER": 1,
    "MODEL.ROI_HEADS.SCORE_THRESH": 0.2,
    "TEST.IGNORE_BOX_REGRESSION": True,
    "MODEL.ATTRIBUTE_ON": True,
    "TEST.OUTPUT_FEATURE": True,
}

# The pipeline keys of scene_graph_benchmark's sgg_configs/vgattr/vinvl_x152c4.yaml (VinVL's detector).
VINVL_X152C4: Dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "AttrRCNN",
    "MODEL.BACKBONE.CONV_BODY": "R-152-C4",
    "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": 1024,
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.RESNETS.NUM_GROUPS": 32,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
    "MODEL.RPN.PRE_NMS_TOP_N_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOP_N_TEST": 300,
    "MODEL.ROI_HEADS.SCORE_THRESH": 0.2,
    "MODEL.ROI_HEADS.DETECTIONS_PER_IMG": 100,
    "MODEL.ROI_HEADS.MIN_DETECTIONS_PER_IMG": 10,
    "MODEL.ROI_BOX_HEAD.NUM_CLASSES": 1595,
    "MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES": 525,
    "MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD": 0.05,
    "MODEL.ATTRIBUTE_ON": True,
    "INPUT.MIN_SIZE_TEST": 600,
    "INPUT.MAX_SIZE_TEST": 1000,
    "INPUT.PIXEL_MEAN": [103.530, 116.280, 123.675],
}

# Residual blocks in res2, res3, res4 per backbone; the res5 head always has 3.
STAGE_BLOCKS = {"R-50-C4": (3, 4, 6), "R-101-C4": (3, 4, 23), "R-152-C4": (3, 8, 36)}


class DetectorConfigError(UserError, ValueError):
    """A detector configuration this port cannot run; the message names the key at fault."""


def flatten(tree: Mapping, prefix: str = "") -> Dict[str, Any]:
    """``{"MODEL": {"RPN": {"NMS_THRESH": 0.7}}}`` -> ``{"MODEL.RPN.NMS_THRESH": 0.7}``."""
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """The inverse of :func:`flatten`."""
    tree: Dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _plain(value: Any) -> Any:
    """Tuples as lists, so values compare and serialize the same from yaml, JSON or Python."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(key: str, value: Any, source: str) -> Any:
    """``value`` checked against the type of the key's default (ints accepted for floats)."""
    value = _plain(value)
    default = DEFAULTS.get(key)
    if default is None or value is None and key == "MODEL.RESNETS.BLOCK_COUNTS":
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise DetectorConfigError(f"{source}: {key} should be like {default!r}, got {value!r}")
    return value


class DetectorConfig:
    """The detector's settings under their official yaml names; ``config["MODEL.RPN.NMS_THRESH"]``."""

    def __init__(self, values: Mapping[str, Any], source: str = "config") -> None:
        self._values: Dict[str, Any] = copy.deepcopy(DEFAULTS)
        self.update(values, source, strict=True)
        self.validate(source)

    @classmethod
    def _official_defaults(cls) -> "DetectorConfig":
        config = cls.__new__(cls)
        config._values = copy.deepcopy(DEFAULTS)
        return config

    # ------------------------------------------------------------------ building

    def update(self, values: Mapping[str, Any], source: str, strict: bool) -> "DetectorConfig":
        """Set keys from ``values``; with ``strict`` an unknown key is an error, else it is ignored.

        Keys in :data:`FIXED` must hold an implemented value in any case.
        """
        for key, value in values.items():
            if key in FIXED and _plain(value) not in [_plain(v) for v in FIXED[key]]:
                raise DetectorConfigError(
                    f"{source}: {key} = {value!r} is not implemented (supported: {list(FIXED[key])})"
                )
            if key in DEFAULTS:
                self._values[key] = _coerce(key, value, source)
            elif strict and key not in FIXED:
                raise DetectorConfigError(f"{source}: unknown detector config key {key}")
        return self

    @classmethod
    def from_yaml(cls, path: str, overrides: Sequence[str] = ()) -> "DetectorConfig":
        """An official yaml, then the VinVL extraction settings, then ``KEY VALUE`` pairs.

        The same order as the VinVL README's ``tools/test_sg_net.py --config-file YAML KEY VALUE ...``
        command, whose command line sets :data:`VINVL_EXTRACTION`.
        """
        import yaml

        try:
            with open(path, "r", encoding="utf-8") as handle:
                tree = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DetectorConfigError(f"cannot read detector config {path}: {exc}") from exc
        if not isinstance(tree, Mapping):
            raise DetectorConfigError(f"{path}: expected a yaml mapping of config sections")
        config = cls._official_defaults()
        config.update(flatten(tree), path, strict=False)
        config.update(VINVL_EXTRACTION, "VinVL extraction settings", strict=True)
        return config.apply_overrides(overrides, source=path)

    @classmethod
    def vinvl_x152c4(cls, overrides: Sequence[str] = ()) -> "DetectorConfig":
        """VinVL's X152-C4 detector with its extraction settings (the shipped vinvl-detector-x152c4 config), then ``KEY VALUE`` pairs."""
        config = cls._official_defaults()
        config.update(VINVL_X152C4, "vinvl_x152c4.yaml", strict=True)
        config.update(VINVL_EXTRACTION, "VinVL extraction settings", strict=True)
        return config.apply_overrides(overrides, source="VinVL X152-C4")

    def apply_overrides(self, pairs: Sequence[str], source: str = "config") -> "DetectorConfig":
        """Apply ``["KEY", "VALUE", ...]`` command-line pairs (values parsed as yaml literals); validates the result."""
        import yaml

        if len(pairs) % 2:
            raise DetectorConfigError(f"overrides come in KEY VALUE pairs; {pairs[-1]!r} has no value")
        values = {}
        for key, text in zip(pairs[0::2], pairs[1::2]):
            try:
                values[key] = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise DetectorConfigError(f"override {key}: cannot parse value {text!r}") from exc
        self.update(values, "overrides", strict=True)
        self.validate(f"{source} with overrides {list(pairs)}" if pairs else source)
        return self

    @classmethod
    def from_dir(cls, path: str) -> "DetectorConfig":
        """The ``config.json`` of a detector directory."""
        file = os.path.join(path, CONFIG_NAME)
        try:
            with open(file, "r", encoding="utf-8") as handle:
                tree = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise DetectorConfigError(f"cannot read detector config {file}: {exc}") from exc
        if not isinstance(tree, dict) or tree.pop("model_type", None) != MODEL_TYPE:
            raise DetectorConfigError(f"{file} is not a detector config (model_type {MODEL_TYPE!r} missing)")
        return cls(flatten(tree), source=file)

    def save(self, path: str) -> str:
        """Write ``config.json`` into directory ``path``; returns the file name."""
        file = os.path.join(path, CONFIG_NAME)
        with open(file, "w", encoding="utf-8") as handle:
            json.dump({"model_type": MODEL_TYPE, **nest(self._values)}, handle, indent=2)
            handle.write("\n")
        return file

    # ------------------------------------------------------------------ reading

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DetectorConfig) and self._values == other._values

    def block_counts(self) -> List[int]:
        """Residual blocks of res2, res3, res4 and the res5 head."""
        counts = self["MODEL.RESNETS.BLOCK_COUNTS"]
        return list(counts) if counts is not None else [*STAGE_BLOCKS[self["MODEL.BACKBONE.CONV_BODY"]], 3]

    def validate(self, source: str = "config") -> None:
        """Cross-key checks the official code makes by construction, and the settings this port implements."""
        if self["MODEL.ROI_HEADS.NMS_FILTER"] != 1:
            raise DetectorConfigError(
                f"{source}: MODEL.ROI_HEADS.NMS_FILTER must be 1 (filter_results_peter, the VinVL extraction setting);"
                " the other box filters are not implemented"
            )
        if not self["TEST.OUTPUT_FEATURE"]:
            raise DetectorConfigError(f"{source}: TEST.OUTPUT_FEATURE must be True (the detector exists to output features)")
        counts = self["MODEL.RESNETS.BLOCK_COUNTS"]
        if counts is not None and (len(counts) != 4 or not all(isinstance(c, int) and c >= 1 for c in counts)):
            raise DetectorConfigError(f"{source}: MODEL.RESNETS.BLOCK_COUNTS must be 4 positive ints, got {counts}")
        if len(self["MODEL.RPN.ANCHOR_STRIDE"]) != 1:
            raise DetectorConfigError(f"{source}: MODEL.RPN.ANCHOR_STRIDE must have one stride (single-level RPN)")
        if len(self["MODEL.ROI_BOX_HEAD.POOLER_SCALES"]) != 1:
            raise DetectorConfigError(f"{source}: MODEL.ROI_BOX_HEAD.POOLER_SCALES must have one scale (C4 pooler)")
        res4 = self["MODEL.RESNETS.RES2_OUT_CHANNELS"] * 4
        if self["MODEL.RESNETS.BACKBONE_OUT_CHANNELS"] != res4:
            raise DetectorConfigError(
                f"{source}: MODEL.RESNETS.BACKBONE_OUT_CHANNELS must equal 4 x RES2_OUT_CHANNELS = {res4} for a C4 body"
            )
        for key in ("MODEL.RPN.NMS_THRESH", "MODEL.ROI_HEADS.SCORE_THRESH"):
            if not 0.0 <= self[key] <= 1.0:
                raise DetectorConfigError(f"{source}: {key} must lie in [0, 1], got {self[key]}")

    # ------------------------------------------------------------------ derived sizes

    @property
    def num_classes(self) -> int:
        return self["MODEL.ROI_BOX_HEAD.NUM_CLASSES"]

    @property
    def num_attributes(self) -> int:
        return self["MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES"]

    @property
    def feature_dim(self) -> int:
        """Channels of the res5 head's output: the pooled box feature size (2048 for VinVL)."""
        return self["MODEL.RESNETS.RES2_OUT_CHANNELS"] * 8
