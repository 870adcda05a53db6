"""Model directories: what a saved model is on disk and how every entry point loads one."""
from __future__ import annotations

import os
from typing import Tuple

from paddlenlp.utils.env import PADDLE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .configuration import OscarConfig
from .modeling import OscarForImageTextRetrieval
from .processor import OscarProcessor
from .tokenizer import OscarTokenizer

__all__ = ["packaged_vocab_path", "has_weights", "load_tokenizer", "load_retrieval_model"]

# Weights in one file (what save_pretrained and the Trainer's checkpoints write), and every
# form a model directory may hold them in (a sharded safetensors index too).
SINGLE_FILE_WEIGHTS = (SAFE_WEIGHTS_NAME, PADDLE_WEIGHTS_NAME)
WEIGHT_FILES = SINGLE_FILE_WEIGHTS + (SAFE_WEIGHTS_INDEX_NAME,)


def packaged_vocab_path() -> str:
    """The bert-base-uncased vocabulary shipped with the package (VinVL's text vocabulary)."""
    return os.path.join(os.path.dirname(__file__), "assets", "vocab.txt")


def has_weights(model_dir: str) -> bool:
    """Whether ``model_dir`` holds saved weights, not only a config."""
    return any(os.path.isfile(os.path.join(model_dir, name)) for name in WEIGHT_FILES)


def load_tokenizer(model_dir: str) -> OscarTokenizer:
    """The directory's tokenizer, or the packaged vocabulary for a config-only directory."""
    if os.path.isfile(os.path.join(model_dir, "vocab.txt")):
        return OscarTokenizer.from_pretrained(model_dir)
    return OscarTokenizer(packaged_vocab_path())


def load_retrieval_model(model_dir: str, **processor_overrides) -> Tuple[OscarForImageTextRetrieval, OscarProcessor]:
    """Model and processor from a directory: saved weights, or random init from a config-only directory."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir!r} is not a model directory: it has no config.json")
    if has_weights(model_dir):
        model = OscarForImageTextRetrieval.from_pretrained(model_dir)
    else:
        config = OscarConfig.from_pretrained(model_dir)
        config.trained_heads = []  # random initialisation: no head carries trained weights
        model = OscarForImageTextRetrieval(config)
    config = model.config
    settings = dict(
        max_seq_len=config.max_seq_length,
        max_img_seq_len=config.max_img_seq_length,
        img_feature_dim=config.img_feature_dim,
    )
    settings.update({k: v for k, v in processor_overrides.items() if v is not None})
    return model, OscarProcessor(load_tokenizer(model_dir), **settings)
