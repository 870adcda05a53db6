"""Benchmark pair scoring at fp32, bf16 and int8 against fp32 dygraph and fp32 Paddle Inference.

    python scripts/benchmark_precision.py [--config vinvl-base] [--batch 16] [--agreement_images 40]

Prints pairs/s per scorer with its ratios, and the margin error and ranking agreement with fp32.
See vinvl.benchmarks.precision.
"""
import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_precision import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
