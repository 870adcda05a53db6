"""A data-parallel batch sampler whose shuffle is a pure function of (seed, epoch)."""
from __future__ import annotations

import math
from typing import Iterator, List

import numpy as np
from paddle.io import DistributedBatchSampler

__all__ = ["EpochSeededBatchSampler"]


class EpochSeededBatchSampler(DistributedBatchSampler):
    """Shuffles with ``default_rng([seed, epoch])`` and deals batches to ranks.

    paddle's sampler seeds its shuffle with the epoch alone and advances it by itself; here the
    order depends only on (seed, epoch), so a run resumed from a checkpoint sees the batches an
    uninterrupted run would. ``set_epoch`` also tells the dataset, whose negatives are drawn
    per epoch. Each rank gets ``ceil(N / world)`` items (the order wraps around to even them out).
    """

    def __init__(self, dataset, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0, drop_last: bool = False):
        super().__init__(
            dataset, batch_size=batch_size, num_replicas=num_replicas, rank=rank, shuffle=True, drop_last=drop_last
        )
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int = 0) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[List[int]]:
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        per_rank = math.ceil(n / self.nranks)
        order = np.resize(order, per_rank * self.nranks)  # wrap around so every rank gets as many
        mine = order[self.local_rank :: self.nranks].tolist()
        for start in range(0, len(mine), self.batch_size):
            batch = mine[start : start + self.batch_size]
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch

    def __len__(self) -> int:
        per_rank = math.ceil(len(self.dataset) / self.nranks)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)
