"""The precisions' fidelity gate: a trained tiny stand-in's 1K x 5K ranking at fp32, bf16, int8
dynamic and int8 static, against fp32.

    python scripts/benchmark_precision_gate.py [--work_dir outputs/precision-gate] [--train_steps 3000]
        [--caption_queries 300] [--image_queries 100] [--json report.json]

See vinvl.benchmarks.precision_gate.
"""
import os

from vinvl.commands.cli import run_main  # importing vinvl first tunes the CPU runtime and quiets start-up noise
from vinvl.commands.benchmark_precision_gate import main

if __name__ == "__main__":
    raise SystemExit(run_main(main, prog=os.path.basename(__file__)))
