"""The checksum of a model directory's weights: what ties an index's embeddings to the model that made them."""
from __future__ import annotations

import hashlib
import json
import os
from typing import List

from ..model_dir import WEIGHT_FILES, has_weights

__all__ = ["weight_files", "weights_checksum"]

_SHARD_INDEX = WEIGHT_FILES[-1]  # model.safetensors.index.json: names the shard files


def weight_files(model_dir: str) -> List[str]:
    """The files holding ``model_dir``'s weights (a sharded checkpoint's shards included), in a fixed order."""
    if not has_weights(model_dir):
        raise FileNotFoundError(
            f"{model_dir} has no saved weights (none of {', '.join(WEIGHT_FILES)}); an index needs the "
            "weights its queries will use: save the model (save_pretrained) first"
        )
    files = [os.path.join(model_dir, n) for n in WEIGHT_FILES if os.path.isfile(os.path.join(model_dir, n))]
    index_path = os.path.join(model_dir, _SHARD_INDEX)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        files += [os.path.join(model_dir, s) for s in shards]
    return files


def weights_checksum(model_dir: str) -> str:
    """sha256 over the names and bytes of every weight file of ``model_dir``."""
    digest = hashlib.sha256()
    for path in weight_files(model_dir):
        digest.update(os.path.basename(path).encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()
