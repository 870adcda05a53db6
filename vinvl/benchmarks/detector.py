"""Benchmark the detector: seconds and peak memory per image, and the conv FLOP/s it achieves;
and the memory of ``vinvl extract`` over many photos.

    python scripts/benchmark_detector.py                       # X152-C4, random weights, the shipped photos
    python scripts/benchmark_detector.py --detector models/vinvl-detector photo.jpg
    python scripts/benchmark_detector.py --detector vinvl-detector-tiny --extract_memory 1000  # RSS over 1,000 photos

Without image files it runs on the ten COCO photos shipped with the package (``vinvl.assets``).

For each image, one ``detect``: its wall and CPU time (they differ when other processes compete
for the cores), the growth of the resident set while it runs
(sampled) and the process's peak resident set so far; inside it, the time and conv FLOPs
(counted from the layers' shapes) of the backbone (stem + res2..res4) and of the res5 head on the
RoIs, whose ratio (achieved FLOP/s) is reported over the FLOP/s of a large fp32 matmul measured
in the same process (best of 5). FLOP/s are per CPU-second of the process, for the stages and the
matmul alike, so the ratio holds on a machine where other processes take turns on the cores.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from paddle import nn
from PIL import Image

from ..assets import DEMO_PHOTOS_DIR
from ..vision.config import DetectorConfig
from ..vision.detector import VinVLDetector
from ..vision.extract import WORK_DIR
from ..vision.transforms import resize_image
from .measure import matmul_flops_per_second, measure_memory

SHIPPED_PHOTOS = sorted(os.path.join(DEMO_PHOTOS_DIR, name) for name in os.listdir(DEMO_PHOTOS_DIR) if name.endswith(".jpg"))
# Photo counts after which the resident set of ``vinvl extract`` is reported (those up to N).
RSS_CHECKPOINTS = (1, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000)


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


def photo_folder(photos: Sequence[str], count: int, folder: str) -> str:
    """``folder`` filled with ``count`` symlinks ``photo000000.jpg``, ... cycling through ``photos``."""
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        source = os.path.abspath(photos[i % len(photos)])
        os.symlink(source, os.path.join(folder, f"photo{i:06d}{os.path.splitext(source)[1].lower()}"))
    return folder


def _committed_rows(out_dir: str) -> int:
    """Rows ``vinvl extract`` has committed in ``out_dir`` so far (its journals' whole lines)."""
    work_dir = os.path.join(out_dir, WORK_DIR)
    count = 0
    try:
        names = os.listdir(work_dir)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.endswith(".journal"):
            try:
                with open(os.path.join(work_dir, name), "rb") as handle:
                    count += handle.read().count(b"\n")
            except FileNotFoundError:
                pass  # removed by the merge between listdir and open
    return count


def sample_extraction_rss(
    images: str, out_dir: str, detector_dir: str, interval: float = 0.05
) -> Tuple[List[Tuple[float, int, int]], int]:
    """Run ``vinvl extract images out_dir --detector detector_dir`` as a child process, sampling it.

    Returns ``(seconds, committed rows, RSS bytes)`` samples every ``interval`` seconds (the rows
    stay at their last count once the merge has removed the journals) and the child's peak RSS in
    bytes from the operating system (``wait4``). Raises RuntimeError if the extraction failed.
    """
    import psutil

    command = [sys.executable, "-m", "vinvl.commands.cli", "extract", images, out_dir, "--detector", detector_dir, "--no_progress"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    process = psutil.Process(child.pid)
    samples: List[Tuple[float, int, int]] = []
    start, rows = time.perf_counter(), 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        try:
            rss = process.memory_info().rss
        except psutil.NoSuchProcess:  # exited since wait4: reaped on the next turn
            continue
        rows = max(rows, _committed_rows(out_dir))
        samples.append((time.perf_counter() - start, rows, rss))
        time.sleep(interval)
    child.returncode = os.waitstatus_to_exitcode(status)
    output = child.stdout.read().decode("utf-8", "replace")
    child.stdout.close()
    if child.returncode != 0:
        raise RuntimeError(f"vinvl extract exited with {child.returncode}:\n{output}")
    return samples, usage.ru_maxrss * 1024


def rss_report(samples: Sequence[Tuple[float, int, int]], peak_bytes: int, num_photos: int) -> List[str]:
    """Report lines: RSS after each checkpoint count of photos and the peak so far, the merge's peak, the OS peak."""
    mb = 2.0**20
    lines = ["photos done | RSS then (MB) | peak so far (MB) | seconds"]
    for checkpoint in [c for c in RSS_CHECKPOINTS if c < num_photos] + [num_photos]:
        reached = [i for i, (_, rows, _) in enumerate(samples) if rows >= checkpoint]
        if not reached:
            lines.append(f"{checkpoint} | not sampled | | ")
            continue
        first = reached[0]
        seconds, _, rss = samples[first]
        peak = max(r for _, _, r in samples[: first + 1])
        lines.append(f"{checkpoint} | {rss / mb:.0f} | {peak / mb:.0f} | {seconds:.0f}")
    extracting = [r for _, rows, r in samples if rows < num_photos]
    merging = [r for _, rows, r in samples if rows >= num_photos]
    lines.append(
        f"peak RSS while extracting {max(extracting, default=0) / mb:.0f} MB, during the merge "
        f"{max(merging, default=0) / mb:.0f} MB; the process's peak (OS accounting) {peak_bytes / mb:.0f} MB; "
        f"{len(samples)} samples over {samples[-1][0] if samples else 0:.0f} s"
    )
    return lines


def run_extraction_memory(photos: Sequence[str], count: int, detector_dir: str) -> List[str]:
    """``vinvl extract`` on ``count`` photos (links to ``photos``, in a temporary folder removed
    afterwards) with its RSS sampled: :func:`rss_report`'s lines."""
    root = tempfile.mkdtemp(prefix="vinvl-extract-memory-")
    try:
        folder = photo_folder(photos, count, os.path.join(root, "photos"))
        samples, peak = sample_extraction_rss(folder, os.path.join(root, "out"), detector_dir)
        return [f"vinvl extract of {count} photos (links to {len(photos)} files), detector {detector_dir}, "
                f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"] + rss_report(samples, peak, count)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def benchmark_photos(paths: Sequence[str], detector_dir: Optional[str], matmul_size: int) -> List[str]:
    """:func:`run_benchmark`'s lines for the photo files ``paths``, after a line naming the detector:
    the one in ``detector_dir``, or VinVL X152-C4 with random weights when None."""
    if detector_dir:
        detector = VinVLDetector.from_pretrained(detector_dir)
    else:
        detector = VinVLDetector(DetectorConfig.vinvl_x152c4()).init_weights()
    params = sum(int(np.prod(p.shape)) for p in detector.parameters())
    images = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    header = f"detector: {detector_dir or 'VinVL X152-C4 (random weights)'}, {params / 1e6:.1f} M parameters"
    return [header] + run_benchmark(detector, images, matmul_size)
