"""``scripts/benchmark_query_batch.py``: a list of queries answered together vs one at a time
(:mod:`vinvl.benchmarks.query_batch`)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

from .options import new_parser, require_positive, write_json_report

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Answer a list of queries together and the same queries one at a time through the query core
(vinvl.query.Retriever), on a synthetic gallery with the tiny model; print ms per query of both,
their ratio and whether the answers agree, for caption -> images and image -> captions."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("--num_images", type=int, default=1000, help="gallery images (5 captions each) (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=64, help="queries per list (default: %(default)s)")
    parser.add_argument("--candidates", type=int, default=16, help="first-stage candidates per query (default: %(default)s)")
    parser.add_argument("--top_k", type=int, default=5, help="results per query (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is kept (default: %(default)s)")
    parser.add_argument("--json", help="write the report here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Both ways, one table; returns the report."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("num_images", "queries", "candidates", "top_k", "repeats"))
    from ..benchmarks.query_batch import QueryBatchBenchmark, format_table, run_benchmark

    settings = QueryBatchBenchmark(
        num_images=args.num_images, queries=args.queries, top_k=args.top_k, candidates=args.candidates, repeats=args.repeats
    )
    report = run_benchmark(settings)
    print(format_table(report))
    write_json_report(args.json, report)
    return report
