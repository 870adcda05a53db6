"""CPU runtime defaults that must be in place before paddle is imported, and a quiet paddle import.

Paddle sets OMP_NUM_THREADS=1 when it is unset, and its bundled MKL takes a slow code path on
AMD processors unless MKL_DEBUG_CPU_TYPE=5; together they cost this project's CPU paths about
3x. ``import vinvl`` gives each process its share of the cores (the processes that
paddle.distributed.launch starts on one machine share them) and, on AMD processors only, the
fast MKL path, unless the user set these variables or ``VINVL_NO_CPU_TUNING=1``. It can only act
before paddle is imported. On Intel processors MKL_DEBUG_CPU_TYPE=5 is not set: it pins MKL to
its AVX2 kernels, which on an AVX-512 Xeon made a 2048^3 fp32 matmul 1.5x slower (82 vs 123
GFLOP/s per CPU-second, 1 thread) than MKL's own choice.

Importing paddle, paddlenlp and what they pull in prints lines that say nothing to a user of
this package. ``import vinvl`` does not import paddle (a command's ``--help`` must not wait for
it); :func:`quiet_paddle_import` makes paddle's first import, whenever it happens, remove exactly
those lines, each where it comes from:

- ``UserWarning: No ccache found`` (paddle's C++-extension helper, a ``warnings.warn``),
  ``Setuptools is replacing distutils`` (setuptools' ``_distutils_hack``) and ``pkg_resources is
  deprecated as an API`` (jieba, which paddlenlp imports, when setuptools < 81 still ships
  ``pkg_resources``, as the ``[milvus]`` extra needs): warning filters on those messages.
- ``WARNING: OMP_NUM_THREADS set to N, not 1 ... PLEASE USE OMP_NUM_THREADS WISELY.``: two
  ``print(file=sys.stderr)`` calls in ``paddle.base``; dropped only when N is the count
  :func:`tune_cpu_defaults` chooses, so a count the user set is still questioned.
- ``[...] [INFO] config.py:54 - PyTorch version ... available.`` (datasets), faiss' loader and
  matplotlib's font cache INFO lines: paddle's ``log_utils.get_logger`` configures the *root*
  logger at INFO with a handler of its own (it means a logger named "root"), so every library's
  INFO records reach stderr. The root logger is put back as it was before paddle's import.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Any, Callable, Iterator, Optional

from .import_hooks import around_import

__all__ = [
    "tune_cpu_defaults", "default_num_threads", "process_num_threads", "run_predictor", "cpuinfo_field", "cpu_vendor",
    "quiet_paddle_import",
]

_OMP_WARNING = "WARNING: OMP_NUM_THREADS set to {}, not 1."
_OMP_WARNING_END = "PLEASE USE OMP_NUM_THREADS WISELY."


def default_num_threads() -> int:
    """The OMP thread count this process gets: its share of the cores among the launcher's local processes."""
    local_processes = max(int(os.environ.get("PADDLE_LOCAL_SIZE", "1")), 1)
    return max((os.cpu_count() or 1) // local_processes, 1)


def process_num_threads() -> int:
    """The math-library thread count this process runs with: ``OMP_NUM_THREADS`` (paddle reads it at
    import; :func:`tune_cpu_defaults` sets it), else :func:`default_num_threads`."""
    return int(os.environ.get("OMP_NUM_THREADS") or default_num_threads())


def run_predictor(predictor: Any) -> None:
    """``predictor.run()`` for a Paddle Inference predictor, then the calling thread's math library
    given back the process's thread count (:func:`process_num_threads`).

    Paddle Inference 3.3 ends every run by setting the calling thread's math-library threads to 1
    ("to avoid thread conflict" in a serving process), so every later dygraph op of this process
    ran on one thread: after one bf16 detection, a dygraph convolution and a matmul took 1.4x the
    wall time at 2 threads, their CPU time equal to their wall time (tests/test_runtime.py). This
    process mixes both runtimes (a bf16 detector beside the dygraph match head, the fp32 re-scoring
    of ``vinvl eval`` beside the dygraph embeddings)."""
    predictor.run()
    from paddle.base import core

    core.set_num_threads(process_num_threads())


def cpuinfo_field(key: str, cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """The value of ``key`` for the first processor listed in ``cpuinfo``; None if absent or unreadable."""
    try:
        with open(cpuinfo, "r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """The processor's vendor id (``AuthenticAMD``, ``GenuineIntel``, ...) from ``cpuinfo``; None if unknown."""
    return cpuinfo_field("vendor_id", cpuinfo)


def tune_cpu_defaults() -> bool:
    """Set the thread count, and on AMD the MKL code path, for this machine; returns whether it could still act."""
    if os.environ.get("VINVL_NO_CPU_TUNING") == "1" or "paddle" in sys.modules:
        return False
    os.environ.setdefault("OMP_NUM_THREADS", str(default_num_threads()))
    if cpu_vendor() == "AuthenticAMD":
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    return True


class _LineFilter:
    """A text stream that passes whole lines on to ``stream`` unless ``drop(line)`` says otherwise."""

    def __init__(self, stream, drop: Callable[[str], bool]):
        self._stream, self._drop, self._pending = stream, drop, ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if not self._drop(line):
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            if not self._drop(self._pending):
                self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _stderr_without(drop: Optional[Callable[[str], bool]]) -> Iterator[None]:
    if drop is None:
        yield
        return
    original = sys.stderr
    sys.stderr = _LineFilter(original, drop)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = original


def _omp_warning_filter() -> Optional[Callable[[str], bool]]:
    """Drops paddle's OMP_NUM_THREADS warning when the count is the one vinvl chooses, else None."""
    count = str(default_num_threads())
    if os.environ.get("VINVL_NO_CPU_TUNING") == "1" or os.environ.get("OMP_NUM_THREADS", "").strip() != count:
        return None
    first = _OMP_WARNING.format(count)
    return lambda line: line.startswith(first) or line == _OMP_WARNING_END


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """Around paddle's import: its OMP warning dropped, the root logger put back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with _stderr_without(_omp_warning_filter()):
            yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def quiet_paddle_import() -> None:
    """Make paddle's first import, by anyone and whenever it happens, leave out the start-up lines
    listed in this module's docstring (an import hook, :mod:`vinvl.import_hooks`; nothing to do
    for the OMP and logging lines when paddle is already imported)."""
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
    warnings.filterwarnings("ignore", message="Setuptools is replacing distutils", category=UserWarning)
    # jieba (imported by paddlenlp) imports pkg_resources, which setuptools < 81 (pinned for
    # milvus-lite) deprecates at import: a warning about a third-party import, not about vinvl.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    around_import("paddle", _quietly)
