"""ONNX Runtime, where this project's int8 runs (the match head, :mod:`vinvl.oscar.inference`, and
the detector, :mod:`vinvl.vision.inference`): its optional packages, the conversion of an exported
Paddle graph, a CPU session's runner, and quieting what the converter and the quantizer print.

Paddle 3.3's post-training quantization reads only the old program format, which Paddle 3.3 no
longer exports, so int8 goes through ``paddle2onnx`` and ONNX Runtime's quantizer
(docs/benchmarks.md, "Precision"). The packages are optional (the ``[int8]`` extra): a missing
one is named in a :class:`vinvl.errors.UsageError` when int8 is asked for, never at import.
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager, redirect_stdout
from typing import Callable, Iterator, List, Sequence, Tuple

import numpy as np

from .errors import UsageError

__all__ = ["int8_packages", "paddle_to_onnx", "onnx_runner", "stdout_silenced", "warnings_silenced"]

OPSET = 17


def int8_packages() -> Tuple[object, object, object]:
    """``(onnx, paddle2onnx, onnxruntime.quantization)``, or a UsageError naming what is missing."""
    try:
        import onnx
        import onnxruntime.quantization as quantization
        import paddle2onnx
    except ImportError as exc:
        raise UsageError(
            f"precision 'int8' runs on ONNX Runtime and needs the packages onnxruntime and paddle2onnx ({exc})"
        ) from None
    return onnx, paddle2onnx, quantization


def paddle_to_onnx(prefix: str, path: str) -> None:
    """The Paddle graph ``prefix.json`` + ``prefix.pdiparams`` as an fp32 ONNX model at ``path``.

    paddle2onnx 2.1 drops ``roi_align``'s ``aligned=False``: ONNX's RoiAlign then defaults to
    ``half_pixel`` (aligned) coordinates, which moved the detector's pooled box features by 30%.
    A RoiAlign without a coordinate mode is given ``output_half_pixel``, ONNX's name for the legacy,
    unaligned sampling: every ``roi_align`` this project exports is unaligned (the detector's box
    head; tests/vision/test_calibration.py checks it against the Paddle graph)."""
    onnx, paddle2onnx, _ = int8_packages()
    with stdout_silenced():  # paddle2onnx and the constant folding print progress there (a command's JSON output)
        paddle2onnx.export(prefix + ".json", prefix + ".pdiparams", path, opset_version=OPSET, verbose=False)
    model = onnx.load(path)
    unset = [
        node for node in model.graph.node
        if node.op_type == "RoiAlign" and not any(a.name == "coordinate_transformation_mode" for a in node.attribute)
    ]
    for node in unset:
        node.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "output_half_pixel"))
    if unset:
        onnx.save(model, path)


def onnx_runner(path: str, num_threads: int) -> Callable[[Sequence[np.ndarray]], List[np.ndarray]]:
    """A CPU session of the ONNX model at ``path`` on ``num_threads`` threads: its inputs in order ->
    every output as float32."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        feed = {name: np.ascontiguousarray(array) for name, array in zip(names, arrays)}
        return [output.astype(np.float32, copy=False) for output in session.run(None, feed)]

    return run


@contextmanager
def stdout_silenced() -> Iterator[None]:
    """Standard output to /dev/null for the block: ``sys.stdout`` (Python's prints) and file
    descriptor 1 (C++ code's)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull, redirect_stdout(devnull):
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@contextmanager
def warnings_silenced() -> Iterator[None]:
    """Python's logging below ERROR off for the block (ONNX Runtime's quantizer warns on the root logger)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
