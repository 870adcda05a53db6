"""``scripts/benchmark_precision_gate.py``: the precisions' fidelity gate on a trained tiny stand-in
(:mod:`vinvl.benchmarks.precision_gate`)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

from .options import new_parser, require_positive, write_json_report

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Train the tiny config on a synthetic corpus (or reuse the one a finished run left in --work_dir),
then rank a sample of its 1K-image x 5K-caption test split at fp32, bf16, int8 dynamic and int8
static (calibrated on the gallery) and print, per precision, top-1 / top-10 agreement with fp32
both ways, the margin errors, R@1/5/10 and whether it meets the gate (top-1 >= 0.99 both ways,
R@K within 0.2 points)."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("--work_dir", default="outputs/precision-gate",
                        help="the corpus and the trained stand-in are kept here and reused")
    parser.add_argument("--train_steps", type=int, default=3000, help="training steps of the stand-in")
    parser.add_argument("--train_images", type=int, default=4000, help="synthetic training images")
    parser.add_argument("--images", type=int, default=1000, help="gallery images (5 captions each)")
    parser.add_argument("--caption_queries", type=int, default=300, help="captions ranked over every image")
    parser.add_argument("--image_queries", type=int, default=100, help="images ranked over every caption")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, the training and the sample")
    parser.add_argument("--json", help="write the report here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The gate's table; returns the report."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("train_steps", "train_images", "images", "caption_queries", "image_queries"))
    from ..benchmarks.precision_gate import GateSettings, format_gate, run_gate

    report = run_gate(GateSettings(
        work_dir=args.work_dir, train_steps=args.train_steps, train_images=args.train_images, images=args.images,
        caption_queries=args.caption_queries, image_queries=args.image_queries, seed=args.seed,
    ))
    print(format_gate(report))
    write_json_report(args.json, report)
    return report
