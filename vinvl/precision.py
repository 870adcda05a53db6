"""Numeric precisions an inference runtime can run at, and what each needs of the machine.

Lower precision pays only where the CPU has the instructions for it; without them it would run,
only slower than fp32, so a precision this CPU lacks the instructions for is refused with a
message naming them, never run slowly. ``fp16`` runs on a GPU only. The match head
(:mod:`vinvl.oscar.inference`) takes every precision of :data:`PRECISIONS`; the detector
(:mod:`vinvl.vision.inference`) those of :data:`DETECTOR_PRECISIONS`. A leaf module (paddle is
imported only to count GPUs for ``fp16``), so a command checks ``--precision`` before anything
heavy loads.
"""
from __future__ import annotations

from typing import FrozenSet, Optional, Sequence

from .errors import UsageError
from .runtime import cpuinfo_field

__all__ = ["PRECISIONS", "DETECTOR_PRECISIONS", "cpu_flags", "gpu_count", "check_precision"]

PRECISIONS = ("fp32", "bf16", "int8", "fp16")
# The detector's (int8 from a calibration on the user's photos, vinvl.vision.calibration); fp16 would
# need a GPU export of its graphs (not built).
DETECTOR_PRECISIONS = ("fp32", "bf16", "int8")

# Any one of these CPU flags makes the precision fast.
_REQUIRED_FLAGS = {
    "fp32": frozenset(),
    "bf16": frozenset({"avx512_bf16", "amx_bf16"}),
    "int8": frozenset({"avx512_vnni", "avx_vnni", "amx_int8"}),
    "fp16": frozenset(),
}


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> FrozenSet[str]:
    """The instruction-set flags of the first processor listed in ``cpuinfo`` (empty if unreadable)."""
    return frozenset((cpuinfo_field("flags", cpuinfo) or "").split())


def gpu_count() -> int:
    """CUDA devices this Paddle can use (0 with a CPU-only Paddle)."""
    import paddle

    if not paddle.device.is_compiled_with_cuda():
        return 0
    return paddle.device.cuda.device_count()


def check_precision(
    precision: str,
    flags: Optional[FrozenSet[str]] = None,
    supported: Sequence[str] = PRECISIONS,
    gpus: Optional[int] = None,
) -> None:
    """Refuse a precision outside ``supported``, one this CPU (``flags``, default: this machine's)
    has no instructions for, or fp16 without a GPU (``gpus``, default: :func:`gpu_count`), with a
    message naming what is missing."""
    if precision not in supported:
        raise UsageError(f"precision must be one of {', '.join(supported)}, got {precision!r}")
    if precision == "fp16":
        if not (gpu_count() if gpus is None else gpus):
            raise UsageError("precision 'fp16' runs on a GPU, and Paddle sees none here; on a CPU use bf16 or int8")
        return
    needed = _REQUIRED_FLAGS[precision]
    flags = cpu_flags() if flags is None else flags
    if needed and not needed & flags:
        raise UsageError(
            f"precision {precision!r} needs a CPU with one of the instructions {', '.join(sorted(needed))}, "
            "which this CPU lacks (its /proc/cpuinfo flags); use fp32"
        )
