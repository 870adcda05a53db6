"""BM25 as an inverted index: per word, the documents holding it and how often, searched by posting lists.

:class:`~vinvl.retrieval.first_stage.BM25Index` scores a query against every document (a sparse
product densified to ``[queries, documents]``, then a partition of every row) and must be rebuilt
from the word lists in every process. Here the statistics are plain arrays that can be written
once (by the gallery index build, :mod:`vinvl.index.bm25`) and memory-mapped by every reader, and
a query reads only its words' posting lists (:class:`PostingsBM25`):

```
indptr   int64 [V + 1]  term t's postings are docs[indptr[t]:indptr[t + 1]]
docs     int32 [P]      the documents holding the term, ascending
tf       int32 [P]      how often the term occurs in each of them
lengths  int32 [N]      each document's length in words
```

and a vocabulary (word -> term id, term ids numbered by first occurrence over the documents in
order, as BM25Index numbers them). The raw statistics are stored, not BM25 weights: a weight
depends on N and the mean length, which every added document changes, so stored weights would
all be stale after an add. The weights of the postings a query touches are computed at search
time with the same float64 expression, and added term by term in ascending term id: the order
BM25Index's sparse product adds them in, so the scores are bit-identical to BM25Index's.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .topk import TopK, top_k_of_block

__all__ = ["Postings", "PostingsBuilder", "PostingsBM25", "build_postings"]

_CHUNK_DOCUMENTS = 65536  # documents turned into (term, document, tf) triples at once
_SPARSE_SHARE = 16  # a query whose postings are under 1/16 of the documents is scored without a dense row
_TOP_K_BLOCK = 1024  # a score row's block whose maximum bounds its top k from below

Allocate = Callable[[str, int, type], np.ndarray]  # (array name, length, dtype) -> a writable array


def _allocate_in_memory(name: str, length: int, dtype: type) -> np.ndarray:
    return np.empty(length, dtype=dtype)


@dataclass
class Postings:
    """The arrays of an inverted index (see the module docstring) and its vocabulary in term id order."""

    words: Sequence[str]  # term id -> word (an in-memory list, or a mapped column with __getitem__)
    indptr: np.ndarray
    docs: np.ndarray
    tf: np.ndarray
    lengths: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.lengths)

    @property
    def num_terms(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_postings(self) -> int:
        return int(self.indptr[-1])


class PostingsBuilder:
    """Builds :class:`Postings` from word lists, after the documents of ``base`` when given.

    Feed documents in order with :meth:`add` (any number of calls), then :meth:`finish` once.
    The new documents' (term, document, tf) triples (12 bytes a posting) are held in memory, or
    with ``spill_dir`` written there a chunk at a time and read back memory-mapped, so that a
    writer's memory does not grow with the gallery; ``base``'s postings are copied term by term
    into the output, and the output arrays come from ``allocate`` (memory maps, for a writer).
    """

    def __init__(self, base: Optional[Postings] = None, spill_dir: Optional[str] = None):
        self._base = base
        self._spill_dir = spill_dir
        self._vocabulary: Dict[str, int] = {}
        self._words: List[str] = []
        if base is not None:
            for term in range(base.num_terms):
                self._term(base.words[term])
        self._chunks: List[np.ndarray] = []  # int32 [3, n]: terms, docs, tf; sorted by term then doc
        self._lengths: List[np.ndarray] = []
        self._count = base.num_documents if base is not None else 0
        self._pending: List[Sequence[str]] = []

    def _term(self, word: str) -> int:
        term = self._vocabulary.get(word)
        if term is None:
            term = self._vocabulary[word] = len(self._words)
            self._words.append(word)
        return term

    def add(self, documents: Iterable[Sequence[str]]) -> None:
        """Append documents (each a list of words; repeated words count as term frequency)."""
        for words in documents:
            self._pending.append(words)
            if len(self._pending) == _CHUNK_DOCUMENTS:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        lengths = np.fromiter((len(w) for w in self._pending), dtype=np.int64, count=len(self._pending))
        terms = np.fromiter((self._term(w) for words in self._pending for w in words), dtype=np.int64, count=int(lengths.sum()))
        local = np.repeat(np.arange(len(self._pending), dtype=np.int64), lengths)
        keys, tf = np.unique(terms * len(self._pending) + local, return_counts=True)  # sorted by term, then document
        chunk = np.stack([keys // len(self._pending), keys % len(self._pending) + self._count, tf]).astype(np.int32)
        if self._spill_dir is not None:
            path = os.path.join(self._spill_dir, f"chunk{len(self._chunks):06d}.npy")
            np.save(path, chunk)
            chunk = np.load(path, mmap_mode="r")
        self._chunks.append(chunk)
        self._lengths.append(lengths.astype(np.int32))
        self._count += len(self._pending)
        self._pending = []

    def finish(self, allocate: Allocate = _allocate_in_memory) -> Postings:
        """The postings of the base's documents then every added one (a counting sort by term)."""
        self._flush()
        base = self._base
        num_terms = len(self._words)
        counts = np.zeros(num_terms, dtype=np.int64)
        if base is not None:
            counts[: base.num_terms] += np.diff(np.asarray(base.indptr))
        for chunk in self._chunks:
            counts += np.bincount(chunk[0], minlength=num_terms)
        indptr = allocate("indptr", num_terms + 1, np.int64)
        indptr[0] = 0
        np.cumsum(counts, out=indptr[1:])
        total = int(indptr[-1])
        docs = allocate("docs", total, np.int32)
        tf = allocate("tf", total, np.int32)
        cursor = np.array(indptr[:-1])
        if base is not None:
            for term in range(base.num_terms):
                lo, hi = int(base.indptr[term]), int(base.indptr[term + 1])
                docs[cursor[term] : cursor[term] + hi - lo] = base.docs[lo:hi]
                tf[cursor[term] : cursor[term] + hi - lo] = base.tf[lo:hi]
                cursor[term] += hi - lo
        for chunk in self._chunks:
            terms = np.asarray(chunk[0])
            rank = np.arange(len(terms)) - np.searchsorted(terms, terms, side="left")
            at = cursor[terms] + rank
            docs[at], tf[at] = chunk[1], chunk[2]
            cursor += np.bincount(terms, minlength=num_terms)
        self._chunks = []
        lengths = allocate("lengths", self._count, np.int32)
        start = 0
        if base is not None:
            lengths[: base.num_documents] = base.lengths
            start = base.num_documents
        for part in self._lengths:
            lengths[start : start + len(part)] = part
            start += len(part)
        return Postings(list(self._words), indptr, docs, tf, lengths)


