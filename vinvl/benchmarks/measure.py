"""What the benchmarks share: the tiny config and corpus set-up, and the measuring instruments
(matmul FLOPs of a model, peak memory of a block, the machine's matmul speed).

Every benchmark in :mod:`vinvl.benchmarks` measures through these, so a figure means the same in
every table of docs/benchmarks.md.
"""
from __future__ import annotations

import os
import threading
import time
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import paddle
import paddle.nn as nn

from ..data import load_corpus
from ..retrieval.gallery import Gallery

__all__ = [
    "RECALLS", "TINY_CONFIG", "FlopCounter", "Memory", "measure_memory", "best_seconds", "matmul_flops_per_second",
    "synthetic_gallery", "train_tiny",
]

RECALLS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")
TINY_CONFIG = "tiny"  # the shipped config, by name (vinvl.assets.resolve_config)


# ----- measuring instruments ---------------------------------------------------------------


class FlopCounter:
    """Counts the matmul FLOPs a model runs, from the input shapes of its layers (forward hooks).

    Linear: 2 x rows x in x out. Self-attention: 2 x B x L^2 x H for Q.K^T plus the same for P.V.
    """

    def __init__(self, model: nn.Layer):
        from ..oscar.modeling import OscarSelfAttention

        self.flops = 0
        self._hooks = []
        for layer in model.sublayers(include_self=True):
            if isinstance(layer, nn.Linear):
                self._hooks.append(layer.register_forward_pre_hook(self._linear))
            elif isinstance(layer, OscarSelfAttention):
                self._hooks.append(layer.register_forward_pre_hook(self._attention))

    def _linear(self, layer: nn.Linear, inputs: tuple) -> None:
        shape = inputs[0].shape
        rows = int(np.prod(shape[:-1]))
        self.flops += 2 * rows * int(layer.weight.shape[0]) * int(layer.weight.shape[1])

    def _attention(self, layer: nn.Layer, inputs: tuple) -> None:
        batch, length, hidden = inputs[0].shape
        self.flops += 4 * int(batch) * int(length) ** 2 * int(hidden)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


@dataclass
class Memory:
    """Peak Python allocations (tracemalloc) and peak resident-set growth of one measured path, in MB."""

    python_mb: float = 0.0
    rss_growth_mb: float = 0.0


@contextmanager
def measure_memory(trace_python: bool = True) -> Iterator[Memory]:
    """Measure the enclosed block's peak memory (fills the yielded :class:`Memory` on exit)."""
    import psutil

    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if trace_python:
        tracemalloc.start()
    memory = Memory()
    try:
        yield memory
    finally:
        if trace_python:
            memory.python_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        done.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        memory.rss_growth_mb = (peak[0] - start) / 2**20


def best_seconds(call: Callable[[], object], repeats: int, warm_up: bool = False) -> float:
    """The fastest of ``repeats`` timed calls of ``call``, after one untimed call if ``warm_up``
    (caches, oneDNN primitives, runtime arenas)."""
    if warm_up:
        call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an fp32 ``[size, size] @ [size, size]`` paddle.matmul (2 x size^3 FLOPs)."""
    a = paddle.randn([size, size], dtype="float32")
    b = paddle.randn([size, size], dtype="float32")
    return 2.0 * size**3 / best_seconds(lambda: paddle.matmul(a, b).numpy(), repeats, warm_up=True)


# ----- set-up: corpus and model ------------------------------------------------------------


def synthetic_gallery(data_dir: str, num_images: int) -> Gallery:
    """The first ``num_images`` images of the corpus' test split."""
    gallery = Gallery.from_corpus(load_corpus(data_dir, "test"))
    if gallery.num_images < num_images:
        raise ValueError(f"{data_dir} has {gallery.num_images} test images, fewer than --num_images {num_images}")
    return gallery if gallery.num_images == num_images else gallery.subset(list(range(num_images)))


def train_tiny(work_dir: str, data_dir: str, steps: int, seed: int) -> str:
    """Train the shipped tiny config (matching + contrastive) on the corpus' train split; returns the model dir."""
    from ..training.recipe import arguments_from_options
    from ..training.run import run_training

    output_dir = os.path.join(work_dir, f"tiny-trained-{steps}")
    flags = {
        "model_name_or_path": TINY_CONFIG, "data_dir": data_dir, "output_dir": output_dir, "objective": "itm+itc",
        "do_train": True, "max_steps": steps, "per_device_train_batch_size": 32, "learning_rate": 2e-3,
        "weight_decay": 0.01, "warmup_steps": min(100, max(steps // 20, 1)), "lr_scheduler_type": "linear",
        "logging_steps": 50, "save_strategy": "no", "evaluation_strategy": "no", "report_to": "none",
        "disable_tqdm": True, "seed": seed, "overwrite_output_dir": True,
    }
    run_training(*arguments_from_options(flags))
    return output_dir
