"""Ranks and recall@K of image-text retrieval, vectorised over whole score matrices.

A score matrix is float32 ``[I, C]``: row = image, column = caption, higher = better match;
``caption_to_image [C]`` names each caption's ground-truth image. Non-candidates of a
two-stage search hold ``-inf`` so they rank below every candidate.

Tie convention (pessimistic): a query's rank is the number of wrong candidates scoring
greater than **or equal to** its ground truth (0-based). Ties therefore never help, the result
does not depend on the order of the gallery, and a model that gives every pair the same score
gets recall 0 rather than a flattering one. For image-to-text the ground truth is the image's
best-scoring caption and its other captions are not counted against it.

COCO 1K is reported two ways: :func:`fold_metrics` averages the metrics of 5 consecutive
1000-image folds of the 5K test (the literature's convention) and :func:`subset_metrics`
evaluates one given set of images (the official script's ``test_img_keys_1k.tsv``).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np

from .topk import top_k_of_block

__all__ = [
    "i2t_ranks",
    "t2i_ranks",
    "candidate_i2t_ranks",
    "recall_at_k",
    "retrieval_metrics",
    "rerank_metrics",
    "fold_metrics",
    "subset_metrics",
    "subset_scores",
    "top_k_indices",
    "coverage",
    "first_stage_coverage",
    "scored_coverage",
    "two_stage_coverage",
    "right_answer_coverage",
    "DEFAULT_KS",
    "COVERAGE_TOPS",
]

DEFAULT_KS = (1, 5, 10)
COVERAGE_TOPS = (1, 10)
_CHUNK_CELLS = 1 << 24  # bounds the [rows, C] comparison temporaries to ~16M booleans


def _check(scores: np.ndarray, caption_to_image: np.ndarray) -> tuple:
    scores = np.asarray(scores)
    caption_to_image = np.asarray(caption_to_image, dtype=np.int64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D [images, captions] matrix, got shape {list(scores.shape)}")
    num_images, num_captions = scores.shape
    if caption_to_image.shape != (num_captions,):
        raise ValueError(
            f"caption_to_image has shape {list(caption_to_image.shape)}; expected [{num_captions}] (one per column)"
        )
    if num_captions == 0 or num_images == 0:
        raise ValueError(f"cannot rank an empty score matrix of shape {list(scores.shape)}")
    if caption_to_image.min() < 0 or caption_to_image.max() >= num_images:
        raise ValueError(f"caption_to_image must index the {num_images} images (0..{num_images - 1})")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; non-candidates must be -inf")
    return scores, caption_to_image


def _row_chunks(rows: int, cols: int):
    step = max(1, _CHUNK_CELLS // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def i2t_ranks(scores: np.ndarray, caption_to_image: np.ndarray) -> np.ndarray:
    """Image-to-text rank ``[I]`` of each image: where its best caption lands among all captions.

    Raises if an image has no caption (its rank would be undefined).
    """
    scores, caption_to_image = _check(scores, caption_to_image)
    num_images, num_captions = scores.shape
    counts = np.bincount(caption_to_image, minlength=num_images)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"image-to-text ranks need >= 1 caption per image; images {missing} have none")
    own = scores[caption_to_image, np.arange(num_captions)]
    best = np.full(num_images, -np.inf, dtype=own.dtype)
    np.maximum.at(best, caption_to_image, own)
    at_least_best = np.empty(num_images, dtype=np.int64)
    for rows in _row_chunks(num_images, num_captions):
        at_least_best[rows] = (scores[rows] >= best[rows, None]).sum(axis=1)
    positives_at_least_best = np.bincount(caption_to_image, weights=own >= best[caption_to_image], minlength=num_images)
    return at_least_best - positives_at_least_best.astype(np.int64)


def t2i_ranks(scores: np.ndarray, caption_to_image: np.ndarray) -> np.ndarray:
    """Text-to-image rank ``[C]`` of each caption: where its image lands among all images."""
    scores, caption_to_image = _check(scores, caption_to_image)
    num_images, num_captions = scores.shape
    own = scores[caption_to_image, np.arange(num_captions)]
    ranks = np.empty(num_captions, dtype=np.int64)
    for cols in _row_chunks(num_captions, num_images):
        ranks[cols] = (scores[:, cols] >= own[None, cols]).sum(axis=0) - 1
    return ranks


def candidate_i2t_ranks(
    candidate_scores: np.ndarray, candidates: np.ndarray, caption_to_image: np.ndarray
) -> np.ndarray:
    """Image-to-text ranks when each image is ranked against its own listed captions only.

    The official minival re-rank setting: ``candidates [I, K]`` holds each image's K caption
    indices (e.g. its top-20 hard negatives plus positives) and ``candidate_scores [I, K]``
    their scores. An image none of whose candidates is its own caption gets rank K (a miss),
    as in the official code.
    """
    candidate_scores = np.asarray(candidate_scores)
    candidates = np.asarray(candidates, dtype=np.int64)
    caption_to_image = np.asarray(caption_to_image, dtype=np.int64)
    if candidate_scores.ndim != 2 or candidate_scores.shape != candidates.shape:
        raise ValueError(
            f"candidate_scores {list(candidate_scores.shape)} and candidates {list(candidates.shape)} "
            "must be the same [images, K] shape"
        )
    if candidates.size and (candidates.min() < 0 or candidates.max() >= len(caption_to_image)):
        raise ValueError(f"candidates must index the {len(caption_to_image)} captions")
    if np.isnan(candidate_scores).any():
        raise ValueError("candidate_scores contain NaN")
    num_images, k = candidates.shape
    positive = caption_to_image[candidates] == np.arange(num_images)[:, None]
    best = np.where(positive, candidate_scores, -np.inf).max(axis=1, initial=-np.inf)
    ranks = ((candidate_scores >= best[:, None]) & ~positive).sum(axis=1)
    return np.where(positive.any(axis=1), ranks, k).astype(np.int64)


def top_k_indices(scores: np.ndarray, k: int, axis: int = 1) -> np.ndarray:
    """The k best candidates of each query, best first, for writing ranked results.

    ``axis=1``: each image's top captions ``[I, k]``; ``axis=0``: each caption's top images
    ``[C, k]``. Equal scores are listed in candidate-index order (the one rule of
    :mod:`vinvl.retrieval.topk`), so the listing is deterministic; ``-inf`` non-candidates come last.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (per caption) or 1 (per image), got {axis}")
    matrix = np.asarray(scores)
    matrix = matrix if axis == 1 else matrix.T
    k = min(k, matrix.shape[1])
    out = np.empty((matrix.shape[0], k), dtype=np.int64)
    for rows in _row_chunks(*matrix.shape):
        out[rows] = top_k_of_block(matrix[rows], k)[1]
    return out


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> Dict[int, float]:
    """Percentage of queries whose (0-based) rank is below K, for each K."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to compute recall from")
    return {int(k): float(100.0 * np.mean(ranks < k)) for k in ks}


def _named(direction: str, recalls: Dict[int, float]) -> Dict[str, float]:
    return {f"{direction}_R@{k}": v for k, v in recalls.items()}


def retrieval_metrics(
    i2t_scores: np.ndarray,
    caption_to_image: np.ndarray,
    t2i_scores: Optional[np.ndarray] = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> Dict[str, float]:
    """R@K in percent for image-to-text (``i2t_R@K``) and text-to-image (``t2i_R@K``), plus ``rsum``.

    ``t2i_scores`` defaults to ``i2t_scores``; pass both when the two directions were scored
    on different candidate sets (two-stage retrieval).
    """
    t2i_scores = i2t_scores if t2i_scores is None else t2i_scores
    if np.shape(t2i_scores) != np.shape(i2t_scores):
        raise ValueError(f"i2t scores {list(np.shape(i2t_scores))} and t2i scores {list(np.shape(t2i_scores))} differ")
    out = _named("i2t", recall_at_k(i2t_ranks(i2t_scores, caption_to_image), ks))
    out.update(_named("t2i", recall_at_k(t2i_ranks(t2i_scores, caption_to_image), ks)))
    out["rsum"] = float(sum(out.values()))
    return out


def rerank_metrics(
    candidate_scores: np.ndarray,
    candidates: np.ndarray,
    caption_to_image: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> Dict[str, float]:
    """Image-to-text R@K (percent) of the minival re-rank setting (see :func:`candidate_i2t_ranks`)."""
    return _named("i2t", recall_at_k(candidate_i2t_ranks(candidate_scores, candidates, caption_to_image), ks))


def subset_scores(
    scores: np.ndarray, caption_to_image: np.ndarray, images: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The sub-matrix of the given images and their captions, with ``caption_to_image`` renumbered.

    Images keep the given order; captions keep their column order.
    """
    images = np.asarray(images, dtype=np.int64)
    caption_to_image = np.asarray(caption_to_image, dtype=np.int64)
    num_images = np.shape(scores)[0]
    if images.size == 0:
        raise ValueError("the image subset is empty")
    if images.min() < 0 or images.max() >= num_images or len(np.unique(images)) != len(images):
        raise ValueError(f"subset images must be distinct indices below {num_images}")
    new_index = np.full(num_images, -1, dtype=np.int64)
    new_index[images] = np.arange(len(images))
    columns = np.flatnonzero(new_index[caption_to_image] >= 0)
    return np.asarray(scores)[np.ix_(images, columns)], new_index[caption_to_image[columns]]


