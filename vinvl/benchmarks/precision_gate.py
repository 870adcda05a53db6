"""The precisions' fidelity gate (issue 23): each precision's ranking of a 1K-image x 5K-caption
gallery against fp32's, on a trained tiny stand-in.

The stand-in is the shipped tiny config trained on a synthetic corpus
(:func:`vinvl.benchmarks.measure.train_tiny`, ``train_images`` training images); the gallery is
the corpus' test split (``images`` images, 5 captions each). The ranking is sampled:
``caption_queries`` captions each ranked over every image and ``image_queries`` images each
ranked over every caption, the same queries for every precision; when they are every caption and
every image, each pair is scored once (the exhaustive ranking: 5M pairs per precision at 1K x 5K).
Precisions: fp32 (Paddle Inference, the reference), bf16, int8 dynamic (before the model is
calibrated) and int8 static (after ``vinvl calibrate``'s calibration on the gallery,
:data:`vinvl.retrieval.calibration.DEFAULT_PAIRS` pairs); each low precision also with every
query's :data:`~vinvl.retrieval.evaluate.DEFAULT_RESCORE_TOP` best pairs scored again at fp32 on
Paddle Inference, as ``vinvl eval`` does below fp32 (:class:`vinvl.retrieval.RetrievalEngine`).

Per precision and direction: top-1 agreement (the share of queries whose best answer is fp32's;
where fp32's best margin is exactly tied, any tied answer agrees), the mean overlap of the top-10
lists, R@1/5/10 and their difference from fp32's (ties counted against the ground truth, as
:mod:`vinvl.retrieval.metrics` does), and the largest and rms margin error relative to the std
of the fp32 margins. The gate: top-1 agreement at least :data:`GATE_TOP1` both ways and every
R@K within :data:`GATE_RECALL_POINTS` points.

The work directory keeps the corpus and the model trained on it, one folder per corpus
(``train_results.json``, written by the Trainer after the weights, marks a finished training),
for the next run to reuse.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

__all__ = ["GATE_TOP1", "GATE_RECALL_POINTS", "GateSettings", "run_gate", "format_gate"]

GATE_TOP1 = 0.99
GATE_RECALL_POINTS = 0.2
PRECISIONS = ("fp32", "bf16", "int8 dynamic", "int8 static")
KS = (1, 5, 10)


@dataclass(frozen=True)
class GateSettings:
    """Where the corpus and the stand-in live, how long it trains, the gallery and the sample."""

    work_dir: str
    train_steps: int = 3000
    train_images: int = 4000
    images: int = 1000
    caption_queries: int = 300
    image_queries: int = 100
    seed: int = 0


def _stand_in(settings: GateSettings) -> Tuple[str, str]:
    """(trained model directory, corpus directory), made unless a finished run left them."""
    from ..data import write_synthetic_corpus
    from .measure import train_tiny

    # one folder per corpus, so a model is reused only with the corpus it was trained on
    root = os.path.join(settings.work_dir, f"stand-in-{settings.train_images}-{settings.images}-{settings.seed}")
    corpus = os.path.join(root, "corpus")
    if not os.path.isdir(corpus):
        splits = {"train": settings.train_images, "minival": 0, "val": 0, "test": settings.images}
        write_synthetic_corpus(corpus, splits, seed=settings.seed)
    model_dir = os.path.join(root, f"tiny-trained-{settings.train_steps}")
    if not os.path.isfile(os.path.join(model_dir, "train_results.json")):
        train_tiny(root, corpus, settings.train_steps, settings.seed)
    return model_dir, corpus


def _scores(engine, gallery, queries: Tuple[np.ndarray, np.ndarray]) -> Tuple[np.ndarray, np.ndarray, float, int]:
    """Margins ``[caption query, image]`` and ``[image query, caption]``, the seconds they took and
    the pairs scored. When the queries are every caption and every image, each pair is scored once."""
    captions, images = queries
    num_images, num_captions = gallery.num_images, gallery.num_captions
    if _every_query(gallery, queries):
        scores = engine.exhaustive(gallery)
        return scores.t2i.T, scores.i2t, scores.seconds, scores.pairs_scored
    start = time.perf_counter()
    t2i = engine.score_pairs(gallery, np.tile(np.arange(num_images), len(captions)), np.repeat(captions, num_images))
    i2t = engine.score_pairs(gallery, np.repeat(images, num_captions), np.tile(np.arange(num_captions), len(images)))
    seconds = time.perf_counter() - start
    return t2i.reshape(len(captions), num_images), i2t.reshape(len(images), num_captions), seconds, t2i.size + i2t.size


def _rescored(engine, gallery, queries, t2i: np.ndarray, i2t: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float, int]:
    """``t2i`` / ``i2t`` with each query's top pairs scored again at fp32 (``engine.rescore``), the
    seconds that took and the pairs it scored."""
    captions, images = queries
    start = time.perf_counter()
    if _every_query(gallery, queries):  # one matrix, both directions
        scores = i2t.copy()
        pairs = engine.rescore(gallery, scores)
        return scores.T, scores, time.perf_counter() - start, pairs
    none = np.zeros(0, dtype=np.int64)
    by_caption = np.full((gallery.num_images, gallery.num_captions), -np.inf, dtype=np.float32)
    by_caption[:, captions] = t2i.T
    pairs = engine.rescore(gallery, by_caption, images=none, captions=captions)
    by_image = np.full((gallery.num_images, gallery.num_captions), -np.inf, dtype=np.float32)
    by_image[images] = i2t
    pairs += engine.rescore(gallery, by_image, images=images, captions=none)
    return by_caption[:, captions].T, by_image[images], time.perf_counter() - start, pairs


def _every_query(gallery, queries: Tuple[np.ndarray, np.ndarray]) -> bool:
    return len(queries[0]) == gallery.num_captions and len(queries[1]) == gallery.num_images


def _recall(rows: np.ndarray, truth: np.ndarray) -> List[float]:
    """R@K (percent) of each row's answers ``truth`` (bool, same shape), ties counted against it."""
    best = np.where(truth, rows, -np.inf).max(1, keepdims=True)
    rank = ((rows > best) | ((rows == best) & ~truth)).sum(1)
    return [float(100 * np.mean(rank < k)) for k in KS]


