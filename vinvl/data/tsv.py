"""Random access to the rows of a large TSV file through its line index.

The official feature files are tens of GB; a row is reached by seeking to its byte offset,
read from the ``.lineidx`` file beside it (one decimal offset per line). A missing index is
built once by one streaming pass, written beside the TSV when that is possible and otherwise
into a cache directory, atomically, and never over a file the user already has.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Iterator, List, Optional, Tuple

import numpy as np

__all__ = ["TSVFile", "build_lineidx", "index_fits", "lineidx_path_for"]


def _default_cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "vinvl", "lineidx")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build_lineidx(tsv_path: str, out_path: str) -> str:
    """Write the byte offset of every row of ``tsv_path`` to ``out_path`` (atomic; returns it)."""
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lineidx-", dir=out_dir)
    try:
        with open(tsv_path, "rb") as src, os.fdopen(fd, "w") as dst:
            offset = 0
            for line in src:
                if line.strip():
                    dst.write(f"{offset}\n")
                offset += len(line)
        # mkstemp makes the file private (0600); an index beside shared data must be readable like it.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return out_path


def index_fits(index_path: str, tsv_path: str, samples: int = 16) -> bool:
    """Whether ``index_path`` holds the row starts of ``tsv_path``, by spot checks (no full pass).

    The offsets must start at 0 and increase; a few of them, the last included, must each
    follow a line break; and the last row must run to the end of the file. Modification times
    are not used: downloads and copies do not keep them in order.
    """
    try:
        with open(index_path) as f:
            offsets = np.array([int(line) for line in f if line.strip()], dtype=np.int64)
    except (OSError, ValueError):
        return False
    size = os.path.getsize(tsv_path)
    if len(offsets) == 0:
        return size == 0
    if offsets[0] != 0 or offsets[-1] >= size or (len(offsets) > 1 and (np.diff(offsets) <= 0).any()):
        return False
    with open(tsv_path, "rb") as f:
        for i in np.unique(np.linspace(0, len(offsets) - 1, min(samples, len(offsets))).astype(np.int64)):
            if offsets[i] > 0:
                f.seek(int(offsets[i]) - 1)
                if f.read(1) != b"\n":
                    return False
        f.seek(int(offsets[-1]))
        f.readline()
        return not f.read(4096).strip()  # nothing but blank space after the last indexed row


def lineidx_path_for(tsv_path: str, cache_dir: Optional[str] = None) -> str:
    """The index to use for ``tsv_path``: the one beside it if it fits the file, else one built
    beside it (when there is none and the folder is writable), else one in a cache."""
    beside = os.path.splitext(tsv_path)[0] + ".lineidx"
    if os.path.isfile(beside) and index_fits(beside, tsv_path):
        return beside
    if not os.path.exists(beside) and os.access(os.path.dirname(os.path.abspath(tsv_path)), os.W_OK):
        return build_lineidx(tsv_path, beside)
    stat = os.stat(tsv_path)
    key = hashlib.sha1(f"{os.path.abspath(tsv_path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    cached = os.path.join(cache_dir or _default_cache_dir(), f"{key}.lineidx")
    if not os.path.isfile(cached):
        build_lineidx(tsv_path, cached)
    return cached


class TSVFile:
    """Rows of a tab-separated file by row number, without reading the file whole.

    The file handle is opened lazily and reopened after a fork, so one instance can be shared
    with DataLoader workers. Memory holds the offsets only (8 bytes per row).
    """

    def __init__(self, path: str, cache_dir: Optional[str] = None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        self.path = path
        self.lineidx_path = lineidx_path_for(path, cache_dir)
        self._offsets = self._read_offsets()
        self._handle = None
        self._pid = None

    def _read_offsets(self) -> np.ndarray:
        with open(self.lineidx_path) as f:
            try:
                offsets = np.array([int(line) for line in f if line.strip()], dtype=np.int64)
            except ValueError as exc:
                raise ValueError(f"{self.lineidx_path}: not a line index ({exc})") from exc
        size = os.path.getsize(self.path)
        if len(offsets) and (offsets.max() >= size or offsets.min() < 0):
            raise ValueError(f"{self.lineidx_path}: offsets point outside {self.path} ({size} bytes); rebuild the index")
        return offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.path, "rb")
            self._pid = os.getpid()
        return self._handle

    def _check(self, row: int) -> None:
        if not 0 <= row < len(self._offsets):
            raise IndexError(f"{self.path}: row {row} out of range (the file has {len(self._offsets)} rows)")

    def read_line(self, row: int) -> str:
        """Row ``row`` as text, without its line break."""
        self._check(row)
        handle = self._file()
        handle.seek(int(self._offsets[row]))
        return handle.readline().decode("utf-8").rstrip("\r\n")

    def head(self, row: int, num_fields: int = 1, max_bytes: int = 256) -> List[str]:
        """The first fields of a row (its image id, ...), reading only the row's start."""
        self._check(row)
        handle = self._file()
        handle.seek(int(self._offsets[row]))
        return handle.read(max_bytes).decode("utf-8", errors="replace").split("\t")[:num_fields]

    def seek(self, row: int) -> List[str]:
        """Row ``row`` split into its tab-separated fields."""
        return self.read_line(row).split("\t")

    def __iter__(self) -> Iterator[Tuple[int, List[str]]]:
        """(row number, fields) of every row, streamed in file order."""
        with open(self.path, "rb") as f:
            row = 0
            for line in f:
                if line.strip():
                    yield row, line.decode("utf-8").rstrip("\r\n").split("\t")
                    row += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        return state
