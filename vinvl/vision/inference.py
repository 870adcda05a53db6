"""The VinVL detector on an inference runtime: Paddle Inference with oneDNN in fp32 or bfloat16,
ONNX Runtime in int8.

Paddle's dygraph has no CPU bf16 convolution or matmul kernels, so the detector's network runs in
bf16 on an inference runtime. Three graphs are exported with ``paddle.jit.to_static`` /
``paddle.jit.save``, each with dynamic dimensions (any image size, any number of boxes):

- ``body``: normalised pixels ``[1, 3, H, W]`` -> res4 features, RPN objectness logits and box deltas
  (backbone + RPN head);
- ``box_head``: res4 features and ``[K, 4]`` boxes -> pooled res5 box features ``[K, D]``, class
  logits and (unless ``TEST.IGNORE_BOX_REGRESSION``) box deltas (legacy RoIAlign + res5 head +
  predictor);
- ``attribute``: kept box features and their classes -> attribute logits.

Before export each frozen batch norm is folded into the convolution before it (the same function;
oneDNN then fuses conv + bias + ReLU + residual add, and bf16 runs with no float32 batch norm
between convolutions). Everything between the graphs stays in numpy, exactly as the dygraph
detector runs it (:class:`vinvl.vision.detector.DetectionPipeline`): resizing and normalising,
anchors, the RPN's top-k, decoding and NMS (data-dependent counts), ``filter_results_peter``,
softmaxes, attribute selection and rescaling. The RoIs go through ``box_head`` in chunks of
:data:`~vinvl.vision.roi_heads.ROI_CHUNK`, as in dygraph.

A detector directory with weights keeps its export in ``<dir>/inference/`` stamped with the
sha256 of its config and weights, exported again when they change. A config-only directory
(seeded random weights: the tiny test detector, the speed benchmark) is exported to a temporary
directory that lives as long as the detector. A precision the CPU lacks the instructions for is
refused before anything is loaded (:func:`vinvl.precision.check_precision`).

int8 runs the same three graphs, converted to ONNX with their convolutions quantized, on ONNX
Runtime: they are made by a calibration on the user's photos and kept beside the detector
(:mod:`vinvl.vision.calibration`), not by the export. Speed and fidelity: docs/detector.md,
"Precision".
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import warnings
import weakref
from typing import Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple, Union

import numpy as np
import paddle
from paddle import nn

from ..assets import resolve_config
from ..errors import UsageError
from ..onnx_runtime import int8_packages, onnx_runner
from ..oscar.calibration import CALIBRATION_DIR, MANIFEST_FILE, StaleCalibrationError, read_manifest
from ..oscar.model_dir import SAFE_WEIGHTS_NAME
from ..precision import DETECTOR_PRECISIONS, check_precision
from ..runtime import process_num_threads, run_predictor
from .backbone import Bottleneck, FrozenBatchNorm2d, Stem
from .config import DetectorConfig
from .detector import DetectionPipeline, VinVLDetector, has_weights, load_label_names
from .proposals import ProposalSelector
from .roi_heads import ROI_CHUNK, roi_align

__all__ = ["InferenceDetector", "export_detector", "load_detector", "calibrated_graphs", "require_calibration"]

EXPORT_DIR = "inference"
_STAMP = "weights.sha256"
_GRAPHS = ("body", "box_head", "attribute")
# The int8 calibration (vinvl.vision.calibration) lives in <dir>/CALIBRATION_DIR, as the match head's
# does beside a model (vinvl.oscar.calibration, whose manifest reading it shares).
# graph -> its file in the calibration; the first two are quantized
GRAPH_FILES = {"body": "body.int8.onnx", "box_head": "box_head.int8.onnx", "attribute": "attribute.onnx"}
# What Paddle's C++ side logs to stderr, glog's disable_glog_info notwithstanding, saying nothing to
# a user: the export's frozen batch norm (its statistics are inputs, as they should be) and bf16's set-up.
_NATIVE_NOISE = ("not support input out tensor for now", "Hardware support for BFLOAT16 is enabled")


@contextlib.contextmanager
def _without_native_noise() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 meanwhile and pass it on, less the
    :data:`_NATIVE_NOISE` lines, when the block ends (Python's own stderr included, in order)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not any(n in line for n in _NATIVE_NOISE)))
            sys.stderr.flush()


def _folded_conv(conv: nn.Conv2D, norm: FrozenBatchNorm2d) -> nn.Conv2D:
    """One ``nn.Conv2D`` with a bias computing ``norm(conv(x))``: the frozen scale folded into the
    weights, the shift made the bias. A 1x1 :class:`PointwiseConv` becomes a plain 1x1 conv (oneDNN
    runs those without the transposes the matmul form needs)."""
    scale, shift = (t.numpy() for t in norm.scale_shift())
    folded = nn.Conv2D(
        conv._in_channels, conv._out_channels, conv._kernel_size, stride=conv._stride, padding=conv._padding,
        groups=conv._groups,
    )
    folded.weight.set_value(conv.weight.numpy() * scale[:, None, None, None])
    folded.bias.set_value(shift)
    return folded


def fold_frozen_batch_norms(detector: VinVLDetector) -> VinVLDetector:
    """``detector`` with each convolution of its body and res5 head merged with the frozen batch norm
    after it (in place): the same function, in the form inference runtimes fuse (conv + bias + ReLU +
    residual add in one oneDNN primitive) and, in bf16, without a float32 batch norm between convs."""
    for layer in detector.sublayers(include_self=True):
        if isinstance(layer, Stem):
            layer.conv1, layer.bn1 = _folded_conv(layer.conv1, layer.bn1), nn.Identity()
        elif isinstance(layer, Bottleneck):
            for i in (1, 2, 3):
                conv, norm = getattr(layer, f"conv{i}"), getattr(layer, f"bn{i}")
                setattr(layer, f"conv{i}", _folded_conv(conv, norm))
                setattr(layer, f"bn{i}", nn.Identity())
            if layer.downsample is not None:
                layer.downsample = _folded_conv(layer.downsample[0], layer.downsample[1])
    return detector


class _Body(nn.Layer):
    def __init__(self, detector: VinVLDetector) -> None:
        super().__init__()
        self.backbone, self.rpn_head = detector.backbone, detector.rpn.head

    def forward(self, pixels):
        features = self.backbone(pixels)
        logits, deltas = self.rpn_head(features)
        return features, logits, deltas


class _BoxHead(nn.Layer):
    def __init__(self, detector: VinVLDetector) -> None:
        super().__init__()
        self.extractor, self.predictor = detector.roi_heads.box.feature_extractor, detector.roi_heads.box.predictor

    def forward(self, features, boxes, boxes_num):
        extractor = self.extractor
        pooled = roi_align(
            features, boxes, boxes_num, extractor.resolution, spatial_scale=extractor.scale,
            sampling_ratio=extractor.sampling_ratio, aligned=False,
        )
        # adaptive average pooling, not mean(): Paddle Inference prints a line to stdout for every oneDNN reduce_mean
        box_features = nn.functional.adaptive_avg_pool2d(extractor.head(pooled), 1).flatten(1)
        logits, deltas = self.predictor(box_features)
        return (box_features, logits) if deltas is None else (box_features, logits, deltas)


class _Attribute(nn.Layer):
    def __init__(self, detector: VinVLDetector) -> None:
        super().__init__()
        self.predictor = detector.attribute.predictor

    def forward(self, box_features, labels):
        embedded = self.predictor.cls_embedding(labels)
        hidden = nn.functional.relu(self.predictor.fc_attr(paddle.concat([box_features, embedded], axis=1)))
        return self.predictor.attr_score(hidden)


def _specs(config: DetectorConfig):
    channels = config["MODEL.RESNETS.BACKBONE_OUT_CHANNELS"]
    spec = paddle.static.InputSpec
    return {
        "body": [spec([1, 3, None, None], "float32", "pixels")],
        "box_head": [
            spec([1, channels, None, None], "float32", "features"),
            spec([None, 4], "float32", "boxes"),
            spec([1], "int32", "boxes_num"),
        ],
        "attribute": [spec([None, config.feature_dim], "float32", "box_features"), spec([None], "int64", "labels")],
    }


def _check_exportable(config: DetectorConfig, path: str) -> None:
    if config["MODEL.ATTRIBUTE_ON"] and not config["MODEL.ROI_ATTRIBUTE_HEAD.SHARE_BOX_FEATURE_EXTRACTOR"]:
        raise UsageError(
            f"{path}: MODEL.ROI_ATTRIBUTE_HEAD.SHARE_BOX_FEATURE_EXTRACTOR false (an attribute head with its own "
            "res5 head) is not exported for Paddle Inference; run it with precision fp32 (dygraph)"
        )


def export_detector(path: str, export_dir: str) -> str:
    """Save the three graphs (see the module doc) of the detector in directory ``path``, its frozen
    batch norms folded into the convolutions, as ``export_dir/<graph>.json`` + ``.pdiparams``;
    returns ``export_dir``."""
    detector = fold_frozen_batch_norms(VinVLDetector.from_pretrained(path))
    os.makedirs(export_dir, exist_ok=True)
    layers = {"body": _Body(detector), "box_head": _BoxHead(detector)}
    if detector.attribute is not None:
        layers["attribute"] = _Attribute(detector)
    specs = _specs(detector.config)
    # relu_/add_ run out of place in a static graph: the same values
    with warnings.catch_warnings(), _without_native_noise():
        warnings.filterwarnings("ignore", message="In static graph mode", category=UserWarning)
        for name, layer in layers.items():
            static = paddle.jit.to_static(layer, input_spec=specs[name], full_graph=True)
            paddle.jit.save(static, os.path.join(export_dir, name))
    return export_dir


def detector_checksum(path: str) -> str:
    """sha256 over the detector directory's config and weights: what its export was made from."""
    digest = hashlib.sha256()
    for name in ("config.json", SAFE_WEIGHTS_NAME):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            digest.update(name.encode("utf-8") + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()


def _is_current(export_dir: str, stamp: str) -> bool:
    """Whether ``export_dir`` holds a whole export stamped ``stamp`` (the stamp is written last)."""
    stamp_path = os.path.join(export_dir, _STAMP)
    if not os.path.isfile(stamp_path):
        return False
    with open(stamp_path, encoding="utf-8") as handle:
        return handle.read().strip() == stamp


def _exported(path: str) -> str:
    """``path/inference`` holding the export of ``path``'s current config and weights (made if needed).

    The export is made in a temporary directory beside it and moved into place whole, so an
    interrupted export leaves the previous one (or none); when several processes (the ranks of
    ``vinvl extract``) export at once, the first one moved into place is kept and used by all.
    """
    export_dir = os.path.join(path, EXPORT_DIR)
    stamp = detector_checksum(path)
    if _is_current(export_dir, stamp):
        return export_dir
    work = tempfile.mkdtemp(prefix=".inference-", dir=path)
    try:
        export_detector(path, work)
        with open(os.path.join(work, _STAMP), "w", encoding="utf-8") as handle:
            handle.write(stamp)
        if os.path.isdir(export_dir) and not _is_current(export_dir, stamp):
            shutil.rmtree(export_dir, ignore_errors=True)  # stale: made from other weights
        try:
            os.replace(work, export_dir)
        except OSError:
            if not _is_current(export_dir, stamp):  # not another process's export of these weights
                raise
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work)
    return export_dir


