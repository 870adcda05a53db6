"""Per-image columns stored as ``.npy`` files that open memory-mapped, whatever the gallery's size.

- :class:`IdColumn`: image ids as fixed-width UTF-8 bytes plus their sort order, so an id is
  found by binary search over the mapped file (no dict of every id in memory).
- :class:`ListColumn`: a list of strings per image (the tags) as one byte array of JSON texts
  plus row offsets.
- :class:`ArrayWriter`: a ``[rows, ...]`` array written to its ``.npy`` chunk by chunk (the embeddings).

Readers use ``np.load(mmap_mode="r")``: opening one costs a few page reads, and only the rows a
query touches are ever read. Writers take their rows in chunks and write them with plain file
writes (never through a memory map, whose written pages would stay in the writer's resident
memory), so writing a column holds one chunk of it, plus a few bytes per row for the id sort
order and the list offsets. :func:`read_rows` reads a stored array's rows the same way.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import IO, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ArrayWriter", "IdColumn", "ListColumn", "load_array", "read_rows"]

_COPY_BYTES = 1 << 24  # bytes per read when a writer copies a base column or its own spill file
_COPY_ROWS = 1 << 16  # rows per read when a writer copies a base array


def load_array(folder: str, name: str) -> np.ndarray:
    """``folder/name.npy`` memory-mapped read-only."""
    return np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")


def read_rows(array: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``array[lo:hi]`` as a new array; a memory-mapped ``.npy`` is read with a file read, so its
    pages are not mapped into (and counted in) this process's resident memory."""
    if not isinstance(array, np.memmap) or array.filename is None or not array.flags.c_contiguous:
        return np.array(array[lo:hi])
    hi = min(hi, len(array))
    row_shape = array.shape[1:]
    per_row = int(np.prod(row_shape, dtype=np.int64))
    count = max(hi - lo, 0) * per_row
    out = np.fromfile(array.filename, dtype=array.dtype, count=count, offset=array.offset + lo * per_row * array.dtype.itemsize)
    return out.reshape((max(hi - lo, 0), *row_shape))


def _write_header(handle: IO, dtype: np.dtype, shape: Tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})


class ArrayWriter:
    """``path`` (``.npy``) of ``shape`` and ``dtype``, written in order by :meth:`append` (first the
    rows of ``base``, if given); :meth:`close` checks that every row was written."""

    def __init__(self, path: str, shape: Tuple[int, ...], dtype, base: Optional[np.ndarray] = None):
        self.path, self.shape, self.dtype = path, tuple(int(s) for s in shape), np.dtype(dtype)
        self.rows = 0
        self._handle = open(path, "wb")
        _write_header(self._handle, self.dtype, self.shape)
        if base is not None:
            for lo in range(0, len(base), _COPY_ROWS):
                self.append(read_rows(base, lo, lo + _COPY_ROWS))

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path}: rows of shape {rows.shape} do not fit after row {self.rows} of {self.shape}")
        self._handle.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        self._handle.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path}: {self.rows} rows written, {self.shape[0]} expected")


class IdColumn:
    """Distinct string ids by position, and positions by id."""

    def __init__(self, folder: str, name: str):
        self.ids = load_array(folder, name)
        self.order = load_array(folder, f"{name}_order")

    @staticmethod
    def write(
        folder: str, name: str, chunks: Iterable[Sequence[str]], count: int, width: int, base: Optional["IdColumn"] = None
    ) -> None:
        """Write ``base``'s ids (if any) followed by the ``count`` ids of ``chunks``, none wider than
        ``width`` UTF-8 bytes; then their sort order (8 bytes per id, the one array held whole)."""
        width = max(width, base.ids.dtype.itemsize if base is not None else 0, 1)  # every id empty: keep a valid width
        dtype = np.dtype(f"S{width}")
        path = os.path.join(folder, f"{name}.npy")
        writer = ArrayWriter(path, ((len(base) if base is not None else 0) + count,), dtype, base.ids if base is not None else None)
        for chunk in chunks:
            writer.append(np.array([str(i).encode("utf-8") for i in chunk], dtype=dtype).reshape(-1))
        writer.close()
        ids = np.load(path, mmap_mode="r")
        np.save(os.path.join(folder, f"{name}_order.npy"), np.argsort(ids, kind="stable").astype(np.int64))

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

    def first_duplicate(self) -> Optional[Tuple[int, int]]:
        """The positions ``(first, second)`` of an id stored twice (the lowest such id), or None."""
        for lo in range(0, len(self.ids), _COPY_ROWS):
            order = np.asarray(self.order[lo : lo + _COPY_ROWS + 1])
            ids = self.ids[order]
            same = np.flatnonzero(ids[1:] == ids[:-1])
            if len(same):
                pair = sorted((int(order[same[0]]), int(order[same[0] + 1])))
                return pair[0], pair[1]
        return None


