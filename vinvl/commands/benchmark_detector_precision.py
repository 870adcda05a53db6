"""``scripts/benchmark_detector_precision.py``: the detector's images/s in fp32 (dygraph and Paddle
Inference), bf16 (Paddle Inference) and int8 (ONNX Runtime), and the fidelity of each to fp32
(:mod:`vinvl.benchmarks.detector_precision`)."""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from ..precision import check_precision
from .options import detector_directory, new_parser, random_detector_notice, require_positive

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Benchmark the VinVL detector's precisions on the same photos: images/s (wall) and CPU seconds per
image of fp32 in dygraph, fp32 on Paddle Inference, bf16 on Paddle Inference with oneDNN and int8
on ONNX Runtime, run in rotating order; then the boxes matched (IoU > 0.99), classes, attributes and
feature error of each against both fp32 runs. int8 is calibrated in a temporary copy of the
detector on the first --calibration_photos photos, which are then not measured. Needs a CPU with
bf16 instructions (avx512_bf16 or amx_bf16) and int8 ones (avx512_vnni, avx_vnni or amx_int8)."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("images", nargs="*",
                        help="image files to run (default: the ten COCO photos shipped with the package)")
    parser.add_argument("--detector",
                        help="detector directory or shipped detector config (default: VinVL X152-C4 with random weights)")
    parser.add_argument("--calibration_photos", type=int, default=5,
                        help="how many of the photos (the first ones) calibrate int8 instead of being measured")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print its lines."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for precision in ("bf16", "int8"):  # refused before loading anything on a CPU without them
        check_precision(precision)
    require_positive(args, ("calibration_photos",))
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        parser.error(f"no such image file: {', '.join(missing)}")
    args.detector = detector_directory(args.detector or "vinvl-detector-x152c4")
    random_detector_notice(args.detector)
    from ..benchmarks.detector import SHIPPED_PHOTOS
    from ..benchmarks.detector_precision import benchmark_precisions

    print("\n".join(benchmark_precisions(args.images or SHIPPED_PHOTOS, args.detector, args.calibration_photos)), flush=True)
    return 0
