"""The match head (pair -> 2 logits) on an inference runtime, in fp32, bf16 or int8 (CPU) or fp16 (GPU).

The per-pair forward is the cost of retrieval, and Paddle's dygraph has no CPU bf16 matmul, so
lower precision goes through an inference runtime (measured on this project's CPU in
docs/benchmarks.md, "Precision"):

- ``fp32``: Paddle Inference on the exported graph (the graph the Taskflow's static mode runs).
- ``bf16``: Paddle Inference with oneDNN on a graph of its own, in which every encoder Linear
  multiplies in bfloat16 (operands rounded, fp32 accumulation and output) while the bias and
  residual adds, layer norms, attention softmax and products, the pooler and the classifier stay
  fp32. oneDNN's own bf16 mode rounds every activation between ops: about a tenth faster, at 2.8x
  the error, and Paddle 3.3's ``Config.set_bfloat16_op`` does not narrow it (docs/benchmarks.md,
  "Precision"). Needs the ``avx512_bf16`` or ``amx_bf16`` instructions.
- ``int8``: ONNX Runtime on the graph exported by ``paddle2onnx`` with its weights quantized to int8.
  With a calibration stored beside the model (``vinvl calibrate``, :mod:`vinvl.oscar.calibration`)
  for these weights, its activations are quantized at the fixed scales calibrated on pairs of the
  user's gallery (static int8, QDQ); a calibration for other weights is refused; without one they
  are quantized per batch at run time (dynamic int8, the more faithful; an info line says so). Paddle 3.3's
  post-training quantization reads only the old program format, which Paddle 3.3 no longer exports,
  so Paddle Inference has no int8 path for this model. Needs ``avx512_vnni``, ``avx_vnni`` or
  ``amx_int8`` (without them int8 would run, only slower than fp32) and the optional
  ``onnxruntime`` package. Only the encoder's Linear MatMuls are quantized (weights per output
  channel); the pooler, the costliest single layer for agreement when quantized, and the
  classifier stay fp32 (docs/benchmarks.md).
- ``fp16``: on a GPU, Paddle Inference in half precision on the fp32 graph (needs a CUDA device
  Paddle can use; tested only where there is one).

A precision the CPU lacks the instructions for is refused, never run slowly. The exported files
live under ``<model_dir>/inference/`` with the weights' checksum, and are exported again whenever
the weights change; this is the one export of the match head (the Taskflow's static mode uses it
too). :class:`MatchScorer` is called as the engine calls the model
(:class:`vinvl.retrieval.RetrievalEngine`); everything else (region projection, the contrastive
embeddings, the config) is the dygraph model's, in fp32: those run once per gallery item, and a
gallery index's stored embeddings must stay comparable with the query embeddings computed later.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from paddlenlp.utils.log import logger

from ..errors import UsageError
from ..files import replaced_directory
from ..onnx_runtime import int8_packages, onnx_runner, paddle_to_onnx, stdout_silenced, warnings_silenced
from ..precision import check_precision
from ..runtime import process_num_threads, run_predictor
from .calibration import CALIBRATION_DIR, calibrated_graph, write_calibration
from .model_dir import has_weights, load_retrieval_model, weights_checksum
from .modeling import OscarForImageTextRetrieval
from .processor import OscarProcessor

__all__ = ["MatchScorer", "input_spec", "export_match_head", "calibrate_match_head", "match_scorer", "load_scorer"]

# The layers bf16 and int8 run at low precision: the encoder's Linears (attention and feed-forward),
# nearly all of the pair forward's FLOPs. The pooler and the classifier stay fp32 (module docstring).
_LOW_PRECISION_LAYERS = "bert.encoder."

EXPORT_DIR = "inference"
_GRAPH = "match_head"
_STAMP = "weights.sha256"
# precision -> the files its export is (under EXPORT_DIR)
_FILES = {
    "fp32": (_GRAPH + ".json", _GRAPH + ".pdiparams"),
    "fp16": (_GRAPH + ".json", _GRAPH + ".pdiparams"),
    "bf16": (_GRAPH + ".bf16.json", _GRAPH + ".bf16.pdiparams"),
    "int8": (_GRAPH + ".json", _GRAPH + ".pdiparams", _GRAPH + ".int8.onnx"),
}


class _MatchHead(paddle.nn.Layer):
    """What is exported: pair inputs with already projected regions -> 2 match logits."""

    def __init__(self, model: OscarForImageTextRetrieval):
        super().__init__()
        self.model = model

    def forward(self, input_ids, token_type_ids, attention_mask, img_embeds):
        return self.model(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask, img_embeds=img_embeds
        ).logits


def export_match_head(model: OscarForImageTextRetrieval, model_dir: str, precision: str) -> str:
    """Export the match head of ``model`` (loaded from ``model_dir``) for ``precision`` under
    ``model_dir/inference`` unless it is there for these weights; returns that directory.

    The export is written to a temporary directory beside it and moved into place whole, so an
    interrupted export leaves the previous one (or none), never a half-written one. Exports for
    other precisions made with the same weights are kept.
    """
    export_dir = os.path.join(model_dir, EXPORT_DIR)
    stamp = weights_checksum(model_dir)
    stamp_path = os.path.join(export_dir, _STAMP)
    current = open(stamp_path).read().strip() if os.path.isfile(stamp_path) else None
    if current == stamp and all(os.path.isfile(os.path.join(export_dir, f)) for f in _FILES[precision]):
        return export_dir
    with replaced_directory(export_dir) as work:
        if current == stamp:  # same weights: keep what is there, add what is missing
            shutil.copytree(export_dir, work, dirs_exist_ok=True)
        missing = [f for f in _FILES[precision] if not os.path.isfile(os.path.join(work, f))]
        model.eval()
        if _GRAPH + ".json" in missing:
            _save_paddle_graph(model, os.path.join(work, _GRAPH))
        if _GRAPH + ".bf16.json" in missing:
            with _bf16_matmuls(model):
                _save_paddle_graph(model, os.path.join(work, _GRAPH + ".bf16"))
        if _GRAPH + ".int8.onnx" in missing:
            _save_int8_onnx(model, work)
        with open(os.path.join(work, _STAMP), "w") as f:
            f.write(stamp)
    return export_dir


def input_spec(hidden_size: int) -> List["paddle.static.InputSpec"]:
    """The exported match head's inputs: pairs of any batch and length, regions already projected."""
    return [
        paddle.static.InputSpec([None, None], "int64", "input_ids"),
        paddle.static.InputSpec([None, None], "int64", "token_type_ids"),
        paddle.static.InputSpec([None, None], "float32", "attention_mask"),
        paddle.static.InputSpec([None, None, hidden_size], "float32", "img_embeds"),
    ]


