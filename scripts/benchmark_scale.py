"""Benchmark the scale path end to end: a synthetic gallery built with `vinvl index build`, served
with `vinvl serve` and queried over HTTP (first stages exact, faiss, tags; 1, 4, 16 clients).

    python scripts/benchmark_scale.py [--num_images 10000] [--work_dir DIR] [--json report.json]

Prints build, nprobe, latency and breakdown tables. See vinvl.benchmarks.scale.
"""
import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_scale import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
