"""``vinvl benchmark``: what the retrieval engine buys, measured in one run on one model and gallery.

Prints, as ratios:

1. exhaustive scoring throughput (pairs/s) of :class:`RetrievalEngine` over the reference
   pipeline of :mod:`vinvl.benchmarks.baseline` (measured on the first ``--baseline_pairs``
   pairs, image-major as the reference dataset orders them; it is slow), plus the time of the
   reference's Python ranking on the full score dict;
2. two-stage against exhaustive, for each first stage the model can use (``tags`` always,
   ``contrastive`` when the model records trained contrastive heads): wall time, pairs scored,
   the change of every R@K, and the first stage's coverage (the fraction of queries whose
   exhaustive top-1 / top-10 answers are among its k candidates, :func:`first_stage_coverage`)
   at ``--candidates`` and each of ``--coverage_ks``;
3. hardware use: the FLOPs of each scoring pass counted from the shapes actually run, divided by
   its time, over the FLOP/s of a large fp32 ``paddle.matmul`` measured in the same process.
   Counted: every Linear layer (2 x rows x in x out: Q/K/V, attention output, FFN, pooler,
   classifier, region projection, contrastive heads) and the two attention matmuls per layer
   (Q.K^T and P.V, 2 x B x L^2 x H each). Not counted: softmax, LayerNorm, GELU, embedding
   lookups, masking (all O(L x H), a few percent);
4. peak memory of each path: Python allocations (tracemalloc, numpy included; paddle's own
   allocator is not visible to it) and the growth of the process' resident set (psutil,
   sampled every 20 ms) over its level when the path started;

and the gain of the CPU settings of :mod:`vinvl.runtime`: the matmul and a short scoring pass
run in two fresh processes, one with ``VINVL_NO_CPU_TUNING=1``.

``precisions``: the exhaustive path again with the match head's pair forward at each precision
other than ``fp32`` (:func:`vinvl.oscar.inference.match_scorer`: bf16 on Paddle Inference, int8 on
ONNX Runtime, exported from the same weights; a model without saved weights is saved into the work
directory first): its pairs/s over the reference pipeline's (which stays fp32 dygraph, as the
earlier port ran it) and over the fp32 engine's, in wall and process-CPU time, and its rankings'
agreement with fp32's (top-1 per query, both directions; the largest margin difference relative to the
std of fp32's margins; R@K change).

Without ``--model_dir`` it trains the shipped ``tiny`` config on the synthetic
corpus' train split through ``vinvl.training.run`` first, so two-stage retrieval has trained
contrastive heads to work with; without ``--data_dir`` it writes that corpus. Scoring uses the
official 70-token / 70-region limits for both paths. ``--num_images 20 --train_steps 0`` is a
smoke test (an untrained model; the numbers then mean nothing).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import paddle.nn as nn

from ..data import write_synthetic_corpus
from ..oscar.model_dir import has_weights, load_retrieval_model
from ..retrieval.engine import RetrievalEngine, RetrievalScores
from ..retrieval.evaluate import public_names, score_gallery
from ..retrieval.first_stage import contrastive_heads_trained, resolve_first_stage
from ..retrieval.gallery import Gallery
from ..retrieval.metrics import first_stage_coverage
from . import baseline
from .measure import (
    RECALLS,
    TINY_CONFIG,
    FlopCounter,
    Memory,
    matmul_flops_per_second,
    measure_memory,
    synthetic_gallery,
    train_tiny,
)

__all__ = ["cpu_probe", "RetrievalBenchmark", "run_benchmark"]



@dataclass(frozen=True)
class RetrievalBenchmark:
    """What one run measures on (``vinvl benchmark``'s options; the command holds their defaults)."""

    model_dir: Optional[str]  # a trained model; None: train the shipped tiny config first (train_steps, train_images)
    data_dir: Optional[str]  # a coco_ir corpus whose test split is the gallery; None: a synthetic one
    work_dir: str  # corpus, trained model and benchmark.json go here
    num_images: int  # gallery images
    train_images: int
    train_steps: int  # 0: the untrained config (a smoke test)
    baseline_pairs: int  # pairs the reference pipeline is timed on
    candidates: int  # two-stage candidates per query
    coverage_ks: Tuple[int, ...]  # k at which each first stage's coverage is reported (besides candidates)
    batch_size: int  # engine pairs per forward pass
    max_seq_len: int
    max_img_seq_len: int
    matmul_size: int  # side of the reference fp32 matmul
    cpu_probe_images: int  # gallery images of the CPU-settings probe (0: no probe)
    seed: int
    progress: bool
    precisions: Tuple[str, ...] = ("fp32",)  # the exhaustive path's pair forward at each (fp32: the model itself)


@dataclass
class PathResult:
    """One measured path: its time, pairs, FLOPs, memory and metrics."""

    seconds: float
    pairs: int
    flops: int
    memory: Memory
    metrics: Dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0  # user + system time of this process (all its threads)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / max(self.seconds, 1e-12)

    @property
    def pairs_per_cpu_second(self) -> float:
        return self.pairs / max(self.cpu_seconds, 1e-12)

    @property
    def flops_per_second(self) -> float:
        return self.flops / max(self.seconds, 1e-12)


def _measure(model: nn.Layer, run: Callable[[], Any], trace_python: bool = True) -> tuple:
    """``(value, wall seconds, FLOPs, memory, CPU seconds)`` of ``run()``."""
    counter = FlopCounter(model)
    try:
        with measure_memory(trace_python) as memory:
            start, cpu_start = time.perf_counter(), time.process_time()
            value = run()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        counter.remove()
    return value, seconds, counter.flops, memory, cpu_seconds


# ----- the paths ---------------------------------------------------------------------------


def _engine_path(engine: RetrievalEngine, gallery: Gallery, first_stage: str, candidates: int) -> tuple:
    """``(PathResult, RetrievalScores)`` of one engine pass over the gallery (``first_stage`` as in
    :func:`vinvl.retrieval.evaluate.score_gallery`)."""
    scores, seconds, flops, memory, cpu_seconds = _measure(
        engine.model, lambda: score_gallery(engine, gallery, first_stage, candidates)
    )
    metrics = public_names(scores.metrics(gallery.caption_to_image))
    return PathResult(seconds, scores.pairs_scored, flops, memory, metrics, cpu_seconds), scores


def _baseline_path(model: nn.Layer, processor: Any, gallery: Gallery, num_pairs: int, rounds: int = 2) -> PathResult:
    """The reference pipeline on the first ``num_pairs`` pairs: timed (best of ``rounds``) without
    tracemalloc, which would slow its per-pair Python, then run once more for its Python peak."""
    indices = range(min(num_pairs, gallery.num_images * gallery.num_captions))
    timed = [
        _measure(model, lambda: baseline.score_pairs(model, processor, gallery, indices), False) for _ in range(rounds)
    ]
    _, seconds, flops, memory, cpu_seconds = min(timed, key=lambda run: run[1])
    with measure_memory() as traced:
        baseline.score_pairs(model, processor, gallery, indices)
    memory.python_mb = traced.python_mb
    return PathResult(seconds, len(indices), flops, memory, cpu_seconds=cpu_seconds)


def _baseline_ranking(gallery: Gallery, matrix: np.ndarray) -> PathResult:
    """The reference's ranking stage on the full matrix, fed as the ``{pair index: score}`` dict it keeps."""
    with measure_memory() as memory:
        start = time.perf_counter()
        results = dict(enumerate(matrix.ravel().tolist()))
        metrics = baseline.baseline_metrics(gallery, results)
        seconds = time.perf_counter() - start
    return PathResult(seconds, len(results), 0, memory, metrics)


def _agreement(scores: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """How ``scores`` (a precision's ``[I, C]`` margins) agree with ``reference`` (fp32's): the share of
    queries whose best answer is fp32's, both directions, and the largest margin difference
    relative to the std of fp32's margins."""
    return {
        "top1_t2i": float(np.mean(scores.argmax(0) == reference.argmax(0))),
        "top1_i2t": float(np.mean(scores.argmax(1) == reference.argmax(1))),
        "margin_error": float(np.abs(scores - reference).max() / reference.std()),
    }


def _precision_paths(
    settings: RetrievalBenchmark, model: Any, model_dir: str, processor: Any, gallery: Gallery, fp32: RetrievalScores
) -> Dict[str, Dict[str, Any]]:
    """The exhaustive path with the pair forward at each of ``settings.precisions`` but fp32 (a
    :class:`~vinvl.oscar.inference.MatchScorer` exported from the model's saved weights)."""
    from ..oscar.inference import match_scorer

    low = [p for p in settings.precisions if p != "fp32"]
    if not low:
        return {}
    if not has_weights(model_dir):  # a config's name: its random weights, saved so the runtimes load the same ones
        model_dir = os.path.join(settings.work_dir, f"{os.path.basename(model_dir.rstrip(os.sep))}-random-seed{settings.seed}")
        model.save_pretrained(model_dir)
    out = {}
    for precision in low:
        engine = RetrievalEngine(match_scorer(model, model_dir, precision), processor, batch_size=settings.batch_size,
                                 progress=settings.progress)
        engine.exhaustive(gallery.subset([0]))  # warm-up: runtime arenas, oneDNN primitives
        path, scores = _engine_path(engine, gallery, "exhaustive", settings.candidates)
        path.flops = 0  # the runtime's graph runs outside the dygraph layers the counter hooks: not counted
        out[precision] = {"path": path, **_agreement(scores.i2t, fp32.i2t)}
    return out


def _first_stages(config: Any) -> List[str]:
    """The first stages to measure: ``contrastive`` only when its heads are trained (else the
    reason is logged once), ``tags`` always."""
    if contrastive_heads_trained(config):
        return ["contrastive", "tags"]
    resolve_first_stage("auto", config)  # logs why the contrastive heads are left out
    return ["tags"]


def _coverage(
    engine: RetrievalEngine, gallery: Gallery, exhaustive: RetrievalScores, first_stage: str, ks: List[int]
) -> Dict[int, Dict[str, float]]:
    """:func:`first_stage_coverage` of ``first_stage``'s candidates at each k, against the exhaustive scores."""
    out = {}
    for k in ks:
        candidates = engine.first_stage_candidates(gallery, first_stage, k)
        out[k] = first_stage_coverage(exhaustive.i2t, candidates.i2t, candidates.t2i)
    return out


def cpu_probe(
    model_dir: str, data_dir: str, num_images: int, max_seq_len: int, max_img_seq_len: int, matmul_size: int
) -> Dict[str, Any]:
    """Matmul FLOP/s and exhaustive pairs/s on a small gallery, in this process as configured."""
    model, processor = load_retrieval_model(model_dir, max_seq_len=max_seq_len, max_img_seq_len=max_img_seq_len)
    gallery = synthetic_gallery(data_dir, num_images)
    engine = RetrievalEngine(model, processor, batch_size=128, progress=False)
    engine.exhaustive(gallery.subset([0]))  # warm-up
    scores = engine.exhaustive(gallery)
    return {
        "matmul_flops": matmul_flops_per_second(matmul_size),
        "pairs_per_second": scores.pairs_scored / scores.seconds,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def _cpu_settings_gain(settings: RetrievalBenchmark, model_dir: str, data_dir: str) -> Dict[str, Dict[str, Any]]:
    """:func:`cpu_probe` in a fresh process with and without the vinvl CPU settings (on at most the gallery's images)."""
    images = min(settings.cpu_probe_images, settings.num_images)
    call = (
        "import json, vinvl\nfrom vinvl.benchmarks.retrieval import cpu_probe\n"
        f"print('PROBE ' + json.dumps(cpu_probe({model_dir!r}, {data_dir!r}, {images}, "
        f"{settings.max_seq_len}, {settings.max_img_seq_len}, {settings.matmul_size})))"
    )
    tuning = ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE", "VINVL_NO_CPU_TUNING")
    base_env = {k: v for k, v in os.environ.items() if k not in tuning}
    out = {}
    for name, extra in (("tuned", {}), ("untuned", {"VINVL_NO_CPU_TUNING": "1"})):
        done = subprocess.run(
            [sys.executable, "-c", call], env={**base_env, **extra}, capture_output=True, text=True, timeout=3600
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"the CPU probe ({name}) failed:\n{done.stderr[-3000:]}")
        out[name] = json.loads(lines[-1][len("PROBE "):])
    return out


# ----- set-up: corpus and model ------------------------------------------------------------


def _input_sizes(processor: Any, gallery: Gallery) -> Dict[str, float]:
    """Mean text tokens and regions of a pair (over matching pairs), i.e. what dynamic padding pads to."""
    tokens = [len(processor.encode_text(c, gallery.tags[i])["input_ids"]) for c, i in zip(gallery.captions, gallery.caption_to_image)]
    regions = [min(len(gallery.features(i)), processor.max_img_seq_len) for i in range(gallery.num_images)]
    return {"mean_text_tokens": float(np.mean(tokens)), "mean_regions": float(np.mean(regions))}


# ----- the run -----------------------------------------------------------------------------


def _prepare(settings: RetrievalBenchmark) -> tuple:
    """The corpus directory and model directory to use, writing / training them when not given."""
    os.makedirs(settings.work_dir, exist_ok=True)
    data_dir = settings.data_dir
    if data_dir is None:
        train_images = settings.train_images if settings.train_steps else 0
        data_dir = os.path.join(settings.work_dir, f"synthetic-seed{settings.seed}-train{train_images}-test{settings.num_images}")
        if not os.path.isdir(data_dir):
            # (training loads minival for evaluation even when it never evaluates)
            counts = {"train": train_images, "minival": 20 if train_images else 0, "val": 0, "test": settings.num_images}
            write_synthetic_corpus(data_dir, counts, seed=settings.seed)
    model_dir = settings.model_dir
    if model_dir is None:
        model_dir = train_tiny(settings.work_dir, data_dir, settings.train_steps, settings.seed) if settings.train_steps else TINY_CONFIG
    return data_dir, model_dir


def run_benchmark(settings: RetrievalBenchmark) -> Dict[str, Any]:
    """Every measurement of the module docstring; prints the ratios, returns and writes them as JSON."""
    data_dir, model_dir = _prepare(settings)
    model, processor = load_retrieval_model(model_dir, max_seq_len=settings.max_seq_len, max_img_seq_len=settings.max_img_seq_len)
    gallery = synthetic_gallery(data_dir, settings.num_images)
    engine = RetrievalEngine(model, processor, batch_size=settings.batch_size, progress=settings.progress)
    engine.exhaustive(gallery.subset([0]))  # warm-up: first-call allocations stay out of the timings
    load_before = os.getloadavg()[0]
    matmul = matmul_flops_per_second(settings.matmul_size)
    exhaustive, exhaustive_scores = _engine_path(engine, gallery, "exhaustive", settings.candidates)
    paths = {"exhaustive": exhaustive}
    low_precision = _precision_paths(settings, model, model_dir, processor, gallery, exhaustive_scores)
    for precision, row in low_precision.items():
        paths[f"exhaustive_{precision}"] = row["path"]
    coverage = {}
    for first_stage in _first_stages(model.config):
        paths[f"two_stage_{first_stage}"], _ = _engine_path(engine, gallery, first_stage, settings.candidates)
        ks = sorted({settings.candidates, *settings.coverage_ks})
        coverage[first_stage] = _coverage(engine, gallery, exhaustive_scores, first_stage, ks)
    reference = _baseline_path(model, processor, gallery, settings.baseline_pairs)
    ranking = _baseline_ranking(gallery, exhaustive_scores.i2t)
    del exhaustive_scores
    cpu = _cpu_settings_gain(settings, model_dir, data_dir) if settings.cpu_probe_images else None
    paths.update(baseline=reference, baseline_ranking=ranking)
    report = {
        "settings": {
            "model_dir": os.path.abspath(model_dir), "data_dir": os.path.abspath(data_dir),
            "num_images": gallery.num_images, "num_captions": gallery.num_captions, "batch_size": settings.batch_size,
            "candidates": settings.candidates, "max_seq_len": settings.max_seq_len, "max_img_seq_len": settings.max_img_seq_len,
            "baseline_pairs": reference.pairs, "matmul_size": settings.matmul_size, "precisions": list(settings.precisions),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count(),
            "load_average_start_end": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            **_input_sizes(processor, gallery),
        },
        "matmul_flops": matmul,
        "paths": {
            name: dict(path.__dict__, memory=path.memory.__dict__, pairs_per_second=path.pairs_per_second,
                       pairs_per_cpu_second=path.pairs_per_cpu_second, flops_per_second=path.flops_per_second)
            for name, path in paths.items()
        },
        "precision_agreement": {p: {k: v for k, v in row.items() if k != "path"} for p, row in low_precision.items()},
        "coverage": coverage,
        "cpu_settings": cpu,
    }
    report["lines"] = _report_lines(report, paths, matmul, cpu) + _precision_lines(report, paths)
    print("\n".join(report["lines"]))
    with open(os.path.join(settings.work_dir, "benchmark.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _report_lines(report: Dict[str, Any], paths: Dict[str, PathResult], matmul: float, cpu: Optional[Dict]) -> List[str]:
    s = report["settings"]
    ex, ref, rank = paths["exhaustive"], paths["baseline"], paths["baseline_ranking"]
    two_stages = {name[len("two_stage_"):]: path for name, path in paths.items() if name.startswith("two_stage_")}
    lines = [
        f"gallery: {s['num_images']} images x {s['num_captions']} captions; mean pair {s['mean_text_tokens']:.1f} tokens "
        f"+ {s['mean_regions']:.1f} regions (limits {s['max_seq_len']} + {s['max_img_seq_len']}); "
        f"{s['omp_num_threads']} threads on {s['cpu_count']} cores; load average {s['load_average_start_end']}",
        "",
        f"{'path':<24}{'seconds':>10}{'pairs':>12}{'pairs/s':>11}{'GFLOP/s':>9}{'py MB':>9}{'RSS+ MB':>9}",
    ]
    for name, path in paths.items():
        gflops = f"{path.flops_per_second / 1e9:9.2f}" if path.flops else f"{'-':>9}"
        lines.append(
            f"{name:<24}{path.seconds:10.2f}{path.pairs:12d}{path.pairs_per_second:11.0f}{gflops}"
            f"{path.memory.python_mb:9.1f}{path.memory.rss_growth_mb:9.1f}"
        )
    lines += [
        "",
        f"(1) exhaustive vs baseline throughput: {ex.pairs_per_second / ref.pairs_per_second:.1f}x pairs/s "
        f"({ex.pairs_per_second:.0f} vs {ref.pairs_per_second:.0f}; baseline on {ref.pairs} pairs, "
        f"its dict + Python ranking of all {rank.pairs} scores takes {rank.seconds:.1f} s more)",
        "    exhaustive R@K: " + ", ".join(f"{n} {ex.metrics[n]:.2f}" for n in RECALLS + ("rsum",)),
    ]
    for first_stage, ts in two_stages.items():
        lines += [
            f"(2) two-stage, first stage {first_stage} (k={s['candidates']}) vs exhaustive: {ex.seconds / ts.seconds:.1f}x "
            f"less wall time ({ts.seconds:.1f} s vs {ex.seconds:.1f} s), {ex.pairs / max(ts.pairs, 1):.1f}x fewer pairs "
            f"({ts.pairs} vs {ex.pairs})",
            "    R@K change (two-stage minus exhaustive, points): "
            + ", ".join(f"{n} {ts.metrics[n] - ex.metrics[n]:+.2f}" for n in RECALLS)
            + f"; max |change| {max(abs(ts.metrics[n] - ex.metrics[n]) for n in RECALLS):.2f}",
        ]
        for k, values in report["coverage"][first_stage].items():
            lines.append(
                f"    coverage at k={k} ({100.0 * k / max(s['num_captions'], 1):.1f}% of captions per image, "
                f"{100.0 * k / s['num_images']:.1f}% of images per caption): "
                + ", ".join(f"{name} {value:.3f}" for name, value in values.items())
            )
    ratios = ", ".join(f"two-stage {name} {ts.flops_per_second / matmul:.2f}" for name, ts in two_stages.items())
    memory = ", ".join(
        f"two-stage {name} {ts.memory.python_mb:.0f} / {ts.memory.rss_growth_mb:.0f}" for name, ts in two_stages.items()
    )
    lines += [
        f"(3) scoring FLOP/s over matmul FLOP/s ({matmul / 1e9:.1f} GFLOP/s, {s['matmul_size']}^2 fp32): "
        f"exhaustive {ex.flops_per_second / matmul:.2f}, {ratios}, "
        f"baseline {ref.flops_per_second / matmul:.2f}; FLOPs per pair: exhaustive {ex.flops / ex.pairs / 1e6:.1f} M, "
        f"baseline {ref.flops / ref.pairs / 1e6:.1f} M",
        f"(4) peak memory, Python / RSS growth (MB): exhaustive {ex.memory.python_mb:.0f} / {ex.memory.rss_growth_mb:.0f}, "
        f"{memory}, baseline scoring {ref.pairs} pairs "
        f"{ref.memory.python_mb:.0f} / {ref.memory.rss_growth_mb:.0f}, baseline dict + ranking "
        f"{rank.memory.python_mb:.0f} / {rank.memory.rss_growth_mb:.0f}",
    ]
    if cpu is not None:
        tuned, untuned = cpu["tuned"], cpu["untuned"]
        lines.append(
            f"(5) CPU settings (vinvl.runtime) vs VINVL_NO_CPU_TUNING=1, fresh processes: scoring "
            f"{tuned['pairs_per_second'] / untuned['pairs_per_second']:.2f}x pairs/s "
            f"({tuned['pairs_per_second']:.0f} vs {untuned['pairs_per_second']:.0f}), matmul "
            f"{tuned['matmul_flops'] / untuned['matmul_flops']:.2f}x "
            f"({tuned['matmul_flops'] / 1e9:.1f} vs {untuned['matmul_flops'] / 1e9:.1f} GFLOP/s; threads "
            f"{tuned['omp_num_threads']} vs {untuned['omp_num_threads']})"
        )
    return lines


def _precision_lines(report: Dict[str, Any], paths: Dict[str, PathResult]) -> List[str]:
    """(6): the exhaustive engine at each precision over the reference pipeline (fp32 dygraph)."""
    agreement = report["precision_agreement"]
    if not agreement:
        return []
    ex, ref = paths["exhaustive"], paths["baseline"]
    rows = {"fp32": (ex, None), **{p: (paths[f"exhaustive_{p}"], row) for p, row in agreement.items()}}
    lines = [
        "(6) exhaustive engine per precision of the pair forward, vs the reference pipeline (fp32 dygraph) and the fp32 engine:",
        f"    {'precision':<10}{'pairs/s':>10}{'vs reference':>14}{'vs fp32':>9}{'pairs/CPU-s':>13}{'vs ref CPU':>12}"
        f"{'vs fp32 CPU':>13}{'top-1 t2i':>11}{'top-1 i2t':>11}{'margin error/std':>18}{'max |R@K change|':>18}",
    ]
    for precision, (path, row) in rows.items():
        change = max(abs(path.metrics[n] - ex.metrics[n]) for n in RECALLS)
        top1 = (1.0, 1.0, 0.0) if row is None else (row["top1_t2i"], row["top1_i2t"], row["margin_error"])
        lines.append(
            f"    {precision:<10}{path.pairs_per_second:10.1f}{path.pairs_per_second / ref.pairs_per_second:13.2f}x"
            f"{path.pairs_per_second / ex.pairs_per_second:8.2f}x{path.pairs_per_cpu_second:13.1f}"
            f"{path.pairs_per_cpu_second / ref.pairs_per_cpu_second:11.2f}x{path.pairs_per_cpu_second / ex.pairs_per_cpu_second:12.2f}x"
            f"{top1[0]:11.3f}{top1[1]:11.3f}{top1[2]:18.4f}{change:18.2f}"
        )
    return lines
