"""Training objectives that combine model outputs; the match loss itself lives with its head in modeling."""
from __future__ import annotations

from typing import Dict, FrozenSet, Optional

import paddle
import paddle.nn.functional as F

__all__ = [
    "contrastive_loss",
    "distillation_loss",
    "list_distillation_loss",
    "OBJECTIVES",
    "OBJECTIVE_HEADS",
    "objective_parts",
    "trained_heads",
]

# What `--objective` may name: the official matching loss, the contrastive loss, their sum, and
# the distillation of the match head into the contrastive heads (alone or with the contrastive loss).
OBJECTIVES = ("itm", "itc", "itm+itc", "distill", "itc+distill")
# The head (OscarConfig.HEAD_NAMES) whose weights each part of an objective trains.
OBJECTIVE_HEADS: Dict[str, str] = {"itm": "match", "itc": "contrastive", "distill": "contrastive"}


def objective_parts(objective: str) -> FrozenSet[str]:
    """The losses an objective sums, e.g. ``"itc+distill"`` -> ``{"itc", "distill"}``."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return frozenset(objective.split("+"))


def trained_heads(objective: str) -> FrozenSet[str]:
    """The heads an objective trains: ``itm`` the match head, ``itc`` / ``distill`` the contrastive heads."""
    return frozenset(OBJECTIVE_HEADS[part] for part in objective_parts(objective))


def _soft_cross_entropy(logits: paddle.Tensor, targets: paddle.Tensor) -> paddle.Tensor:
    """Mean over rows of the cross-entropy of ``softmax(logits)`` against the target distributions."""
    return -(targets * F.log_softmax(logits, axis=1)).sum(axis=1).mean()


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
    return (_soft_cross_entropy(logits, targets) + _soft_cross_entropy(logits.T, targets.T)) / 2


def distillation_loss(
    caption_embeds: paddle.Tensor,
    image_embeds: paddle.Tensor,
    logit_scale: paddle.Tensor,
    teacher_logits: paddle.Tensor,
    temperature: float = 1.0,
) -> paddle.Tensor:
    """The match head distilled into the contrastive heads over in-batch candidates, both directions.

    ``teacher_logits [B, B]`` holds the match head's score of caption b with the image of item
    b' (its logit margin, computed without gradient, see :func:`vinvl.training.teacher.match_margins`).
    For each caption the softmax over the batch's images of ``teacher_logits / temperature`` is
    the target of the contrastive softmax over the same images, and likewise for each image
    over the batch's captions. Unlike :func:`contrastive_loss` no pair is labelled: the
    contrastive ranking learns the match head's ranking, near misses included, which is what a
    first stage feeding that match head needs.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = logit_scale * paddle.matmul(caption_embeds, image_embeds, transpose_y=True)  # [B, B]
    teacher = teacher_logits.astype(logits.dtype) / temperature
    caption_to_image = _soft_cross_entropy(logits, F.softmax(teacher, axis=1))
    image_to_caption = _soft_cross_entropy(logits.T, F.softmax(teacher.T, axis=1))
    return (caption_to_image + image_to_caption) / 2


def list_distillation_loss(
    query_embeds: paddle.Tensor,
    candidate_embeds: paddle.Tensor,
    logit_scale: paddle.Tensor,
    teacher_logits: paddle.Tensor,
    temperature: float = 1.0,
    listed: Optional[paddle.Tensor] = None,
) -> paddle.Tensor:
    """The match head distilled into the contrastive heads over fixed candidate lists.

    ``query_embeds [Q, E]`` (captions, or images), ``candidate_embeds [Q, L, E]`` (each query's
    list of images, or captions) and ``teacher_logits [Q, L]`` (the match head's logit margins
    of those pairs, see :mod:`vinvl.training.frozen_states`): the softmax over each list of
    ``teacher_logits / temperature`` is the target of the contrastive softmax over the same list,
    as :func:`distillation_loss` does over a batch's candidates. ``listed [Q, L]`` (bool, default
    all) marks the real entries of lists padded to one length: the others are in neither softmax.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = logit_scale * (query_embeds.unsqueeze(1) * candidate_embeds).sum(axis=-1)  # [Q, L]
    teacher = teacher_logits.astype(logits.dtype) / temperature
    if listed is not None:  # a large finite value: exp() gives 0, and 0 * log_softmax stays finite
        absent = paddle.full_like(logits, -1e4)
        logits, teacher = paddle.where(listed, logits, absent), paddle.where(listed, teacher, absent)
    return _soft_cross_entropy(logits, F.softmax(teacher, axis=1))
