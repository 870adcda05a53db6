"""Training objectives that combine model outputs; the match loss itself lives with its head in modeling."""
from __future__ import annotations

import paddle
import paddle.nn.functional as F

__all__ = ["contrastive_loss", "OBJECTIVES"]

# What `--objective` may name: the official matching loss, the contrastive loss, or their sum.
OBJECTIVES = ("itm", "itc", "itm+itc")


def contrastive_loss(
    caption_embeds: paddle.Tensor,
    image_embeds: paddle.Tensor,
    logit_scale: paddle.Tensor,
    image_index: paddle.Tensor,
) -> paddle.Tensor:
    """In-batch contrastive loss in both directions (caption->image and image->caption).

    ``caption_embeds`` / ``image_embeds`` are L2-normalised ``[B, E]`` rows of the same B pairs;
    ``image_index [B]`` says which image each pair came from, so two captions of one image in
    the same batch are both counted as positives (targets spread evenly over them) instead of
    one being pushed away as a negative.
    """
    logits = logit_scale * paddle.matmul(caption_embeds, image_embeds, transpose_y=True)  # [B, B]
    same_image = (image_index.unsqueeze(1) == image_index.unsqueeze(0)).astype(logits.dtype)
    targets = same_image / same_image.sum(axis=1, keepdim=True)
    caption_to_image = -(targets * F.log_softmax(logits, axis=1)).sum(axis=1).mean()
    image_to_caption = -(targets * F.log_softmax(logits.T, axis=1)).sum(axis=1).mean()
    return (caption_to_image + image_to_caption) / 2
