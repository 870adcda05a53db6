"""Exact first-stage top-k over embeddings too large for memory, and the merge of partial top-k lists.

One rule orders results everywhere: higher score first, then the lower global image index.
:func:`merge_top_k` applies it to partial lists (the chunks of one memory-mapped matrix, or the
answers of several index shards), so the chunked search, a sharded search and a plain argsort
over the full score matrix give the same list, ties included.

A partial list may be shorter than k (a shard holding fewer than k images) and may hold padding
entries (index ``-1``, score ``-inf``) that mean "no result"; the merged list has
``min(k, columns)`` columns and pads the rows that have fewer real results.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

__all__ = ["DEFAULT_CHUNK_ROWS", "PAD_INDEX", "TopK", "exact_top_k", "merge_top_k", "top_k", "top_k_of_block"]

DEFAULT_CHUNK_ROWS = 65536  # embedding rows scored at once: 64 MB of a 256-d float32 matrix
MAX_BLOCK_CELLS = 1 << 24  # query x row scores held at once (64 MB of float32)
PAD_INDEX = -1

TopK = Tuple[np.ndarray, np.ndarray]  # (scores [Q, k] float32 or float64, global indices [Q, k] int64)


def merge_top_k(parts: Iterable[TopK], k: int) -> TopK:
    """The global top-``k`` of partial top-k lists of the same queries.

    Each part is ``(scores [Q, k_i], indices [Q, k_i])`` with global indices (``-1`` = padding);
    parts must not share an index. Rows are ordered by score descending, ties by lower index.
    """
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    parts = [(np.asarray(s), np.asarray(i, dtype=np.int64)) for s, i in parts]
    if not parts:
        raise ValueError("merge_top_k needs at least one partial result")
    num_queries = parts[0][0].shape[0]
    for n, (scores, indices) in enumerate(parts):
        if scores.ndim != 2 or scores.shape != indices.shape or scores.shape[0] != num_queries:
            raise ValueError(
                f"part {n}: scores {list(scores.shape)} and indices {list(indices.shape)} must both be "
                f"[{num_queries} queries, k_i]"
            )
        if np.isnan(scores).any():
            raise ValueError(f"part {n}: scores contain NaN")
    dtype = np.result_type(np.float32, *[s.dtype for s, _ in parts])  # float64 scores stay exact
    scores = np.concatenate([s.astype(dtype, copy=False) for s, _ in parts], axis=1)
    indices = np.concatenate([i for _, i in parts], axis=1)
    padding = indices < 0
    order = np.lexsort((np.where(padding, np.iinfo(np.int64).max, indices), -scores, padding), axis=1)
    order = order[:, : min(k, scores.shape[1])]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_indices = np.take_along_axis(indices, order, axis=1)
    pad = np.take_along_axis(padding, order, axis=1)
    top_scores[pad], top_indices[pad] = -np.inf, PAD_INDEX
    return top_scores, top_indices


def top_k_of_block(scores: np.ndarray, k: int, offset: int = 0) -> TopK:
    """The top-``k`` of a score block ``[Q, N]`` whose column ``j`` is global index ``offset + j``.

    ``argpartition`` keeps the work linear in N; every column tied with the k-th best score is
    kept as a candidate so the tie rule (lower index first) decides, not the partition's order.
    """
    scores = np.asarray(scores)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float32)
    num_queries, width = scores.shape
    columns = np.arange(offset, offset + width, dtype=np.int64)
    if width <= k:
        return merge_top_k([(scores, np.broadcast_to(columns, scores.shape))], k)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # [Q, 1] k-th best score per row
    rows, cols = np.nonzero(scores >= kth)
    counts = np.bincount(rows, minlength=num_queries)
    width_kept = int(counts.max())
    kept_scores = np.full((num_queries, width_kept), -np.inf, dtype=scores.dtype)
    kept_indices = np.full((num_queries, width_kept), PAD_INDEX, dtype=np.int64)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    kept_scores[rows, slot] = scores[rows, cols]
    kept_indices[rows, slot] = columns[cols]
    return merge_top_k([(kept_scores, kept_indices)], k)


def top_k(scores: np.ndarray, k: int) -> TopK:
    """Each row's ``min(k, N)`` best columns of ``scores [Q, N]``: (scores, columns), best first, ties to the lower column.

    The one top-k of the project: first stages, evaluation listings, the query core and the index
    all order results with it (or with :func:`merge_top_k`, which applies the same rule).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return top_k_of_block(np.atleast_2d(scores), int(k))


def exact_top_k(
    embeddings: np.ndarray,
    queries: np.ndarray,
    k: int,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    rows: Optional[Tuple[int, int]] = None,
    progress: bool = False,
) -> TopK:
    """Exact top-``k`` inner products of ``queries [Q, E]`` against ``embeddings [N, E]``.

    ``embeddings`` may be a memory map: it is read ``chunk_rows`` rows at a time, so memory holds
    one ``[Q, chunk_rows]`` score block and the running ``[Q, k]`` answer, never the matrix.
    ``rows=(start, stop)`` limits the search to that range (one shard's images); indices stay global.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if queries.shape[1] != embeddings.shape[1]:
        raise ValueError(f"queries are {queries.shape[1]}-d but the embeddings are {embeddings.shape[1]}-d")
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    start, stop = rows if rows is not None else (0, len(embeddings))
    if not 0 <= start <= stop <= len(embeddings):
        raise ValueError(f"rows {rows} are outside 0..{len(embeddings)}")
    best = (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))
    if len(queries) == 0:
        return best
    chunks = range(start, stop, chunk_rows)
    query_step = max(1, MAX_BLOCK_CELLS // max(1, min(chunk_rows, stop - start)))
    for lo in tqdm(chunks, desc="exact top-k", unit="chunk", disable=not progress):
        hi = min(lo + chunk_rows, stop)
        rows = np.asarray(embeddings[lo:hi], dtype=np.float32)
        parts = [top_k_of_block(queries[q : q + query_step] @ rows.T, k, offset=lo) for q in range(0, len(queries), query_step)]
        block_best = (np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts]))
        best = merge_top_k([best, block_best], k)
    return best
