"""Benchmark first stages for a checkpoint whose contrastive heads are untrained: fitted heads, tags, trained heads.

    python scripts/benchmark_first_stage.py                    # trains the tiny model, 250-image gallery
    python scripts/benchmark_first_stage.py --model_dir M --data_dir D --ks 8,16,64

Flags: vinvl.commands.benchmark_first_stage (`python scripts/benchmark_first_stage.py --help`).
"""

import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_first_stage import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
