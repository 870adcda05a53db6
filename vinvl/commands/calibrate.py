"""``vinvl calibrate``: static int8 for a model, calibrated on a sample of the user's gallery
(:func:`vinvl.retrieval.calibration.calibrate`).

    vinvl calibrate --model_dir M --gallery_dir D [--split S] [--pairs N] [--seed S]
    vinvl calibrate --model_dir M --index DIR [--pairs N] [--seed S]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ..errors import UsageError
from .options import SPLITS, new_parser, require_directory, require_positive

__all__ = ["build_parser", "main"]

DEFAULT_PAIRS = 512  # vinvl.retrieval.calibration.DEFAULT_PAIRS (not imported: --help loads no paddle)

DESCRIPTION = """\
Calibrate static int8 for MODEL_DIR: the match head's encoder MatMuls with activation scales fixed
from pairs of your own gallery (half matching, half not, padded as retrieval pads them), written to
MODEL_DIR/int8_calibration with the weights' sha256. --precision int8 (eval, retrieve, serve,
Taskflow) then runs it; after the weights change it is refused until you calibrate again. Without a
calibration, int8 quantizes activations per batch (dynamic). See docs/models.md."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl calibrate", DESCRIPTION)
    parser.add_argument("--model_dir", required=True, help="the saved model to calibrate")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gallery_dir", help="a data directory the coco_ir loading script reads (the gallery)")
    source.add_argument("--index", help="a gallery index (vinvl index build) whose images have captions")
    parser.add_argument("--split", choices=SPLITS, default="test", help="the split of --gallery_dir")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="calibration pairs, half matching")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Calibrate; prints the manifest, returns the calibration directory."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("pairs",))
    require_directory(args.model_dir, "--model_dir", "model directory")
    require_directory(args.gallery_dir or args.index, "--gallery_dir" if args.gallery_dir else "--index",
                      "data directory" if args.gallery_dir else "gallery index")
    if args.index is not None and args.split != "test":
        raise UsageError("--split picks a split of --gallery_dir; an index has none")
    from ..retrieval.calibration import calibrate

    if args.gallery_dir:
        from ..data import load_corpus
        from ..retrieval import Gallery

        gallery = Gallery.from_corpus(load_corpus(args.gallery_dir, args.split))
        source = f"{os.path.abspath(args.gallery_dir)} (split {args.split})"
    else:
        from ..index.sample import sample_index_gallery

        gallery = sample_index_gallery(args.index, args.pairs, args.seed)
        source = f"{os.path.abspath(args.index)} (index)"
    path = calibrate(args.model_dir, gallery, args.pairs, args.seed, source)
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
        print(f.read())
    print(f"calibration: {path}", file=sys.stderr)
    return path
