"""One optimiser step of the project's Trainer, built from the base recipe, against the official
fine-tuning's optimiser rules as written, applied to the same gradients.

The Trainer is built from model_configs/vinvl-base/train_coco_ir.json (total batch 128 as 16 x 8
accumulation on one device, lr 2e-5, weight decay 0.05, linear schedule without warm-up, clipping
at 1.0) on the tiny model config, in float64, and stopped after two updates. The gradients it is
about to apply at each update are also fed to :class:`OfficialOptimizer`, the rules of
microsoft/Oscar's run_retrieval.py written out in numpy (no-decay groups by name, scheduler
stepped before the update, pytorch_transformers' AdamW, clip_grad_norm_). The two must agree: the
same parameters decayed, the same learning rate at each update, the weights to float64 rounding
(the issue's bound is 1e-4 relative). Each of Paddle's native conventions (scheduler stepped after
the update, eps on the bias-corrected root, decay of the weights before the update, clipping
without the 1e-6) moves the weights far beyond that agreement, so the comparison would see the
Trainer lose any of the official ones. The recipe's clipping norm is not reached by the tiny
model's gradients, so a second run clips at 0.01.
"""
import os

import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults before paddle)
import paddle
from paddlenlp.trainer import TrainerCallback

from vinvl.benchmarks.official_optimizer import OfficialOptimizer, official_decays, official_lr_factor
from vinvl.benchmarks.optimizer_conventions import VARIANTS, ReferenceTracker
from vinvl.data import write_synthetic_corpus
from vinvl.training.recipe import load_recipe
from vinvl.training.run import build_trainer

from support.paths import REPO, TINY_MODEL

BASE_RECIPE = os.path.join(REPO, "model_configs", "vinvl-base", "train_coco_ir.json")
UPDATES = 2
CONTRASTIVE_HEADS = ("text_proj.", "image_proj.", "contrastive_logit_scale")


class StopAfter(TrainerCallback):
    """Stops training after ``updates`` optimiser steps (the schedule keeps the recipe's length)
    and records the learning rate each update used."""

    def __init__(self, updates: int):
        self.updates = updates
        self.learning_rates = []

    def on_optimizer_begin(self, args, state, control, optimizer=None, **kwargs):
        self.learning_rates.append(optimizer.get_lr())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.updates:
            control.should_training_stop = True


@pytest.fixture(scope="module", params=[None, 0.01], ids=["recipe", "clipping"])
def run(request, tmp_path_factory):
    """The Trainer after two updates of the base recipe (or of the recipe clipping at 0.01), and the
    reference optimizers fed its gradients."""
    root = tmp_path_factory.mktemp("official_optimizer")
    corpus = str(root / "corpus")
    write_synthetic_corpus(corpus, {"train": 30, "minival": 4, "val": 0, "test": 0}, seed=11)  # 150 captions
    overrides = {
        "model_name_or_path": TINY_MODEL, "data_dir": corpus, "output_dir": str(root / "run"),
        "do_eval": False, "evaluation_strategy": "no", "save_strategy": "no", "report_to": ["none"],
        "disable_tqdm": True, "overwrite_output_dir": True,
    }
    if request.param is not None:
        overrides["max_grad_norm"] = request.param
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")  # compare the rules, not float32 rounding
    try:
        model_args, data_args, training_args = load_recipe(BASE_RECIPE, overrides)
        trainer = build_trainer(model_args, data_args, training_args)
        names = {param.name: name for name, param in trainer.model.named_parameters()}

        def references(start):
            common = dict(
                learning_rate=training_args.learning_rate, weight_decay=training_args.weight_decay,
                total_steps=trainer.state.max_steps, betas=(training_args.adam_beta1, training_args.adam_beta2),
                eps=training_args.adam_epsilon, max_grad_norm=training_args.max_grad_norm,
            )
            return {name: OfficialOptimizer(start, **common, **switches) for name, switches in VARIANTS.items()}

        tracker, stop = ReferenceTracker(references), StopAfter(UPDATES)
        trainer.add_callback(tracker)
        trainer.add_callback(stop)
        trainer.train()
        final = {name: param.numpy() for name, param in trainer.model.named_parameters()}
        optimizer = trainer.optimizer
        decayed = {names[p.name] for p in optimizer.trained_parameters if optimizer.apply_decay_param_fun(p.name)}
    finally:
        paddle.set_default_dtype(previous)
    return dict(trainer=trainer, training_args=training_args, tracker=tracker, stop=stop, final=final,
                decayed=decayed, grad_norms=tracker.grad_norms, clipped=request.param is not None)


