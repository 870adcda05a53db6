"""Hard negatives for the matching head, mined from the batch's contrastive similarities.

The official recipe pairs each positive with a random negative, which the matching head soon
tells apart by any one missing object; it then ranks a whole gallery poorly, because most
wrong images share *some* objects with a caption. As in ALBEF, each caption of a batch is
instead paired with another image of the batch drawn with probability softmax(similarity)
(so the more a wrong image resembles the caption, the more often it is the negative), and
each image with another caption likewise. Early in training the similarities are flat and the
draw is uniform, i.e. the official random negatives; it hardens as the contrastive heads learn.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import paddle

from ..oscar.processor import OscarProcessor
from .pairs import pair_text_inputs

__all__ = ["sample_negatives", "mined_pair_inputs"]


def sample_negatives(
    similarity: np.ndarray, image_index: np.ndarray, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw a negative image for each caption and a negative caption for each image.

    ``similarity [B, B]`` holds the contrastive logits of caption b (row) with the image of item
    b' (column); ``image_index [B]`` says which image each item came from, so items of the same
    image are never drawn. Returns ``(image_for_caption [B], caption_for_image [B])``, item
    indices, ``-1`` where every item of the batch shows the same image.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    image_index = np.asarray(image_index)
    allowed = image_index[:, None] != image_index[None, :]
    return _draw(similarity, allowed, rng), _draw(similarity.T, allowed.T, rng)


def _draw(logits: np.ndarray, allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column per row, with probability softmax(logits) over the allowed columns."""
    masked = np.where(allowed, logits, -np.inf)
    peak = masked.max(axis=1, keepdims=True)
    weights = np.where(allowed, np.exp(masked - np.where(np.isfinite(peak), peak, 0.0)), 0.0)
    totals = weights.sum(axis=1)
    picks = np.full(len(logits), -1, dtype=np.int64)
    for row in np.flatnonzero(totals > 0):
        picks[row] = rng.choice(len(weights[row]), p=weights[row] / totals[row])
    return picks


def mined_pair_inputs(
    processor: OscarProcessor,
    pieces: Dict[str, np.ndarray],
    image_inputs: Dict[str, paddle.Tensor],
    image_for_caption: np.ndarray,
    caption_for_image: np.ndarray,
) -> Dict[str, paddle.Tensor]:
    """Model inputs of the batch's positives, then the drawn negatives, with ``labels``.

    ``pieces`` are the collator's ``pair_pieces`` (row b = item b); regions come from the
    batch's image-only inputs, which hold every item's image. Rows: each item's own (caption,
    image) labelled 1; then (caption b, image ``image_for_caption[b]``) and (caption
    ``caption_for_image[b]``, image b) labelled 0, for the rows that drew one.
    """
    items = np.arange(len(image_for_caption))
    has_image, has_caption = image_for_caption >= 0, caption_for_image >= 0
    captions = np.concatenate([items, items[has_image], caption_for_image[has_caption]])
    images = np.concatenate([items, image_for_caption[has_image], items[has_caption]])
    labels = np.concatenate([np.ones(len(items)), np.zeros(len(captions) - len(items))]).astype(np.int64)
    inputs = pair_text_inputs(processor, pieces, image_inputs, captions, images)
    inputs["img_feats"] = paddle.gather(image_inputs["img_feats"], paddle.to_tensor(images))
    inputs["labels"] = paddle.to_tensor(labels)
    return inputs