def _save_paddle_graph(model: OscarForImageTextRetrieval, prefix: str) -> None:
    spec = input_spec(model.config.hidden_size)
    static = paddle.jit.to_static(_MatchHead(model), input_spec=spec, full_graph=True)
    paddle.jit.save(static, prefix)


def _low_precision_linears(model: OscarForImageTextRetrieval) -> List[paddle.nn.Linear]:
    """The Linear layers bf16 and int8 run at low precision (:data:`_LOW_PRECISION_LAYERS`)."""
    return [
        layer for name, layer in model.named_sublayers()
        if isinstance(layer, paddle.nn.Linear) and name.startswith(_LOW_PRECISION_LAYERS)
    ]


@contextmanager
def _bf16_matmuls(model: OscarForImageTextRetrieval) -> Iterator[None]:
    """While tracing: each low-precision Linear multiplies bfloat16 operands (fp32 result, fp32 bias)."""
    def bf16_forward(layer: paddle.nn.Linear):
        def forward(x):
            product = paddle.matmul(x.astype("bfloat16"), layer.weight.astype("bfloat16")).astype("float32")
            return product if layer.bias is None else product + layer.bias
        return forward

    layers = _low_precision_linears(model)
    for layer in layers:
        layer.forward = bf16_forward(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _save_int8_onnx(model: OscarForImageTextRetrieval, work: str) -> None:
    """``work/match_head.int8.onnx``: ONNX Runtime's dynamic quantization (int8 weights per output
    channel; activations quantized per batch at run time) of :func:`_fp32_onnx`'s MatMuls."""
    _, _, quantization = int8_packages()
    fp32_onnx, matmuls = _fp32_onnx(model, work)
    with stdout_silenced(), warnings_silenced():
        quantization.quantize_dynamic(
            fp32_onnx, os.path.join(work, _GRAPH + ".int8.onnx"), weight_type=quantization.QuantType.QInt8,
            per_channel=True, nodes_to_quantize=matmuls, op_types_to_quantize=["MatMul"],
        )
    os.remove(fp32_onnx)


def _fp32_onnx(model: OscarForImageTextRetrieval, work: str) -> Tuple[str, List[str]]:
    """The fp32 graph through paddle2onnx at ``work/int8-source.onnx``, and the names of the
    MatMuls int8 quantizes: the low-precision Linears' (the pooler and the classifier stay fp32)."""
    onnx, _, _ = int8_packages()
    source = os.path.join(work, "int8-source")
    _save_paddle_graph(model, source)  # its weight names are this model's, which pick the MatMuls below
    fp32_onnx = source + ".onnx"
    paddle_to_onnx(source, fp32_onnx)
    for path in (source + ".json", source + ".pdiparams"):
        os.remove(path)
    weights = {layer.weight.name for layer in _low_precision_linears(model)}
    graph = onnx.load(fp32_onnx).graph
    matmuls = [node.name for node in graph.node if node.op_type == "MatMul" and weights & set(node.input)]
    if len(matmuls) != len(weights):
        raise RuntimeError(f"int8 export: {len(matmuls)} of the {len(weights)} MatMuls to quantize found in {fp32_onnx}")
    return fp32_onnx, matmuls


def calibrate_match_head(
    model: OscarForImageTextRetrieval, model_dir: str, batches: Sequence[Dict[str, np.ndarray]], **fields: Any
) -> str:
    """Static int8 for ``model`` (loaded from ``model_dir``): the encoder's MatMuls quantized as
    dynamic int8 quantizes them (int8 weights per output channel), their activations at fixed
    scales calibrated (min-max) on ``batches``, the match head's inputs as the engine pads them;
    stored beside the model with the weights' checksum (:mod:`vinvl.oscar.calibration`), ``fields``
    added to its manifest. Returns the calibration directory."""
    _, _, quantization = int8_packages()
    if not batches:
        raise UsageError("a calibration needs at least one batch of pairs")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            return next(self._batches, None)

    def quantize(path: str) -> None:
        fp32_onnx, matmuls = _fp32_onnx(model, os.path.dirname(path))
        with stdout_silenced(), warnings_silenced():  # its advice on pre-processing, a warning per run
            quantization.quantize_static(
                fp32_onnx, path, Reader(), quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"], nodes_to_quantize=matmuls, per_channel=True,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
                # the MatMuls' inputs only: quantizing their outputs too (before the fp32 bias add)
                # added a tenth to the margin error (docs/benchmarks.md)
                extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
            )
        os.remove(fp32_onnx)

    model.eval()
    return write_calibration(model_dir, quantize, method="min-max, QDQ, uint8 activations, int8 weights per channel",
                             **fields)


@dataclass
class _Logits:
    logits: paddle.Tensor


class MatchScorer:
    """The model with its pair forward (``input_ids, token_type_ids, attention_mask, img_embeds`` ->
    ``.logits``) run by an inference runtime at ``precision``; any other attribute is the dygraph
    model's, so the engine and the query core take it where they take the model.

    ``predictor`` / ``predictor_config`` are the Paddle Inference predictor and its config (fp32,
    bf16, fp16), ``onnx_path`` the quantized graph ONNX Runtime runs (int8) and ``int8_mode``
    ``"static"`` (a calibration's graph) or ``"dynamic"``: what a caller or a test can check it runs.
    ``graph`` is the export directory (Paddle Inference) or the quantized graph (int8)."""

    def __init__(self, model: OscarForImageTextRetrieval, graph: str, precision: str, num_threads: int,
                 int8_mode: Optional[str] = None):
        self._model = model
        self.precision = precision
        self.predictor = self.predictor_config = self.onnx_path = None
        self.int8_mode = int8_mode
        if precision == "int8":
            self.onnx_path = graph
            run = onnx_runner(self.onnx_path, num_threads)
            self._run = lambda arrays: run(arrays)[0]
        else:
            paths = (os.path.join(graph, f) for f in _FILES[precision][:2])
            self.predictor_config = _paddle_config(*paths, precision, num_threads)
            self.predictor = paddle.inference.create_predictor(self.predictor_config)
            self._run = _paddle_runner(self.predictor)

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, input_ids, token_type_ids, attention_mask, img_embeds) -> _Logits:
        tensors = (input_ids, token_type_ids, attention_mask, img_embeds)
        arrays = [t.numpy() if isinstance(t, paddle.Tensor) else np.asarray(t) for t in tensors]
        return _Logits(paddle.to_tensor(self._run(arrays)))