def calibrated_graphs(path: str) -> Optional[Dict[str, str]]:
    """graph name -> ONNX file of the int8 calibration made for the detector directory ``path``'s
    current config and weights (the attribute graph only when the detector has one); None when
    it has no calibration; :class:`StaleCalibrationError` when it was made for others."""
    manifest = read_manifest(path)
    if manifest is None:
        return None
    current = detector_checksum(path)
    if manifest.get("detector_sha256") != current:
        where = os.path.join(path, CALIBRATION_DIR, MANIFEST_FILE)
        raise StaleCalibrationError(
            f"{where}: the int8 calibration was made for another config or other weights (sha256 "
            f"{str(manifest.get('detector_sha256'))[:12]}..., the detector's are {current[:12]}...); run "
            f"`vinvl calibrate-detector PHOTOS --detector {path}` again, or delete {os.path.dirname(where)}"
        )
    files = {name: os.path.join(path, CALIBRATION_DIR, file) for name, file in GRAPH_FILES.items()}
    return {name: file for name, file in files.items() if os.path.isfile(file)}


class _Graph:
    """One exported graph on a Paddle Inference predictor: numpy arrays in, float32 numpy arrays out."""

    def __init__(self, prefix: str, precision: str, num_threads: int) -> None:
        config = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(num_threads)
        config.switch_ir_optim(True)
        config.disable_glog_info()
        with _without_native_noise():
            config.enable_onednn()
            if precision == "bf16":
                config.enable_onednn_bfloat16()
            self.predictor = paddle.inference.create_predictor(config)
        self.config = config
        self.inputs = [self.predictor.get_input_handle(n) for n in self.predictor.get_input_names()]
        self.outputs = [self.predictor.get_output_handle(n) for n in self.predictor.get_output_names()]

    def __call__(self, *arrays: np.ndarray) -> List[np.ndarray]:
        for handle, array in zip(self.inputs, arrays):
            handle.copy_from_cpu(np.ascontiguousarray(array))
        run_predictor(self.predictor)
        return [output.copy_to_cpu().astype(np.float32, copy=False) for output in self.outputs]


