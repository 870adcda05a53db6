"""What several commands' parsers share: the help layout, option vocabularies, checks, notices.

Nothing here imports the library: a command builds and runs its parser (``--help`` included)
before it imports anything heavy. The choices below are the command line's spelling of names
the library defines (``vinvl.data.layout.SPLITS``, ``vinvl.retrieval.first_stage.FIRST_STAGE_CHOICES``);
tests/commands/test_commands_layer.py checks that they agree. The precisions come from the leaf
module ``vinvl.precision`` itself (it imports no paddle).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Iterable, Optional, Tuple

from ..errors import UsageError
from ..precision import DETECTOR_PRECISIONS, PRECISIONS
from ..precision import check_precision as check_machine_precision

__all__ = [
    "SPLITS",
    "FIRST_STAGE_CHOICES",
    "HelpFormatter",
    "new_parser",
    "add_first_stage_argument",
    "PRECISIONS",
    "DETECTOR_PRECISIONS",
    "add_precision_argument",
    "add_detector_precision_argument",
    "check_precision",
    "reject_removed_option",
    "positive_ints",
    "require_positive",
    "require_directory",
    "detector_directory",
    "random_detector_notice",
    "write_json_report",
]

SPLITS = ("train", "minival", "val", "test")
FIRST_STAGE_CHOICES = ("auto", "exhaustive", "contrastive", "tags")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (paragraphs kept); each option's default appended to its help,
    unless it has none (None, False, empty) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        empty = default is None or default is False or (isinstance(default, (str, list, tuple)) and not default)
        if empty or default == argparse.SUPPRESS or "(default" in text:
            return text
        if not action.option_strings:
            return text
        if isinstance(default, (list, tuple)):
            default = ",".join(str(v) for v in default) if action.nargs is None else " ".join(str(v) for v in default)
        return f"{text} (default: {default})" if text else f"(default: {default})"


def new_parser(prog: Optional[str], description: str) -> argparse.ArgumentParser:
    """A command's parser: ``prog`` is how the usage line names the command (None: the script's file name)."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def add_first_stage_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--first_stage``, and the removed ``--mode`` (hidden: :func:`reject_removed_option` names its replacement)."""
    parser.add_argument(
        "--first_stage", choices=FIRST_STAGE_CHOICES, default=default,
        help="which pairs the match head scores: exhaustive (every pair); contrastive (each query's top "
             "candidates by embedding similarity); tags (top candidates by BM25 of caption words against "
             "detector tags, needs no trained heads); auto (contrastive if the model records trained "
             "contrastive heads, else exhaustive)",
    )
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision``: the match head's pair forward at fp32 (the model as trained), or bf16 / int8
    on a CPU inference runtime, or fp16 on a GPU (see docs/models.md)."""
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="precision of the match head's pair forward: fp32 (the model itself); bf16 (Paddle Inference, oneDNN; "
             "needs AVX-512 BF16 or AMX) or int8 (ONNX Runtime; needs VNNI and the int8 extra) on the CPU, exported "
             "once into MODEL_DIR/inference; fp16 on a GPU. Faster, within the tolerances of docs/benchmarks.md; a "
             "precision this machine lacks the instructions for is refused",
    )


def add_detector_precision_argument(parser: argparse.ArgumentParser, option: str = "--detector_precision") -> None:
    """The detector's precision (``vinvl extract --precision``; ``--detector_precision`` of the commands
    whose photo queries go through the detector): fp32 dygraph, bf16 on Paddle Inference or int8 on
    ONNX Runtime from a calibration (:mod:`vinvl.vision.inference`)."""
    parser.add_argument(
        option, choices=DETECTOR_PRECISIONS, default="fp32",
        help="the detector's precision: fp32 (dygraph), bf16 (Paddle Inference with oneDNN; needs a CPU with "
             "avx512_bf16 or amx_bf16) or int8 (ONNX Runtime; needs avx512_vnni, avx_vnni or amx_int8 and a "
             "calibration, vinvl calibrate-detector); refused otherwise; fidelity in docs/detector.md",
    )


def check_precision(precision: str, option: str = "--precision", supported: Tuple[str, ...] = PRECISIONS) -> None:
    """Refuse ``option``'s ``precision`` in one line when it is not one of ``supported`` or this machine
    lacks what it needs (CPU instructions, a GPU), before any model is loaded
    (:func:`vinvl.precision.check_precision`)."""
    try:
        check_machine_precision(precision, supported=supported)
    except UsageError as exc:
        raise UsageError(f"{option} {precision}: {exc}") from None


def reject_removed_option(value: Optional[object], old: str, new: str) -> None:
    """A UsageError naming ``new`` when the removed option ``old`` was given (``value`` is not None)."""
    if value is not None:
        raise UsageError(f"{old} is gone: use {new} (got {old} {value})")


def positive_ints(text: str) -> Tuple[int, ...]:
    """argparse type of options like ``--ks 8,16,64``: positive integers, comma-separated (an empty
    piece, as in ``8,,16``, is a typo and refused rather than skipped)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def require_positive(args: argparse.Namespace, names: Iterable[str]) -> None:
    """A UsageError naming the first of the ``names`` options whose value is not positive."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name} must be positive, got {value}")


def require_directory(path: str, option: str, what: str) -> None:
    """A FileNotFoundError naming ``option`` when ``path`` does not exist (NotADirectoryError for a file)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{option} {path}: no such {what} (the directory does not exist)")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{option} {path}: a file, not a {what}")


def detector_directory(path: str, option: str = "--detector") -> str:
    """The detector directory ``path`` names: itself, or the packaged directory of a shipped detector
    config (``vinvl-detector-tiny``, see :func:`vinvl.assets.resolve_config`); refused in one line
    naming ``option`` when it is neither."""
    from ..assets import resolve_config

    path = resolve_config(path, option, kind="config")
    require_directory(path, option, "detector directory")
    return path


def random_detector_notice(detector_dir: str) -> None:
    """Print one line when ``detector_dir`` holds a detector config but no weights: it then runs with
    random weights (as the shipped vinvl-detector-tiny config does), which a user should not miss."""
    from ..vision.detector import has_weights  # after parsing: imports paddle

    if os.path.isfile(os.path.join(detector_dir, "config.json")) and not has_weights(detector_dir):
        print(f"note: {detector_dir} has a config but no weights: the detector runs with random weights, "
              "so its regions and tags mean nothing (convert real ones with `vinvl convert-detector`)", file=sys.stderr)


def write_json_report(path: Optional[str], report: Any) -> None:
    """A benchmark's report as JSON at ``path`` (``--json``), when one is given."""
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
