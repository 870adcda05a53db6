"""Benchmark first stages for a checkpoint whose contrastive heads are untrained: fitted heads, tags, trained heads.

    python scripts/benchmark_first_stage.py                    # trains the tiny model, 250-image gallery
    python scripts/benchmark_first_stage.py --model_dir M --data_dir D --ks 8,16,64

Same flags as vinvl.training.first_stage_benchmark.
"""
import vinvl  # noqa: F401  (tunes the CPU runtime before paddle loads)
from vinvl.training.first_stage_benchmark import main

if __name__ == "__main__":
    main()
