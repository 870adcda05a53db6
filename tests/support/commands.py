"""Running the `vinvl` command and the scripts as a user does, in a new interpreter, and what their
output must look like: a user error is one stderr line with status 2, start-up prints no noise."""
import glob
import os
import subprocess
import sys
from typing import List

import vinvl
from vinvl.errors import USER_ERROR_STATUS

# The source tree of the vinvl under test: the subprocesses import the same copy.
SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(vinvl.__file__)))
# What paddle, setuptools and datasets print at import unless vinvl quiets it.
NOISE = ("No ccache found", "OMP_NUM_THREADS WISELY", "OMP_NUM_THREADS set to", "Setuptools is replacing distutils",
         "PyTorch version", "Loading faiss", "fontManager", "pkg_resources is deprecated")


def run(args, cwd, env=None) -> subprocess.CompletedProcess:
    """Run a command as a user would (``vinvl ...`` is ``python -m vinvl.commands.cli ...``); returns the CompletedProcess."""
    environment = dict(os.environ, PYTHONPATH=SOURCE_TREE, PYTHONUNBUFFERED="1", **(env or {}))
    environment.pop("VINVL_DEBUG", None)
    return subprocess.run(args, cwd=str(cwd), env=environment, capture_output=True, text=True, timeout=600)


def vinvl_here(capfd, cwd, *args) -> subprocess.CompletedProcess:
    """``vinvl <args>`` through vinvl.commands.cli.main in this process, from ``cwd``, as a
    CompletedProcess like :func:`run`'s (stderr read at the file descriptor). For user errors of a
    command whose entry point a subprocess test already runs in a new interpreter."""
    from vinvl.commands.cli import main

    capfd.readouterr()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        status = main(list(args))
    finally:
        os.chdir(before)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["vinvl", *args], status, out, err)


def vinvl_cmd(*args) -> list:
    """The argv of ``vinvl <args>`` in a new interpreter."""
    return [sys.executable, "-m", "vinvl.commands.cli", *args]


def assert_user_error(done, prog, *fragments):
    """Status 2 and exactly one stderr line, ``<prog>: error: ...`` naming each fragment; no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == USER_ERROR_STATUS, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def assert_quiet(text):
    """None of the start-up noise vinvl quiets is in ``text``."""
    assert not [noise for noise in NOISE if noise in text], text


def launch_two_ranks(args, cwd, log_dir, env, timeout=600) -> List[str]:
    """Run ``python -m paddle.distributed.launch --nproc_per_node 2 --log_dir LOG_DIR <args>`` from
    ``cwd`` and assert it exited 0; returns each rank's log (workerlog.0, workerlog.1).

    On failure the message leads with how each rank's log ends, where a rank that died says why,
    then what the launcher printed last."""
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir)]
    done = subprocess.run(command + [str(a) for a in args], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)
    logs = [open(p).read() for p in sorted(glob.glob(os.path.join(str(log_dir), "workerlog.*")))]
    ends = "".join(f"--- workerlog.{rank} ends:\n{text[-3000:]}\n" for rank, text in enumerate(logs))
    said = done.stderr[-1500:] + done.stdout[-1500:]
    assert done.returncode == 0, f"launcher exited {done.returncode}\n{ends}--- launcher:\n{said}"
    assert len(logs) == 2, f"expected two ranks' logs in {log_dir}, found {len(logs)}"
    return logs
