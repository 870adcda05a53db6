"""A first stage for a checkpoint whose contrastive heads are untrained (``scripts/benchmark_first_stage.py``).

An official VinVL checkpoint converts with a trained match head and freshly initialised
contrastive heads. This benchmark stands in for one with the tiny config trained on the
synthetic corpus (matching + contrastive, as :mod:`vinvl.benchmarks.retrieval` trains it),
its contrastive heads then reset to a fresh initialisation (:func:`vinvl.training.heads.reset_heads`),
and measures on the corpus' test split, against exhaustive scoring by the (unchanged) match head:

- ``fitted <objective>``: the reset heads fitted with everything else frozen
  (``--train_only heads``), for each of ``--fit_objectives`` (``distill``: the match head's
  in-batch scores as targets; ``itc``: the in-batch contrastive loss), evaluated every
  ``--fit_eval_every`` steps of one run of ``--fit_steps`` (the learning curve);
- ``fitted lists``: with ``--fit_lists N``, the reset heads (made MLPs of
  ``--fit_lists_hidden_size``) fitted over fixed lists (each query's own match(es) and N random
  candidates) whose frozen encoder states and teacher scores are computed once (``--distill_candidates``, see
  :mod:`vinvl.training.frozen_states`), on ``--fit_lists_data_dir``'s train split: any image +
  caption collection, as large as its pairs can be scored;
- ``fitted lists + mined``: with ``--fit_lists_mined M`` as well, that fit continued for
  ``--fit_lists_mined_steps`` over the same lists plus each query's M candidates its heads rank
  highest (``--distill_mined``), scored by the match head too, as the
  ``fit_first_stage_mined.json`` recipes continue it (lr decayed linearly to 0, T=0.5);
- ``tags``: BM25 of caption words against the detector tags (needs no training);
- ``trained heads``: the heads as originally trained (what fitting is aiming at);
- ``reset heads``: the random heads themselves (what two-stage would use unfitted);

each at every k of ``--ks``: two-stage R@1/5/10 both ways and their change from exhaustive,
the pairs scored, and coverage: the fraction of queries whose exhaustive top-1 / top-10
answers are all among the query's k candidates (:func:`vinvl.retrieval.metrics.coverage`: the
first stage alone) and among the pairs the query ranks (``ranked``,
:func:`vinvl.retrieval.metrics.scored_coverage`: two-stage ranks every scored pair both ways, so
an image also ranks the captions whose candidates hold it). When the gallery is the synthetic
corpus of ``--seed`` (checked caption by caption), whose right answers are known by
construction (:func:`vinvl.data.synthetic.right_answers`), also ``right``: that ranked coverage
over only the queries whose exhaustive top-1 is a right answer
(:func:`vinvl.retrieval.metrics.right_answer_coverage`), since a weak stand-in's top-1 is
mostly wrong and plain coverage asks the first stage to propose those mistakes as well.

The match head's scores do not depend on the first stage, so the gallery is scored
exhaustively once and each first stage's two-stage result is that matrix restricted to its
candidate pairs (what :meth:`RetrievalEngine.two_stage` scores). That shortcut is checked
once per run against a real ``two_stage`` call (reported as the largest R@K difference).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..data import write_synthetic_corpus
from ..data.synthetic import SceneGenerator, generate_split, right_answers
from ..oscar.model_dir import load_retrieval_model, weights_checksum
from ..retrieval.engine import RetrievalEngine
from ..retrieval.evaluate import public_names
from ..retrieval.first_stage import Candidates, contrastive_candidates, tag_candidates
from ..retrieval.gallery import Gallery
from ..retrieval.metrics import (
    first_stage_coverage,
    retrieval_metrics,
    right_answer_coverage,
    scored_coverage,
    two_stage_coverage,
)
from ..training.heads import reset_heads
from ..training.recipe import arguments_from_options
from ..training.run import run_training
from .measure import RECALLS, synthetic_gallery, train_tiny

__all__ = ["FirstStageBenchmark", "run_benchmark"]

# row key -> table heading of the coverage columns
COVERAGES = {
    "t2i_top1": "cov. t2i top-1", "i2t_top1": "cov. i2t top-1", "t2i_top10": "cov. t2i top-10",
    "i2t_top10": "cov. i2t top-10", "ranked_t2i_top1": "ranked t2i top-1", "ranked_i2t_top1": "ranked i2t top-1",
    "right_t2i_top1": "right t2i top-1", "right_i2t_top1": "right i2t top-1",
}
AXES = {"t2i": 0, "i2t": 1}  # query direction -> axis of the coverage functions


@dataclass(frozen=True)
class FirstStageBenchmark:
    """What one run measures on (``scripts/benchmark_first_stage.py``'s options, which hold the defaults
    and say what each means; the module docstring describes the fits)."""

    model_dir: Optional[str]  # None: train the shipped tiny config first (train_steps)
    data_dir: Optional[str]  # None: a synthetic corpus of seed, train_images and num_images
    work_dir: str
    num_images: int
    train_images: int
    train_steps: int
    ks: Tuple[int, ...]
    fit_objectives: Tuple[str, ...]
    fit_steps: int
    fit_eval_every: int
    fit_batch_size: int
    fit_learning_rate: float
    fit_distill_temperature: float
    fit_lists: int  # 0: no fixed-list fit
    fit_lists_hidden_size: int
    fit_lists_data_dir: Optional[str]
    fit_lists_steps: int
    fit_lists_batch_size: int
    fit_lists_eval_every: int
    fit_lists_mined: int  # 0: no mined continuation
    fit_lists_mined_steps: int
    batch_size: int
    seed: int
    progress: bool


def _evaluate(
    scores: np.ndarray, gallery: Gallery, candidates: Candidates, right: Optional[np.ndarray]
) -> Dict[str, Optional[float]]:
    """One row: two-stage R@K (``scores`` kept on the pairs of both directions' candidates,
    ``-inf`` elsewhere: what :meth:`RetrievalEngine.two_stage` returns), the first stage's own
    coverage, the coverage of the pairs each query ranks (``ranked_*``) and, where the right
    answers are known, that coverage over the queries whose top-1 is right (``right_*``)."""
    scored = candidates.scored(gallery.num_captions)
    two_stage = np.where(scored, scores, np.float32(-np.inf))
    row = public_names(retrieval_metrics(two_stage, gallery.caption_to_image))
    row.update(first_stage_coverage(scores, candidates.i2t, candidates.t2i))
    row.update({f"ranked_{name}": value for name, value in two_stage_coverage(scores, scored).items()})
    if right is not None:  # None (JSON null) where no query's top-1 is right
        for direction, axis in AXES.items():
            value = right_answer_coverage(scores, scored, right, axis)
            row[f"right_{direction}_top1"] = None if np.isnan(value) else value
    row["pairs_scored"] = int(scored.sum())
    return row


def _right_answers(seed: int, gallery: Gallery) -> Optional[np.ndarray]:
    """The gallery's right answers ``[I, C]`` when it is the test split of the synthetic corpus
    of ``seed`` (the same images and captions, checked); None for any other gallery."""
    images = list(generate_split(SceneGenerator(seed=seed), "test", gallery.num_images, seed))
    if [image.image_id for image in images] != list(gallery.image_ids):
        return None
    if [caption for image in images for caption in image.captions] != list(gallery.captions):
        return None
    return right_answers(images)


def _exhaustive_scores(
    settings: FirstStageBenchmark, engine: RetrievalEngine, gallery: Gallery, model_dir: str
) -> Tuple[np.ndarray, float]:
    """The gallery's exhaustive match scores and the seconds they took, kept in work_dir: they
    depend only on the match head, which no first stage changes, and cost most of a run."""
    path = os.path.join(settings.work_dir, f"exhaustive-{gallery.num_images}.npz")
    if os.path.isfile(path):
        cached = np.load(path)
        if str(cached["model_dir"]) == os.path.abspath(model_dir) and cached["scores"].shape == (
            gallery.num_images, gallery.num_captions
        ):
            return cached["scores"], float(cached["seconds"])
    exhaustive = engine.exhaustive(gallery)
    np.savez(path, scores=exhaustive.t2i, seconds=exhaustive.seconds, model_dir=os.path.abspath(model_dir))
    return exhaustive.t2i, exhaustive.seconds


def _embeddings(model_dir: str, gallery: Gallery, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    model, processor = load_retrieval_model(model_dir)
    engine = RetrievalEngine(model, processor, batch_size=batch_size, progress=False)
    return engine.embed_images(gallery), engine.embed_captions(gallery)


def _fit(
    settings: FirstStageBenchmark, reset_dir: str, data_dir: str, objective: str, steps: int, batch_size: int,
    eval_every: int, **extra: Any,
) -> Tuple[str, List[Tuple[int, str]]]:
    """Fit the heads of ``reset_dir`` with the encoder frozen; returns the fitted model's directory
    and ``(step, model dir)`` of every checkpoint before the last step, then of the final model."""
    name = "".join(f"-{key}{value}" for key, value in sorted(extra.items()))
    # A fit of other weights or on another collection is another fit, not a cached one.
    data = os.path.abspath(data_dir)
    source = hashlib.sha256(f"{weights_checksum(reset_dir)} {data}".encode()).hexdigest()[:12]
    output_dir = os.path.join(
        settings.work_dir,
        f"fit-{objective}-T{settings.fit_distill_temperature}-b{batch_size}-{steps}-lr{settings.fit_learning_rate}{name}"
        f"-{os.path.basename(data)}-{source}",
    )
    flags = {
        "model_name_or_path": reset_dir, "data_dir": data_dir, "output_dir": output_dir, "objective": objective,
        "train_only": "heads", "distill_temperature": settings.fit_distill_temperature, "do_train": True,
        "max_steps": steps, "per_device_train_batch_size": batch_size, "per_device_eval_batch_size": 256,
        "learning_rate": settings.fit_learning_rate, "lr_scheduler_type": "constant", "weight_decay": 0.0,
        "save_strategy": "steps", "save_steps": eval_every, "evaluation_strategy": "no",
        "logging_steps": 50, "report_to": "none", "disable_tqdm": True, "seed": settings.seed,
        "overwrite_output_dir": True, **extra,
    }
    if not os.path.isfile(os.path.join(output_dir, "model.safetensors")):
        run_training(*arguments_from_options(flags))
    saved = sorted(
        int(m.group(1)) for name in os.listdir(output_dir) if (m := re.fullmatch(r"checkpoint-(\d+)", name))
    )
    fits = [(step, os.path.join(output_dir, f"checkpoint-{step}")) for step in saved if step < steps]
    return output_dir, fits + [(steps, output_dir)]  # the final model, whatever the checkpoint interval


def _prepare(settings: FirstStageBenchmark) -> Tuple[str, str, str]:
    """Corpus, trained model and its reset copy (each made only when not already in work_dir)."""
    os.makedirs(settings.work_dir, exist_ok=True)
    data_dir = settings.data_dir or os.path.join(
        settings.work_dir, f"synthetic-seed{settings.seed}-train{settings.train_images}-test{settings.num_images}"
    )
    if not os.path.isdir(data_dir):
        counts = {"train": settings.train_images, "minival": 20, "val": 0, "test": settings.num_images}
        write_synthetic_corpus(data_dir, counts, seed=settings.seed)
    model_dir = settings.model_dir
    if model_dir is None:
        model_dir = os.path.join(settings.work_dir, f"tiny-trained-{settings.train_steps}")
        if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
            train_tiny(settings.work_dir, data_dir, settings.train_steps, settings.seed)
    reset_dir = os.path.join(settings.work_dir, "reset-heads")
    model, processor = load_retrieval_model(model_dir)
    reset_heads(model, ["contrastive"], seed=settings.seed + 1)
    model.save_pretrained(reset_dir)
    processor.tokenizer.save_pretrained(reset_dir)
    return data_dir, model_dir, reset_dir


def run_benchmark(settings: FirstStageBenchmark) -> Dict[str, Any]:
    """Every measurement of the module docstring; prints the table, returns and writes it as JSON."""
    data_dir, model_dir, reset_dir = _prepare(settings)
    gallery = synthetic_gallery(data_dir, settings.num_images)
    model, processor = load_retrieval_model(model_dir)
    engine = RetrievalEngine(model, processor, batch_size=settings.batch_size, progress=settings.progress)
    scores, seconds = _exhaustive_scores(settings, engine, gallery, model_dir)
    reference = public_names(retrieval_metrics(scores, gallery.caption_to_image))
    reference.update(pairs_scored=int(scores.size), seconds=seconds)
    right = _right_answers(settings.seed, gallery)
    if right is not None:  # the share of queries whose exhaustive top-1 is a right answer
        reference.update({f"right_{d}_top1": scored_coverage(scores, right, 1, axis) for d, axis in AXES.items()})

    stages: List[Tuple[str, Optional[int], Any]] = [("trained heads", None, _embeddings(model_dir, gallery, settings.batch_size))]
    stages.append(("reset heads", None, _embeddings(reset_dir, gallery, settings.batch_size)))
    stages.append(("tags", None, "tags"))
    for objective in settings.fit_objectives:
        _, fits = _fit(settings, reset_dir, data_dir, objective, settings.fit_steps, settings.fit_batch_size, settings.fit_eval_every)
        for step, checkpoint in fits:
            stages.append((f"fitted {objective}", step, _embeddings(checkpoint, gallery, settings.batch_size)))
    if settings.fit_lists:
        lists_data = settings.fit_lists_data_dir or data_dir
        fitted, fits = _fit(
            settings, reset_dir, lists_data, "distill", settings.fit_lists_steps,
            settings.fit_lists_batch_size, settings.fit_lists_eval_every, distill_candidates=settings.fit_lists,
            contrastive_hidden_size=settings.fit_lists_hidden_size,
        )
        for step, checkpoint in fits:
            stages.append(("fitted lists", step, _embeddings(checkpoint, gallery, settings.batch_size)))
        if settings.fit_lists_mined:
            _, fits = _fit(
                settings, fitted, lists_data, "distill", settings.fit_lists_mined_steps, settings.fit_lists_batch_size,
                settings.fit_lists_eval_every, distill_candidates=settings.fit_lists, distill_mined=settings.fit_lists_mined,
                lr_scheduler_type="linear", distill_temperature=0.5,
            )
            for step, checkpoint in fits:
                stages.append(
                    ("fitted lists + mined", settings.fit_lists_steps + step, _embeddings(checkpoint, gallery, settings.batch_size))
                )

    rows = []
    for name, step, source in stages:
        for k in settings.ks:
            if source == "tags":
                candidates = tag_candidates(gallery, processor.tokenizer, k)
            else:
                candidates = contrastive_candidates(source[0], source[1], k)
            rows.append(dict(first_stage=name, fit_steps=step, k=k, **_evaluate(scores, gallery, candidates, right)))

    check_k = settings.ks[len(settings.ks) // 2]
    real = engine.two_stage(gallery, k=check_k, first_stage="tags")
    real_metrics = public_names(real.metrics(gallery.caption_to_image))
    shortcut = next(r for r in rows if r["first_stage"] == "tags" and r["k"] == check_k)
    check = {
        "k": check_k, "pairs_scored": [real.pairs_scored, shortcut["pairs_scored"]],
        "max_abs_recall_difference": max(abs(real_metrics[n] - shortcut[n]) for n in RECALLS),
    }
    report = {
        "settings": {
            "model_dir": os.path.abspath(model_dir), "data_dir": os.path.abspath(data_dir),
            "num_images": gallery.num_images, "num_captions": gallery.num_captions, "ks": list(settings.ks),
            "fit_objectives": list(settings.fit_objectives), "fit_steps": settings.fit_steps,
            "fit_batch_size": settings.fit_batch_size, "fit_learning_rate": settings.fit_learning_rate,
            "fit_distill_temperature": settings.fit_distill_temperature,
            "fit_lists": settings.fit_lists, "fit_lists_hidden_size": settings.fit_lists_hidden_size,
            "fit_lists_data_dir": os.path.abspath(settings.fit_lists_data_dir or data_dir),
            "fit_lists_steps": settings.fit_lists_steps, "fit_lists_batch_size": settings.fit_lists_batch_size,
            "fit_lists_mined": settings.fit_lists_mined, "fit_lists_mined_steps": settings.fit_lists_mined_steps,
            "train_steps": settings.train_steps if settings.model_dir is None else None,
        },
        "exhaustive": reference,
        "rows": rows,
        "shortcut_check": check,
    }
    report["lines"] = _table(report)
    print("\n".join(report["lines"]))
    with open(os.path.join(settings.work_dir, "first_stage_benchmark.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _table(report: Dict[str, Any]) -> List[str]:
    s, ex = report["settings"], report["exhaustive"]
    coverages = [key for key in COVERAGES if key in report["rows"][0]]  # right_*: only where known
    columns = ["first stage", "fit steps", "k", "pairs scored", *(COVERAGES[c] for c in coverages), *RECALLS, "max R@K drop"]
    right = (
        f"its top-1 is a right answer for {ex['right_t2i_top1']:.3f} of caption and {ex['right_i2t_top1']:.3f} of image queries"
        if "right_t2i_top1" in ex else "right answers unknown (not the synthetic corpus of --seed)"
    )
    lines = [
        f"gallery: {s['num_images']} images x {s['num_captions']} captions; exhaustive: {ex['pairs_scored']} pairs "
        f"in {ex['seconds']:.0f} s; R@K " + ", ".join(f"{n} {ex[n]:.1f}" for n in RECALLS) + f"; {right}",
        "",
        "| " + " | ".join(columns) + " |",
        "|---" * len(columns) + "|",
    ]
    for row in report["rows"]:
        drop = max(ex[n] - row[n] for n in RECALLS)
        lines.append(
            f"| {row['first_stage']} | {row['fit_steps'] if row['fit_steps'] is not None else '-'} | {row['k']} | "
            f"{row['pairs_scored']} | " + " | ".join("-" if row[c] is None else f"{row[c]:.3f}" for c in coverages) + " | "
            + " | ".join(f"{row[n]:.1f} ({row[n] - ex[n]:+.1f})" for n in RECALLS) + f" | {drop:.1f} |"
        )
    c = report["shortcut_check"]
    lines += [
        "",
        f"check: engine.two_stage(first_stage='tags', k={c['k']}) scored {c['pairs_scored'][0]} pairs (shortcut "
        f"{c['pairs_scored'][1]}); largest R@K difference from the restricted exhaustive matrix: "
        f"{c['max_abs_recall_difference']:.2f} points",
    ]
    return lines
