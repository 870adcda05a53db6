"""First stages behind one interface: for a batch of queries, the gallery rows the match head re-ranks.

A :class:`FirstStage` answers ``propose(queries, k) -> rows [Q, k']``: each query's proposed
gallery rows, best first in the project's one order (:mod:`vinvl.retrieval.topk`: first-stage
score descending, then the lower row), padded with row ``-1`` where fewer than ``k`` exist. The
query core (:class:`vinvl.query.Retriever`) picks one per direction and call, and never asks which
it got:

- :class:`EveryRow`: no first stage (``exhaustive``, or ``k`` covering the gallery): every row.
- :class:`NearestRows`: ``contrastive``: the rows' embeddings searched with the queries' embeddings
  through a :class:`~vinvl.retrieval.search.Searcher` (exact chunked, faiss IVF or Milvus).
- :class:`TagRows`: ``tags``: BM25 between the queries' words and the rows' words.

``queries`` are one direction's parsed queries (:class:`vinvl.query.core.Query`); each stage is
given the function that turns them into what it searches with (embeddings, word lists).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Protocol, Sequence

import numpy as np

from ..retrieval.search import Searcher
from ..retrieval.topk import TopK

__all__ = ["FirstStage", "EveryRow", "NearestRows", "TagRows"]


class FirstStage(Protocol):
    """What the query core needs of a first stage (see the module docstring)."""

    def propose(self, queries: Sequence[Any], k: int) -> np.ndarray:
        """``[len(queries), k']`` proposed rows per query, best first, ``-1`` for padding."""


class WordSearch(Protocol):
    """A BM25 index: ``search(word lists, k) -> (scores, rows)`` in the project's order."""

    def search(self, queries: Sequence[Sequence[str]], k: int) -> TopK:
        ...


@dataclass(frozen=True)
class EveryRow:
    """Every one of ``num_rows`` rows for every query, in gallery order (``k`` is not a limit)."""

    num_rows: int

    def propose(self, queries: Sequence[Any], k: int) -> np.ndarray:
        return np.broadcast_to(np.arange(self.num_rows), (len(queries), self.num_rows))


@dataclass(frozen=True)
class NearestRows:
    """The ``k`` rows whose embeddings ``searcher`` finds nearest to ``embed(queries) [Q, E]``."""

    searcher: Searcher
    embed: Callable[[Sequence[Any]], np.ndarray]

    def propose(self, queries: Sequence[Any], k: int) -> np.ndarray:
        return self.searcher.search(self.embed(queries), k)[1]


@dataclass(frozen=True)
class TagRows:
    """The ``k`` rows of highest BM25 in ``index`` for the word lists ``words(queries)``."""

    index: WordSearch
    words: Callable[[Sequence[Any]], List[List[str]]]

    def propose(self, queries: Sequence[Any], k: int) -> np.ndarray:
        return self.index.search(self.words(queries), k)[1]