def subset_metrics(
    i2t_scores: np.ndarray,
    caption_to_image: np.ndarray,
    images: Sequence[int],
    t2i_scores: Optional[np.ndarray] = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> Dict[str, float]:
    """:func:`retrieval_metrics` restricted to the given images and their captions (e.g. the official 1K keys)."""
    i2t, sub_index = subset_scores(i2t_scores, caption_to_image, images)
    t2i = None if t2i_scores is None else subset_scores(t2i_scores, caption_to_image, images)[0]
    return retrieval_metrics(i2t, sub_index, t2i, ks)


def fold_metrics(
    i2t_scores: np.ndarray,
    caption_to_image: np.ndarray,
    num_folds: int = 5,
    t2i_scores: Optional[np.ndarray] = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> Dict[str, float]:
    """Metrics averaged over ``num_folds`` consecutive, equal image folds (COCO 1K = 5 folds of the 5K test).

    Each fold is ranked against its own images and captions only.
    """
    num_images = np.shape(i2t_scores)[0]
    if num_folds <= 0 or num_images % num_folds:
        raise ValueError(f"{num_images} images do not split into {num_folds} equal folds")
    size = num_images // num_folds
    folds = [
        subset_metrics(i2t_scores, caption_to_image, np.arange(f * size, (f + 1) * size), t2i_scores, ks)
        for f in range(num_folds)
    ]
    return {name: float(np.mean([fold[name] for fold in folds])) for name in folds[0]}


def coverage(scores: np.ndarray, candidates: np.ndarray, top: int = 1, axis: int = 1) -> float:
    """Fraction of queries whose exhaustive top-``top`` answers are all among their first-stage candidates.

    ``scores [I, C]`` are exhaustive scores; ``axis=1`` takes images as queries (rows, with
    ``candidates [I, k]`` caption indices), ``axis=0`` captions (columns, ``candidates [C, k]``
    image indices). A query's top-``top`` answers are every item scoring at least its
    ``top``-th best score, ties included, so the result does not depend on how ties fall.

    This measures a first stage against the re-ranker whatever the re-ranker's quality: a
    query whose top-n is covered gets the same rank, if below n, from two-stage as from
    exhaustive scoring (two-stage scores the same pairs with the same model), so at coverage
    1.0 for ``top=1`` two-stage R@1 equals exhaustive R@1, and for ``top=10`` every R@K with
    K <= 10 does. (Exactly, on equal scores; the engine's scores of a pair differ between
    batches by float noise, ~1e-6, which matters only for pairs that close.)
    """
    matrix = _query_rows(scores, axis)
    candidates = np.asarray(candidates, dtype=np.int64)
    num_queries, num_items = matrix.shape
    if candidates.ndim != 2 or len(candidates) != num_queries:
        raise ValueError(f"candidates must be [{num_queries}, k] item indices, got shape {list(candidates.shape)}")
    if candidates.size and (candidates.min() < 0 or candidates.max() >= num_items):
        raise ValueError(f"candidates must index the {num_items} items of a query")

    def proposed(rows: slice) -> np.ndarray:
        mask = np.zeros((len(candidates[rows]), num_items), dtype=bool)
        np.put_along_axis(mask, candidates[rows], True, axis=1)
        return mask

    return _covered_fraction(matrix, top, proposed)


def scored_coverage(scores: np.ndarray, scored: np.ndarray, top: int = 1, axis: int = 1) -> float:
    """:func:`coverage` of the pairs a query ranks: ``scored [I, C]`` is True where a pair was scored.

    Two-stage ranks every scored pair in both directions, so an image query ranks its own
    candidates and the captions whose candidates hold it
    (:meth:`vinvl.retrieval.first_stage.Candidates.scored`); this is the coverage that decides
    its two-stage ranks.
    """
    matrix = _query_rows(scores, axis)
    mask = np.asarray(scored, dtype=bool)
    if mask.shape != np.shape(scores):
        raise ValueError(f"scored must be a {list(np.shape(scores))} mask, got shape {list(mask.shape)}")
    mask = mask if axis == 1 else mask.T
    return _covered_fraction(matrix, top, lambda rows: mask[rows])


def right_answer_coverage(scores: np.ndarray, scored: np.ndarray, right: np.ndarray, axis: int = 1) -> float:
    """:func:`scored_coverage` of top-1 over only the queries whose exhaustive top-1 is a right answer.

    ``right [I, C]`` is True where a pair is a right answer (known by construction in a
    synthetic corpus, :func:`vinvl.data.synthetic.right_answers`; real data knows only each
    caption's own image). A weak re-ranker's top-1 is often wrong, and plain coverage then asks
    the first stage to propose the re-ranker's mistakes too; this asks only that it keeps the
    answers the re-ranker gets right. A query counts when all its top answers (ties included)
    are right, and is covered when they are all scored too, so this is
    ``scored_coverage(scored & right) / scored_coverage(right)``; NaN when no top-1 is right.
    """
    right = np.asarray(right, dtype=bool)
    if right.shape != np.shape(scores):
        raise ValueError(f"right must be a {list(np.shape(scores))} mask, got shape {list(right.shape)}")
    counted = scored_coverage(scores, right, 1, axis)
    if counted == 0.0:
        return float("nan")
    return scored_coverage(scores, np.asarray(scored, dtype=bool) & right, 1, axis) / counted


def _query_rows(scores: np.ndarray, axis: int) -> np.ndarray:
    """Exhaustive ``scores [I, C]`` with one query per row (``axis=0``: captions), checked."""
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (caption queries) or 1 (image queries), got {axis}")
    matrix = np.asarray(scores)
    if matrix.ndim != 2:
        raise ValueError(f"scores must be a 2-D [images, captions] matrix, got shape {list(matrix.shape)}")
    if not np.isfinite(matrix).all():
        raise ValueError("coverage needs exhaustive scores: every pair finite")
    return matrix if axis == 1 else matrix.T


def _covered_fraction(matrix: np.ndarray, top: int, proposed: Callable[[slice], np.ndarray]) -> float:
    """Fraction of rows whose top-``top`` items (ties included) all lie in ``proposed(rows)``."""
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top <= 0:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    num_queries, num_items = matrix.shape
    nth = min(top, num_items)
    covered = np.empty(num_queries, dtype=bool)
    for rows in _row_chunks(num_queries, num_items):
        block = matrix[rows]
        threshold = -np.partition(-block, nth - 1, axis=1)[:, nth - 1]
        answers = block >= threshold[:, None]
        covered[rows] = ~(answers & ~proposed(rows)).any(axis=1)
    return float(covered.mean())


def first_stage_coverage(
    scores: np.ndarray, i2t_candidates: np.ndarray, t2i_candidates: np.ndarray, tops: Sequence[int] = COVERAGE_TOPS
) -> Dict[str, float]:
    """:func:`coverage` of a first stage's candidates both ways: ``i2t_top1``, ``t2i_top1``, ``i2t_top10`` ...

    ``i2t_candidates [I, k]`` are each image's candidate captions and ``t2i_candidates [C, k]``
    each caption's candidate images (e.g. a :class:`vinvl.retrieval.first_stage.Candidates`);
    values are fractions in [0, 1].
    """
    out = {}
    for top in tops:
        out[f"i2t_top{top}"] = coverage(scores, i2t_candidates, top, axis=1)
        out[f"t2i_top{top}"] = coverage(scores, t2i_candidates, top, axis=0)
    return out


def two_stage_coverage(
    scores: np.ndarray, scored: np.ndarray, tops: Sequence[int] = COVERAGE_TOPS
) -> Dict[str, float]:
    """:func:`scored_coverage` both ways, keyed as :func:`first_stage_coverage` is."""
    out = {}
    for top in tops:
        out[f"i2t_top{top}"] = scored_coverage(scores, scored, top, axis=1)
        out[f"t2i_top{top}"] = scored_coverage(scores, scored, top, axis=0)
    return out
