"""Benchmark the detector in fp32 (dygraph, Paddle Inference) and bf16 (Paddle Inference, oneDNN):
images/s, and bf16's boxes matched, classes, attributes and feature error against fp32.

    python scripts/benchmark_detector_precision.py                                   # X152-C4, random weights, shipped photos
    python scripts/benchmark_detector_precision.py --detector vinvl-detector-tiny photo.jpg ...

Flags: vinvl.commands.benchmark_detector_precision (`python scripts/benchmark_detector_precision.py --help`).
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_detector_precision import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
