"""How far Paddle's native optimiser conventions would move the weights from the official rules (the Trainer takes the official step).

    python scripts/benchmark_optimizer_conventions.py --train_images 200

Flags: vinvl.benchmarks.optimizer_conventions.
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.benchmarks.optimizer_conventions import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
