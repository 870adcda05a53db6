"""The total batch of a recipe, split over the devices a run has.

The official VinVL fine-tuning took 128 pairs per optimiser step (16 per GPU on 8 GPUs). A recipe
states that total; each run derives how many pairs a device takes per forward and how many
forwards it accumulates, so 1, 2, 4 or 8 devices train with the same batch and the same number
of steps (with :class:`vinvl.training.sampler.EpochSeededBatchSampler`, on the same items).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["BatchPlan", "plan_total_batch"]


@dataclass(frozen=True)
class BatchPlan:
    """``total = per_device x accumulation_steps x devices`` pairs per optimiser step."""

    total: int
    per_device: int
    accumulation_steps: int
    devices: int

    def describe(self) -> str:
        return (
            f"Total batch {self.total} pairs per optimiser step = {self.per_device} per device x "
            f"{self.accumulation_steps} accumulation step(s) x {self.devices} device(s)"
        )


def plan_total_batch(total: int, devices: int, max_per_device: int) -> BatchPlan:
    """The split of ``total`` over ``devices`` with the largest per-device batch up to
    ``max_per_device`` (what fits a device's memory) that divides each device's share exactly.

    Raises UsageError when ``total`` is not a multiple of ``devices``: no split reaches it exactly.
    """
    if total <= 0:
        raise UsageError(f"--total_train_batch_size must be positive, got {total}")
    if max_per_device <= 0:
        raise UsageError(f"--per_device_train_batch_size must be positive, got {max_per_device}")
    if devices <= 0:
        raise ValueError(f"devices must be positive, got {devices}")
    if total % devices:
        raise UsageError(
            f"--total_train_batch_size {total} cannot be split evenly over {devices} data-parallel devices: "
            f"run on a number of devices that divides {total}, or set another total"
        )
    share = total // devices
    accumulation = next(a for a in range(1, share + 1) if share % a == 0 and share // a <= max_per_device)
    return BatchPlan(total, share // accumulation, accumulation, devices)
