"""Benchmark the tags first stage at scale: the gallery index's BM25 postings against BM25Index.

    python scripts/benchmark_tags.py                          # 100K and 1M images
    python scripts/benchmark_tags.py --sizes 10000 --queries 50   # smoke

Prints start-up costs (tag words, write, disk, first search) and one caption's search latency both
ways, and whether the answers agree. See vinvl.benchmarks.tags.
"""
import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_tags import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
