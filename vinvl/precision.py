"""Numeric precisions a CPU inference runtime can run at, and the CPU instructions each needs.

Lower precision pays only where the CPU has the instructions for it; without them it would run,
only slower than fp32, so a precision this CPU lacks the instructions for is refused with a
message naming them, never run slowly. Same names and rules as :mod:`vinvl.oscar.inference`
(the match head's precision), kept in this leaf module so the detector (a lower layer than the
match head's users) can check a precision too.
"""
from __future__ import annotations

from typing import FrozenSet, Optional, Sequence

from .errors import UsageError

__all__ = ["PRECISIONS", "DETECTOR_PRECISIONS", "cpu_flags", "check_precision"]

PRECISIONS = ("fp32", "bf16", "int8")
# The detector's: int8 would need a calibrated post-training quantization of its convolutions (not built).
DETECTOR_PRECISIONS = ("fp32", "bf16")

# Any one of these CPU flags makes the precision fast.
_REQUIRED_FLAGS = {
    "fp32": frozenset(),
    "bf16": frozenset({"avx512_bf16", "amx_bf16"}),
    "int8": frozenset({"avx512_vnni", "avx_vnni", "amx_int8"}),
}


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


def check_precision(
    precision: str, flags: Optional[FrozenSet[str]] = None, supported: Sequence[str] = PRECISIONS
) -> None:
    """Refuse a precision outside ``supported``, or one this CPU (``flags``, default: this machine's)
    has no instructions for, with a message naming the missing instructions."""
    if precision not in supported:
        raise UsageError(f"precision must be one of {', '.join(supported)}, got {precision!r}")
    needed = _REQUIRED_FLAGS[precision]
    flags = cpu_flags() if flags is None else flags
    if needed and not needed & flags:
        raise UsageError(
            f"precision {precision!r} needs a CPU with one of the instructions {', '.join(sorted(needed))}, "
            "which this CPU lacks (its /proc/cpuinfo flags); use fp32"
        )
