"""Nearest-neighbour search over first-stage embeddings, behind one small interface.

A :class:`Searcher` answers ``search(queries [Q, E], k) -> (scores [Q, k], rows [Q, k])`` with
the project's one order (:mod:`vinvl.retrieval.topk`: score descending, then the lower row);
rows it could not fill are padding (row ``-1``, score ``-inf``). :class:`ExactSearch` scans an
in-memory or memory-mapped matrix in chunks; the gallery index adds an approximate one over its
faiss IVF file (:class:`vinvl.index.ivf.IVFSearch`). The contrastive first stage of evaluation,
of the gallery index and of the query core all search through one of these.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .topk import DEFAULT_CHUNK_ROWS, TopK, exact_top_k

__all__ = ["Searcher", "ExactSearch"]


class Searcher(Protocol):
    """What the contrastive first stage needs of a store of embeddings."""

    def __len__(self) -> int:
        """Rows (gallery items) searched."""

    def search(self, queries: np.ndarray, k: int) -> TopK:
        """Each query's top-``k`` rows by inner product, ordered as :func:`vinvl.retrieval.topk.merge_top_k` orders."""


class ExactSearch:
    """Exact inner-product top-k over ``keys [N, E]`` (an array or a memory map, read ``chunk_rows`` at a time).

    Thread-safe: it holds no state but the keys.
    """

    def __init__(self, keys: np.ndarray, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        if keys.ndim != 2:
            raise ValueError(f"keys must be [N, E], got shape {list(keys.shape)}")
        self.keys = keys
        self.chunk_rows = chunk_rows

    def __len__(self) -> int:
        return len(self.keys)

    def search(self, queries: np.ndarray, k: int) -> TopK:
        return exact_top_k(self.keys, queries, k, chunk_rows=self.chunk_rows)
