"""Training throughput: Trainer path vs a plain fixed-padding loop (the seed's style), same model and data.

    python scripts/benchmark_training.py --steps 60 --batch_size 32

Flags: vinvl.commands.benchmark_training (`python scripts/benchmark_training.py --help`).
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_training import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
