"""``vinvl train``: fine-tune from a JSON recipe, flags, or a recipe with flags overriding it.

    vinvl train vinvl-base/train_coco_ir --output_dir outputs/run1
    vinvl train tiny/train_synthetic --max_steps 20
    vinvl train my_recipe.json --output_dir outputs/run2
    vinvl train --model_name_or_path tiny --data_dir outputs/synthetic_coco --output_dir outputs/t

The recipe (the first argument: a ``.json`` file, or a shipped recipe's name ``<config>/<recipe>``
resolved by :func:`vinvl.assets.resolve_config`) is the base and every flag after it replaces
the recipe's value. ``--help`` lists the options a user sets first and is answered without
importing paddle; ``--help_all`` lists every option (the project's and paddlenlp's
TrainingArguments). The run itself is :func:`vinvl.training.run.run_training`.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["PROG", "COMMON_OPTIONS", "short_help", "split_recipe", "main"]

PROG = "vinvl train"
LIBRARY_LOG_LEVEL = "INFO"  # training reports through the Trainer's INFO lines (losses, metrics, saves)
USAGE = f"{PROG} [RECIPE] [--option VALUE ...]"
DESCRIPTION = "Fine-tune Oscar/VinVL for image-text retrieval with paddlenlp.Trainer."
EXAMPLES = (
    "vinvl train vinvl-base/train_coco_ir --output_dir outputs/run1",
    "vinvl train tiny/train_synthetic --max_steps 20",
)

# (group, [(option, metavar, one line)]): what `vinvl train --help` shows, every one an option of
# the full parser (tests/training/test_recipes.py checks).
COMMON_OPTIONS = (
    ("model", [
        ("model_name_or_path", "DIR", "converted checkpoint, or a config directory or shipped config (tiny, vinvl-base, vinvl-large: random init)"),
        ("objective", "OBJ", "itm (official), itc, itm+itc, distill or itc+distill"),
        ("hidden_dropout_prob", "P", "dropout of hidden states (recipes: 0.1, as the official run; default: the checkpoint's)"),
    ]),
    ("data", [
        ("data_dir", "DIR", "the coco_ir directory (captions, key files, features)"),
        ("train_split", "NAME", "split to train on (train)"),
        ("eval_split", "NAME", "split evaluated during training (minival)"),
    ]),
    ("output", [
        ("output_dir", "DIR", "checkpoints, logs and the final model"),
        ("overwrite_output_dir", "", "start over instead of resuming from output_dir's last complete checkpoint"),
        ("resume_from_checkpoint", "DIR", "resume from this checkpoint"),
    ]),
    ("batch and length", [
        ("total_train_batch_size", "N", "pairs per optimiser step over all devices (official: 128); derives the next two"),
        ("per_device_train_batch_size", "N", "pairs per device per forward (with a total: at most N)"),
        ("gradient_accumulation_steps", "N", "forwards per optimiser step (derived when a total is set)"),
        ("num_train_epochs", "N", "epochs over the train split"),
        ("max_steps", "N", "optimiser steps; overrides num_train_epochs"),
    ]),
    ("optimiser", [
        ("learning_rate", "LR", "peak learning rate of the linear schedule"),
        ("warmup_steps", "N", "linear warm-up steps"),
        ("weight_decay", "W", "AdamW weight decay (biases and LayerNorm weights exempt, as the official run)"),
        ("max_grad_norm", "C", "global gradient-norm clipping"),
    ]),
    ("evaluation", [
        ("evaluation_strategy", "WHEN", "no, steps or epoch"),
        ("eval_mode", "MODE", "exhaustive or two_stage"),
        ("eval_candidates", "N", "first-stage candidates per query re-ranked in two_stage mode"),
        ("per_device_eval_batch_size", "N", "pairs scored per forward when evaluating"),
        ("load_best_model_at_end", "", "end with the best checkpoint by metric_for_best_model (rsum) instead of the last step"),
    ]),
    ("other", [
        ("seed", "N", "seed of the initialisation, the order and the negatives"),
        ("logging_steps", "N", "log every N steps"),
        ("report_to", "TOOL", "visualdl or none"),
        ("fp16", "", "float16 mixed precision (GPU only)"),
        ("bf16", "", "bfloat16 mixed precision (GPU only)"),
    ]),
)


def short_help() -> str:
    """The options a user sets first, grouped; built from :data:`COMMON_OPTIONS` alone (no paddle)."""
    lines = [f"usage: {USAGE}", "", DESCRIPTION, "A recipe (first: a .json file, or a shipped recipe such as tiny/train_synthetic) is the base; flags after it override its values.", ""]
    lines += [f"  {example}" for example in EXAMPLES]
    width = max(len(f"--{name} {metavar}") for _, options in COMMON_OPTIONS for name, metavar, _ in options)
    for group, options in COMMON_OPTIONS:
        lines += ["", f"{group}:"]
        lines += [f"  {f'--{name} {metavar}'.strip().ljust(width)}  {text}" for name, metavar, text in options]
    lines += [
        "",
        "  -h, --help".ljust(width + 2) + "  show this message",
        "  --help_all".ljust(width + 2) + "  show every option (the project's and paddlenlp's TrainingArguments)",
        "",
        "Boolean options take true/false or no value (true). Docs: docs/training.md.",
    ]
    return "\n".join(lines)


def split_recipe(argv: List[str]) -> Tuple[Optional[str], List[str]]:
    """(the recipe or None, the flags): a recipe is a first argument that is not a flag (a .json file
    or a shipped recipe's name)."""
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    return None, argv


def _full_parser(given_only: bool = False) -> argparse.ArgumentParser:
    """Every option, as paddlenlp's PdArgumentParser makes them from the argument classes.

    ``given_only``: no option has a default or is required, so parsing returns only what the
    flags give (the recipe's values stay unless a flag replaces them)."""
    from paddlenlp.trainer import PdArgumentParser

    from ..training.recipe import ARGUMENT_CLASSES

    class GivenOnlyParser(PdArgumentParser):
        def add_argument(self, *names, **kwargs):
            kwargs.update(default=argparse.SUPPRESS)
            kwargs.pop("required", None)
            return super().add_argument(*names, **kwargs)

    parser_class = GivenOnlyParser if given_only else PdArgumentParser
    return parser_class(ARGUMENT_CLASSES, prog=PROG, usage=USAGE)


def parse_flags(flags: List[str]) -> Dict[str, Any]:
    """The options the flags give (typed as their fields), and none of the defaults."""
    from ..errors import UsageError
    from ..training.arguments import RENAMED_OPTIONS

    for token in flags:
        name = token[2:].split("=", 1)[0] if token.startswith("--") else None
        if name in RENAMED_OPTIONS:
            raise UsageError(f"--{name} was renamed --{RENAMED_OPTIONS[name]}")
    return vars(_full_parser(given_only=True).parse_args(flags))


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    """Train as the recipe and flags say; returns the final metrics."""
    argv = list(argv or [])
    if "--help_all" in argv:
        print(_full_parser().format_help())
        return {}
    if "-h" in argv or "--help" in argv:
        print(short_help())
        return {}
    from ..assets import resolve_config

    recipe, flags = split_recipe(argv)
    recipe = resolve_config(recipe, "RECIPE", kind="recipe") if recipe else None  # before paddle is imported
    from ..training.recipe import arguments_from_options, read_recipe
    from ..training.run import run_training

    options = read_recipe(recipe) if recipe else {}
    options.update(parse_flags(flags))
    return run_training(*arguments_from_options(options, source=recipe))
