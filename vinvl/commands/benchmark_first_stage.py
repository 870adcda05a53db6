"""``scripts/benchmark_first_stage.py``: first stages for a checkpoint whose contrastive heads are
untrained (:func:`vinvl.benchmarks.first_stage.run_benchmark`; its module docstring says what is measured)."""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Optional, Sequence, Tuple

from ..errors import UsageError
from .options import new_parser, positive_ints, require_positive

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Benchmark first stages for a checkpoint whose contrastive heads are untrained: the tiny model trained
on the synthetic corpus (or --model_dir) with its contrastive heads reset, then fitted (per
--fit_objectives, and over fixed lists with --fit_lists), against tags (BM25) and the originally
trained heads, each at every k of --ks: two-stage R@K, its change from exhaustive, pairs scored and
coverage. Writes WORK_DIR/first_stage_benchmark.json."""


def _names(text: str) -> Tuple[str, ...]:
    return tuple(text.split(","))


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("--model_dir", help="a trained model (default: train the shipped tiny config first)")
    parser.add_argument("--data_dir", help="a coco_ir corpus: train split to fit on, test split as gallery (default: synthetic)")
    parser.add_argument("--work_dir", default="outputs/first_stage_benchmark", help="corpus, models and the JSON go here")
    parser.add_argument("--num_images", type=int, default=250, help="gallery images (5 captions each, synthetic)")
    parser.add_argument("--train_images", type=int, default=1000, help="synthetic train images")
    parser.add_argument("--train_steps", type=int, default=2000, help="steps training the tiny model (without --model_dir)")
    parser.add_argument("--ks", type=positive_ints, default=(8, 16, 64), help="first-stage candidates per query, comma-separated")
    parser.add_argument("--fit_objectives", type=_names, default=("distill", "itc"),
                        help="objectives the reset heads are fitted with, comma-separated (those without itm)")
    parser.add_argument("--fit_steps", type=int, default=600, help="steps of each fitting run")
    parser.add_argument("--fit_eval_every", type=int, default=150, help="steps between the curve's points")
    parser.add_argument("--fit_batch_size", type=int, default=32, help="fitting batch (distill scores batch^2 pairs)")
    parser.add_argument("--fit_learning_rate", type=float, default=5e-3, help="constant learning rate of the heads")
    parser.add_argument("--fit_distill_temperature", type=float, default=1.0,
                        help="divides the match head's margins before their softmax (distill targets)")
    parser.add_argument("--fit_lists", type=int, default=8, help="candidates per query of the fixed-list fit (0: no such fit)")
    parser.add_argument("--fit_lists_hidden_size", type=int, default=256, help="its heads' MLP width (0: linear)")
    parser.add_argument("--fit_lists_data_dir",
                        help="the coco_ir collection whose train split it distils on (default: --data_dir)")
    parser.add_argument("--fit_lists_steps", type=int, default=3000, help="steps of the fixed-list fit")
    parser.add_argument("--fit_lists_batch_size", type=int, default=256, help="queries per step of that fit")
    parser.add_argument("--fit_lists_eval_every", type=int, default=1000, help="steps between its curve's points")
    parser.add_argument("--fit_lists_mined", type=int, default=0,
                        help="then continue that fit with each list holding this many mined candidates more (0: no)")
    parser.add_argument("--fit_lists_mined_steps", type=int, default=3000, help="steps of that continued fit")
    parser.add_argument("--batch_size", type=int, default=256, help="engine pairs per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus, training and head resets")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def _check(args: argparse.Namespace) -> None:
    require_positive(args, ("num_images", "train_images", "train_steps", "fit_steps", "fit_eval_every", "batch_size",
                            "fit_lists_steps", "fit_lists_batch_size", "fit_lists_eval_every", "fit_lists_mined_steps"))
    for name in ("fit_lists", "fit_lists_hidden_size", "fit_lists_mined"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.fit_lists_mined and not args.fit_lists:
        raise UsageError("--fit_lists_mined continues the --fit_lists fit: give --fit_lists N too")
    if args.fit_lists_data_dir is not None and not os.path.isdir(args.fit_lists_data_dir):
        raise UsageError(f"--fit_lists_data_dir {args.fit_lists_data_dir!r} does not exist")
    if args.fit_batch_size < 2:
        raise UsageError(f"--fit_batch_size must be >= 2 (candidates come from the batch), got {args.fit_batch_size}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the benchmark; returns its report (also in WORK_DIR/first_stage_benchmark.json)."""
    args = build_parser().parse_args(argv)
    _check(args)
    from ..benchmarks.first_stage import FirstStageBenchmark, run_benchmark
    from ..training.losses import OBJECTIVES

    fitting = tuple(o for o in OBJECTIVES if "itm" not in o)
    bad = [o for o in args.fit_objectives if o not in fitting]
    if bad:
        raise UsageError(f"--fit_objectives must be among {', '.join(fitting)}, got {', '.join(bad)}")
    settings = {name: value for name, value in vars(args).items() if name != "no_progress"}
    return run_benchmark(FirstStageBenchmark(**settings, progress=not args.no_progress))
