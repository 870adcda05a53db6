"""``vinvl convert-detector CKPT DST``: an official VinVL detector checkpoint -> a detector directory
(:func:`vinvl.vision.convert.convert_detector`)."""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from .options import new_parser

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Convert an official VinVL detector checkpoint (scene_graph_benchmark's .pth, read without torch) into
a detector directory (config.json, model.safetensors). The architecture is VinVL's X152-C4 unless
--config names an official yaml, a detector directory or a shipped detector config (vinvl-detector-tiny,
vinvl-detector-x152c4); KEY VALUE pairs override either, as on test_sg_net.py's command line.
Every tensor must find its place, or the conversion is refused with nothing written."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl convert-detector", DESCRIPTION)
    parser.add_argument("checkpoint", metavar="CKPT", help="official scene_graph_benchmark checkpoint (.pth)")
    parser.add_argument("dst", metavar="DST", help="output detector directory (config.json, model.safetensors)")
    parser.add_argument("overrides", metavar="KEY VALUE", nargs="*", help="official config keys to override, in pairs")
    parser.add_argument("--config", dest="config_file", metavar="CONFIG",
                        help="official yaml, detector directory or shipped detector config name (default: VinVL X152-C4)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Convert and print the output directory; a refused conversion raises ConversionError (status 2)."""
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ..vision.convert import convert_detector

    print(convert_detector(args.checkpoint, args.dst, config_file=args.config_file, overrides=args.overrides,
                           overwrite=args.overwrite))
    return 0
