"""Retrieval evaluation: R@K of a model on a corpus, in training and from the ``vinvl eval`` command.

:func:`evaluate_corpus` is what ``RetrievalTrainer.evaluate`` calls: the minival top-20
re-rank setting when the corpus carries its caption index (as the official code evaluates
during training), otherwise the whole split ranked exhaustively or in two stages (a first stage
of :mod:`vinvl.retrieval.first_stage` proposes, the match head re-ranks).

:func:`evaluate_saved_model` (``vinvl eval`` / ``scripts/eval_retrieval.py``) runs the COCO protocols:

- ``coco1k``: COCO 1K reported both ways: the average over consecutive folds of the base image
  set (5 folds of 1000 on the 5K test, the literature's convention) and the single subset of
  ``{split}_img_keys_1k.tsv`` (the official script's). Only the folds' diagonal blocks are
  scored (5 x 1K x 5K pairs, a fifth of the 5K matrix); the subset is taken from them when it
  is one of the folds and scored on its own otherwise.
- ``coco5k``: the whole base image set as one gallery (1K numbers are derived from the same
  matrix at no cost and reported too).
- ``keys``: any key file, as one gallery.
- ``all``: every image of the split (no key file), as one gallery.

The default protocol fits the split: ``coco1k`` for ``test``, ``all`` for any other split.

The base image set is the split restricted to ``{split}_img_keys.tsv`` when that file exists
(``test_img_keys.tsv`` lists the 5K test images), else the whole split. Every metric is a
percentage under the names ``t2i_r1 t2i_r5 t2i_r10 i2t_r1 i2t_r5 i2t_r10 rsum`` (this module is
the one place that maps :mod:`vinvl.retrieval.metrics`' ``i2t_R@1`` style to them).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.formats import DataError, load_image_keys
from ..errors import UsageError
from .distributed import rank
from .engine import RetrievalEngine, RetrievalScores, check_rescore_top, match_probability
from .first_stage import FIRST_STAGES, check_first_stage, resolve_first_stage
from .gallery import Gallery
from .metrics import fold_metrics, i2t_ranks, rerank_metrics, subset_metrics, t2i_ranks, top_k_indices

__all__ = [
    "PROTOCOLS",
    "evaluate_corpus",
    "public_names",
    "score_gallery",
    "ProtocolResult",
    "run_protocol",
    "ranked_results",
    "write_outputs",
    "key_file_path",
    "default_protocol",
    "evaluate_saved_model",
]

PROTOCOLS = ("coco1k", "coco5k", "keys", "all")
RANKED_TOP = 10  # results listed per query in the ranked-results files
DEFAULT_RESCORE_TOP = 20  # below fp32, pairs per query re-scored at fp32: twice R@10's depth (docs/models.md)


def public_names(metrics: Dict[str, float]) -> Dict[str, float]:
    """``i2t_R@1`` -> ``i2t_r1`` (the names the trainer logs and the HTML report reads)."""
    return {name.replace("_R@", "_r"): float(value) for name, value in metrics.items()}


def _check_first_stage(first_stage: str, top_k: int) -> None:
    check_first_stage(first_stage, FIRST_STAGES)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")


def score_gallery(
    engine: RetrievalEngine, gallery: Gallery, first_stage: str = "exhaustive", top_k: int = 16
) -> RetrievalScores:
    """The gallery's score matrices: every pair (``first_stage="exhaustive"``), or the top-k
    candidates of the ``contrastive`` or ``tags`` first stage re-ranked by the match head."""
    _check_first_stage(first_stage, top_k)
    if first_stage == "exhaustive":
        return engine.exhaustive(gallery)
    return engine.two_stage(gallery, k=top_k, first_stage=first_stage)


def evaluate_corpus(
    model: Any,
    processor: Any,
    corpus: Any,
    *,
    first_stage: str = "exhaustive",
    top_k: int = 16,
    batch_size: int = 32,
    use_caption_index: bool = True,
    progress: bool = True,
) -> Dict[str, float]:
    """R@1/5/10 (percent), ``rsum`` and ``pairs_scored`` of ``model`` on ``corpus`` (RetrievalCorpus interface).

    With ``use_caption_index`` and a corpus that has a ``caption_index`` (minival's top-20 hard
    negatives), each image ranks only its listed candidates, as the official code evaluates
    during training: only image-to-text is defined there, so the result holds ``i2t_r1/5/10``
    and ``rsum`` is their sum (comparable between evaluations of one run, not with a full rsum).
    Otherwise every image and caption of the corpus is ranked (``first_stage`` exhaustive, or
    contrastive / tags with ``top_k`` candidates per query) and ``rsum`` sums all six recalls.
    The first stage is used as given (``config.trained_heads`` is not consulted: the trainer
    evaluates heads it is training).
    Under ``paddle.distributed.launch`` the pair work is shared and every rank returns the same.
    """
    _check_first_stage(first_stage, top_k)
    gallery = Gallery.from_corpus(corpus)
    engine = RetrievalEngine(model, processor, batch_size=batch_size, progress=progress)
    if use_caption_index and gallery.candidates is not None:
        candidates = gallery.candidates
        metrics = public_names(rerank_metrics(engine.rerank(gallery), candidates, gallery.caption_to_image))
        metrics["rsum"] = float(sum(metrics.values()))
        rows = np.arange(gallery.num_images)[:, None]
        metrics["pairs_scored"] = float(len(np.unique(rows * gallery.num_captions + candidates)))
        return metrics
    scores = score_gallery(engine, gallery, first_stage, top_k)
    metrics = public_names(scores.metrics(gallery.caption_to_image))
    metrics["pairs_scored"] = float(scores.pairs_scored)
    return metrics


# ----- the COCO protocols ----------------------------------------------------------------


@dataclass
class ProtocolResult:
    """What a protocol run measured.

    ``results``: evaluation name (``1k_5fold``, ``1k_subset``, ``5k``, ``keys``, ``all``) -> metrics.
    ``gallery`` / ``scores``: the gallery whose ranked results are written (the 1K subset for
    coco1k, the whole set otherwise) and its score matrices.
    """

    results: Dict[str, Dict[str, float]]
    gallery: Gallery
    scores: RetrievalScores
    pairs_scored: int
    seconds: float
    pairs_rescored: int = 0


def _metrics(scores: RetrievalScores, caption_to_image: np.ndarray) -> Dict[str, float]:
    return public_names(scores.metrics(caption_to_image))


def _folds(num_images: int, fold_size: int) -> List[np.ndarray]:
    if fold_size <= 0:
        raise UsageError(f"fold_size must be positive, got {fold_size}")
    if num_images < fold_size or num_images % fold_size:
        raise UsageError(
            f"{num_images} images do not split into equal folds of {fold_size} "
            "(COCO 1K: the 5000 test images in 5 folds of 1000); pass --fold_size, or --protocol all for one gallery"
        )
    return [np.arange(start, start + fold_size) for start in range(0, num_images, fold_size)]


def run_protocol(
    engine: RetrievalEngine,
    gallery: Gallery,
    protocol: str,
    *,
    first_stage: str = "exhaustive",
    top_k: int = 16,
    fold_size: int = 1000,
    subset: Optional[np.ndarray] = None,
) -> ProtocolResult:
    """Score ``gallery`` as ``protocol`` asks and compute its metrics.

    ``subset``: gallery indices of the official 1K images (``coco1k`` and ``coco5k``), or None.
    ``fold_size``: images per fold of the 5-fold 1K average (``coco1k`` and ``coco5k``).
    ``first_stage`` / ``top_k``: as :func:`score_gallery` (resolve ``auto`` first with
    :func:`vinvl.retrieval.first_stage.resolve_first_stage`).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    _check_first_stage(first_stage, top_k)
    if protocol == "coco1k":
        return _coco1k(engine, gallery, first_stage, top_k, _folds(gallery.num_images, fold_size), subset)
    scores = score_gallery(engine, gallery, first_stage, top_k)
    c2i = gallery.caption_to_image
    results = {"5k" if protocol == "coco5k" else protocol: _metrics(scores, c2i)}
    if protocol == "coco5k":
        num_folds = len(_folds(gallery.num_images, fold_size))
        results["1k_5fold"] = public_names(fold_metrics(scores.i2t, c2i, num_folds, scores.t2i))
        if subset is not None:
            results["1k_subset"] = public_names(subset_metrics(scores.i2t, c2i, subset, scores.t2i))
    return ProtocolResult(results, gallery, scores, scores.pairs_scored, scores.seconds, scores.pairs_rescored)


