"""Benchmark a list of queries answered together against the same queries one at a time (the query core).

    python scripts/benchmark_query_batch.py [--num_images 1000] [--queries 64] [--candidates 16]

Prints ms per query both ways, the speed-up and whether the answers agree. See vinvl.benchmarks.query_batch.
"""
import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_query_batch import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
