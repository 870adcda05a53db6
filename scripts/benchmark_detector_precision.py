"""Benchmark the detector in fp32 (dygraph, Paddle Inference), bf16 (Paddle Inference, oneDNN) and int8
(ONNX Runtime, calibrated on the first photos): images/s, and the boxes matched, classes,
attributes and feature error of each against fp32.

    python scripts/benchmark_detector_precision.py                                   # X152-C4, random weights, shipped photos
    python scripts/benchmark_detector_precision.py --detector vinvl-detector-tiny photo.jpg ...

Flags: vinvl.commands.benchmark_detector_precision (`python scripts/benchmark_detector_precision.py --help`).
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_detector_precision import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