def _paddle_detector(config: DetectorConfig, export_dir: str, precision: str, num_threads: int) -> "InferenceDetector":
    """The detector on Paddle Inference predictors of the graphs exported in ``export_dir``."""
    graphs = {
        name: _Graph(os.path.join(export_dir, name), precision, num_threads)
        for name in _GRAPHS
        if os.path.isfile(os.path.join(export_dir, name + ".json"))
    }
    return InferenceDetector(config, graphs, precision, export_dir)


def require_calibration(path: str) -> Dict[str, str]:
    """The int8 graphs of the detector directory ``path``'s calibration (:func:`calibrated_graphs`); a
    UsageError naming the command that makes one when it has none."""
    files = calibrated_graphs(path)
    if files is None:
        raise UsageError(
            f"{path} has no int8 calibration ({CALIBRATION_DIR}/): the detector's int8 fixes its activation "
            f"scales from your own photos; make one with `vinvl calibrate-detector PHOTOS --detector {path}` "
            "(docs/detector.md), or use bf16"
        )
    return files


def _int8_detector(config: DetectorConfig, path: str, num_threads: int) -> "InferenceDetector":
    """The detector on ONNX Runtime sessions of the int8 calibration of directory ``path``."""
    int8_packages()
    graphs = {name: _onnx_graph(file, num_threads) for name, file in require_calibration(path).items()}
    return InferenceDetector(config, graphs, "int8")


