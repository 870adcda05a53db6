"""Benchmark the gallery index: open time and memory, exact vs faiss first-stage latency, faiss recall@k.

    python scripts/benchmark_index.py                                  # 10K, 100K and 1M images, 256-d
    python scripts/benchmark_index.py --sizes 10000 --queries 20       # smoke

Needs faiss-cpu (pip install -e ".[faiss]"). Writes under --root (default /tmp) and deletes it.
See vinvl.benchmarks.index for what is measured.
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_index import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
