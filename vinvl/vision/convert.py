"""An official VinVL detector checkpoint -> a detector directory (``vinvl convert-detector CKPT DST``).

The checkpoint is what scene_graph_benchmark saves (``torch.save({"model": state_dict, ...})``,
keys possibly prefixed ``module.``), read without torch through :mod:`vinvl.torch_io`. The
architecture is VinVL's X152-C4 with its extraction settings unless ``--config`` names an
official yaml, a detector directory or a shipped detector config (``vinvl-detector-tiny``);
``KEY VALUE`` pairs override any of them, as on test_sg_net.py's command line.

Every tensor must find its place: the RPN's stored cell anchors must equal the ones the config
generates, a shared attribute feature extractor's copy must equal the box head's, and anything
else missing, left over or mis-shaped is named and the conversion refused with nothing written.
Linear weights are transposed to Paddle's ``[in, out]``; everything else keeps its layout.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from paddle import nn

from ..assets import resolve_config
from ..oscar.convert import ConversionError, _publish
from ..torch_io import TorchFileError, read_torch_file
from .config import DetectorConfig, DetectorConfigError
from .detector import DetectorWeightsError, VinVLDetector

logger = logging.getLogger(__name__)

_ANCHORS_PREFIX = "rpn.anchor_generator.cell_anchors."
_SHARED_COPY_PREFIX = "attribute.feature_extractor."
_BOX_EXTRACTOR_PREFIX = "roi_heads.box.feature_extractor."


def read_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """The state dict of an official checkpoint (``{"model": ...}`` or a bare state dict), ``module.`` stripped."""
    try:
        loaded = read_torch_file(path)
    except TorchFileError as exc:
        raise ConversionError(str(exc)) from exc
    state = loaded.get("model", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ConversionError(f"{path} holds no detector state dict (expected a dict with 'model': name -> tensor)")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def _linear_weights(model: nn.Layer) -> set:
    return {f"{name}.weight" for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}


def map_state_dict(state: Mapping[str, np.ndarray], model: VinVLDetector) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Official tensors -> the Paddle detector's, and what is wrong with the ones that carry no weights of their own."""
    config = model.config
    mapped: Dict[str, np.ndarray] = {}
    problems: List[str] = []
    for name, value in state.items():
        if name.startswith(_ANCHORS_PREFIX):
            if not (value.shape == model.rpn.cells.shape and np.allclose(value, model.rpn.cells)):
                problems.append(
                    f"{name} differs from the anchors of MODEL.RPN.ANCHOR_SIZES/ASPECT_RATIOS/ANCHOR_STRIDE"
                    f" ({config['MODEL.RPN.ANCHOR_SIZES']}, {config['MODEL.RPN.ASPECT_RATIOS']},"
                    f" {config['MODEL.RPN.ANCHOR_STRIDE']})"
                )
            continue
        if name.startswith(_SHARED_COPY_PREFIX) and config["MODEL.ROI_ATTRIBUTE_HEAD.SHARE_BOX_FEATURE_EXTRACTOR"]:
            original = state.get(_BOX_EXTRACTOR_PREFIX + name[len(_SHARED_COPY_PREFIX) :])
            if original is None or original.shape != value.shape or not np.array_equal(original, value):
                problems.append(
                    f"{name} is not a copy of the box head's extractor, but the config shares it"
                    " (MODEL.ROI_ATTRIBUTE_HEAD.SHARE_BOX_FEATURE_EXTRACTOR True)"
                )
            continue
        mapped[name] = value
    for name in _linear_weights(model) & set(mapped):
        if mapped[name].ndim == 2:
            mapped[name] = mapped[name].T
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in mapped.items()}, problems


def convert_detector(
    checkpoint: str,
    dst: str,
    *,
    config_file: Optional[str] = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> str:
    """Convert ``checkpoint`` into detector directory ``dst`` (``config.json`` + ``model.safetensors``).

    ``config_file``: an official yaml, a detector directory or a shipped detector config's name (default:
    VinVL X152-C4); ``overrides``: ``KEY VALUE`` pairs.
    Raises :class:`ConversionError` naming what is wrong; ``dst`` is written only when every
    tensor converted. Returns ``dst``.
    """
    dst = os.path.abspath(dst)
    if not os.path.isfile(checkpoint):
        raise ConversionError(f"checkpoint {checkpoint} does not exist")
    if os.path.exists(dst) and not overwrite and (not os.path.isdir(dst) or os.listdir(dst)):
        raise ConversionError(f"destination {dst} already exists and is not empty (pass --overwrite to replace it)")
    try:
        config = _architecture(config_file, overrides)
        state = read_checkpoint(checkpoint)
        model = VinVLDetector(config)
    except DetectorConfigError as exc:
        raise ConversionError(str(exc)) from exc
    mapped, problems = map_state_dict(state, model)
    try:
        model.load_weights(mapped, checkpoint)
    except DetectorWeightsError as exc:
        problems.insert(0, str(exc))
    if problems:
        raise ConversionError(f"{checkpoint}: refused, nothing written: " + "; ".join(problems))

    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
    try:
        model.save_pretrained(tmp_dir)
        _publish(tmp_dir, dst, overwrite)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info("converted %s (%d tensors) into %s", checkpoint, len(state), dst)
    return dst


def _architecture(config_file: Optional[str], overrides: Sequence[str]) -> DetectorConfig:
    """The detector config of ``--config``: VinVL X152-C4 when None, else an official yaml, a detector
    directory or a shipped detector config's name; then the ``KEY VALUE`` overrides."""
    if config_file is None:
        return DetectorConfig.vinvl_x152c4(overrides)
    path = resolve_config(config_file, "--config", kind="config")
    if os.path.isdir(path):
        return DetectorConfig.from_dir(path).apply_overrides(overrides, source=path)
    return DetectorConfig.from_yaml(path, overrides)

