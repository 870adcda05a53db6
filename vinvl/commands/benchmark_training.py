"""``scripts/benchmark_training.py``: training throughput of the Trainer path against a plain loop
(:func:`vinvl.benchmarks.training.run_benchmark`)."""
from __future__ import annotations

import argparse
from typing import Dict, Optional, Sequence

from .options import new_parser, require_positive

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Training throughput: the Trainer path (vinvl.training.run, dynamic padding) against a plain loop
in the seed's style (every pair padded to 70 + 70), same model, data, seed, objective and
optimiser; prints samples/s of both and their ratio."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("--model", help="model directory, or config directory or shipped config name (random init) (default: tiny)")
    parser.add_argument("--work_dir", default="outputs/benchmark_training", help="the corpus and the Trainer's output go here")
    parser.add_argument("--train_images", type=int, default=200, help="synthetic train images (5 captions each)")
    parser.add_argument("--steps", type=int, default=60, help="training steps of each path")
    parser.add_argument("--batch_size", type=int, default=32, help="items (positive + negative) per step")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="peak learning rate (linear decay)")
    parser.add_argument("--weight_decay", type=float, default=0.05, help="AdamW weight decay")
    parser.add_argument("--max_seq_len", type=int, default=70, help="text tokens per pair")
    parser.add_argument("--max_img_seq_len", type=int, default=70, help="regions per pair")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, the initial weights and the sampling")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Run both paths; returns samples/s of each and their ratio."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("train_images", "steps", "batch_size"))
    from ..benchmarks.measure import TINY_CONFIG
    from ..benchmarks.training import TrainingBenchmark, run_benchmark

    settings = dict(vars(args), model=args.model or TINY_CONFIG)
    return run_benchmark(TrainingBenchmark(**settings))
