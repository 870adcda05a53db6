"""Benchmark the VinVL detector: seconds and peak memory per image, backbone FLOP/s over a matmul's;
or (--extract_memory N) the resident set of `vinvl extract` over N photos.

    python scripts/benchmark_detector.py                                      # X152-C4, random weights, shipped photos
    python scripts/benchmark_detector.py --detector vinvl-detector-tiny photo.jpg ...
    python scripts/benchmark_detector.py --detector vinvl-detector-tiny --extract_memory 1000

Flags: vinvl.commands.benchmark_detector (`python scripts/benchmark_detector.py --help`).
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_detector import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
