"""Benchmark retrieval: engine vs the reference pipeline, two-stage vs exhaustive, FLOP/s, memory.

    python scripts/benchmark_retrieval.py                      # trains the tiny model, 1K/5K gallery
    python scripts/benchmark_retrieval.py --model_dir M --num_images 1000
    python scripts/benchmark_retrieval.py --num_images 20 --train_steps 0 --baseline_pairs 64   # smoke

Same flags as `vinvl benchmark` (vinvl.commands.benchmark).
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