def _onnx_graph(path: str, num_threads: int) -> Callable[..., List[np.ndarray]]:
    run = onnx_runner(path, num_threads)
    return lambda *arrays: run(arrays)


class InferenceDetector(DetectionPipeline):
    """The detector with its network run by an inference runtime at ``precision``: ``detect`` is called
    as :meth:`VinVLDetector.detect` and returns the same :class:`~vinvl.vision.structures.Detections`.

    ``graphs`` maps each graph name (``body``, ``box_head``, ``attribute`` when the detector has an
    attribute head) to a callable taking its input arrays and returning float32 output arrays:
    Paddle Inference predictors of ``export_dir`` (fp32, bf16) or ONNX Runtime sessions of a
    calibration (int8, :mod:`vinvl.vision.calibration`; ``export_dir`` is None)."""

    def __init__(
        self, config: DetectorConfig, graphs: Dict[str, Callable[..., List[np.ndarray]]], precision: str,
        export_dir: Optional[str] = None,
    ) -> None:
        self.config = config
        self.precision = precision
        self.export_dir = export_dir
        names = load_label_names()
        self.class_names, self.attribute_names = names["classes"], names["attributes"]
        self.proposal_selector = ProposalSelector(config)
        self.graphs = dict(graphs)

    def _body(self, pixels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        features, logits, deltas = self.graphs["body"](pixels.astype(np.float32))
        return features, logits, deltas

    def _box_head(self, features: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        chunks = []
        for start in range(0, len(boxes), ROI_CHUNK):
            part = np.ascontiguousarray(boxes[start : start + ROI_CHUNK], dtype=np.float32)
            chunks.append(self.graphs["box_head"](features, part, np.array([len(part)], dtype=np.int32)))
        outputs = [np.concatenate(parts, axis=0) for parts in zip(*chunks)]
        return outputs[0], outputs[1], outputs[2] if len(outputs) > 2 else None

    def _attribute_logits(
        self, features: np.ndarray, boxes: np.ndarray, labels: np.ndarray, box_features: np.ndarray
    ) -> np.ndarray:
        if not self.config["TEST.IGNORE_BOX_REGRESSION"]:  # the kept boxes moved: pool them again
            box_features = self._box_head(features, boxes)[0]
        return self.graphs["attribute"](box_features, np.asarray(labels, dtype=np.int64))[0]


def load_detector(
    path: str, precision: str = "fp32", num_threads: Optional[int] = None, flags: Optional[FrozenSet[str]] = None,
    runtime: str = "auto",
) -> Union[VinVLDetector, InferenceDetector]:
    """The detector of directory ``path`` (or a shipped detector config's name) at ``precision``.

    ``runtime``: ``"auto"`` runs fp32 in dygraph (the detector checked against the official code)
    and bf16 on Paddle Inference; ``"inference"`` runs fp32 and bf16 on Paddle Inference (the
    benchmark and the tests compare fp32 there with bf16 to separate the runtime from the
    precision). int8 runs on ONNX Runtime from the directory's calibration
    (:mod:`vinvl.vision.calibration`), whatever ``runtime`` says; without one it is refused, and one
    made for another config or other weights raises
    :class:`~vinvl.oscar.calibration.StaleCalibrationError`. The precision is checked against the
    CPU (``flags``, default: this machine's) before anything is loaded.
    ``num_threads`` defaults to ``OMP_NUM_THREADS``, else :func:`vinvl.runtime.default_num_threads`.
    """
    check_precision(precision, flags, supported=DETECTOR_PRECISIONS)
    if runtime not in ("auto", "inference"):
        raise ValueError(f"runtime must be 'auto' or 'inference', got {runtime!r}")
    path = resolve_config(path, kind="config")
    if precision == "fp32" and runtime == "auto":
        return VinVLDetector.from_pretrained(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a detector directory")
    config = DetectorConfig.from_dir(path)
    _check_exportable(config, path)
    threads = num_threads or process_num_threads()
    if precision == "int8":
        return _int8_detector(config, path, threads)
    if has_weights(path):
        return _paddle_detector(config, _exported(path), precision, threads)
    export_dir = tempfile.mkdtemp(prefix="vinvl-detector-")
    try:
        export_detector(path, export_dir)
        detector = _paddle_detector(config, export_dir, precision, threads)
    except BaseException:
        shutil.rmtree(export_dir, ignore_errors=True)
        raise
    weakref.finalize(detector, shutil.rmtree, export_dir, True)
    return detector
