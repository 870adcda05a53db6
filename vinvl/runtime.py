"""CPU runtime defaults that must be in place before paddle is imported.

Paddle sets OMP_NUM_THREADS=1 when it is unset (here: the cores, shared among the processes
paddle.distributed.launch starts on this machine), and its bundled MKL takes a slow code path
on AMD processors unless MKL_DEBUG_CPU_TYPE=5. Together they cost this project's CPU paths
about 3x. ``import vinvl`` applies both (unless the user set them, or set
``VINVL_NO_CPU_TUNING=1``); it can only help when vinvl is imported before paddle.
"""
from __future__ import annotations

import os
import sys

__all__ = ["tune_cpu_defaults", "cpu_tuning_applied"]


def tune_cpu_defaults() -> bool:
    """Set the thread count and MKL code path for this machine; returns whether it could still act."""
    if os.environ.get("VINVL_NO_CPU_TUNING") == "1" or "paddle" in sys.modules:
        return False
    # Processes started together by paddle.distributed.launch share the cores.
    local_processes = max(int(os.environ.get("PADDLE_LOCAL_SIZE", "1")), 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // local_processes, 1)))
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    return True


def cpu_tuning_applied() -> bool:
    """Whether the current process runs with the tuned settings."""
    return os.environ.get("OMP_NUM_THREADS", "1") != "1" and os.environ.get("MKL_DEBUG_CPU_TYPE") == "5"
