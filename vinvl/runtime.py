"""CPU runtime defaults that must be in place before paddle is imported.

Paddle sets OMP_NUM_THREADS=1 when it is unset, and its bundled MKL takes a slow code path on
AMD processors unless MKL_DEBUG_CPU_TYPE=5; together they cost this project's CPU paths about
3x. ``import vinvl`` gives each process its share of the cores (the processes that
paddle.distributed.launch starts on one machine share them) and the fast MKL path, unless the
user set these variables or ``VINVL_NO_CPU_TUNING=1``. It can only act before paddle is imported.
"""
from __future__ import annotations

import os
import sys

__all__ = ["tune_cpu_defaults"]


def tune_cpu_defaults() -> bool:
    """Set the thread count and MKL code path for this machine; returns whether it could still act."""
    if os.environ.get("VINVL_NO_CPU_TUNING") == "1" or "paddle" in sys.modules:
        return False
    local_processes = max(int(os.environ.get("PADDLE_LOCAL_SIZE", "1")), 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // local_processes, 1)))
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    return True
