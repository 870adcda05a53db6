"""Benchmark the detector: seconds and peak memory per image, and the conv FLOP/s it achieves.

    python scripts/benchmark_detector.py tests/data/coco_minitest/*.jpg          # X152-C4, random weights
    python scripts/benchmark_detector.py --detector models/vinvl-detector photo.jpg

For each image: the wall time of ``detect`` and the growth of the resident set while it runs
(sampled) and the process's peak resident set so far, then the backbone (stem + res2..res4) run alone on the same input, whose conv FLOPs
(2 x output elements x input channels per group x kernel area, counted from the layers' shapes)
over its time give its achieved FLOP/s, reported over the FLOP/s of a large fp32 matmul measured
in the same process. The res5 box head's FLOPs on the image's RoIs are reported the same way.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import paddle
from paddle import nn
from PIL import Image

from ..retrieval.benchmark import matmul_flops_per_second, measure_memory
from .config import DetectorConfig
from .detector import VinVLDetector
from .transforms import normalize, resize_image


class ConvFlops:
    """Counts the FLOPs of every ``nn.Conv2D`` under a layer while attached (forward hooks)."""

    def __init__(self, layer: nn.Layer) -> None:
        self.flops = 0
        self._hooks = [
            sub.register_forward_post_hook(self._count) for sub in layer.sublayers() if isinstance(sub, nn.Conv2D)
        ]

    def _count(self, layer: nn.Conv2D, inputs, output) -> None:
        out_channels, in_per_group, kh, kw = layer.weight.shape
        self.flops += 2 * int(np.prod(output.shape)) * in_per_group * kh * kw

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _timed_flops(layer: nn.Layer, run) -> Dict[str, float]:
    counter = ConvFlops(layer)
    try:
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    finally:
        counter.remove()
    return {"seconds": seconds, "flops": float(counter.flops)}


def benchmark_image(detector: VinVLDetector, image: np.ndarray) -> Dict[str, float]:
    """Time and memory of one ``detect``, then the backbone and the res5 head timed alone on its input."""
    with measure_memory(trace_python=False) as memory:
        start = time.perf_counter()
        result = detector.detect([image])[0]
        seconds = time.perf_counter() - start
    config = detector.config
    resized = resize_image(image, config["INPUT.MIN_SIZE_TEST"], config["INPUT.MAX_SIZE_TEST"])
    pixels = paddle.to_tensor(normalize(resized, config["INPUT.PIXEL_MEAN"], config["INPUT.PIXEL_STD"])[None])
    with paddle.no_grad():
        features = detector.backbone(pixels)
        backbone = _timed_flops(detector.backbone, lambda: detector.backbone(pixels).numpy())
        proposals = detector.rpn(features, resized.shape[:2])
        extractor = detector.roi_heads.box.feature_extractor
        head = _timed_flops(extractor, lambda: extractor(features, proposals).numpy())
    return {
        "seconds": seconds,
        "rss_growth_mb": memory.rss_growth_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "detections": len(result),
        "proposals": len(proposals),
        "input_hw": resized.shape[:2],
        "backbone_seconds": backbone["seconds"],
        "backbone_flops": backbone["flops"],
        "head_seconds": head["seconds"],
        "head_flops": head["flops"],
    }


def run_benchmark(detector: VinVLDetector, images: Sequence[np.ndarray], matmul_size: int) -> List[str]:
    """Report lines for ``images`` (the first image is also run once beforehand as a warm-up)."""
    detector.detect([images[0]])
    rows = [benchmark_image(detector, image) for image in images]
    matmul = matmul_flops_per_second(matmul_size)
    lines = [f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"]
    lines.append(f"matmul {matmul_size}^2 fp32: {matmul / 1e9:.1f} GFLOP/s")
    for i, row in enumerate(rows):
        bb = row["backbone_flops"] / row["backbone_seconds"]
        hd = row["head_flops"] / row["head_seconds"]
        lines.append(
            f"image {i} ({row['input_hw'][0]}x{row['input_hw'][1]} input, {row['proposals']} proposals, "
            f"{row['detections']} detections): {row['seconds']:.1f} s, peak RSS growth {row['rss_growth_mb']:.0f} MB "
            f"(process peak {row['peak_rss_mb']:.0f} MB); "
            f"backbone {row['backbone_flops'] / 1e9:.1f} GFLOP in {row['backbone_seconds']:.1f} s = "
            f"{bb / 1e9:.1f} GFLOP/s ({bb / matmul:.2f} of matmul); res5 head {row['head_flops'] / 1e9:.1f} GFLOP in "
            f"{row['head_seconds']:.1f} s = {hd / 1e9:.1f} GFLOP/s ({hd / matmul:.2f} of matmul)"
        )
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    lines.append(
        f"mean over {len(rows)} images: {mean('seconds'):.1f} s/image, peak RSS growth {mean('rss_growth_mb'):.0f} MB/image, "
        f"backbone {mean('backbone_flops') / mean('backbone_seconds') / matmul:.2f} of matmul FLOP/s"
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
