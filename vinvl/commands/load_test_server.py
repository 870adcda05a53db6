"""``scripts/load_test_server.py``: load-test the retrieval service on 127.0.0.1
(:func:`vinvl.benchmarks.load_test.load_test`)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

from ..errors import UsageError
from .options import FIRST_STAGE_CHOICES, new_parser, require_positive, write_json_report

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Load-test the retrieval service on 127.0.0.1: for each worker count, `vinvl serve` over an index,
then paired in-process / HTTP latencies of a fixed query mix, and N concurrent clients for T seconds
with every answer checked against the in-process Taskflow's. Prints a Markdown table."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("--index", required=True, help="gallery index directory")
    parser.add_argument("--model_dir", required=True, help="the model the index was built with")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="uvicorn worker counts to run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each concurrent run")
    parser.add_argument("--bad_fraction", type=float, default=0.1, help="share of bad requests under load")
    parser.add_argument("--repeats", type=int, default=3, help="sequential calls per query (latency, overhead)")
    parser.add_argument("--warmup_seconds", type=float, default=10.0, help="concurrent load before the measured run")
    parser.add_argument("--top_k", type=int, default=5, help="results per query")
    parser.add_argument("--first_stage", choices=FIRST_STAGE_CHOICES, default="auto", help="first stage of every query")
    parser.add_argument("--candidates", type=int, default=16, help="first-stage candidates per query")
    parser.add_argument("--batch_size", type=int, default=32, help="pairs per forward pass")
    parser.add_argument("--json", help="write the full report here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run :func:`~vinvl.benchmarks.load_test.load_test`, print its table; returns the report."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("clients", "seconds", "repeats", "top_k", "candidates", "batch_size"))
    if args.warmup_seconds < 0 or not 0 <= args.bad_fraction <= 1:
        raise UsageError("--warmup_seconds must be >= 0 and --bad_fraction in [0, 1]")
    from ..benchmarks.load_test import format_table, load_test

    options = {"top_k": args.top_k, "first_stage": args.first_stage, "candidates": args.candidates, "batch_size": args.batch_size}
    report = load_test(
        args.index, args.model_dir, workers=args.workers, clients=args.clients, seconds=args.seconds,
        bad_fraction=args.bad_fraction, repeats=args.repeats, options=options, warmup_seconds=args.warmup_seconds,
    )
    print(format_table(report))
    write_json_report(args.json, report)
    return report
