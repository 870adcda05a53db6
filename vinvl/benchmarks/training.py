"""Training throughput: the Trainer path against a plain loop in the style of the seed, one run.

Both train the same model (the shipped ``tiny`` config unless ``--model``; same seed, so the same
initial weights) on the same synthetic corpus for the same number of steps, with the official
matching objective (each item = a positive pair + its sampled negative, from the same
:class:`MatchingPairDataset`), AdamW, a linear schedule, gradient clipping at 1.0 and the same
text/region limits. The differences are the ones being measured:

- Trainer path: ``vinvl.training.run`` (``RetrievalTrainer``, epoch-seeded sampler,
  :class:`MatchingCollator` with dynamic padding to the longest pair of the batch);
- plain loop: every pair padded to the fixed ``max_seq_len`` + ``max_img_seq_len``
  (70 + 70, as the seed did), batches assembled in Python, forward / backward / step by hand.

Samples/s = items (positive + negative) per second over the training steps (the Trainer's own
``train_runtime``; the loop's wall time over the same steps). ``vinvl``'s CPU settings apply to both.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict

import numpy as np
import paddle

from ..data import load_corpus, write_synthetic_corpus
from ..data.collate import MatchingPairDataset
from ..oscar.model_dir import load_retrieval_model
from ..training.recipe import arguments_from_options
from ..training.run import run_training

__all__ = ["TrainingBenchmark", "plain_loop", "trainer_path", "run_benchmark"]


@dataclass(frozen=True)
class TrainingBenchmark:
    """What one run trains (``scripts/benchmark_training.py``'s options, which hold the defaults)."""

    model: str  # model directory, or config directory (random init)
    work_dir: str
    train_images: int  # synthetic train images (5 captions each)
    steps: int
    batch_size: int  # items (positive + negative) per step
    learning_rate: float
    weight_decay: float
    max_seq_len: int
    max_img_seq_len: int
    seed: int


def plain_loop(settings: TrainingBenchmark, data_dir: str) -> float:
    """Samples/s of a hand-written loop with fixed 70 + 70 padding (the seed's style)."""
    paddle.seed(settings.seed)
    model, processor = load_retrieval_model(settings.model, max_seq_len=settings.max_seq_len, max_img_seq_len=settings.max_img_seq_len)
    dataset = MatchingPairDataset(load_corpus(data_dir, "train"), processor, seed=settings.seed, single_modality=False)
    schedule = paddle.optimizer.lr.LambdaDecay(settings.learning_rate, lambda step: max(0.0, 1 - step / settings.steps))
    optimizer = paddle.optimizer.AdamW(
        schedule, parameters=model.parameters(), weight_decay=settings.weight_decay,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
    )
    order = np.random.default_rng(settings.seed).permutation(len(dataset))
    model.train()
    start = time.perf_counter()
    for step in range(settings.steps):
        rows = order[(step * settings.batch_size + np.arange(settings.batch_size)) % len(order)]
        items = [dataset[int(i)] for i in rows]
        batch = processor.pad(
            [it["positive"] for it in items] + [it["negative"] for it in items],
            pad_text_to=processor.max_seq_len, pad_regions_to=processor.max_img_seq_len,
        )
        labels = paddle.to_tensor([1] * len(items) + [0] * len(items), dtype="int64")
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.clear_grad()
    float(loss)  # wait for the last step
    return settings.steps * settings.batch_size / (time.perf_counter() - start)


def trainer_path(settings: TrainingBenchmark, data_dir: str) -> float:
    """Samples/s of ``vinvl.training.run`` (RetrievalTrainer) on the same data and settings."""
    flags = {
        "model_name_or_path": settings.model, "data_dir": data_dir, "output_dir": os.path.join(settings.work_dir, "trainer-run"),
        "objective": "itm", "do_train": True, "max_steps": settings.steps, "per_device_train_batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate, "weight_decay": settings.weight_decay, "lr_scheduler_type": "linear",
        "warmup_steps": 0, "max_grad_norm": 1.0, "max_seq_length": settings.max_seq_len,
        "max_img_seq_length": settings.max_img_seq_len, "logging_steps": settings.steps, "save_strategy": "no",
        "evaluation_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": settings.seed,
        "overwrite_output_dir": True,
    }
    metrics = run_training(*arguments_from_options(flags))
    return settings.steps * settings.batch_size / metrics["train_runtime"]


def run_benchmark(settings: TrainingBenchmark) -> Dict[str, float]:
    """Both paths on one synthetic corpus (written once per seed and size); prints and returns samples/s and their ratio."""
    data_dir = os.path.join(settings.work_dir, f"synthetic-seed{settings.seed}-train{settings.train_images}")
    if not os.path.isdir(data_dir):
        # minival too: the training entry loads it for evaluation even when it never evaluates
        write_synthetic_corpus(data_dir, {"train": settings.train_images, "minival": 10, "val": 0, "test": 0}, seed=settings.seed)
    loop = plain_loop(settings, data_dir)
    trainer = trainer_path(settings, data_dir)
    result = {"trainer_samples_per_second": trainer, "plain_loop_samples_per_second": loop, "ratio": trainer / loop}
    print(
        f"training, {settings.steps} steps x {settings.batch_size} items (positive + negative pair), "
        f"{os.path.basename(settings.model)}: Trainer path {trainer:.1f} samples/s vs plain fixed-padding loop "
        f"{loop:.1f} samples/s = {trainer / loop:.2f}x"
    )
    return result