class ListColumn:
    """A list of strings per row."""

    def __init__(self, folder: str, name: str):
        self.data = load_array(folder, name)
        self.offsets = load_array(folder, f"{name}_offsets")

    @staticmethod
    def write(folder: str, name: str, rows: Sequence[Sequence[str]], base: Optional["ListColumn"] = None) -> None:
        """Write ``base``'s rows (if any) followed by ``rows``."""
        writer = ListColumnWriter(folder, name, len(rows), base)
        writer.append(rows)
        writer.close()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> List[str]:
        return json.loads(bytes(self.data[self.offsets[index] : self.offsets[index + 1]]).decode("utf-8"))

    def row_starts(self) -> np.ndarray:
        """int64 ``[rows + 1]``: where each row's strings start among every row's strings flattened
        in order (a read of every row, ``_COPY_BYTES`` of text at a time)."""
        starts = np.zeros(len(self) + 1, dtype=np.int64)
        row = 0
        while row < len(self):
            end = int(np.searchsorted(self.offsets, self.offsets[row] + _COPY_BYTES, side="right")) - 1
            end = min(max(end, row + 1), len(self))
            text = read_rows(self.data, int(self.offsets[row]), int(self.offsets[end])).tobytes()
            cuts = np.asarray(self.offsets[row : end + 1]) - self.offsets[row]
            starts[row + 1 : end + 1] = [len(json.loads(text[a:b])) for a, b in zip(cuts[:-1], cuts[1:])]
            row = end
        return np.cumsum(starts, out=starts)


class ListColumnWriter:
    """A :class:`ListColumn` written chunk by chunk: ``base``'s rows (if any), then ``count`` rows
    given to :meth:`append`. The texts go to a spill file whose length is known only at the end;
    :meth:`close` writes the ``.npy`` header and copies them after it."""

    def __init__(self, folder: str, name: str, count: int, base: Optional[ListColumn] = None):
        self.folder, self.name = folder, name
        old = len(base) if base is not None else 0
        self.offsets = np.zeros(old + count + 1, dtype=np.int64)
        self.rows = old
        self._spill_path = os.path.join(folder, f"{name}.texts")
        self._spill = open(self._spill_path, "wb")
        if base is not None:
            self.offsets[: old + 1] = base.offsets
            for lo in range(0, int(base.offsets[-1]), _COPY_BYTES):
                self._spill.write(read_rows(base.data, lo, lo + _COPY_BYTES).tobytes())

    def append(self, rows: Sequence[Sequence[str]]) -> None:
        texts = [json.dumps([str(t) for t in row], ensure_ascii=False).encode("utf-8") for row in rows]
        if self.rows + len(texts) >= len(self.offsets):
            raise ValueError(f"{self.name}: more rows than the {len(self.offsets) - 1} announced")
        np.cumsum([len(t) for t in texts], out=self.offsets[self.rows + 1 : self.rows + 1 + len(texts)])
        self.offsets[self.rows + 1 : self.rows + 1 + len(texts)] += self.offsets[self.rows]
        self._spill.write(b"".join(texts))
        self.rows += len(texts)

    def close(self) -> None:
        self._spill.close()
        if self.rows != len(self.offsets) - 1:
            raise ValueError(f"{self.name}: {self.rows} rows written, {len(self.offsets) - 1} expected")
        with open(os.path.join(self.folder, f"{self.name}.npy"), "wb") as out, open(self._spill_path, "rb") as texts:
            _write_header(out, np.uint8, (int(self.offsets[-1]),))
            shutil.copyfileobj(texts, out, _COPY_BYTES)
        os.remove(self._spill_path)
        np.save(os.path.join(self.folder, f"{self.name}_offsets.npy"), self.offsets)
