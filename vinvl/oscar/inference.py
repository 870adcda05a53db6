"""The match head (pair -> 2 logits) on a CPU inference runtime, in fp32, bf16 or int8.

The per-pair forward is the cost of retrieval, and Paddle's dygraph has no CPU bf16 matmul, so
lower precision goes through an inference runtime (measured on this project's CPU in
docs/benchmarks.md, "Precision"):

- ``fp32``: Paddle Inference on the exported graph (the same graph the Taskflow's static mode runs).
- ``bf16``: Paddle Inference with oneDNN in bfloat16 (needs the ``avx512_bf16`` or ``amx_bf16``
  instructions).
- ``int8``: ONNX Runtime on the graph exported by ``paddle2onnx`` with its weights quantized to int8
  and its activations quantized per batch (dynamic quantization: no calibration data). Paddle 3.3's
  post-training quantization reads only the old program format, which Paddle 3.3 no longer exports,
  so Paddle Inference has no int8 path for this model. Needs ``avx512_vnni``, ``avx_vnni`` or
  ``amx_int8`` (without them int8 would run, only slower than fp32) and the optional
  ``onnxruntime`` package.

A precision the CPU lacks the instructions for is refused, never run slowly. The exported files
live under ``<model_dir>/inference/`` with the weights' checksum, and are exported again whenever
the weights change. :class:`MatchScorer` is called as the engine calls the model
(:class:`vinvl.retrieval.RetrievalEngine`); everything else (region projection, the contrastive
embeddings, the config) is the dygraph model's.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

import numpy as np
import paddle

from ..errors import UsageError
from ..runtime import default_num_threads
from .model_dir import has_weights, load_retrieval_model, weights_checksum
from .modeling import OscarForImageTextRetrieval
from .processor import OscarProcessor

__all__ = ["PRECISIONS", "MatchScorer", "cpu_flags", "check_precision", "export_match_head", "load_scorer"]

PRECISIONS = ("fp32", "bf16", "int8")

# Any one of these CPU flags makes the precision fast (see the module docstring).
_REQUIRED_FLAGS = {
    "fp32": frozenset(),
    "bf16": frozenset({"avx512_bf16", "amx_bf16"}),
    "int8": frozenset({"avx512_vnni", "avx_vnni", "amx_int8"}),
}

EXPORT_DIR = "inference"
_GRAPH = "match_head"  # match_head.json + match_head.pdiparams (Paddle), match_head.int8.onnx
_STAMP = "weights.sha256"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> FrozenSet[str]:
    """The instruction-set flags of the first processor listed in ``cpuinfo`` (empty if unreadable)."""
    try:
        with open(cpuinfo, "r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def check_precision(precision: str, flags: Optional[FrozenSet[str]] = None) -> None:
    """Refuse an unknown precision, or one this CPU (``flags``, default: this machine's) has no
    instructions for, with a message naming the missing instructions."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    needed = _REQUIRED_FLAGS[precision]
    flags = cpu_flags() if flags is None else flags
    if needed and not needed & flags:
        raise UsageError(
            f"precision {precision!r} needs a CPU with one of the instructions {', '.join(sorted(needed))}, "
            "which this CPU lacks (its /proc/cpuinfo flags); use precision='fp32'"
        )


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
    interrupted export leaves the previous one (or none), never a half-written one.
    """
    export_dir = os.path.join(model_dir, EXPORT_DIR)
    stamp = weights_checksum(model_dir)
    stamp_path = os.path.join(export_dir, _STAMP)
    current = open(stamp_path).read().strip() if os.path.isfile(stamp_path) else None
    wanted = [_GRAPH + ".json", _GRAPH + ".pdiparams"] + ([_GRAPH + ".int8.onnx"] if precision == "int8" else [])
    if current == stamp and all(os.path.isfile(os.path.join(export_dir, f)) for f in wanted):
        return export_dir
    work = tempfile.mkdtemp(prefix=".inference-", dir=model_dir)
    try:
        if current == stamp:  # same weights: keep what is there, add what is missing
            shutil.copytree(export_dir, work, dirs_exist_ok=True)
        if not os.path.isfile(os.path.join(work, _GRAPH + ".json")):
            _save_paddle_graph(model, os.path.join(work, _GRAPH))
        if precision == "int8" and not os.path.isfile(os.path.join(work, _GRAPH + ".int8.onnx")):
            _save_int8_onnx(os.path.join(work, _GRAPH))
        with open(os.path.join(work, _STAMP), "w") as f:
            f.write(stamp)
        if os.path.isdir(export_dir):
            shutil.rmtree(export_dir)
        os.replace(work, export_dir)
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work)
    return export_dir


def _save_paddle_graph(model: OscarForImageTextRetrieval, prefix: str) -> None:
    hidden = model.config.hidden_size
    spec = [
        paddle.static.InputSpec([None, None], "int64", "input_ids"),
        paddle.static.InputSpec([None, None], "int64", "token_type_ids"),
        paddle.static.InputSpec([None, None], "float32", "attention_mask"),
        paddle.static.InputSpec([None, None, hidden], "float32", "img_embeds"),
    ]
    model.eval()
    static = paddle.jit.to_static(_MatchHead(model), input_spec=spec, full_graph=True)
    paddle.jit.save(static, prefix)


def _save_int8_onnx(prefix: str) -> None:
    """``prefix``.json/.pdiparams -> ``prefix``.int8.onnx: paddle2onnx export, then ONNX Runtime's
    dynamic quantization (int8 weights; activations quantized per batch at run time)."""
    paddle2onnx, quantization = _int8_packages()
    fp32_onnx = prefix + ".onnx"
    paddle2onnx.export(prefix + ".json", prefix + ".pdiparams", fp32_onnx, opset_version=17, verbose=False)
    quantization.quantize_dynamic(fp32_onnx, prefix + ".int8.onnx", weight_type=quantization.QuantType.QInt8)
    os.remove(fp32_onnx)


def _int8_packages():
    try:
        import onnxruntime.quantization as quantization
        import paddle2onnx
    except ImportError as exc:
        raise UsageError(
            f"precision 'int8' runs on ONNX Runtime and needs the packages onnxruntime and paddle2onnx ({exc})"
        ) from None
    return paddle2onnx, quantization


@dataclass
class _Logits:
    logits: paddle.Tensor


class MatchScorer:
    """The model with its pair forward (``input_ids, token_type_ids, attention_mask, img_embeds`` ->
    ``.logits``) run by an inference runtime at ``precision``; any other attribute is the dygraph
    model's, so the engine and the query core take it where they take the model."""

    def __init__(self, model: OscarForImageTextRetrieval, export_dir: str, precision: str, num_threads: int):
        self._model = model
        self.precision = precision
        prefix = os.path.join(export_dir, _GRAPH)
        if precision == "int8":
            self._run = _onnx_runner(prefix + ".int8.onnx", num_threads)
        else:
            self.predictor_config = _paddle_config(prefix, precision, num_threads)
            self._run = _paddle_runner(self.predictor_config)

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, input_ids, token_type_ids, attention_mask, img_embeds) -> _Logits:
        tensors = (input_ids, token_type_ids, attention_mask, img_embeds)
        arrays = [t.numpy() if isinstance(t, paddle.Tensor) else np.asarray(t) for t in tensors]
        return _Logits(paddle.to_tensor(self._run(arrays)))


