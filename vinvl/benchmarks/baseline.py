"""The reference evaluation pipeline, reproduced as it works, to measure the engine against.

This follows the test-time path of ``oscar/run_retrieval.py`` in microsoft/Oscar: a dataset
with one item per (image, caption) pair whose ``__getitem__`` tokenizes the caption and the
image's tags and reads the image's region features; every pair padded to the fixed maximum
(70 tokens + 70 regions in the official configs); batches of 32; the match probability
(softmax[:, 1]) moved to Python one ``.item()`` at a time into a dict keyed by pair index; and
ranks found by sorting each query's scores in a Python loop. Data loading runs in the main
process (the official script adds DataLoader workers, which on a 2-core machine would compete
with the forward pass for the same cores).

It is deliberately not optimised: it exists for :mod:`vinvl.benchmarks.retrieval` and as an
independent path for tests. Use :class:`vinvl.retrieval.RetrievalEngine` for real work.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F

from ..oscar.processor import OscarProcessor
from ..retrieval.gallery import Gallery

__all__ = ["PairDataset", "score_pairs", "compute_ranks", "baseline_metrics"]

BATCH_SIZE = 32


class PairDataset:
    """Item ``index`` = image ``index // C`` with caption ``index % C``, encoded when it is read."""

    def __init__(self, gallery: Gallery, processor: OscarProcessor):
        self.gallery = gallery
        self.processor = processor

    def __len__(self) -> int:
        return self.gallery.num_images * self.gallery.num_captions

    def __getitem__(self, index: int) -> Tuple[int, dict]:
        image, caption = divmod(int(index), self.gallery.num_captions)
        example = self.processor.encode(
            self.gallery.captions[caption], self.gallery.tags[image], self.gallery.features(image)
        )
        return int(index), example


def _batches(dataset: PairDataset, indices: Iterable[int], batch_size: int) -> Iterable[List[Tuple[int, dict]]]:
    batch: List[Tuple[int, dict]] = []
    for index in indices:
        batch.append(dataset[index])
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_pairs(
    model: paddle.nn.Layer,
    processor: OscarProcessor,
    gallery: Gallery,
    indices: Optional[Sequence[int]] = None,
    batch_size: int = BATCH_SIZE,
) -> Dict[int, float]:
    """Match scores of the pairs ``indices`` (image * C + caption; default all), as ``{index: score}``."""
    dataset = PairDataset(gallery, processor)
    indices = range(len(dataset)) if indices is None else indices
    results: Dict[int, float] = {}
    model.eval()
    with paddle.no_grad():
        for batch in _batches(dataset, indices, batch_size):
            inputs = processor.pad(
                [example for _, example in batch],
                pad_text_to=processor.max_seq_len,
                pad_regions_to=processor.max_img_seq_len,
            )
            probs = F.softmax(model(**inputs).logits, axis=-1)[:, 1]
            for (index, _), prob in zip(batch, probs):
                results[index] = prob.item()
    return results


def compute_ranks(gallery: Gallery, results: Dict[int, float]) -> Tuple[List[int], List[int]]:
    """0-based ranks of the ground truth, image-to-text per image and text-to-image per caption.

    Each query's scores are sorted (descending) and walked until the first correct item.
    """
    num_images, num_captions = gallery.num_images, gallery.num_captions
    similarities = np.array([results[i] for i in range(num_images * num_captions)]).reshape(num_images, num_captions)
    labels = gallery.caption_to_image[None, :] == np.arange(num_images)[:, None]
    i2t = []
    for label, row in zip(labels, similarities):
        order = np.argsort(row)[::-1]
        i2t.append(next(r for r, c in enumerate(order) if label[c]))
    t2i = []
    for label, column in zip(labels.T, similarities.T):
        order = np.argsort(column)[::-1]
        t2i.append(next(r for r, i in enumerate(order) if label[i]))
    return i2t, t2i


def baseline_metrics(gallery: Gallery, results: Dict[int, float], ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """R@K (percent) both ways and rsum from :func:`compute_ranks`, under the engine's metric names."""
    i2t, t2i = compute_ranks(gallery, results)
    metrics = {}
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            metrics[f"{direction}_r{k}"] = 100.0 * sum(r < k for r in ranks) / len(ranks)
    metrics["rsum"] = sum(metrics.values())
    return metrics
