"""A data-parallel batch sampler whose shuffle is a pure function of (seed, epoch), dealt by optimiser step."""
from __future__ import annotations

import math
from typing import Iterator, List

import numpy as np
from paddle.io import DistributedBatchSampler

__all__ = ["EpochSeededBatchSampler"]


class EpochSeededBatchSampler(DistributedBatchSampler):
    """Shuffles with ``default_rng([seed, epoch])`` and deals each optimiser step's items to ranks.

    paddle's sampler seeds its shuffle with the epoch alone and advances it by itself; here the
    order depends only on (seed, epoch), so a run resumed from a checkpoint sees the batches an
    uninterrupted run would. ``set_epoch`` also tells the dataset, whose negatives are drawn
    per epoch.

    One optimiser step takes ``batch_size x accumulation_steps x num_replicas`` items: the next
    slice of the order, of which rank r takes every ``num_replicas``-th item from the r-th and
    splits its share into ``accumulation_steps`` batches. The epoch's order wraps around to fill
    its last step, so every step has the same number of items and an epoch has
    ``ceil(N / items per step)`` steps (``N // items per step`` with ``drop_last``). The items of
    each step therefore depend only on the seed, the epoch and the items per step: 1 device
    accumulating 8 batches of 16 trains on the same 128 items per step as 8 devices taking 16 each.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        accumulation_steps: int = 1,
    ):
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        super().__init__(
            dataset, batch_size=batch_size, num_replicas=num_replicas, rank=rank, shuffle=True, drop_last=drop_last
        )
        self.seed = seed
        self.accumulation_steps = accumulation_steps
        self.set_epoch(0)

    def set_epoch(self, epoch: int = 0) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    @property
    def items_per_step(self) -> int:
        return self.batch_size * self.accumulation_steps * self.nranks

    def _steps(self) -> int:
        n = len(self.dataset)
        return n // self.items_per_step if self.drop_last else math.ceil(n / self.items_per_step)

    def __iter__(self) -> Iterator[List[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
        size = self.items_per_step
        order = np.resize(order, self._steps() * size)  # wrap around to fill the last step
        for start in range(0, len(order), size):
            mine = order[start : start + size][self.local_rank :: self.nranks]
            for batch in range(0, len(mine), self.batch_size):
                yield mine[batch : batch + self.batch_size].tolist()

    def __len__(self) -> int:
        return self._steps() * self.accumulation_steps