def _coco1k(
    engine: RetrievalEngine,
    gallery: Gallery,
    first_stage: str,
    top_k: int,
    folds: List[np.ndarray],
    subset: Optional[np.ndarray],
) -> ProtocolResult:
    """Each fold scored as its own gallery; the official subset reuses a fold holding the same images."""
    per_fold, scored = [], []
    for fold in folds:
        fold_gallery = gallery.subset(fold)
        scores = score_gallery(engine, fold_gallery, first_stage, top_k)
        per_fold.append(_metrics(scores, fold_gallery.caption_to_image))
        scored.append((fold_gallery, scores))
    results = {"1k_5fold": {name: float(np.mean([m[name] for m in per_fold])) for name in per_fold[0]}}
    primary = scored[0]
    if subset is not None:
        same = [s for fold, s in zip(folds, scored) if set(fold.tolist()) == set(subset.tolist())]
        if same:
            primary = same[0]
        else:
            subset_gallery = gallery.subset(subset)
            primary = (subset_gallery, score_gallery(engine, subset_gallery, first_stage, top_k))
            scored.append(primary)
        results["1k_subset"] = _metrics(primary[1], primary[0].caption_to_image)
    pairs = sum(s.pairs_scored for _, s in scored)
    seconds = sum(s.seconds for _, s in scored)
    rescored = sum(s.pairs_rescored for _, s in scored)
    return ProtocolResult(results, primary[0], primary[1], pairs, seconds, rescored)


