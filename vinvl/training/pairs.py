"""Any (caption, image) pair of a training batch as model inputs, assembled from token pieces.

Mined negatives (:mod:`vinvl.training.negatives`) and the match-head teacher of distillation
(:mod:`vinvl.training.teacher`) both score pairs the data did not provide: caption of item b
with the image of item b'. The collator's ``pair_pieces`` hold every item's caption and tag
pieces, and the batch's image-only inputs hold every item's regions, so any pair is a numpy
assembly away (:meth:`OscarProcessor.assemble_pairs`), without tokenizing again.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import paddle

from ..oscar.processor import OscarProcessor

__all__ = ["pair_text_inputs"]


def pair_text_inputs(
    processor: OscarProcessor,
    pieces: Dict[str, np.ndarray],
    image_inputs: Dict[str, paddle.Tensor],
    captions: np.ndarray,
    images: np.ndarray,
) -> Dict[str, paddle.Tensor]:
    """``input_ids``, ``token_type_ids`` and ``attention_mask`` of the pairs (caption of item
    ``captions[k]``, image of item ``images[k]``).

    The mask covers the batch's full region width (``image_inputs["img_feats"].shape[1]``), so
    the caller adds the regions of ``images`` (``img_feats`` or projected ``img_embeds``) gathered
    from the batch as they are.
    """
    text_len = image_inputs["input_ids"].shape[1]
    region_lens = image_inputs["attention_mask"][:, text_len:].astype("int64").sum(axis=1).numpy()[images]
    arrays = processor.assemble_pairs(
        pieces["caption_ids"][captions],
        pieces["caption_lens"][captions],
        pieces["tag_ids"][images],
        pieces["tag_lens"][images],
        region_lens,
        image_inputs["img_feats"].shape[1],
    )
    return {name: paddle.to_tensor(value) for name, value in arrays.items()}
