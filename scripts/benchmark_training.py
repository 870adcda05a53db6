"""Training throughput: Trainer path vs a plain fixed-padding loop (the seed's style), same model and data.

    python scripts/benchmark_training.py --steps 60 --batch_size 32

Flags: vinvl.training.benchmark.
"""
import vinvl  # noqa: F401  (tunes the CPU runtime before paddle loads)
from vinvl.training.benchmark import main

if __name__ == "__main__":
    main()
