"""``vinvl make-synthetic OUT``: a synthetic corpus in the official coco_ir file format
(:func:`vinvl.data.synthetic.write_synthetic_corpus`)."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .options import SPLITS, new_parser

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Write a synthetic COCO retrieval corpus in exactly the official file format, learnable by design:
scenes of objects from the VinVL vocabulary, region features from class prototypes plus noise, noisy
detector tags and five captions per image. The same seed gives the same corpus."""

DEFAULT_IMAGES = {"train": 500, "minival": 50, "val": 50, "test": 100}


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl make-synthetic", DESCRIPTION)
    parser.add_argument("out_dir", help="new directory to write the corpus to (it must not exist, or be empty)")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=DEFAULT_IMAGES[split], help=f"images in the {split} split")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same corpus")
    parser.add_argument("--captions_format", choices=("pt", "pd", "json"), default="pt",
                        help="captions file format: pt (torch.save, as the official files), pd (paddle.save, as the "
                             "Paddle port) or json")
    parser.add_argument("--predictions_format", choices=("dict", "list"), default="dict",
                        help="a feature row's predictions: dict ({objects, image_h, image_w}) or list (bare objects)")
    parser.add_argument("--layout", choices=("official", "detector"), default="official",
                        help="official (features/<split>/features.tsv + predictions.tsv), or detector: the VinVL "
                             "detector's own output in one folder, for exactly one split")
    parser.add_argument("--num_classes", type=int, default=60, help="size of the VinVL class subset used")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Write the corpus and print where; returns its path."""
    args = build_parser().parse_args(argv)
    from ..data.synthetic import write_synthetic_corpus

    path = write_synthetic_corpus(
        args.out_dir,
        {s: getattr(args, s) for s in SPLITS},
        seed=args.seed,
        captions_format=args.captions_format,
        predictions_format=args.predictions_format,
        layout=args.layout,
        num_classes=args.num_classes,
    )
    print(f"wrote {path}")
    return path
