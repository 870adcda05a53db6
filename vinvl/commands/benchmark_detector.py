"""``scripts/benchmark_detector.py``: the detector's time, memory and FLOP/s per photo, or the memory
of ``vinvl extract`` over many photos (:mod:`vinvl.benchmarks.detector`)."""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from .options import detector_directory, new_parser, random_detector_notice

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Benchmark the VinVL detector: for each photo, one detection's wall and CPU time, resident-memory
growth, and the conv FLOP/s of the backbone and the res5 head over a large matmul's; or, with
--extract_memory N, the resident set of `vinvl extract` over N photos (links cycling through the
given ones)."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(None, DESCRIPTION)
    parser.add_argument("images", nargs="*", help="image files to run (default: the ten COCO photos shipped with the package)")
    parser.add_argument("--detector", help="detector directory or shipped detector config (default: VinVL X152-C4 with random weights)")
    parser.add_argument("--matmul_size", type=int, default=2048, help="side of the reference fp32 matmul")
    parser.add_argument(
        "--extract_memory", type=int, metavar="N",
        help="instead: run `vinvl extract` on N photos (links cycling through the images) and report its RSS over the run",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark and print its lines."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.extract_memory is not None:
        if args.extract_memory < 1:
            parser.error("--extract_memory must be at least 1")
        if not args.detector:
            parser.error("--extract_memory needs --detector (a detector directory or shipped config, e.g. vinvl-detector-tiny)")
        missing = [path for path in args.images if not os.path.isfile(path)]
        if missing:
            parser.error(f"no such image file: {', '.join(missing)}")
    if args.detector:
        args.detector = detector_directory(args.detector)
        random_detector_notice(args.detector)
    from ..benchmarks.detector import SHIPPED_PHOTOS, benchmark_photos, run_extraction_memory

    images = args.images or SHIPPED_PHOTOS
    if args.extract_memory is not None:
        lines = run_extraction_memory(images, args.extract_memory, args.detector)
    else:
        lines = benchmark_photos(images, args.detector, args.matmul_size)
    print("\n".join(lines))
    return 0
