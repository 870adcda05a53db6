"""``scripts/benchmark_precision.py``: pair scoring at fp32, bf16 and int8 against fp32 dygraph and
fp32 Paddle Inference, and a caption query's latency over a gallery index at each precision
(:mod:`vinvl.benchmarks.precision`)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence, Tuple

from .options import new_parser, require_positive, write_json_report

__all__ = ["build_parser", "main"]

PARTS = ("speed", "agreement", "query")

DESCRIPTION = """\
Score one batch of full-length pairs with the dygraph model and with the inference runtimes at fp32,
bf16 and int8 (vinvl.oscar.inference), and a synthetic gallery exhaustively with the tiny model at
each precision; print pairs/s, the ratios, the margin error and the ranking agreement with fp32.
The query part indexes a synthetic gallery with --config and times caption queries one at a time
through vinvl.query.Retriever at fp32, bf16 and int8 (p50 / p95 and the split per stage; with
--http through `vinvl serve` too)."""


def _parts(text: str) -> Tuple[str, ...]:
    """argparse type of ``--parts``: comma-separated names of :data:`PARTS`."""
    parts = tuple(text.split(","))
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(PARTS)} separated by commas, got {text!r}")
    return parts


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument(
        "--config", default="vinvl-base", help="model config of the speed part, random weights (default: %(default)s)"
    )
    parser.add_argument("--batch", type=int, default=16, help="pairs per forward pass (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is kept (default: %(default)s)")
    parser.add_argument(
        "--agreement_images", type=int, default=40,
        help="gallery images (5 captions each) of the agreement part (default: %(default)s)",
    )
    parser.add_argument("--parts", type=_parts, default=PARTS, help="which parts to run (default: all: %(default)s)")
    parser.add_argument(
        "--query_images", type=int, default=300, help="images (10-50 regions each) of the query part's index (default: %(default)s)"
    )
    parser.add_argument("--queries", type=int, default=32, help="captions the query part times (default: %(default)s)")
    parser.add_argument(
        "--candidates", type=int, default=16, help="images the first stage proposes for re-ranking (default: %(default)s)"
    )
    parser.add_argument("--http", action="store_true", help="also time the query part's captions through `vinvl serve`")
    parser.add_argument("--json", help="write the report here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The parts asked for, a table each; returns the report."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("batch", "repeats", "agreement_images", "query_images", "queries", "candidates"))
    from ..benchmarks.precision import PrecisionBenchmark, format_table, run_benchmark

    settings = PrecisionBenchmark(
        config=args.config, batch=args.batch, repeats=args.repeats, agreement_images=args.agreement_images,
        query_images=args.query_images, queries=args.queries, candidates=args.candidates, http=args.http, parts=args.parts,
    )
    report = run_benchmark(settings)
    print(format_table(report))
    write_json_report(args.json, report)
    return report
