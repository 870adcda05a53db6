"""Leaving a ``paddle.distributed`` process group in the order Paddle 3.3 survives: rank 0 exits first.

Under ``paddle.distributed.launch``, ``init_parallel_env()`` starts the group's key-value store, a
libuv TCP server on a thread of rank 0; every other rank keeps a connection to it. When another
rank's process exits, its connection closes and that thread reads the close. If the close arrives
while rank 0 is itself exiting (its main thread already in the C library's exit handlers), the
read callback aborts the process: rank 0 ends with status -6 (SIGABRT) and nothing in its log,
after writing everything, and the launcher reports the run as failed. The core dump shows the
abort in ``LibUVClient::readCallback`` under ``LibUVMasterDaemon::run`` while the main thread is in
``exit()`` (``_dl_fini``). It failed 3 of about 150 2-rank training runs on a loaded 2-core machine.

:func:`leave_after_rank_zero` orders the exit: the ranks exchange their host and process id,
then every other rank on rank 0's host waits until rank 0's process has ended before it exits, so
no connection closes while rank 0's store is running its exit (ranks on other machines cannot
see rank 0's process, and leave at once). ``vinvl`` commands and scripts call
it when their ``main`` succeeds (:func:`vinvl.commands.cli.run_main`); a script of one's own that
initialises the group calls it at its end.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from typing import Tuple

__all__ = ["rank_and_world_size", "leave_after_rank_zero"]


def rank_and_world_size() -> Tuple[int, int]:
    """This process' rank and the number of ranks (0, 1 unless a process group is initialised)."""
    import paddle.distributed as dist

    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def leave_after_rank_zero(timeout: float = 120.0) -> None:
    """Under an initialised process group of two or more ranks, return on rank 0 at once and on
    every other rank on rank 0's host once rank 0's process has ended (or after ``timeout``
    seconds); a no-op otherwise, and paddle is not imported for it.

    Call it on success only, on every rank: it is a collective (the ranks exchange host and pid)."""
    if "paddle.distributed" not in sys.modules:
        return
    rank, world_size = rank_and_world_size()
    if world_size < 2:
        return
    import paddle.distributed as dist

    hosts_and_pids: list = []
    dist.all_gather_object(hosts_and_pids, (socket.gethostname(), os.getpid()))
    host, pid = hosts_and_pids[0]
    if rank == 0 or host != socket.gethostname():
        return
    deadline = time.monotonic() + timeout
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs, read from Linux's /proc (an exited process its parent
    has not yet reaped is a zombie, state Z, and counts as ended; without /proc, False)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
