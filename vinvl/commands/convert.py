"""``vinvl convert SRC DST``: an official Oscar/VinVL, a cattidea/VinVL-Paddle or a BERT checkpoint
-> a vinvl-paddle model directory (:func:`vinvl.oscar.convert.convert_checkpoint`)."""
from __future__ import annotations

import argparse
import json
import logging
from typing import Optional, Sequence, Tuple

from .options import new_parser

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Convert a checkpoint directory into a vinvl-paddle model directory (config.json, model.safetensors,
tokenizer files). SRC may be an official Oscar/VinVL checkpoint, a cattidea/VinVL-Paddle checkpoint,
a HuggingFace or PaddleNLP BERT, or a vinvl-paddle model directory (copied, with --set applied).
Nothing is written to DST unless the whole conversion succeeds."""


def _override(text: str) -> Tuple[str, object]:
    """``KEY=VALUE`` -> (KEY, VALUE parsed as JSON when it is JSON, else the text)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl convert", DESCRIPTION)
    parser.add_argument(
        "src",
        help="checkpoint dir: official Oscar/VinVL, cattidea/VinVL-Paddle (fine-tuned checkpoint-N or "
        "pre-trained), HuggingFace/PaddleNLP BERT, or a vinvl-paddle model dir",
    )
    parser.add_argument("dst", help="output model directory (config.json, model.safetensors, vocab.txt)")
    parser.add_argument(
        "--set", dest="config_overrides", metavar="KEY=VALUE", action="append", type=_override, default=[],
        help="override an OscarConfig field (VALUE parsed as JSON when possible); repeatable",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Convert, print the output directory; a refused conversion raises ConversionError (status 2)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ..oscar.convert import convert_checkpoint

    print(convert_checkpoint(args.src, args.dst, config_overrides=dict(args.config_overrides), overwrite=args.overwrite))
    return 0
