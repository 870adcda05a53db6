"""The match head as teacher of the contrastive heads: its scores of every in-batch pair."""
from __future__ import annotations

from typing import Dict

import numpy as np
import paddle

from ..oscar.modeling import OscarForImageTextRetrieval
from ..oscar.processor import OscarProcessor
from .pairs import pair_text_inputs

__all__ = ["match_margins"]


def match_margins(
    model: OscarForImageTextRetrieval,
    processor: OscarProcessor,
    pieces: Dict[str, np.ndarray],
    image_inputs: Dict[str, paddle.Tensor],
    chunk: int,
) -> paddle.Tensor:
    """``[B, B]`` match-head logit margins (``logits[:, 1] - logits[:, 0]``) of caption b with image b'.

    The margin, the log-odds of a match, orders pairs as the match probability does but does
    not saturate, so a softmax over it keeps the teacher's ranking of confident pairs. Computed
    without gradient and in eval mode (no dropout: the target is the ranking the match head
    gives at retrieval time), ``chunk`` pairs per forward; the model's mode is restored after.
    Each image's regions are projected once (``embed_regions`` is deterministic) and reused
    through ``img_embeds``, as the retrieval engine does.
    """
    batch = len(pieces["caption_lens"])
    captions, images = (grid.ravel() for grid in np.meshgrid(np.arange(batch), np.arange(batch), indexing="ij"))
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            region_embeds = model.bert.embed_regions(image_inputs["img_feats"])
            margins = []
            for start in range(0, len(captions), chunk):
                rows = slice(start, start + chunk)
                inputs = pair_text_inputs(processor, pieces, image_inputs, captions[rows], images[rows])
                img_embeds = paddle.gather(region_embeds, paddle.to_tensor(images[rows]))
                logits = model(**inputs, img_embeds=img_embeds).logits
                margins.append(logits[:, 1] - logits[:, 0])
    finally:
        if was_training:
            model.train()
    return paddle.concat(margins).reshape([batch, batch])
