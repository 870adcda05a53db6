"""Approximate first stage with faiss (the optional ``[faiss]`` extra): an IVF-Flat inner-product index.

The embeddings are L2-normalised, so inner product is cosine similarity. IVF-Flat keeps every
vector exactly and searches the ``nprobe`` lists nearest to the query: recall is traded for speed
by ``nprobe`` alone, and what it finds is scored exactly. The index file sits beside the
embeddings in the same index version and is opened memory-mapped (``IO_FLAG_MMAP``), so opening
it costs no memory; the lists a query probes are paged in.

Training samples at most ``TRAIN_POINTS_PER_LIST`` points per list and never more than
``MAX_TRAIN_POINTS`` in all, with a fixed seed, so the same embeddings always give the same index
and training holds a bounded sample whatever N (faiss asks for 39 points per list: past about 6.7M
vectors, with the default nlist, it gets fewer and says so). The embeddings are read from their
``.npy`` in chunks with file reads (:func:`vinvl.index.tables.read_rows`); the IVF-Flat index
itself holds every vector in memory while it is built (dim x 4 + 8 bytes per vector).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from ..retrieval.topk import TopK, merge_top_k
from .tables import read_rows

__all__ = [
    "FAISS_FILE",
    "DEFAULT_NPROBE",
    "IVFSearch",
    "require_faiss",
    "training_sample",
    "default_nlist",
    "build_ivf_flat",
    "extend",
    "load",
    "save",
    "search",
]

FAISS_FILE = "faiss.index"
DEFAULT_NPROBE = 32
TRAIN_POINTS_PER_LIST = 64
MAX_TRAIN_POINTS = 1 << 18  # 64 MB of 64-d float32
_ADD_CHUNK = 65536


def require_faiss():
    """The faiss module, or an ImportError saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("the faiss first stage needs faiss-cpu: pip install 'vinvl-paddle[faiss]'") from exc
    return faiss


def default_nlist(num_vectors: int) -> int:
    """About 4 sqrt(N) lists, and never fewer than 39 training points per list (faiss' minimum)."""
    return int(max(1, min(round(4 * math.sqrt(num_vectors)), num_vectors // 39)))


def build_ivf_flat(embeddings: np.ndarray, nlist: Optional[int] = None, seed: int = 0, progress: bool = False):
    """An IVF-Flat inner-product index over ``embeddings [N, E]`` (a memory map is read in chunks)."""
    faiss = require_faiss()
    num_vectors, dim = embeddings.shape
    if num_vectors == 0:
        raise ValueError("cannot build a faiss index over zero embeddings")
    nlist = default_nlist(num_vectors) if nlist is None else int(nlist)
    if not 1 <= nlist <= num_vectors:
        raise ValueError(f"nlist must be in 1..{num_vectors} (the number of embeddings), got {nlist}")
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(training_sample(embeddings, nlist, seed))
    return extend(index, embeddings, 0, progress)


def training_sample(embeddings: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """The rows faiss trains ``nlist`` lists on: every row, or a seeded sample of at most
    ``TRAIN_POINTS_PER_LIST`` per list and ``MAX_TRAIN_POINTS`` in all, read chunk by chunk."""
    num_vectors = len(embeddings)
    size = min(num_vectors, nlist * TRAIN_POINTS_PER_LIST, MAX_TRAIN_POINTS)
    rows = np.arange(num_vectors)
    if size < num_vectors:
        rows = np.sort(np.random.default_rng(seed).choice(num_vectors, size, replace=False))
    parts = []
    for lo in range(0, num_vectors, _ADD_CHUNK):
        wanted = rows[(rows >= lo) & (rows < lo + _ADD_CHUNK)]
        if len(wanted):
            parts.append(read_rows(embeddings, lo, lo + _ADD_CHUNK)[wanted - lo])
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def extend(index, embeddings: np.ndarray, start: int, progress: bool = False):
    """Add ``embeddings[start:]`` to ``index`` (their ids are their rows); returns the index."""
    if index.ntotal != start:
        raise ValueError(f"the faiss index holds {index.ntotal} vectors; expected {start} before adding row {start}")
    for lo in tqdm(range(start, len(embeddings), _ADD_CHUNK), desc="faiss add", unit="chunk", disable=not progress):
        index.add(np.ascontiguousarray(read_rows(embeddings, lo, lo + _ADD_CHUNK), dtype=np.float32))
    return index


def save(index, path: str) -> None:
    require_faiss().write_index(index, path)


def load(path: str, writable: bool = False):
    """A saved index: memory-mapped read-only for searching, or read whole to add to it."""
    faiss = require_faiss()
    return faiss.read_index(path, 0 if writable else faiss.IO_FLAG_MMAP)


def search(index, queries: np.ndarray, k: int, nprobe: int = DEFAULT_NPROBE) -> TopK:
    """Top-``k`` (scores, rows) per query, ordered as :func:`vinvl.retrieval.topk.merge_top_k` orders them.

    Fewer than k found (few vectors in the probed lists) leaves padding: row -1, score -inf.
    """
    if nprobe <= 0:
        raise ValueError(f"nprobe must be positive, got {nprobe}")
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if queries.shape[1] != index.d:
        raise ValueError(f"queries are {queries.shape[1]}-d but the faiss index is {index.d}-d")
    params = require_faiss().SearchParametersIVF(nprobe=min(int(nprobe), index.nlist))
    scores, rows = index.search(queries, int(k), params=params)
    rows = rows.astype(np.int64)
    scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
    return merge_top_k([(scores, rows)], k)


class IVFSearch:
    """A faiss IVF index as a :class:`vinvl.retrieval.search.Searcher`, probing ``nprobe`` lists per query.

    faiss releases the GIL and reads the (memory-mapped) index only; ``nprobe`` is passed per call,
    so concurrent searches with different ``nprobe`` do not see each other's.
    """

    def __init__(self, index, nprobe: int = DEFAULT_NPROBE):
        if isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe <= 0:
            raise ValueError(f"nprobe must be a positive integer, got {nprobe!r}")
        self.index = index
        self.nprobe = nprobe

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> TopK:
        return search(self.index, queries, k, nprobe=self.nprobe)