def test_the_run_is_the_base_recipes(run):
    args = run["training_args"]
    assert args.batch_plan.total == 128 and (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 8)
    assert (args.learning_rate, args.weight_decay, args.warmup_steps) == (2e-5, 0.05, 0)
    assert args.max_grad_norm == (0.01 if run["clipped"] else 1.0)
    assert str(args.lr_scheduler_type.value) == "linear"
    assert run["trainer"].state.global_step == UPDATES
    assert run["trainer"].state.max_steps == 30 * 2  # 30 epochs of ceil(150 / 128) steps
    assert run["final"]["classifier.weight"].dtype == np.float64
    # The clipping run clips both updates; the recipe's norm is beyond the tiny model's gradients.
    assert (min(run["grad_norms"]) > args.max_grad_norm) == run["clipped"], run["grad_norms"]


def test_the_trainer_decays_the_parameters_the_official_rule_decays(run):
    optimized = set(run["final"])
    assert run["decayed"] == {name for name in optimized if official_decays(name)}
    exempt = optimized - run["decayed"]
    assert any(name.endswith("LayerNorm.weight") for name in exempt)  # what paddlenlp's own rule would decay
    assert any(name.endswith(".bias") for name in exempt)


def test_the_learning_rate_of_each_update_is_the_official_schedules(run):
    total, lr = run["trainer"].state.max_steps, run["training_args"].learning_rate
    official = run["tracker"].references["official"]
    assert len(run["stop"].learning_rates) == UPDATES
    for update, used in enumerate(run["stop"].learning_rates, start=1):
        # The official loop steps the scheduler before the optimizer: update k uses the schedule's value at k.
        assert used == pytest.approx(lr * official_lr_factor(update, total), rel=1e-12)
        assert used == pytest.approx(official.lr_of_step(update), rel=1e-12)
        assert used != pytest.approx(lr * official_lr_factor(update - 1, total), rel=1e-6)  # paddlenlp's order


def _relative_to_change(run, variant: str) -> float:
    """|w_trainer - w_reference| / |w_reference - w_start| over all weights."""
    start, reference, final = run["tracker"].start, run["tracker"].references[variant].params, run["final"]
    diff = np.sqrt(sum(np.sum((final[name] - reference[name]) ** 2) for name in start))
    moved = np.sqrt(sum(np.sum((reference[name] - start[name]) ** 2) for name in start))
    return float(diff / moved)


def _disagreement(run, variant: str) -> float:
    """The largest difference between the Trainer's weights and a reference's, as a share of the
    reference's largest update of that tensor, over the tensors the updates moved."""
    start, reference = run["tracker"].start, run["tracker"].references[variant].params
    worst = 0.0
    for name in start:
        update = np.abs(reference[name] - start[name]).max()
        if update > 0:
            worst = max(worst, np.abs(run["final"][name] - reference[name]).max() / update)
    return worst


def test_two_updates_equal_the_official_rules_as_written(run):
    start, reference = run["tracker"].start, run["tracker"].references["official"].params
    moved = {name for name in start if not np.array_equal(run["final"][name], start[name])}
    # Every weight moved but the contrastive heads, which the official objective (itm) gives no gradient.
    assert sorted(set(start) - moved) == sorted(name for name in start if name.startswith(CONTRASTIVE_HEADS))
    assert {name for name in start if not np.array_equal(reference[name], start[name])} == moved
    assert _disagreement(run, "official") < 1e-8  # measured: about 1e-12 (float64 rounding)
    assert _relative_to_change(run, "official") < 1e-4  # the bound


@pytest.mark.parametrize("variant", [name for name in VARIANTS if name != "official"])
def test_the_comparison_sees_each_paddle_convention(run, variant):
    """Each of Paddle's conventions on its own (and all four) moves the rules' weights by far more
    than the agreement above, so the Trainer losing any official convention would fail that test
    (the clipping one only acts when the gradients are clipped)."""
    if variant == "paddle clipping only" and not run["clipped"]:
        assert _disagreement(run, variant) < 1e-8
        return
    assert _disagreement(run, variant) > 1e-7  # the decay order, the smallest: lr x weight decay = 1e-6 of an update


def test_warm_up_keeps_the_official_order(tmp_path):
    """With warm-up the k-th update's rate is the official schedule's at k too (1/W of the peak first)."""
    corpus = str(tmp_path / "corpus")
    write_synthetic_corpus(corpus, {"train": 4, "minival": 2, "val": 0, "test": 0}, seed=3)
    model_args, data_args, training_args = load_recipe(BASE_RECIPE, {
        "model_name_or_path": TINY_MODEL, "data_dir": corpus, "output_dir": str(tmp_path / "run"),
        "do_eval": False, "evaluation_strategy": "no", "report_to": ["none"], "warmup_steps": 3,
    })
    trainer = build_trainer(model_args, data_args, training_args)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    lr = training_args.learning_rate
    used = []
    for _ in range(10):  # as paddlenlp's loop: the update reads the rate, then the scheduler steps
        used.append(trainer.optimizer.get_lr())
        trainer.lr_scheduler.step()
    assert used == pytest.approx([lr * official_lr_factor(k, 10, warmup_steps=3) for k in range(1, 11)], rel=1e-12)
    assert used[0] == pytest.approx(lr / 3) and used[-1] == 0.0