# ----- ranked results --------------------------------------------------------------------


def ranked_results(gallery: Gallery, scores: RetrievalScores, k: int = RANKED_TOP) -> Tuple[List[dict], List[dict]]:
    """Each image's top-k captions and each caption's top-k images, best first, with ids and scores.

    ``score`` is the match probability and ``margin`` the logit margin the order comes from
    (probabilities of confident pairs saturate to 1.0; equal margins list in gallery order).
    ``gt_rank`` is the 0-based rank of the ground truth (the image's best own caption for an
    image query). Pairs a two-stage search never scored are left out of the lists.
    """
    c2i = gallery.caption_to_image
    number_in_image = np.arange(gallery.num_captions) - gallery.caption_offsets[c2i]
    i2t_rank, t2i_rank = i2t_ranks(scores.i2t, c2i), t2i_ranks(scores.t2i, c2i)

    def caption(c: int) -> dict:
        return {"image_id": gallery.image_ids[c2i[c]], "caption_number": int(number_in_image[c]), "caption": gallery.captions[c]}

    image_queries = []
    for i, row in enumerate(top_k_indices(scores.i2t, k, axis=1)):
        listed = [dict(caption(int(c)), **_scored(scores.i2t[i, c])) for c in row if np.isfinite(scores.i2t[i, c])]
        image_queries.append({"image_id": gallery.image_ids[i], "gt_rank": int(i2t_rank[i]), "top_captions": listed})
    caption_queries = []
    for c, column in enumerate(top_k_indices(scores.t2i, k, axis=0)):
        listed = [
            {"image_id": gallery.image_ids[int(i)], **_scored(scores.t2i[i, c])}
            for i in column
            if np.isfinite(scores.t2i[i, c])
        ]
        caption_queries.append(dict(caption(c), gt_rank=int(t2i_rank[c]), top_images=listed))
    return image_queries, caption_queries


def _scored(margin: float) -> Dict[str, float]:
    return {"score": float(match_probability(margin)), "margin": float(margin)}


