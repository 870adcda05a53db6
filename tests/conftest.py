"""Fixtures shared by several test modules."""
import os

import pytest

# Under pytest-xdist (`-n N`) the workers share the cores as vinvl shares them among the ranks a
# launcher starts: each gets its share of OMP threads, set before vinvl and paddle read it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // _WORKERS, 1)))

# First, before anything imports paddle: the tests run with the CPU settings users get (thread
# count, MKL code path), which subprocesses (servers, launchers) inherit. A process that imported
# paddle first would run another MKL code path than its vinvl subprocesses on AMD, and their scores
# would differ in the last bits.
import vinvl  # noqa: F401,E402

from support.tinymodel import TinyModels


@pytest.fixture(scope="session")
def train_tiny(tmp_path_factory):
    """``train_tiny(root, test_images, seed=5)`` -> (model_dir, corpus_dir): see tinymodel.TinyModels."""
    return TinyModels(tmp_path_factory.mktemp("tiny_models"))
