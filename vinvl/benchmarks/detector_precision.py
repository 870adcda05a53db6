"""Benchmark the detector's precisions: images/s of fp32 in dygraph, fp32 on Paddle Inference and bf16
on Paddle Inference (oneDNN), and bf16's fidelity to fp32 on the same photos.

    python scripts/benchmark_detector_precision.py                                   # X152-C4, random weights
    python scripts/benchmark_detector_precision.py --detector vinvl-detector-tiny
    python scripts/benchmark_detector_precision.py --detector models/vinvl-detector photo.jpg ...

Without image files it runs on the ten COCO photos shipped with the package. The three detectors
are loaded in this process (loading and the export of a config-only directory are timed apart),
each detects the first photo once untimed, then every photo is detected by each in turn, the order
rotating from photo to photo, so a machine whose load changes shares it evenly among the three.
Speed is reported as wall-clock images/s and as CPU seconds per image (process time: on a shared
machine the fairer figure), with the ratios over both fp32 runs. Fidelity
(:mod:`vinvl.vision.agreement`): boxes matched at IoU > 0.99, same class, same attributes and the
feature error of matched boxes, for fp32 on Paddle Inference against dygraph and bf16 against both.
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Sequence

import numpy as np

from ..precision import check_precision
from ..runtime import default_num_threads
from ..vision.agreement import compare_detections
from ..vision.image import load_image
from ..vision.inference import load_detector

# (label, precision, runtime) of the three detectors compared.
RUNS = (
    ("fp32 dygraph", "fp32", "auto"),
    ("fp32 Paddle Inference", "fp32", "inference"),
    ("bf16 Paddle Inference", "bf16", "auto"),
)


def time_runs(detectors: Dict[str, object], images: Sequence[np.ndarray]) -> Dict[str, dict]:
    """Each detector's results on ``images`` and its wall and CPU seconds per image, run in rotating order
    (photo i starts with detector i mod 3), after one untimed detection of the first photo each."""
    names = list(detectors)
    for name in names:
        detectors[name].detect(images[:1])
    runs = {name: {"results": [None] * len(images), "seconds": [], "cpu_seconds": []} for name in names}
    for i, image in enumerate(images):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            start, cpu_start = time.perf_counter(), time.process_time()
            runs[name]["results"][i] = detectors[name].detect([image])[0]
            runs[name]["seconds"].append(time.perf_counter() - start)
            runs[name]["cpu_seconds"].append(time.process_time() - cpu_start)
    return runs


def report(runs: Dict[str, dict]) -> List[str]:
    """Speed and fidelity lines of :func:`time_runs`' output (its first detector is the fp32 dygraph one)."""
    names = list(runs)
    wall = {n: float(np.sum(runs[n]["seconds"])) for n in names}
    cpu = {n: float(np.mean(runs[n]["cpu_seconds"])) for n in names}
    count = len(runs[names[0]]["seconds"])
    lines = []
    for name in names:
        ratios = ", ".join(
            f"{cpu[ref] / cpu[name]:.2f}x CPU / {wall[ref] / wall[name]:.2f}x wall over {ref}"
            for ref in names[:2]
            if ref != name
        )
        lines.append(
            f"{name}: {count / wall[name]:.3f} images/s wall, {cpu[name]:.2f} CPU s/image"
            + (f" ({ratios})" if ratios else "")
        )
    dygraph, fp32, bf16 = names
    for other, ref in ((fp32, dygraph), (bf16, fp32), (bf16, dygraph)):
        agreement = compare_detections(runs[ref]["results"], runs[other]["results"])
        lines.append(f"{other} against {ref}: {agreement.summary()}")
    return lines


def benchmark_precisions(paths: Sequence[str], detector_dir: str) -> List[str]:
    """The benchmark's lines for the photo files ``paths`` with the detector of ``detector_dir``."""
    check_precision("bf16")
    images = [load_image(path) for path in paths]
    threads = int(os.environ.get("OMP_NUM_THREADS") or default_num_threads())
    lines = [f"detector: {detector_dir}; {len(images)} photos; {threads} threads"]
    detectors = {}
    for label, precision, runtime in RUNS:
        start, cpu_start = time.perf_counter(), time.process_time()
        detectors[label] = load_detector(detector_dir, precision, num_threads=threads, runtime=runtime)
        lines.append(
            f"{label}: loaded (and exported, for a config-only directory) in {time.perf_counter() - start:.1f} s "
            f"({time.process_time() - cpu_start:.1f} s CPU)"
        )
    return lines + report(time_runs(detectors, images))

