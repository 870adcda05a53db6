"""Collective helpers that let the engine split its pair work across ranks.

Work is sharded by batch: each rank runs a contiguous range of the engine's canonical
batches (pair scoring and the first-stage embeddings alike) and writes zeros elsewhere, so summing the arrays across ranks (``all_reduce``) gives
every rank the full result, bit for bit what one process computes (x + 0 = x exactly).
Works on CPU under ``python -m paddle.distributed.launch --nproc_per_node N`` once
``paddle.distributed.init_parallel_env()`` has run; without it everything is single-process.
"""
from __future__ import annotations

from typing import List, Sequence, TypeVar

import numpy as np
import paddle
import paddle.distributed as dist

from ..parallel import rank_and_world_size

__all__ = ["rank", "shard", "all_reduce_sum"]

T = TypeVar("T")


def rank() -> int:
    """This process' rank (0 in a single process)."""
    return rank_and_world_size()[0]


def shard(items: Sequence[T]) -> List[T]:
    """This rank's contiguous share of ``items`` (all of them in a single process)."""
    this, world = rank_and_world_size()
    return list(items[len(items) * this // world : len(items) * (this + 1) // world])


def all_reduce_sum(array: np.ndarray) -> np.ndarray:
    """``array`` summed over all ranks (returned unchanged in a single process)."""
    if rank_and_world_size()[1] == 1:
        return array
    tensor = paddle.to_tensor(array)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy().astype(array.dtype, copy=False)
