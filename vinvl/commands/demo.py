"""``vinvl demo``: the whole flow in one command (:func:`vinvl.apps.demo.run_demo`)."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .options import new_parser

__all__ = ["SIZES", "build_parser", "main"]

SIZES = ("default", "ci")  # vinvl.apps.demo.SIZES

DESCRIPTION = """\
The whole flow on an embedded default, in a few minutes on a CPU: write a synthetic corpus in the
official file format, fine-tune the tiny Oscar config with the PaddleNLP Trainer, evaluate exhaustive
and two-stage retrieval, answer a few queries through Taskflow("image_text_retrieval"), run the
untrained tiny detector on the ten COCO photos shipped with the package, and write an HTML
report. A work directory the demo wrote is reused (its outputs replaced); any other non-empty one is
refused."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl demo", DESCRIPTION)
    parser.add_argument("--work_dir", default="vinvl_demo",
                        help="directory for the corpus, model and report: new, empty, or an earlier demo's (replaced)")
    parser.add_argument("--size", choices=SIZES, default="default", help="'ci' is a smaller, faster run")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the synthetic corpus and of training: the same seed gives the same run")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Run the demo; returns the report's path."""
    args = build_parser().parse_args(argv)
    from ..apps.demo import run_demo

    return run_demo(args.work_dir, args.size, args.seed)
