"""``vinvl calibrate-detector PHOTOS --detector DIR``: static int8 for a detector, calibrated on a
sample of the user's photos (:func:`vinvl.vision.calibration.calibrate_detector`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ..precision import check_precision
from .options import detector_directory, new_parser, random_detector_notice, require_positive

__all__ = ["build_parser", "main"]

DEFAULT_PHOTOS = 16

DESCRIPTION = """\
Calibrate int8 for the detector in DIR: its convolutions run in int8 on ONNX Runtime, their
activation scales fixed from what the fp32 detector computes on photos of your own (a random
sample of PHOTOS), written to DIR/int8_calibration with the sha256 of its config and weights.
--precision int8 (vinvl extract) and --detector_precision int8 (retrieve, serve, Taskflow) then
run it; after the config or weights change it is refused until you calibrate again. The photos
should look like the ones you will extract: the scales are only as good as the sample.
See docs/detector.md."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl calibrate-detector", DESCRIPTION)
    parser.add_argument("images", metavar="PHOTOS",
                        help="a folder of .jpg/.jpeg/.png photos, or a list file (one path per line), as vinvl extract reads")
    parser.add_argument("--detector", required=True, metavar="DIR",
                        help="detector directory (config.json [+ model.safetensors]) to calibrate; the calibration is "
                             "written into it")
    parser.add_argument("--photos", type=int, default=DEFAULT_PHOTOS, metavar="N",
                        help="how many photos of PHOTOS to calibrate on (all of them when it has fewer)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the sample")
    parser.add_argument("--recursive", action="store_true", help="also take the photos in the folder's subfolders")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Calibrate; prints the manifest, returns the calibration directory."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("photos",))
    check_precision("int8")  # a CPU without int8 instructions is refused before any work
    args.detector = detector_directory(args.detector)
    from ..vision.calibration import calibrate_detector, check_calibratable, sample_photos

    check_calibratable(args.detector)
    photos = sample_photos(args.images, args.photos, args.seed, recursive=args.recursive)
    random_detector_notice(args.detector)
    source = f"{os.path.abspath(args.images)} ({len(photos)} photos, seed {args.seed})"
    path = calibrate_detector(args.detector, photos, source, progress=not args.no_progress)
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
        print(f.read())
    print(f"calibration: {path}", file=sys.stderr)
    return path
