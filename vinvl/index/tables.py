"""Per-image columns stored as ``.npy`` files that open memory-mapped, whatever the gallery's size.

- :class:`IdColumn`: image ids as fixed-width UTF-8 bytes plus their sort order, so an id is
  found by binary search over the mapped file (no dict of every id in memory).
- :class:`ListColumn`: a list of strings per image (the tags) as one byte array of JSON texts
  plus row offsets.

Both are written with :func:`numpy.save` and read with ``np.load(mmap_mode="r")``: opening one
costs a few page reads, and only the rows a query touches are ever read.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["IdColumn", "ListColumn", "load_array"]


def load_array(folder: str, name: str) -> np.ndarray:
    """``folder/name.npy`` memory-mapped read-only."""
    return np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")


class IdColumn:
    """Distinct string ids by position, and positions by id."""

    def __init__(self, folder: str, name: str):
        self.ids = load_array(folder, name)
        self.order = load_array(folder, f"{name}_order")

    @staticmethod
    def write(folder: str, name: str, ids: Sequence[str], base: Optional["IdColumn"] = None) -> None:
        """Write ``base``'s ids (if any) followed by ``ids``."""
        encoded = np.array([str(i).encode("utf-8") for i in ids], dtype=bytes).reshape(-1)
        if base is not None:
            encoded = np.concatenate([np.asarray(base.ids), encoded])
        if encoded.dtype.itemsize == 0:  # every id empty: keep a valid width
            encoded = encoded.astype("S1")
        np.save(os.path.join(folder, f"{name}.npy"), encoded)
        np.save(os.path.join(folder, f"{name}_order.npy"), np.argsort(encoded, kind="stable").astype(np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> str:
        return bytes(self.ids[index]).decode("utf-8")

    def find(self, image_id: str) -> int:
        """Position of ``image_id``, or -1 when it is absent."""
        encoded = str(image_id).encode("utf-8")
        if len(encoded) > self.ids.dtype.itemsize:
            return -1
        key = np.array(encoded, dtype=self.ids.dtype)
        at = int(np.searchsorted(self.ids, key, sorter=self.order))
        if at < len(self.ids) and self.ids[self.order[at]] == key:
            return int(self.order[at])
        return -1


class ListColumn:
    """A list of strings per row."""

    def __init__(self, folder: str, name: str):
        self.data = load_array(folder, name)
        self.offsets = load_array(folder, f"{name}_offsets")

    @staticmethod
    def write(folder: str, name: str, rows: Sequence[Sequence[str]], base: Optional["ListColumn"] = None) -> None:
        """Write ``base``'s rows (if any) followed by ``rows``."""
        texts = [json.dumps([str(t) for t in row], ensure_ascii=False).encode("utf-8") for row in rows]
        data = np.frombuffer(b"".join(texts), dtype=np.uint8)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in texts], out=offsets[1:])
        if base is not None:
            data = np.concatenate([np.asarray(base.data), data])
            offsets = np.concatenate([np.asarray(base.offsets), offsets[1:] + base.offsets[-1]])
        np.save(os.path.join(folder, f"{name}.npy"), data)
        np.save(os.path.join(folder, f"{name}_offsets.npy"), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> List[str]:
        return json.loads(bytes(self.data[self.offsets[index] : self.offsets[index + 1]]).decode("utf-8"))
