"""Benchmark the detector's precisions: images/s of fp32 in dygraph, fp32 on Paddle Inference, bf16
on Paddle Inference (oneDNN) and int8 on ONNX Runtime, and the fidelity of each to fp32 on the same
photos.

    python scripts/benchmark_detector_precision.py                                   # X152-C4, random weights
    python scripts/benchmark_detector_precision.py --detector vinvl-detector-tiny
    python scripts/benchmark_detector_precision.py --detector models/vinvl-detector photo.jpg ...

Without image files it runs on the ten COCO photos shipped with the package. The first
``calibration_photos`` of them calibrate int8 (:mod:`vinvl.vision.calibration`) in a temporary
copy of the detector directory (its config copied, its weights linked), so the user's own
calibration is neither used nor replaced; every detector is measured on the other photos, which
the calibration has not seen. The four detectors are loaded in this process (loading, the export
of a config-only directory and the calibration are timed apart), each detects the first photo
once untimed, then every photo is detected by each in turn, the order rotating from photo to
photo, so a machine whose load changes shares it evenly among them. Speed is reported as
wall-clock images/s and as CPU seconds per image (process time: on a shared machine the fairer
figure), with the ratios over both fp32 runs. Fidelity (:mod:`vinvl.vision.agreement`): boxes
matched at IoU > 0.99, same class, same attributes and the feature error of matched boxes, for
fp32 on Paddle Inference against dygraph and each lower precision against both.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np

from ..errors import UsageError
from ..oscar.model_dir import SAFE_WEIGHTS_NAME
from ..precision import check_precision
from ..runtime import process_num_threads
from ..vision.agreement import compare_detections
from ..vision.calibration import calibrate_detector
from ..vision.detector import has_weights
from ..vision.image import load_image
from ..vision.inference import load_detector

# (label, precision, runtime) of the detectors compared; the first two are the fp32 references.
RUNS = (
    ("fp32 dygraph", "fp32", "auto"),
    ("fp32 Paddle Inference", "fp32", "inference"),
    ("bf16 Paddle Inference", "bf16", "auto"),
    ("int8 ONNX Runtime", "int8", "auto"),
)


def time_runs(detectors: Dict[str, object], images: Sequence[np.ndarray]) -> Dict[str, dict]:
    """Each detector's results on ``images`` and its wall and CPU seconds per image, run in rotating order
    (photo i starts with detector i mod the number of detectors), after one untimed detection of the
    first photo each."""
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
    """Speed and fidelity lines of :func:`time_runs`' output (its first two detectors are the fp32 references)."""
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
    dygraph, fp32 = names[:2]
    pairs = [(fp32, dygraph)] + [(other, ref) for other in names[2:] for ref in (fp32, dygraph)]
    for other, ref in pairs:
        agreement = compare_detections(runs[ref]["results"], runs[other]["results"])
        lines.append(f"{other} against {ref}: {agreement.summary()}")
    return lines


def calibrated_copy(detector_dir: str, photos: Sequence[str], work_dir: str) -> str:
    """A copy of ``detector_dir`` in ``work_dir`` (config copied, weights linked) calibrated for int8 on ``photos``."""
    copy = os.path.join(work_dir, "detector")
    os.makedirs(copy)
    shutil.copy(os.path.join(detector_dir, "config.json"), copy)
    if has_weights(detector_dir):
        os.symlink(os.path.abspath(os.path.join(detector_dir, SAFE_WEIGHTS_NAME)), os.path.join(copy, SAFE_WEIGHTS_NAME))
    calibrate_detector(copy, photos, f"the benchmark's first {len(photos)} photos", progress=False)
    return copy


def benchmark_precisions(paths: Sequence[str], detector_dir: str, calibration_photos: int) -> List[str]:
    """The benchmark's lines for the photo files ``paths`` with the detector of ``detector_dir``; the
    first ``calibration_photos`` calibrate int8, the others are measured."""
    for precision in ("bf16", "int8"):
        check_precision(precision)
    if len(paths) <= calibration_photos:
        raise UsageError(f"{len(paths)} photos leave none to measure after the {calibration_photos} that calibrate int8")
    images = [load_image(path) for path in paths[calibration_photos:]]
    threads = process_num_threads()
    lines = [
        f"detector: {detector_dir}; {len(images)} photos measured, {calibration_photos} more calibrate int8; "
        f"{threads} threads"
    ]
    with tempfile.TemporaryDirectory(prefix="vinvl-detector-benchmark-") as work_dir:
        start, cpu_start = time.perf_counter(), time.process_time()
        int8_dir = calibrated_copy(detector_dir, paths[:calibration_photos], work_dir)
        lines.append(
            f"int8: calibrated on {calibration_photos} photos in {time.perf_counter() - start:.1f} s "
            f"({time.process_time() - cpu_start:.1f} s CPU)"
        )
        detectors = {}
        for label, precision, runtime in RUNS:
            start, cpu_start = time.perf_counter(), time.process_time()
            path = int8_dir if precision == "int8" else detector_dir
            detectors[label] = load_detector(path, precision, num_threads=threads, runtime=runtime)
            lines.append(
                f"{label}: loaded (and exported, for a config-only directory) in {time.perf_counter() - start:.1f} s "
                f"({time.process_time() - cpu_start:.1f} s CPU)"
            )
        return lines + report(time_runs(detectors, images))