def _paddle_config(graph: str, params: str, precision: str, num_threads: int) -> "paddle.inference.Config":
    config = paddle.inference.Config(graph, params)
    if precision == "fp16":
        config.enable_use_gpu(256, 0, paddle.inference.PrecisionType.Half)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(num_threads)
    config.switch_ir_optim(True)
    config.disable_glog_info()
    if precision == "bf16":  # oneDNN runs the graph's bf16 matmuls; its own bf16 mode (every op) stays off
        config.enable_onednn()
    # fp32 stays on the default kernels: faster than oneDNN fp32 here (docs/benchmarks.md)
    return config


def _paddle_runner(predictor):
    inputs = [predictor.get_input_handle(n) for n in predictor.get_input_names()]
    output = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(arrays):
        for handle, array in zip(inputs, arrays):
            handle.copy_from_cpu(np.ascontiguousarray(array))
        run_predictor(predictor)
        return output.copy_to_cpu().astype(np.float32)

    return run


def match_scorer(
    model: OscarForImageTextRetrieval, model_dir: str, precision: str, num_threads: Optional[int] = None
) -> MatchScorer:
    """A :class:`MatchScorer` at ``precision`` for ``model``, loaded from ``model_dir`` (its saved
    weights name the export). ``num_threads`` defaults to the count the process runs with
    (``OMP_NUM_THREADS``, else :func:`vinvl.runtime.default_num_threads`): the math library's count
    is process-wide, so another would change every later dygraph forward's rounding too.

    ``int8`` runs the calibration stored beside the model (static int8) when there is one for these
    weights, refuses one made for other weights (:class:`vinvl.oscar.calibration.StaleCalibrationError`),
    and without one quantizes activations per batch (dynamic int8), saying so in an info line."""
    check_precision(precision)
    if not has_weights(model_dir):
        raise UsageError(f"{model_dir!r} has no saved weights: a scorer is exported from a saved model directory")
    threads = num_threads or process_num_threads()
    if precision != "int8":
        return MatchScorer(model, export_match_head(model, model_dir, precision), precision, threads)
    int8_packages()
    static = calibrated_graph(model_dir)
    if static is not None:
        return MatchScorer(model, static, precision, threads, int8_mode="static")
    logger.info(
        f"int8: {model_dir} has no calibration ({CALIBRATION_DIR}/): activations are quantized per batch (dynamic "
        "int8, the more faithful of the two; `vinvl calibrate` fixes them for batch-independent margins, docs/models.md)"
    )
    export_dir = export_match_head(model, model_dir, precision)
    return MatchScorer(model, os.path.join(export_dir, _GRAPH + ".int8.onnx"), precision, threads, int8_mode="dynamic")


def load_scorer(
    model_dir: str, precision: str = "fp32", num_threads: Optional[int] = None, flags: Optional[FrozenSet[str]] = None
) -> Tuple[MatchScorer, OscarProcessor]:
    """A :class:`MatchScorer` at ``precision`` and the processor, from a saved model directory.

    The precision is checked against the machine (``flags``: the CPU's, default this machine's)
    before anything is loaded or exported.
    """
    check_precision(precision, flags)
    if not has_weights(model_dir):
        raise UsageError(f"{model_dir!r} has no saved weights: a scorer is exported from a saved model directory")
    model, processor = load_retrieval_model(model_dir)
    model.eval()
    return match_scorer(model, model_dir, precision, num_threads), processor