def _write_jsonl(path: str, rows: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_outputs(output_dir: str, report: Dict[str, Any], result: ProtocolResult) -> List[str]:
    """``metrics.json``, ``ranked_i2t.jsonl`` and ``ranked_t2i.jsonl`` in ``output_dir``; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, name) for name in ("metrics.json", "ranked_i2t.jsonl", "ranked_t2i.jsonl")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    image_queries, caption_queries = ranked_results(result.gallery, result.scores)
    _write_jsonl(paths[1], image_queries)
    _write_jsonl(paths[2], caption_queries)
    return paths


# ----- a saved model on a data directory (``vinvl eval``) ----------------------------------------


def key_file_path(data_dir: str, name: str) -> str:
    """The absolute path of a key file given as a path (relative to the current directory) or a name in data_dir."""
    return os.path.abspath(name if os.path.isfile(name) else os.path.join(data_dir, name))


def default_protocol(split: str) -> str:
    """The protocol that fits a split: ``coco1k`` for ``test``, ``all`` for any other."""
    return "coco1k" if split == "test" else "all"


def _load_gallery(
    data_dir: str, split: str, protocol: str, features_dir: Optional[str], keys_file: Optional[str],
    fold_size: Optional[int], add_od_labels: bool,
) -> Tuple[Gallery, Optional[np.ndarray], int]:
    """The base gallery, the official 1K subset's indices in it (or None) and the fold size."""
    from ..data import load_corpus

    if protocol == "keys":
        keys_file = key_file_path(data_dir, keys_file)
    elif protocol == "all":
        keys_file = None
    else:
        default_keys = os.path.abspath(os.path.join(data_dir, f"{split}_img_keys.tsv"))
        keys_file = default_keys if os.path.isfile(default_keys) else None
    corpus = load_corpus(
        data_dir, split, features_dir=features_dir, add_od_labels=add_od_labels,
        eval_img_keys_file=keys_file, use_caption_index=False,
    )
    gallery = Gallery.from_corpus(corpus)
    if protocol in ("keys", "all"):
        return gallery, None, 0
    subset_file = os.path.join(data_dir, f"{split}_img_keys_1k.tsv")
    subset = None
    if os.path.isfile(subset_file):
        keys = load_image_keys(subset_file)
        unknown = [k for k in keys if k not in set(gallery.image_ids)]
        if unknown:
            raise DataError(f"{subset_file}: image {unknown[0]} is not in the evaluated set ({len(unknown)} unknown ids)")
        subset = gallery.index_of(keys)
    return gallery, subset, fold_size or (len(subset) if subset is not None else 1000)


def evaluate_saved_model(
    model_dir: str,
    data_dir: str,
    *,
    split: str = "test",
    protocol: Optional[str] = None,
    features_dir: Optional[str] = None,
    keys_file: Optional[str] = None,
    fold_size: Optional[int] = None,
    first_stage: str = "exhaustive",
    candidates: int = 128,
    batch_size: int = 128,
    add_od_labels: bool = True,
    progress: bool = True,
    precision: str = "fp32",
    rescore_top: int = DEFAULT_RESCORE_TOP,
) -> Tuple[Dict[str, Any], ProtocolResult]:
    """Score the saved model of ``model_dir`` on ``split`` of ``data_dir`` as ``protocol`` asks
    (default: :func:`default_protocol`); returns the report (``metrics.json``) and the result.

    ``keys_file``: the key file of the ``keys`` protocol (a path, or a file name in ``data_dir``).
    ``fold_size``: images per 1K fold (default: the size of ``{split}_img_keys_1k.tsv``, else 1000).
    ``first_stage``: as :func:`resolve_first_stage` (``auto`` resolved against the model's config),
    with ``candidates`` per query. ``precision``: of the match head's pair forward
    (:mod:`vinvl.oscar.inference`; the first stage's embeddings stay fp32), checked before the
    model loads; below fp32, each query's ``rescore_top`` best pairs are scored again at fp32 on
    Paddle Inference on the CPU (:class:`RetrievalEngine`; 0: none). Under
    ``paddle.distributed.launch`` the pair work is shared and every rank returns the same.
    """
    import paddle.distributed as dist

    from ..oscar.inference import export_match_head, match_scorer
    from ..oscar.model_dir import load_retrieval_model
    from ..precision import check_precision

    check_precision(precision)
    check_rescore_top(rescore_top)
    protocol = protocol or default_protocol(split)
    distributed = int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_parallel_env()
    model, processor = load_retrieval_model(model_dir)
    model.eval()
    rescore_top = int(rescore_top) if precision != "fp32" else 0
    rescore_model = None
    if precision != "fp32":
        exports = (precision, "fp32") if rescore_top else (precision,)
        if distributed:  # one rank exports, the others wait for it and load it
            if rank() == 0:
                for export in exports:
                    export_match_head(model, model_dir, export)
            dist.barrier()
        if rescore_top:  # fp32 on Paddle Inference: the model's margins to float rounding, faster (docs/benchmarks.md)
            rescore_model = match_scorer(model, model_dir, "fp32")
        model = match_scorer(model, model_dir, precision)
    first_stage = resolve_first_stage(first_stage, model.config)
    gallery, subset, fold_size = _load_gallery(data_dir, split, protocol, features_dir, keys_file, fold_size, add_od_labels)
    engine = RetrievalEngine(
        model, processor, batch_size=batch_size, progress=progress, rescore_model=rescore_model, rescore_top=rescore_top,
    )
    start = time.perf_counter()
    result = run_protocol(
        engine, gallery, protocol, first_stage=first_stage, top_k=candidates, fold_size=fold_size, subset=subset
    )
    report = {
        "protocol": protocol,
        "split": split,
        "first_stage": first_stage,
        "candidates": candidates if first_stage != "exhaustive" else None,
        "model_dir": os.path.abspath(model_dir),
        "precision": precision,
        "rescore_top": rescore_top,
        "num_images": gallery.num_images,
        "num_captions": gallery.num_captions,
        "fold_size": fold_size if protocol in ("coco1k", "coco5k") else None,
        "results": result.results,
        "pairs_scored": result.pairs_scored,
        "pairs_rescored": result.pairs_rescored,
        "scoring_seconds": round(result.seconds, 3),
        "pairs_per_second": round(result.pairs_scored / max(result.seconds, 1e-9), 1),
        "wall_seconds": round(time.perf_counter() - start, 3),
    }
    return report, result
