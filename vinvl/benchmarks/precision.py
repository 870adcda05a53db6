"""Pair scoring at fp32, bf16 and int8 (:mod:`vinvl.oscar.inference`) against fp32 dygraph and fp32
Paddle Inference, in one process, on the same weights and inputs, and what each precision makes of
a caption query's latency.

Three parts (``parts``):

- speed: one batch of pairs at full length (``--config``, default ``vinvl-base`` with random
  weights; its ``max_seq_length`` text + ``max_img_seq_length`` region positions), each scorer run
  once per round for ``repeats`` rounds after a warm-up; pairs/s (median and best wall, and per
  CPU-second of this process, the steadier figure on a loaded machine), the ratios to dygraph and
  to Paddle Inference fp32, and the largest margin error on that batch relative to the largest
  fp32 margin (random weights at the default initialisation give margins too alike for their
  spread to be the yardstick). int8 runs twice: dynamic, then static after a calibration on the
  batch itself (its scales do not change its speed).
- agreement: exhaustive scoring of a synthetic gallery with the tiny config at seeded random
  weights drawn wide (``initializer_range`` 0.1, so margins spread as a trained model's do); per
  precision the largest margin error relative to the std of the fp32 margins, the share of
  queries (both directions) whose top-1 answer is fp32's, and the mean overlap of the top-10 lists.
- query: what a user waits for. A synthetic gallery of ``query_images`` images with 10-50 regions
  each (the scale benchmark's, :func:`vinvl.benchmarks.scale.write_gallery`) indexed with
  ``--config`` at random weights whose heads count as trained; per precision a
  :class:`~vinvl.query.Retriever` over the index answers ``queries`` captions one at a time (after
  one warm-up answer), the contrastive first stage proposing ``candidates`` images for the match
  head to re-rank: p50 / p95 wall and process-CPU milliseconds per query, the median split of
  :meth:`~vinvl.query.Retriever.answer_timed` (first stage, feature reads, scoring), and the share
  of queries whose top-1 image is fp32's. With ``http``, the same captions through ``vinvl serve
  --precision`` in a subprocess, one client on a kept-alive connection: p50 / p95.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data import load_corpus, write_synthetic_corpus

__all__ = ["PrecisionBenchmark", "run_benchmark", "format_table"]

SCORERS = ("dygraph fp32", "fp32", "bf16", "int8 dynamic", "int8 static")
PARTS = ("speed", "agreement", "query")
QUERY_PRECISIONS = ("fp32", "bf16", "int8")
QUERY_TOP_K = 5


@dataclass(frozen=True)
class PrecisionBenchmark:
    """Settings: the speed part's config, batch and repeats; the agreement part's gallery size."""

    config: str = "vinvl-base"
    batch: int = 16
    repeats: int = 3
    agreement_images: int = 40
    query_images: int = 300
    queries: int = 32
    candidates: int = 16
    http: bool = False
    parts: Tuple[str, ...] = PARTS
    seed: int = 0


def _saved_random_model(
    model_dir: str, config: str, seed: int, initializer_range: Optional[float] = None, trained_heads: Sequence[str] = ()
):
    import paddle

    from ..oscar.model_dir import load_retrieval_model

    paddle.seed(seed)
    overrides = {"initializer_range": initializer_range} if initializer_range else None
    model, _ = load_retrieval_model(config, config_overrides=overrides)
    if trained_heads:
        model.config.trained_heads = list(trained_heads)
    model.save_pretrained(model_dir)
    model, processor = load_retrieval_model(model_dir)
    model.eval()
    return model, processor


def _scorers(model_dir: str, model, calibration: List[Dict[str, np.ndarray]]) -> Dict[str, Any]:
    """Every scorer of :data:`SCORERS` for the saved ``model_dir``: int8 dynamic is loaded before the
    model is calibrated on ``calibration`` (batches of match-head inputs), int8 static after."""
    from ..oscar.inference import calibrate_match_head, load_scorer

    scorers = {"dygraph fp32": model}
    for name in SCORERS[1:]:
        if name == "int8 static":
            calibrate_match_head(model, model_dir, calibration, gallery="the benchmark's own inputs")
        scorers[name], _ = load_scorer(model_dir, name.split()[0])
    return scorers


def _speed(work: str, settings: PrecisionBenchmark) -> Dict[str, Any]:
    import paddle

    model_dir = os.path.join(work, "speed-model")
    model, _ = _saved_random_model(model_dir, settings.config, settings.seed)
    config = model.config
    text, regions, batch = config.max_seq_length, config.max_img_seq_length, settings.batch
    rng = np.random.default_rng(settings.seed)
    inputs = {
        "input_ids": paddle.to_tensor(rng.integers(1000, 3000, (batch, text)).astype("int64")),
        "token_type_ids": paddle.to_tensor(np.zeros((batch, text), "int64")),
        "attention_mask": paddle.to_tensor(np.ones((batch, text + regions), "float32")),
    }
    with paddle.no_grad():
        features = rng.normal(0, 1, (batch, regions, config.img_feature_dim)).astype("float32")
        img_embeds = model.bert.embed_regions(paddle.to_tensor(features))
        calibration = [{name: tensor.numpy() for name, tensor in {**inputs, "img_embeds": img_embeds}.items()}]
        scorers = _scorers(model_dir, model, calibration)
        margins = {}
        for name, scorer in scorers.items():  # warm-up: oneDNN primitives, ONNX Runtime arenas
            logits = scorer(**inputs, img_embeds=img_embeds).logits.numpy()
            margins[name] = logits[:, 1] - logits[:, 0]
        wall: Dict[str, List[float]] = {name: [] for name in scorers}
        cpu: Dict[str, List[float]] = {name: [] for name in scorers}
        for _ in range(settings.repeats):  # rounds: every scorer once, so a change of load hits them all
            for name, scorer in scorers.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                scorer(**inputs, img_embeds=img_embeds).logits.numpy()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
    reference = margins["dygraph fp32"]
    rows = {
        name: {
            "pairs_per_second": batch / float(np.median(wall[name])),
            "best_pairs_per_second": batch / min(wall[name]),
            "pairs_per_cpu_second": batch / float(np.median(cpu[name])),
            "margin_error": float(np.abs(margins[name] - reference).max() / np.abs(reference).max()),
        }
        for name in scorers
    }
    for row in rows.values():
        row["vs_inference_fp32"] = row["pairs_per_second"] / rows["fp32"]["pairs_per_second"]
        row["vs_inference_fp32_cpu"] = row["pairs_per_cpu_second"] / rows["fp32"]["pairs_per_cpu_second"]
        row["vs_dygraph"] = row["pairs_per_second"] / rows["dygraph fp32"]["pairs_per_second"]
    return {"positions": f"{text} + {regions}", "batch": batch, "hidden_size": config.hidden_size, "rows": rows}


def _top_k_overlap(scores: np.ndarray, reference: np.ndarray, k: int) -> float:
    """Mean share of each column's top-k (reference order) found in the scores' top-k."""
    k = min(k, scores.shape[0])
    top = np.argsort(-scores, axis=0)[:k]
    ref = np.argsort(-reference, axis=0)[:k]
    return float(np.mean([len(set(top[:, c]) & set(ref[:, c])) / k for c in range(scores.shape[1])]))


def _agreement(work: str, settings: PrecisionBenchmark) -> Dict[str, Any]:
    from ..retrieval import Gallery, RetrievalEngine
    from ..retrieval.calibration import DEFAULT_PAIRS, calibration_batches

    corpus_dir = os.path.join(work, "corpus")
    splits = {"train": 0, "minival": 0, "val": 0, "test": settings.agreement_images}
    write_synthetic_corpus(corpus_dir, splits, seed=settings.seed)
    gallery = Gallery.from_corpus(load_corpus(corpus_dir, "test"))
    model_dir = os.path.join(work, "agreement-model")
    model, processor = _saved_random_model(model_dir, "tiny", settings.seed, initializer_range=0.1)
    rows, reference = {}, None
    calibration = calibration_batches(model, processor, gallery, DEFAULT_PAIRS, settings.seed)
    for name, scorer in _scorers(model_dir, model, calibration).items():
        scores = RetrievalEngine(scorer, processor, progress=False).exhaustive(gallery).i2t
        reference = scores if reference is None else reference
        rows[name] = {
            "margin_error": float(np.abs(scores - reference).max() / reference.std()),
            "top1_t2i": float(np.mean(scores.argmax(0) == reference.argmax(0))),
            "top1_i2t": float(np.mean(scores.argmax(1) == reference.argmax(1))),
            "top10_t2i": _top_k_overlap(scores, reference, 10),
            "top10_i2t": _top_k_overlap(scores.T, reference.T, 10),
        }
    return {"images": gallery.num_images, "captions": gallery.num_captions, "rows": rows}


def _percentiles(seconds: Sequence[float]) -> Dict[str, float]:
    ms = 1000 * np.asarray(seconds)
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))}


def _timed_queries(retriever, captions: Sequence[str], options: Dict[str, Any]) -> Dict[str, Any]:
    """One caption at a time through :meth:`~vinvl.query.Retriever.answer_timed`, after a warm-up
    answer: wall and process-CPU percentiles, the median of each stage, and each query's top-1 image."""
    retriever.answer(captions[0], **options)
    rows, cpu, top1 = [], [], []
    for caption in captions:
        cpu_start = time.process_time()
        answers, timings = retriever.answer_timed(caption, **options)
        cpu.append(time.process_time() - cpu_start)
        rows.append(timings)
        top1.append(answers[0]["images"][0]["image_id"])
    wall = _percentiles([r["total"] for r in rows])
    result = {**wall, **{f"cpu_{k}": v for k, v in _percentiles(cpu).items()}}
    result["stages_ms"] = {name: 1000 * float(np.median([r[name] for r in rows])) for name in rows[0] if name != "total"}
    result["top1"] = top1
    return result


