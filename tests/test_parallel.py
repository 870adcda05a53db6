"""vinvl.parallel: under the launcher, the ranks leave after rank 0 (the host of the group's store)
has exited, and a command that succeeds leaves that way through run_main."""
import os
import subprocess
import sys

import pytest

from vinvl.parallel import _running

from support.commands import SOURCE_TREE, launch_two_ranks

# A command run by run_main under the launcher: after it, rank 0 takes 1.5 s more before it exits
# and then notes the time; rank 1 notes the time run_main gave it back.
WORKER = """
import os, sys, time
from vinvl.commands.cli import run_main

def main(argv):
    import paddle
    import paddle.distributed as dist
    dist.init_parallel_env()
    total = paddle.ones([2])
    dist.all_reduce(total)
    return 0

status = run_main(main, [])
rank = os.environ["PADDLE_TRAINER_ID"]
if rank == "0":
    time.sleep(1.5)
with open(os.path.join(sys.argv[1], f"left.{rank}"), "w") as f:
    f.write(repr(time.time()))
sys.exit(status)
"""


@pytest.mark.slow
def test_under_the_launcher_other_ranks_leave_after_rank_zero_has_exited(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "OMP_NUM_THREADS"))}
    env["PYTHONPATH"] = SOURCE_TREE
    launch_two_ranks(["worker.py", tmp_path], tmp_path, tmp_path / "logs", env, timeout=300)
    rank_zero_done, rank_one_left = (float((tmp_path / f"left.{rank}").read_text()) for rank in (0, 1))
    # Without the wait, rank 1 would have left about 1.5 s before rank 0 was done.
    assert rank_one_left > rank_zero_done


def test_a_process_runs_until_it_has_exited_and_a_zombie_has_ended():
    assert _running(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
    assert not _running(child.pid)
    child.wait()
    assert not _running(child.pid)


def test_a_single_process_does_not_import_paddle():
    code = "import sys; from vinvl.parallel import leave_after_rank_zero; leave_after_rank_zero(); " \
           "assert 'paddle' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=SOURCE_TREE)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
