"""Files the package ships and reads at run time, in one place.

- ``vinvl_labelmap.json``: the VinVL Visual Genome vocabulary (1594 classes, 524 attributes) the
  detector emits as object tags and the synthetic corpus draws its scenes from.
- ``vocab.txt``: the bert-base-uncased WordPiece vocabulary (the Oscar tokenizer's default).
"""
from __future__ import annotations

import os

__all__ = ["ASSETS_DIR", "LABELMAP_PATH", "VOCAB_PATH"]

ASSETS_DIR = os.path.dirname(os.path.abspath(__file__))
LABELMAP_PATH = os.path.join(ASSETS_DIR, "vinvl_labelmap.json")
VOCAB_PATH = os.path.join(ASSETS_DIR, "vocab.txt")
