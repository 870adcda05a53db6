"""Benchmark the retrieval service's HTTP layer alone (handler answers at once): PaddleNLP's own route vs vinvl's.

    python scripts/benchmark_service_layer.py --model_dir M [--requests 1000] [--regions 6]

Prints per request: median wall time and server CPU time, for a caption and a features request.
Localhost only. See vinvl.benchmarks.service_layer.
"""
import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_service_layer import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