def _served_queries(index_dir: str, model_dir: str, captions: Sequence[str], precision: str, candidates: int, log_path: str) -> Dict[str, Any]:
    """The captions through ``vinvl serve --precision`` (one client, one caption per request, after a
    warm-up request): latency percentiles."""
    from ..serving.client import ServerProcess, free_port, vinvl_serve_command
    from .scale import load

    port = free_port()
    flags = ["--model_dir", model_dir, "--precision", precision, "--first_stage", "contrastive",
             "--candidates", str(candidates), "--top_k", str(QUERY_TOP_K)]
    bodies = [json.dumps({"data": caption}).encode() for caption in captions]
    with ServerProcess(vinvl_serve_command(index_dir, port, extra=flags), port, log_path):
        load(port, bodies[:1], 1, 1, 600.0, QUERY_TOP_K)  # warm-up
        run = load(port, bodies, 1, len(bodies), 3600.0, QUERY_TOP_K)
    return {"p50_ms": run["p50_ms"], "p95_ms": run["p95_ms"], "errors": run["errors"], "requests": run["requests"]}


def _query(work: str, settings: PrecisionBenchmark) -> Dict[str, Any]:
    from ..index import GallerySource, build_index
    from ..query import Retriever
    from .scale import SPLIT, ScaleBenchmark, query_captions, write_gallery

    data_dir, index_dir = os.path.join(work, "query-gallery"), os.path.join(work, "query-index")
    gallery = write_gallery(data_dir, ScaleBenchmark(num_images=settings.query_images, distinct_images=settings.query_images, seed=settings.seed))
    model_dir = os.path.join(work, "query-model")
    _saved_random_model(model_dir, settings.config, settings.seed, trained_heads=("match", "contrastive"))
    start = time.perf_counter()
    build_index(index_dir, model_dir, [GallerySource(data_dir, SPLIT)], progress=False)
    build_seconds = time.perf_counter() - start
    captions = query_captions(data_dir, settings.queries, settings.seed)
    options = {"top_k": QUERY_TOP_K, "candidates": settings.candidates, "first_stage": "contrastive"}
    rows: Dict[str, Any] = {}
    for precision in QUERY_PRECISIONS:
        retriever = Retriever(model_dir, first_stage="contrastive", precision=precision)
        retriever.use_index(index_dir)
        try:
            rows[precision] = _timed_queries(retriever, captions, options)
        finally:
            retriever.gallery.close()
        del retriever
        if settings.http:
            log = os.path.join(work, f"serve-{precision}.log")
            rows[precision]["http"] = _served_queries(index_dir, model_dir, captions, precision, settings.candidates, log)
    reference = rows["fp32"]["top1"]
    for row in rows.values():
        row["top1_as_fp32"] = float(np.mean([a == b for a, b in zip(row.pop("top1"), reference)]))
    return {
        "images": settings.query_images, "regions_mean": gallery["regions_mean"], "queries": len(captions),
        "candidates": settings.candidates, "build_seconds": build_seconds, "rows": rows,
    }


