"""Fixtures shared by several test modules."""
import pytest

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