def _direction(rows: np.ndarray, reference: np.ndarray, truth: np.ndarray) -> Dict[str, Any]:
    top = reference.max(1)
    best = rows.argmax(1)
    k = 10
    ours = np.argsort(-rows, 1, kind="stable")[:, :k]
    theirs = np.argsort(-reference, 1, kind="stable")[:, :k]
    recall, reference_recall = _recall(rows, truth), _recall(reference, truth)
    return {
        "top1": float(np.mean(reference[np.arange(len(rows)), best] == top)),
        "top10_overlap": float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs)])),
        "fp32_ties": int(((reference == top[:, None]).sum(1) > 1).sum()),
        "recall": recall,
        "recall_difference": max(abs(a - b) for a, b in zip(recall, reference_recall)),
    }


def run_gate(settings: GateSettings) -> Dict[str, Any]:
    """Train (or reuse) the stand-in, score the sampled ranking at every precision; the report."""
    from ..data import load_corpus
    from ..oscar.calibration import CALIBRATION_DIR
    from ..oscar.inference import load_scorer
    from ..precision import check_precision
    from ..retrieval import Gallery, RetrievalEngine
    from ..retrieval.calibration import DEFAULT_PAIRS, calibrate
    from ..retrieval.evaluate import DEFAULT_RESCORE_TOP

    for precision in ("bf16", "int8"):
        check_precision(precision)  # refuse at once on a CPU without the instructions
    report: Dict[str, Any] = {"settings": asdict(settings), "load_before": os.getloadavg()[0]}
    model_dir, corpus = _stand_in(settings)
    gallery = Gallery.from_corpus(load_corpus(corpus, "test"))
    rng = np.random.default_rng(settings.seed)
    queries = (
        np.sort(rng.choice(gallery.num_captions, min(settings.caption_queries, gallery.num_captions), replace=False)),
        np.sort(rng.choice(gallery.num_images, min(settings.image_queries, gallery.num_images), replace=False)),
    )
    truth = (
        gallery.caption_to_image[queries[0]][:, None] == np.arange(gallery.num_images)[None],
        queries[1][:, None] == gallery.caption_to_image[None],
    )
    shutil.rmtree(os.path.join(model_dir, CALIBRATION_DIR), ignore_errors=True)  # int8 dynamic first
    rows: Dict[str, Any] = {}
    for name in PRECISIONS:
        if name == "int8 static":
            calibrate(model_dir, gallery, DEFAULT_PAIRS, settings.seed, f"{corpus} (split test)")
        scorer, processor = load_scorer(model_dir, name.split()[0])
        t2i, i2t, seconds, scored = _scores(RetrievalEngine(scorer, processor, 64, progress=False), gallery, queries)
        if name == "fp32":
            fp32, reference = scorer, (t2i, i2t)
        rows[name] = _row(t2i, i2t, scored, seconds, reference, truth)
        if name != "fp32":
            rescorer = RetrievalEngine(scorer, processor, 64, progress=False, rescore_model=fp32,
                                       rescore_top=DEFAULT_RESCORE_TOP)
            t2i, i2t, extra, pairs = _rescored(rescorer, gallery, queries, t2i, i2t)
            rows[f"{name}, top {DEFAULT_RESCORE_TOP} at fp32"] = dict(
                _row(t2i, i2t, scored + pairs, seconds + extra, reference, truth), pairs_rescored=pairs
            )
    report.update(gallery={"images": gallery.num_images, "captions": gallery.num_captions}, rows=rows,
                  load_after=os.getloadavg()[0])
    return report


