"""A list of queries answered together against the same queries answered one at a time, through
the query core (:class:`vinvl.query.Retriever`), same model, gallery and options.

Together, each direction's queries share one embedding pass, one search call and one scoring call
over the union of their candidate pairs; one at a time, each query pays its own. The benchmark
checks the answers agree (same items, same order) and prints the time per query of both and their
ratio, per direction: caption -> images and image -> captions (gallery images by id).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List

from ..data import load_corpus, write_synthetic_corpus

__all__ = ["QueryBatchBenchmark", "run_benchmark", "format_table"]

from .measure import TINY_CONFIG, best_seconds


@dataclass(frozen=True)
class QueryBatchBenchmark:
    """Settings: gallery size, queries per list, options of every answer, repeats (the best is kept)."""

    num_images: int = 1000
    queries: int = 64
    top_k: int = 5
    candidates: int = 16
    first_stage: str = "contrastive"
    repeats: int = 3
    seed: int = 0


def _same_order(together: List[Dict[str, Any]], singles: List[Dict[str, Any]], key: str, item: str) -> bool:
    return all([r[item] for r in a[key]] == [r[item] for r in b[key]] for a, b in zip(together, singles))


def run_benchmark(settings: QueryBatchBenchmark, model_config: str = TINY_CONFIG) -> Dict[str, Any]:
    """Both ways per direction on a synthetic gallery and a random model whose heads count as trained."""
    import paddle

    from ..oscar import OscarConfig, OscarForImageTextRetrieval
    from ..query import Retriever

    report: Dict[str, Any] = {"settings": settings.__dict__, "load_before": os.getloadavg()[0], "directions": {}}
    with tempfile.TemporaryDirectory(prefix="vinvl-query-batch-") as work:
        corpus_dir = os.path.join(work, "corpus")
        write_synthetic_corpus(corpus_dir, {"train": 0, "minival": 0, "val": 0, "test": settings.num_images}, seed=settings.seed)
        paddle.seed(settings.seed)
        config = OscarConfig.from_pretrained(model_config)
        config.trained_heads = ["match", "contrastive"]
        model_dir = os.path.join(work, "model")
        OscarForImageTextRetrieval(config).save_pretrained(model_dir)
        retriever = Retriever(model_dir, first_stage=settings.first_stage)
        corpus = load_corpus(corpus_dir, "test")
        retriever.use_arrays(corpus.image_ids, corpus.features, corpus.tags, corpus.captions)
        options = {"top_k": settings.top_k, "candidates": settings.candidates}
        n = settings.queries
        directions = {
            "caption -> images": ([c[0] for c in corpus.captions[:n]], "images", "image_id"),
            "image -> captions": ([{"image_id": i} for i in corpus.image_ids[:n]], "captions", "caption"),
        }
        for name, (queries, key, item) in directions.items():
            together = retriever.answer(queries, **options)
            singles = [retriever.answer(q, **options)[0] for q in queries]
            seconds_together = best_seconds(lambda: retriever.answer(queries, **options), settings.repeats)
            seconds_singles = best_seconds(lambda: [retriever.answer(q, **options) for q in queries], settings.repeats)
            report["directions"][name] = {
                "together_ms_per_query": 1000 * seconds_together / len(queries),
                "singles_ms_per_query": 1000 * seconds_singles / len(queries),
                "speedup": seconds_singles / seconds_together,
                "same_order": _same_order(together, singles, key, item),
            }
    report["load_after"] = os.getloadavg()[0]
    return report


def format_table(report: Dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"{s['queries']} queries together vs one at a time ({s['num_images']} images, 5 captions each; first stage "
        f"{s['first_stage']}, candidates {s['candidates']}, top_k {s['top_k']}; best of {s['repeats']}; "
        f"machine load {report['load_before']:.1f} -> {report['load_after']:.1f})",
        "",
        "| direction | together ms/query | one at a time ms/query | speed-up | same answers |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["directions"].items():
        lines.append(
            f"| {name} | {row['together_ms_per_query']:.2f} | {row['singles_ms_per_query']:.2f} | "
            f"{row['speedup']:.2f}x | {'yes' if row['same_order'] else 'NO'} |"
        )
    return "\n".join(lines)
