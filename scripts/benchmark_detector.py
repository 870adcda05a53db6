"""Benchmark the VinVL detector: seconds and peak memory per image, backbone FLOP/s over a matmul's.

    python scripts/benchmark_detector.py tests/data/coco_minitest/*.jpg                 # X152-C4, random weights
    python scripts/benchmark_detector.py --detector model_configs/vinvl-detector-tiny tests/data/coco_minitest/*.jpg

Same flags as vinvl.vision.benchmark.
"""
import vinvl  # noqa: F401  (tunes the CPU runtime before paddle loads)
from vinvl.vision.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
