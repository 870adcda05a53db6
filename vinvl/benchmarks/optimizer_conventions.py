"""How much Paddle's native optimiser conventions would move the weights away from the official rules.

One run of the project's Trainer, built from ``model_configs/vinvl-base/train_coco_ir.json`` (its
optimiser settings, total batch 128 and schedule) on ``model_configs/tiny`` and a synthetic corpus,
in float64. At every optimiser step the gradients the Trainer is about to apply are also fed to
the official rules of :mod:`vinvl.benchmarks.official_optimizer`, in several variants that start
from the same weights:

- ``official``: run_retrieval.py's rules (scheduler stepped before the update, eps on sqrt(v),
  decay of the updated weights, clipping by max_norm / (norm + 1e-6)): must track the Trainer,
  which takes the official step (:mod:`vinvl.training.official_adamw`); the check that the
  measurement measures the Trainer;
- ``paddle``: the rules with the four conventions of paddlenlp's Trainer and Paddle's AdamW and
  clipping (what the Trainer did before it took the official step);
- one variant per convention, Paddle's in that one only.

Each variant is compared with ``official`` at the end: ``|w_variant - w_official| / |w_official - w_start|``
over all weights (the difference as a share of everything training changed), and the largest
elementwise difference as a share of the largest update. The same gradients feed every variant
(open loop), so the figures are the rules' own effect, without the drift of a run fed back its
own weights. Also printed: the schedule's offset on the official base run (T = 132,780 steps).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Dict, List, Optional

import numpy as np
import paddle
from paddlenlp.trainer import TrainerCallback

from ..data import write_synthetic_corpus
from ..training.recipe import load_recipe
from ..training.run import build_trainer
from .official_optimizer import OfficialOptimizer

__all__ = ["OFFICIAL", "VARIANTS", "ReferenceTracker", "run_benchmark", "main"]

SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_RECIPE = os.path.join(SOURCE_TREE, "model_configs", "vinvl-base", "train_coco_ir.json")
TINY_CONFIG = os.path.join(SOURCE_TREE, "model_configs", "tiny")
OFFICIAL_BASE_STEPS = 132_780  # 30 epochs x ceil(566,435 / 128)

# name -> the switches of OfficialOptimizer: the official rules, Paddle's conventions, one of Paddle's at a time
OFFICIAL = dict(scheduler_after_update=False, eps_on_corrected=False, decay_before_update=False, clip_epsilon=1e-6)
VARIANTS = {
    "official": OFFICIAL,
    "paddle": dict(scheduler_after_update=True, eps_on_corrected=True, decay_before_update=True, clip_epsilon=0.0),
    "paddle schedule only": {**OFFICIAL, "scheduler_after_update": True},
    "paddle eps only": {**OFFICIAL, "eps_on_corrected": True},
    "paddle decay order only": {**OFFICIAL, "decay_before_update": True},
    "paddle clipping only": {**OFFICIAL, "clip_epsilon": 0.0},
}


def _named(model, of_grad: bool = False) -> Dict[str, np.ndarray]:
    if of_grad:
        return {n: p.grad.numpy().astype(np.float64) for n, p in model.named_parameters() if p.grad is not None}
    return {n: p.numpy().astype(np.float64) for n, p in model.named_parameters()}


class ReferenceTracker(TrainerCallback):
    """Feeds the gradients of every optimiser step of a Trainer to reference optimizers, and
    records their global norm before clipping (``grad_norms``)."""

    def __init__(self, make_references):
        self.make_references = make_references  # start weights -> {name: OfficialOptimizer}
        self.start: Optional[Dict[str, np.ndarray]] = None
        self.references: Dict[str, OfficialOptimizer] = {}
        self.grad_norms: List[float] = []

    def on_optimizer_begin(self, args, state, control, model=None, **kwargs):
        if self.start is None:
            self.start = _named(model)
            self.references = self.make_references(self.start)
        grads = _named(model, of_grad=True)
        self.grad_norms.append(float(np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))))
        for reference in self.references.values():
            reference.step(grads)


def _compare(weights: Dict[str, np.ndarray], base: Dict[str, np.ndarray], start: Dict[str, np.ndarray]) -> Dict[str, float]:
    """How far ``weights`` are from ``base``, as shares of how far ``base`` moved from ``start``."""
    diff = np.sqrt(sum(float(np.sum((weights[n] - base[n]) ** 2)) for n in base))
    moved = np.sqrt(sum(float(np.sum((base[n] - start[n]) ** 2)) for n in base))
    largest_diff = max(float(np.max(np.abs(weights[n] - base[n]))) for n in base)
    largest_move = max(float(np.max(np.abs(base[n] - start[n]))) for n in base)
    return {"relative_to_change": diff / moved, "largest_relative_to_largest_update": largest_diff / largest_move}


def run_benchmark(work_dir: str, train_images: int, seed: int) -> Dict[str, Dict[str, float]]:
    """Train the tiny model with the base recipe's optimiser for its full schedule; compare the rules."""
    corpus = os.path.join(work_dir, f"synthetic-seed{seed}-train{train_images}")
    if not os.path.isdir(corpus):
        write_synthetic_corpus(corpus, {"train": train_images, "minival": 8, "val": 0, "test": 0}, seed=seed)
    overrides = {
        "model_name_or_path": TINY_CONFIG, "data_dir": corpus, "output_dir": os.path.join(work_dir, "run"),
        "evaluation_strategy": "no", "save_strategy": "no", "do_eval": False, "report_to": ["none"],
        "disable_tqdm": True, "overwrite_output_dir": True, "seed": seed,
    }
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")  # the comparison is of rules, not of float32 rounding
    try:
        model_args, data_args, training_args = load_recipe(BASE_RECIPE, overrides)
        trainer = build_trainer(model_args, data_args, training_args)

        def references(start):
            steps = trainer.state.max_steps
            common = dict(
                learning_rate=training_args.learning_rate, weight_decay=training_args.weight_decay, total_steps=steps,
                betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon,
                max_grad_norm=training_args.max_grad_norm,
            )
            return {name: OfficialOptimizer(start, **common, **switches) for name, switches in VARIANTS.items()}

        tracker = ReferenceTracker(references)
        trainer.add_callback(tracker)
        began = time.time()
        trainer.train()
        seconds = time.time() - began
        final = _named(trainer.model)
    finally:
        paddle.set_default_dtype(previous)
    official_rules = tracker.references["official"].params
    results = {"trainer vs official rules": _compare(final, official_rules, tracker.start)}
    for name, reference in tracker.references.items():
        if name != "official":
            results[f"{name} vs official rules"] = _compare(reference.params, official_rules, tracker.start)
    results["run"] = {"steps": float(trainer.state.global_step), "seconds": seconds}
    return results


def schedule_offset(total_steps: int) -> Dict[str, float]:
    """Paddle's order (the linear schedule stepped after the update instead of before) on a run of ``total_steps``:
    each step's learning rate is higher by lr / T; the sum of all steps' rates by lr, i.e. 2 / (T - 1)."""
    return {"per_step_offset_of_peak": 1.0 / total_steps, "relative_sum_of_rates": 2.0 / (total_steps - 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark_optimizer_conventions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default="outputs/benchmark_optimizer_conventions")
    parser.add_argument("--train_images", type=int, default=200, help="synthetic train images (5 captions each)")
    parser.add_argument("--seed", type=int, default=88)
    return parser


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train_images < 2:
        parser.error(f"--train_images must be >= 2, got {args.train_images}")
    results = run_benchmark(args.work_dir, args.train_images, args.seed)
    results["schedule offset, official base run"] = schedule_offset(OFFICIAL_BASE_STEPS)
    run = results["run"]
    print(f"tiny model, base recipe's optimiser, {int(run['steps'])} steps of 128 pairs, float64, {run['seconds']:.0f} s")
    for name, figures in results.items():
        if name != "run":
            print(f"  {name}: " + ", ".join(f"{key} {value:.3g}" for key, value in figures.items()))
    return results
