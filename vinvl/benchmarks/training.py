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

import argparse
import os
import time
from typing import Dict, List, Optional

import numpy as np
import paddle

from ..data import load_corpus, write_synthetic_corpus
from ..data.collate import MatchingPairDataset
from ..oscar.model_dir import load_retrieval_model
from ..training.run import main as train_main

__all__ = ["plain_loop", "trainer_path", "main"]

TINY_CONFIG = "tiny"  # the shipped config, by name (vinvl.assets.resolve_config)


def plain_loop(args: argparse.Namespace, data_dir: str) -> float:
    """Samples/s of a hand-written loop with fixed 70 + 70 padding (the seed's style)."""
    paddle.seed(args.seed)
    model, processor = load_retrieval_model(args.model, max_seq_len=args.max_seq_len, max_img_seq_len=args.max_img_seq_len)
    dataset = MatchingPairDataset(load_corpus(data_dir, "train"), processor, seed=args.seed, single_modality=False)
    schedule = paddle.optimizer.lr.LambdaDecay(args.learning_rate, lambda step: max(0.0, 1 - step / args.steps))
    optimizer = paddle.optimizer.AdamW(
        schedule, parameters=model.parameters(), weight_decay=args.weight_decay,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0),
    )
    order = np.random.default_rng(args.seed).permutation(len(dataset))
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        rows = order[(step * args.batch_size + np.arange(args.batch_size)) % len(order)]
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
    return args.steps * args.batch_size / (time.perf_counter() - start)


def trainer_path(args: argparse.Namespace, data_dir: str) -> float:
    """Samples/s of ``vinvl.training.run`` (RetrievalTrainer) on the same data and settings."""
    flags = {
        "model_name_or_path": args.model, "data_dir": data_dir, "output_dir": os.path.join(args.work_dir, "trainer-run"),
        "objective": "itm", "do_train": "true", "max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "weight_decay": args.weight_decay, "lr_scheduler_type": "linear",
        "warmup_steps": 0, "max_grad_norm": 1.0, "max_seq_length": args.max_seq_len,
        "max_img_seq_length": args.max_img_seq_len, "logging_steps": args.steps, "save_strategy": "no",
        "evaluation_strategy": "no", "report_to": "none", "disable_tqdm": "true", "seed": args.seed,
        "overwrite_output_dir": "true",
    }
    metrics = train_main([token for key, value in flags.items() for token in (f"--{key}", str(value))])
    return args.steps * args.batch_size / metrics["train_runtime"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark_training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=TINY_CONFIG, help="model directory, or a config directory or shipped config name (random init)")
    parser.add_argument("--work_dir", default="outputs/benchmark_training")
    parser.add_argument("--train_images", type=int, default=200, help="synthetic train images (5 captions each)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=32, help="items (positive + negative) per step")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--max_seq_len", type=int, default=70)
    parser.add_argument("--max_img_seq_len", type=int, default=70)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("train_images", "steps", "batch_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    data_dir = os.path.join(args.work_dir, f"synthetic-seed{args.seed}-train{args.train_images}")
    if not os.path.isdir(data_dir):
        # minival too: the training entry loads it for evaluation even when it never evaluates
        write_synthetic_corpus(data_dir, {"train": args.train_images, "minival": 10, "val": 0, "test": 0}, seed=args.seed)
    loop = plain_loop(args, data_dir)
    trainer = trainer_path(args, data_dir)
    result = {"trainer_samples_per_second": trainer, "plain_loop_samples_per_second": loop, "ratio": trainer / loop}
    print(
        f"training, {args.steps} steps x {args.batch_size} items (positive + negative pair), {os.path.basename(args.model)}: "
        f"Trainer path {trainer:.1f} samples/s vs plain fixed-padding loop {loop:.1f} samples/s = {trainer / loop:.2f}x"
    )
    return result
