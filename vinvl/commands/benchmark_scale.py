"""``scripts/benchmark_scale.py``: the scale path measured end to end (:mod:`vinvl.benchmarks.scale`)."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from typing import Any, Dict, Optional, Sequence

from ..errors import UsageError
from .options import new_parser, require_positive, write_json_report

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Write a synthetic gallery of --num_images images (10-50 regions of 2054 floats each, sharing
--distinct_images feature rows), build its index with `vinvl index build` (with and without faiss:
wall time, peak RSS, disk), choose the faiss nprobe that reaches recall@16 >= 0.95 against exact
(a faiss answer tied with exact's 16th score counts as a hit), time each stage of a query in
process, then serve each index with `vinvl serve` on 127.0.0.1 and query it over HTTP at 1, 4 and 16
clients: captions with the first stages exact, faiss and tags, and gallery images' captions
(image -> captions) with exact and tags (p50/p95/p99 latency, requests/s). Prints markdown tables."""

BUILDS = ("exact", "faiss")
BYTES_PER_REGION = 2054 * 4 * 4 / 3  # float32 in base64, as features.tsv stores it
BYTES_PER_IMAGE = 12_000  # its predictions.tsv row (~2 KB), captions, index columns and embeddings, Arrow cache


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("--num_images", type=int, default=10_000, help="gallery images (default: %(default)s)")
    parser.add_argument(
        "--distinct_images", type=int, default=10_000,
        help="features.tsv rows (images with region contents of their own); later images share them (default: %(default)s)",
    )
    parser.add_argument("--queries", type=int, default=64, help="distinct captions sent (default: %(default)s)")
    parser.add_argument("--requests_per_client", type=int, default=200, help="at most this many requests per client and run (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="at most this long per run (default: %(default)s)")
    parser.add_argument(
        "--work_dir",
        help="an empty or new folder for the gallery, model and indexes, or one holding only the gallery (and model) of an "
        "earlier run with the same gallery settings, which is reused (default: a temporary one, removed at the end)",
    )
    parser.add_argument(
        "--builds", nargs="+", choices=BUILDS, default=list(BUILDS),
        help="the indexes to build and serve: exact (no faiss file) and faiss; with faiss alone, the tags and image -> "
        "captions first stages run on the faiss index, which they search the same way (default: both)",
    )
    parser.add_argument(
        "--tags_first_stage", type=int, nargs="+", metavar="N",
        help="instead: time the tags first stage alone (tag words, BM25 build, search) over N images, for each N given",
    )
    parser.add_argument("--json", help="write the report here")
    return parser


def _check_space(folder: str, num_images: int, distinct_images: int) -> None:
    """A UsageError before anything is written when the gallery (unless written earlier) and its index cannot
    fit in ``folder``."""
    from ..benchmarks.scale import GALLERY_STAMP

    written = os.path.exists(os.path.join(folder, "gallery", GALLERY_STAMP))
    rows = 0 if written else distinct_images * 30 * BYTES_PER_REGION  # 30 regions on average, one features.tsv row per distinct image
    needed = (rows + num_images * BYTES_PER_IMAGE) * 1.2
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise UsageError(f"{folder}: {free / 2**30:.1f} GB free, the gallery needs about {needed / 2**30:.1f} GB")


def _check_work_dir(work_dir: str, settings) -> None:
    """A UsageError unless ``work_dir`` is new, empty, or holds only a finished gallery written with the same
    gallery settings (and the model of that run)."""
    from ..benchmarks.scale import written_gallery

    present = set(os.listdir(work_dir)) if os.path.exists(work_dir) else set()
    if not present:
        return
    reusable = "gallery" in present and present <= {"gallery", "model"}
    if not reusable or written_gallery(os.path.join(work_dir, "gallery"), settings) is None:
        raise UsageError(
            f"--work_dir {work_dir}: not empty (the benchmark writes its gallery and indexes there; it reuses only a "
            "finished gallery of the same settings, with nothing else beside it but the model)"
        )


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The benchmark, its tables printed; returns the report."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("num_images", "distinct_images", "queries", "requests_per_client", "seconds"))
    from ..benchmarks.scale import (
        ScaleBenchmark,
        format_tables,
        format_tags_first_stage,
        run_benchmark,
        tags_first_stage,
    )

    settings = ScaleBenchmark(
        num_images=args.num_images, distinct_images=min(args.distinct_images, args.num_images), queries=args.queries,
        requests_per_client=args.requests_per_client, seconds=args.seconds, builds=tuple(b for b in BUILDS if b in args.builds),
    )
    if args.tags_first_stage is not None:
        if min(args.tags_first_stage) <= 0:
            raise UsageError(f"--tags_first_stage sizes must be positive, got {min(args.tags_first_stage)}")
        rows = [tags_first_stage(n, settings) for n in args.tags_first_stage]
        print(format_tags_first_stage(rows))
        report: Dict[str, Any] = {"tags_first_stage": rows, "load": os.getloadavg()[0]}
        write_json_report(args.json, report)
        return report
    if args.work_dir is not None:
        _check_work_dir(args.work_dir, settings)
    if args.work_dir is None:
        with tempfile.TemporaryDirectory(prefix="vinvl-scale-") as work_dir:
            _check_space(work_dir, args.num_images, settings.distinct_images)
            report = run_benchmark(settings, work_dir)
    else:
        os.makedirs(args.work_dir, exist_ok=True)
        _check_space(args.work_dir, args.num_images, settings.distinct_images)
        report = run_benchmark(settings, args.work_dir)
    print(format_tables(report))
    write_json_report(args.json, report)
    return report
