"""Benchmark the detector: seconds and peak memory per image, and the conv FLOP/s it achieves.

    python scripts/benchmark_detector.py tests/data/coco_minitest/*.jpg          # X152-C4, random weights
    python scripts/benchmark_detector.py --detector models/vinvl-detector photo.jpg

For each image, one ``detect``: its wall and CPU time (they differ when other processes compete
for the cores), the growth of the resident set while it runs
(sampled) and the process's peak resident set so far; inside it, the time and conv FLOPs
(counted from the layers' shapes) of the backbone (stem + res2..res4) and of the res5 head on the
RoIs, whose ratio (achieved FLOP/s) is reported over the FLOP/s of a large fp32 matmul measured
in the same process (best of 5). FLOP/s are per CPU-second of the process, for the stages and the
matmul alike, so the ratio holds on a machine where other processes take turns on the cores.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from paddle import nn
from PIL import Image

from ..retrieval.benchmark import matmul_flops_per_second, measure_memory
from .config import DetectorConfig
from .detector import VinVLDetector
from .transforms import resize_image


class StageMeter:
    """While attached to a layer: its forward time and the FLOPs of every ``nn.Conv2D`` under it (hooks).

    FLOPs per conv: 2 x output elements x input channels per group x kernel area.
    """

    def __init__(self, layer: nn.Layer) -> None:
        self.flops = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._start = (0.0, 0.0)
        convs = [sub for sub in layer.sublayers() if isinstance(sub, nn.Conv2D)]
        self._hooks = [conv.register_forward_post_hook(self._count) for conv in convs]
        self._hooks.append(layer.register_forward_pre_hook(self._begin))
        self._hooks.append(layer.register_forward_post_hook(self._end))

    def _begin(self, layer, inputs) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def _end(self, layer, inputs, output) -> None:  # paddle's CPU kernels are synchronous
        self.seconds += time.perf_counter() - self._start[0]
        self.cpu_seconds += time.process_time() - self._start[1]

    def _count(self, layer: nn.Conv2D, inputs, output) -> None:
        _, in_per_group, kh, kw = layer.weight.shape
        self.flops += 2 * int(np.prod(output.shape)) * in_per_group * kh * kw

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def benchmark_image(detector: VinVLDetector, image: np.ndarray) -> Dict[str, float]:
    """One ``detect``: its time and memory, and the time and conv FLOPs of the backbone and the res5 head in it."""
    backbone = StageMeter(detector.backbone)
    head = StageMeter(detector.roi_heads.box.feature_extractor.head)
    try:
        with measure_memory(trace_python=False) as memory:
            start, cpu_start = time.perf_counter(), time.process_time()
            result = detector.detect([image])[0]
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        backbone.remove()
        head.remove()
    config = detector.config
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rss_growth_mb": memory.rss_growth_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "detections": len(result),
        "input_hw": resize_image(image, config["INPUT.MIN_SIZE_TEST"], config["INPUT.MAX_SIZE_TEST"]).shape[:2],
        "backbone_seconds": backbone.seconds,
        "backbone_cpu_seconds": backbone.cpu_seconds,
        "backbone_flops": float(backbone.flops),
        "head_seconds": head.seconds,
        "head_cpu_seconds": head.cpu_seconds,
        "head_flops": float(head.flops),
    }


def matmul_flops_per_cpu_second(size: int, repeats: int = 5) -> float:
    """FLOP/s per CPU-second of :func:`matmul_flops_per_second`'s fp32 ``size`` x ``size`` matmuls.

    Its ``repeats`` timed runs and one warm-up, over the process CPU time they took: CPU time, not
    wall time, so that the comparison with the stages (also per CPU-second) holds on a machine
    where other processes take turns on the cores.
    """
    start = time.process_time()
    matmul_flops_per_second(size, repeats)
    return (repeats + 1) * 2.0 * size**3 / (time.process_time() - start)


def _stage(row: Dict[str, float], stage: str, matmul: float) -> str:
    """``backbone 438.0 GFLOP in 20.1 s (6.5 s CPU) = 67.4 GFLOP/s per CPU-second, 0.71 of matmul``."""
    flops, wall, cpu = row[f"{stage}_flops"], row[f"{stage}_seconds"], row[f"{stage}_cpu_seconds"]
    name = "res5 head" if stage == "head" else stage
    return (
        f"{name} {flops / 1e9:.1f} GFLOP in {wall:.1f} s ({cpu:.1f} s CPU) = {flops / cpu / 1e9:.1f} GFLOP/s "
        f"per CPU-second, {flops / cpu / matmul:.2f} of matmul"
    )


def run_benchmark(detector: VinVLDetector, images: Sequence[np.ndarray], matmul_size: int) -> List[str]:
    """Report lines for ``images``, each detected once (the first includes paddle's first-call set-up)."""
    rows = [benchmark_image(detector, image) for image in images]
    matmul = matmul_flops_per_cpu_second(matmul_size)
    lines = [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"]
    lines.append(f"matmul {matmul_size}^2 fp32: {matmul / 1e9:.1f} GFLOP/s per CPU-second")
    for i, row in enumerate(rows):
        lines.append(
            f"image {i} ({row['input_hw'][0]}x{row['input_hw'][1]} input, {row['detections']} detections): "
            f"{row['seconds']:.1f} s ({row['cpu_seconds']:.1f} s of CPU), peak RSS growth {row['rss_growth_mb']:.0f} MB "
            f"(process peak {row['peak_rss_mb']:.0f} MB); " + _stage(row, "backbone", matmul) + "; " + _stage(row, "head", matmul)
        )
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    lines.append(
        f"mean over {len(rows)} images: {mean('seconds'):.1f} s/image ({mean('cpu_seconds'):.1f} s of CPU), "
        f"peak RSS growth {mean('rss_growth_mb'):.0f} MB/image, process peak {max(r['peak_rss_mb'] for r in rows):.0f} MB; "
        f"FLOP/s per CPU-second over the matmul's: backbone {mean('backbone_flops') / mean('backbone_cpu_seconds') / matmul:.2f}, "
        f"res5 head {mean('head_flops') / mean('head_cpu_seconds') / matmul:.2f}"
    )
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files to run")
    parser.add_argument("--detector", help="detector directory (default: VinVL X152-C4 with random weights)")
    parser.add_argument("--matmul_size", type=int, default=2048)
    args = parser.parse_args(argv)
    if args.detector:
        detector = VinVLDetector.from_pretrained(args.detector)
    else:
        detector = VinVLDetector(DetectorConfig.vinvl_x152c4()).init_weights()
    params = sum(int(np.prod(p.shape)) for p in detector.parameters())
    print(f"detector: {args.detector or 'VinVL X152-C4 (random weights)'}, {params / 1e6:.1f} M parameters")
    images = [np.asarray(Image.open(path).convert("RGB")) for path in args.images]
    for line in run_benchmark(detector, images, args.matmul_size):
        print(line)
    return 0
