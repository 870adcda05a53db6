"""Fixtures shared by several test modules."""
import pytest

from tinymodel import TinyModels


@pytest.fixture(scope="session")
def train_tiny(tmp_path_factory):
    """``train_tiny(root, test_images, seed=5)`` -> (model_dir, corpus_dir): see tinymodel.TinyModels."""
    return TinyModels(tmp_path_factory.mktemp("tiny_models"))
