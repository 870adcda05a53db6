"""``scripts/benchmark_service_layer.py``: the retrieval service's HTTP layer alone
(:mod:`vinvl.benchmarks.service_layer`)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

from .options import new_parser, require_positive, write_json_report

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Measure the retrieval service's HTTP layer alone, on 127.0.0.1: PaddleNLP's own route and vinvl's,
each around a handler that answers at once; per request, the median wall time and the server's CPU
time, for a caption request and a features request."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("--model_dir", required=True, help="a saved model (loaded by the Taskflow the route needs; never run)")
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per kind and server")
    parser.add_argument("--regions", type=int, default=6, help="regions of the features request")
    parser.add_argument("--json", help="write the report here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Both servers, one table; returns the report."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("requests", "regions"))
    from ..benchmarks.service_layer import format_table, run_benchmark

    report = run_benchmark(args.model_dir, args.requests, args.regions)
    print(format_table(report))
    write_json_report(args.json, report)
    return report