def _paddle_config(prefix: str, precision: str, num_threads: int) -> "paddle.inference.Config":
    config = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(num_threads)
    config.switch_ir_optim(True)
    config.disable_glog_info()
    if precision == "bf16":  # fp32 stays on the default kernels: faster than oneDNN fp32 here (docs/benchmarks.md)
        config.enable_onednn()
        config.enable_onednn_bfloat16()
    return config


def _paddle_runner(config):
    predictor = paddle.inference.create_predictor(config)
    inputs = [predictor.get_input_handle(n) for n in predictor.get_input_names()]
    output = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(arrays):
        for handle, array in zip(inputs, arrays):
            handle.copy_from_cpu(np.ascontiguousarray(array))
        predictor.run()
        return output.copy_to_cpu().astype(np.float32)

    return run


def _onnx_runner(path: str, num_threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(arrays):
        return session.run(None, dict(zip(names, arrays)))[0].astype(np.float32)

    return run


def load_scorer(
    model_dir: str, precision: str = "fp32", num_threads: Optional[int] = None, flags: Optional[FrozenSet[str]] = None
) -> Tuple[MatchScorer, OscarProcessor]:
    """A :class:`MatchScorer` at ``precision`` and the processor, from a saved model directory.

    The precision is checked against the CPU (``flags``, default: this machine's) before anything
    is loaded or exported. ``num_threads`` defaults to the count the process runs with
    (``OMP_NUM_THREADS``, else :func:`vinvl.runtime.default_num_threads`).
    """
    check_precision(precision, flags)
    if not has_weights(model_dir):
        raise UsageError(f"{model_dir!r} has no saved weights: a scorer is exported from a saved model directory")
    if precision == "int8":
        _int8_packages()
    model, processor = load_retrieval_model(model_dir)
    model.eval()
    export_dir = export_match_head(model, model_dir, precision)
    threads = num_threads or int(os.environ.get("OMP_NUM_THREADS") or default_num_threads())
    return MatchScorer(model, export_dir, precision, threads), processor
