"""Model directories: what a saved model is on disk and how every entry point loads one."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from paddlenlp.utils.env import PADDLE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..assets import VOCAB_PATH, resolve_config
from .configuration import OscarConfig
from .modeling import OscarForImageTextRetrieval
from .processor import OscarProcessor
from .tokenizer import OscarTokenizer

__all__ = [
    "packaged_vocab_path",
    "has_weights",
    "weight_files",
    "weights_checksum",
    "load_tokenizer",
    "load_retrieval_model",
]

# Weights in one file (what save_pretrained and the Trainer's checkpoints write), and every
# form a model directory may hold them in (a sharded safetensors index too).
SINGLE_FILE_WEIGHTS = (SAFE_WEIGHTS_NAME, PADDLE_WEIGHTS_NAME)
WEIGHT_FILES = SINGLE_FILE_WEIGHTS + (SAFE_WEIGHTS_INDEX_NAME,)


def packaged_vocab_path() -> str:
    """The bert-base-uncased vocabulary shipped with the package (VinVL's text vocabulary)."""
    return VOCAB_PATH


def has_weights(model_dir: str) -> bool:
    """Whether ``model_dir`` holds saved weights, not only a config."""
    return any(os.path.isfile(os.path.join(model_dir, name)) for name in WEIGHT_FILES)


def _require_existing(model_dir: str) -> None:
    """A FileNotFoundError saying so when ``model_dir`` does not exist (rather than "it has no config.json")."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir!r}: no such model directory (it does not exist)")


def weight_files(model_dir: str) -> List[str]:
    """The files holding ``model_dir``'s weights (a sharded checkpoint's shards included), in a fixed order."""
    _require_existing(model_dir)
    if not has_weights(model_dir):
        raise FileNotFoundError(
            f"{model_dir} has no saved weights (none of {', '.join(WEIGHT_FILES)}); save the model "
            "(save_pretrained) first"
        )
    files = [os.path.join(model_dir, n) for n in WEIGHT_FILES if os.path.isfile(os.path.join(model_dir, n))]
    index_path = os.path.join(model_dir, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        files += [os.path.join(model_dir, s) for s in shards]
    return files


def weights_checksum(model_dir: str) -> str:
    """sha256 over the names and bytes of every weight file of ``model_dir``: what ties derived files
    (a gallery index's embeddings, an exported static graph) to the weights that made them."""
    digest = hashlib.sha256()
    for path in weight_files(model_dir):
        digest.update(os.path.basename(path).encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def load_tokenizer(model_dir: str) -> OscarTokenizer:
    """The directory's tokenizer, or the packaged vocabulary for a config-only directory."""
    if os.path.isfile(os.path.join(model_dir, "vocab.txt")):
        return OscarTokenizer.from_pretrained(model_dir)
    return OscarTokenizer(packaged_vocab_path())


def load_retrieval_model(
    model_dir: str, config_overrides: Optional[Dict[str, Any]] = None, **processor_overrides
) -> Tuple[OscarForImageTextRetrieval, OscarProcessor]:
    """Model and processor from a directory: saved weights, or random init from a config-only directory
    (a shipped config's name, ``tiny`` or ``vinvl-base``, stands for its packaged directory).

    ``config_overrides`` are set in the directory's config before the model is built (what a
    fine-tuning recipe decides over the checkpoint, such as its dropout).
    """
    model_dir = resolve_config(model_dir, kind="config")  # a path that does not exist is refused here
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir!r} is not a model directory: it has no config.json")
    config = OscarConfig.from_pretrained(model_dir)
    for key, value in (config_overrides or {}).items():
        setattr(config, key, value)
    if has_weights(model_dir):
        model = OscarForImageTextRetrieval.from_pretrained(model_dir, config=config)
    else:
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
