"""Pair scoring at fp32, bf16 and int8 (:mod:`vinvl.oscar.inference`) against fp32 dygraph and fp32
Paddle Inference, in one process, on the same weights and inputs.

Two parts:

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
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from ..data import load_corpus, write_synthetic_corpus

__all__ = ["PrecisionBenchmark", "run_benchmark", "format_table"]

SCORERS = ("dygraph fp32", "fp32", "bf16", "int8 dynamic", "int8 static")


@dataclass(frozen=True)
class PrecisionBenchmark:
    """Settings: the speed part's config, batch and repeats; the agreement part's gallery size."""

    config: str = "vinvl-base"
    batch: int = 16
    repeats: int = 3
    agreement_images: int = 40
    seed: int = 0


def _saved_random_model(model_dir: str, config: str, seed: int, initializer_range: Optional[float] = None):
    import paddle

    from ..oscar.model_dir import load_retrieval_model

    paddle.seed(seed)
    overrides = {"initializer_range": initializer_range} if initializer_range else None
    model, _ = load_retrieval_model(config, config_overrides=overrides)
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


def run_benchmark(settings: PrecisionBenchmark) -> Dict[str, Any]:
    """Both parts in temporary directories; the report holds the load average before and after."""
    from ..precision import check_precision

    for precision in ("bf16", "int8"):
        check_precision(precision)  # refuse at once on a CPU without the instructions
    report: Dict[str, Any] = {"settings": settings.__dict__, "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="vinvl-precision-") as work:
        report["speed"] = _speed(work, settings)
        report["agreement"] = _agreement(work, settings)
    report["load_after"] = os.getloadavg()[0]
    return report


def format_table(report: Dict[str, Any]) -> str:
    """Two markdown tables (speed, agreement) and the load."""
    speed, agreement = report["speed"], report["agreement"]
    lines: List[str] = [
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
    lines += [
        "",
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
    lines.append(f"\nload average: {report['load_before']:.2f} before, {report['load_after']:.2f} after")
    return "\n".join(lines)
