"""Where a split's files are in an official coco_ir download (and in a synthetic corpus).

```
data_dir/
  {split}_captions.pt | .pd | .json     image id -> captions
  test_img_keys_1k.tsv, test_img_keys.tsv evaluation subsets (one image id per line)
  minival_caption_indexs_top20.pt        minival hard negatives
  features/{split}/                      (or features_dir/{split}/)
    features.tsv, features.lineidx, imageid2idx.json, predictions.tsv
```

A split without its own feature folder reads ``val``'s when it is ``minival`` (minival is a
subset of COCO val), and otherwise the features root itself when that holds ``features.tsv``
(a single folder for everything, as in the VinVL feature download of one split). Without
``features_dir``, ``data_dir`` itself is looked in last: the flat folder many users unpack the
download into, ``features.tsv`` beside the caption files.
"""
from __future__ import annotations

import os
from typing import Optional

from .formats import DataError

__all__ = ["SPLITS", "CAPTION_INDEX_FILE", "split_feature_dir"]

SPLITS = ("train", "minival", "val", "test")
CAPTION_INDEX_FILE = "minival_caption_indexs_top20.pt"
FEATURES_FILE = "features.tsv"


def split_feature_dir(data_dir: str, split: str, features_dir: Optional[str] = None) -> str:
    """The folder holding ``features.tsv`` (and ``predictions.tsv``) for ``split``."""
    root = features_dir or os.path.join(data_dir, "features")
    candidates = [os.path.join(root, split)]
    if split == "minival":
        candidates.append(os.path.join(root, "val"))
    candidates.append(root)
    if not features_dir:
        candidates.append(data_dir)
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, FEATURES_FILE)):
            return folder
    raise DataError(f"no {FEATURES_FILE} for split {split!r}: looked in {', '.join(candidates)}")