def _row(t2i, i2t, pairs: int, seconds: float, reference, truth) -> Dict[str, Any]:
    """One precision's figures against the fp32 ``reference`` rankings, and whether it meets the gate."""
    std = float(np.concatenate([reference[0].ravel(), reference[1].ravel()]).std())
    error = np.abs(np.concatenate([(t2i - reference[0]).ravel(), (i2t - reference[1]).ravel()])) / std
    row = {
        "pairs_per_second": pairs / seconds,
        "margin_error_max": float(error.max()), "margin_error_rms": float(np.sqrt(np.mean(error ** 2))),
        "t2i": _direction(t2i, reference[0], truth[0]), "i2t": _direction(i2t, reference[1], truth[1]),
    }
    row["gate_met"] = all(
        row[d]["top1"] >= GATE_TOP1 and row[d]["recall_difference"] <= GATE_RECALL_POINTS for d in ("t2i", "i2t")
    )
    return row


def _recall_text(direction: Dict[str, Any]) -> str:
    return " / ".join(f"{r:.1f}" for r in direction["recall"])


def format_gate(report: Dict[str, Any]) -> str:
    """One markdown table (a row per precision) and the load."""
    settings, gallery = report["settings"], report["gallery"]
    lines = [
        f"fidelity gate: tiny trained {settings['train_steps']} steps on {settings['train_images']} synthetic images; "
        f"{gallery['images']} images x {gallery['captions']} captions, {settings['caption_queries']} caption queries "
        f"over every image, {settings['image_queries']} image queries over every caption",
        "| precision | top-1 t2i / i2t | top-10 overlap t2i / i2t | largest / rms margin error (of the std) | "
        "R@1,5,10 t2i | R@1,5,10 i2t | largest R@K difference (points) | fp32 ties t2i / i2t | gate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        t2i, i2t = row["t2i"], row["i2t"]
        lines.append(
            f"| {name} | {t2i['top1']:.3f} / {i2t['top1']:.3f} | {t2i['top10_overlap']:.3f} / {i2t['top10_overlap']:.3f} | "
            f"{row['margin_error_max']:.3f} / {row['margin_error_rms']:.4f} | {_recall_text(t2i)} | {_recall_text(i2t)} | "
            f"{max(t2i['recall_difference'], i2t['recall_difference']):.1f} | {t2i['fp32_ties']} / {i2t['fp32_ties']} | "
            f"{'met' if row['gate_met'] else 'missed'} |"
        )
    lines.append(f"\nload average: {report['load_before']:.2f} before, {report['load_after']:.2f} after")
    return "\n".join(lines)