def build_postings(documents: Iterable[Sequence[str]], base: Optional[Postings] = None) -> Postings:
    """In-memory :class:`Postings` of ``documents`` (word lists), after ``base``'s when given."""
    builder = PostingsBuilder(base)
    builder.add(documents)
    return builder.finish()


class PostingsBM25:
    """Okapi BM25 search over :class:`Postings`: the scores and top-k of
    :class:`~vinvl.retrieval.first_stage.BM25Index` over the same documents, bit for bit, touching
    only the posting lists of each query's words.

    ``find_term(word)`` gives a word's term id or -1 (a dict lookup, or a binary search over a
    mapped vocabulary). The per-document length normalisation is computed once, on first search.

    A query is answered one of two ways, both exact and adding each document's weights in
    ascending term id (so the scores are those of BM25Index's sparse product):

    - few postings (under 1/16 of the documents): the union of the query's posting lists is
      scored, each term's weights placed by binary search;
    - otherwise every posting is added into a dense score row, whose top k is taken from the
      entries at or above the k-th largest of its block maxima (not a partition of the whole row).

    (Exact MaxScore pruning was tried and measured: on detector tags, where captions name common
    classes, its failed attempts cost what its successes saved; see docs/benchmarks.md.)
    """

    def __init__(self, postings: Postings, find_term: Callable[[str], int], k1: float, b: float):
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if postings.num_documents == 0:
            raise ValueError("BM25 needs at least one document")
        self.postings = postings
        self.k1, self.b = k1, b
        self._find_term = find_term
        self._idf: Optional[np.ndarray] = None
        self._norm: Optional[np.ndarray] = None
        self._lock = threading.Lock()

    @property
    def num_documents(self) -> int:
        return self.postings.num_documents

    @property
    def held_bytes(self) -> int:
        """Memory this search holds of its own (0 before the first search): the per-process statistics.
        The postings are not counted: mapped from an index, their pages are shared by every process."""
        arrays = (self._idf, self._norm)
        return sum(a.nbytes for a in arrays if a is not None)

    def _statistics(self) -> Tuple[np.ndarray, np.ndarray]:
        """(idf per term, k1 * (1 - b + b * |d| / avgdl) per document), as BM25Index computes them, on the first search."""
        with self._lock:
            if self._norm is None:
                lengths = np.asarray(self.postings.lengths, dtype=np.float64)
                mean_length = lengths.mean()
                k1, b = self.k1, self.b
                norm = k1 * (1 - b + b * lengths / mean_length) if mean_length > 0 else np.full(len(lengths), k1)
                df = np.diff(np.asarray(self.postings.indptr))
                self._idf = np.log1p((self.num_documents - df + 0.5) / (df + 0.5))
                self._norm = norm
            return self._idf, self._norm

    def terms(self, words: Sequence[str]) -> List[int]:
        """The distinct known term ids of a query's words, ascending (the order their weights are added in)."""
        found = {self._find_term(w) for w in words}
        found.discard(-1)
        return sorted(found)

    def _size(self, term: int) -> int:
        """How many documents hold ``term``."""
        return int(self.postings.indptr[term + 1] - self.postings.indptr[term])

    def _union(self, terms: Sequence[int]) -> np.ndarray:
        """The documents holding any of ``terms``, ascending."""
        lists = [self._posting(t)[0] for t in terms]
        if len(lists) == 1:
            return lists[0]
        return np.unique(np.concatenate(lists)) if lists else np.zeros(0, dtype=np.intp)

    def _posting(self, term: int) -> Tuple[np.ndarray, np.ndarray]:
        """``term``'s documents (as native indices, which numpy gathers and scatters fastest) and frequencies."""
        lo, hi = int(self.postings.indptr[term]), int(self.postings.indptr[term + 1])
        return self.postings.docs[lo:hi].astype(np.intp), self.postings.tf[lo:hi]

    def _weights(self, term: int, docs: np.ndarray, tf: np.ndarray) -> np.ndarray:
        """BM25 weights of ``term`` in ``docs`` (where it occurs ``tf`` times): BM25Index's float64
        expression ``idf * tf * (k1 + 1) / (tf + norm)``, evaluated in place, in the same order."""
        idf, norm = self._statistics()
        tf = np.asarray(tf, dtype=np.float64)
        weights = tf * idf[term]
        weights *= self.k1 + 1
        denominator = norm.take(docs)
        denominator += tf
        weights /= denominator
        return weights

    def scores(self, words: Sequence[str]) -> np.ndarray:
        """BM25 of one query against every document, float64 ``[N]`` (0 where no query word occurs)."""
        scores = np.zeros(self.num_documents, dtype=np.float64)
        for term in self.terms(words):
            docs, tf = self._posting(term)
            scores[docs] += self._weights(term, docs, tf)  # a term holds a document once
        return scores

    def _scores_of(self, terms: List[int], hits: np.ndarray) -> np.ndarray:
        """The BM25 of the sorted ``hits``, the documents holding any of ``terms``."""
        scores = np.zeros(len(hits), dtype=np.float64)
        for term in terms:
            docs, tf = self._posting(term)
            scores[np.searchsorted(hits, docs)] += self._weights(term, docs, tf)
        return scores

    def _search_one(self, words: Sequence[str], k: int) -> TopK:
        """One query's top-``k`` (scores, documents), documents scoring 0 filling in index order."""
        terms = self.terms(words)
        if sum(self._size(t) for t in terms) * _SPARSE_SHARE < self.num_documents:
            hits = self._union(terms)
            return _top_k_of_hits(self._scores_of(terms, hits), hits, k)
        return _top_k_of_row(self.scores(words), k)

    def search(self, queries: Sequence[Sequence[str]], k: int) -> TopK:
        """Each query's ``min(k, N)`` best documents: (BM25 scores, documents) ``[Q, k]``, best first,
        ties to the lower index; documents no query word occurs in score 0 and, when fewer than k
        documents score above 0, fill the list in index order (as BM25Index ranks them)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(min(k, self.num_documents))
        out_scores = np.zeros((len(queries), k), dtype=np.float64)
        out_docs = np.empty((len(queries), k), dtype=np.int64)
        for q, words in enumerate(queries):
            out_scores[q], out_docs[q] = self._search_one(words, k)
        return out_scores, out_docs

    def top_k(self, queries: Sequence[Sequence[str]], k: int) -> np.ndarray:
        """The documents of :meth:`search` alone ``[Q, min(k, N)]``."""
        return self.search(queries, k)[1]


def _top_k_of_hits(scores: np.ndarray, hits: np.ndarray, k: int) -> TopK:
    """The top k of a row that is 0 but at the sorted ``hits`` (where it holds ``scores`` > 0): the best
    hits, then, if fewer than k, the lowest documents scoring 0 (as a dense row ranks them)."""
    out_scores, out_docs = np.zeros(k, dtype=np.float64), np.empty(k, dtype=np.int64)
    found = 0
    if len(hits):
        best_scores, best = top_k_of_block(scores[None, :], k)
        found = best.shape[1]
        out_scores[:found], out_docs[:found] = best_scores[0], hits[best[0]]
    if found < k:
        absent = np.arange(len(hits) + k - found, dtype=np.int64)
        out_docs[found:] = np.setdiff1d(absent, hits, assume_unique=True)[: k - found]
    return out_scores, out_docs


def _top_k_of_row(scores: np.ndarray, k: int) -> TopK:
    """:func:`vinvl.retrieval.topk.top_k_of_block` of one long score row, without a partition of all of it.

    The k-th largest of the row's block maxima is at most the row's k-th largest score, so every
    entry of the top k (ties included) scores at least that much: only those entries are ranked.
    """
    maxima = np.maximum.reduceat(scores, np.arange(0, len(scores), _TOP_K_BLOCK))
    if len(maxima) <= k:
        best_scores, best = top_k_of_block(scores[None, :], k)
        return best_scores[0], best[0]
    floor = -np.partition(-maxima, k - 1)[k - 1]
    if floor <= 0:  # fewer than k blocks hold a hit: few hits, and zero scores may fill the list
        hits = np.flatnonzero(scores)
        return _top_k_of_hits(scores[hits], hits, k)
    kept = np.flatnonzero(scores >= floor)
    best_scores, best = top_k_of_block(scores[kept][None, :], k)
    return best_scores[0], kept[best[0]].astype(np.int64)