def run_benchmark(settings: PrecisionBenchmark) -> Dict[str, Any]:
    """The parts asked for, in temporary directories; the report holds the load average before and after."""
    from ..precision import check_precision

    for precision in ("bf16", "int8"):
        check_precision(precision)  # refuse at once on a CPU without the instructions
    report: Dict[str, Any] = {"settings": settings.__dict__, "load_before": os.getloadavg()[0]}
    parts = {"speed": _speed, "agreement": _agreement, "query": _query}
    with tempfile.TemporaryDirectory(prefix="vinvl-precision-") as work:
        for name in settings.parts:
            report[name] = parts[name](work, settings)
    report["load_after"] = os.getloadavg()[0]
    return report


def format_table(report: Dict[str, Any]) -> str:
    """A markdown table per part run (speed, agreement, query) and the load."""
    lines: List[str] = []
    if "speed" in report:
        lines += _speed_table(report)
    if "agreement" in report:
        lines += _agreement_table(report["agreement"])
    if "query" in report:
        lines += _query_table(report)
    lines.append(f"\nload average: {report['load_before']:.2f} before, {report['load_after']:.2f} after")
    return "\n".join(lines)


def _speed_table(report: Dict[str, Any]) -> List[str]:
    speed = report["speed"]
    lines = [
        f"speed: {report['settings']['config']} (hidden {speed['hidden_size']}), {speed['positions']} positions, "
        f"batch {speed['batch']}, median of {report['settings']['repeats']} rounds after a warm-up",
        "| scorer | pairs/s (median wall) | best | pairs per CPU-s | vs dygraph fp32 | vs Paddle Inference fp32: wall / CPU "
        "| max margin error / max margin |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in speed["rows"].items():
        lines.append(
            f"| {name} | {row['pairs_per_second']:.2f} | {row['best_pairs_per_second']:.2f} | "
            f"{row['pairs_per_cpu_second']:.2f} | {row['vs_dygraph']:.2f}x | {row['vs_inference_fp32']:.2f}x / "
            f"{row['vs_inference_fp32_cpu']:.2f}x | {row['margin_error']:.3f} |"
        )
    return lines + [""]


def _agreement_table(agreement: Dict[str, Any]) -> List[str]:
    lines = [
        f"agreement with dygraph fp32: tiny, random weights (initializer_range 0.1), {agreement['images']} images x "
        f"{agreement['captions']} captions, exhaustive",
        "| scorer | max margin error / std | top-1 t2i | top-1 i2t | top-10 overlap t2i | top-10 overlap i2t |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in agreement["rows"].items():
        lines.append(
            f"| {name} | {row['margin_error']:.3f} | {row['top1_t2i']:.3f} | {row['top1_i2t']:.3f} | "
            f"{row['top10_t2i']:.3f} | {row['top10_i2t']:.3f} |"
        )
    return lines + [""]


def _query_table(report: Dict[str, Any]) -> List[str]:
    query = report["query"]
    http = all("http" in row for row in query["rows"].values())
    lines = [
        f"query: {report['settings']['config']} (random weights, heads counted trained), a gallery index of "
        f"{query['images']} images ({query['regions_mean']:.1f} regions on average; built in {query['build_seconds']:.0f} s), "
        f"{query['queries']} captions one at a time, contrastive first stage re-ranking {query['candidates']}, top_k {QUERY_TOP_K}",
        "| precision | p50 ms | p95 ms | p50 CPU ms | p95 CPU ms | first stage ms | feature reads ms | scoring ms | top-1 as fp32 |"
        + (" HTTP p50 ms | HTTP p95 ms |" if http else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if http else ""),
    ]
    for name, row in query["rows"].items():
        stages = row["stages_ms"]
        line = (
            f"| {name} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | {row['cpu_p50_ms']:.0f} | {row['cpu_p95_ms']:.0f} | "
            f"{stages['first_stage']:.1f} | {stages['feature_reads']:.1f} | {stages['scoring']:.0f} | {row['top1_as_fp32']:.3f} |"
        )
        if http:
            line += f" {row['http']['p50_ms']:.0f} | {row['http']['p95_ms']:.0f} |"
        lines.append(line)
    return lines
