"""``scripts/benchmark_precision.py``: pair scoring at fp32, bf16 and int8 against fp32 dygraph and
fp32 Paddle Inference (:mod:`vinvl.benchmarks.precision`)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

from .options import new_parser, require_positive, write_json_report

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Score one batch of full-length pairs with the dygraph model and with the inference runtimes at fp32,
bf16 and int8 (vinvl.oscar.inference), and a synthetic gallery exhaustively with the tiny model at
each precision; print pairs/s, the ratios, the margin error and the ranking agreement with fp32."""


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
    parser.add_argument("--json", help="write the report here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Both parts, two tables; returns the report."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("batch", "repeats", "agreement_images"))
    from ..benchmarks.precision import PrecisionBenchmark, format_table, run_benchmark

    settings = PrecisionBenchmark(
        config=args.config, batch=args.batch, repeats=args.repeats, agreement_images=args.agreement_images
    )
    report = run_benchmark(settings)
    print(format_table(report))
    write_json_report(args.json, report)
    return report
