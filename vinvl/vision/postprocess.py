"""Post-processing as the official code does it for the VinVL features (numpy, one image).

Boxes (``filter_results_peter``, selected by ``MODEL.ROI_HEADS.NMS_FILTER 1``): per-class NMS at a
hard-coded IoU of 0.3 over every proposal (not the config's ``ROI_HEADS.NMS``, no score threshold
first); each proposal keeps its best surviving class; proposals with none are dropped; the rest
sorted by score, and kept if they clear ``SCORE_THRESH``, but at least the best
``MIN_DETECTIONS_PER_IMG`` and at most ``DETECTIONS_PER_IMG``. (The official caller's retry loop,
which halves the threshold while fewer than the minimum survive, cannot change this filter's
result: the minimum is already enforced whenever enough proposals survive NMS.)

Attributes (``AttributePostProcessor``): softmax, background column zeroed, scores at or below
the threshold zeroed, then a per-image cap computed with ``kthvalue`` over all scores of the image
*including the zeros* (so in practice it removes nothing: kept as the official code behaves),
then the best ``MAX_NUM_ATTR_PER_OBJ`` per box, of which the non-zero ones are returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from .boxes import per_class_nms_mask

# The IoU filter_results_peter hard-codes for its per-class NMS.
PETER_NMS_THRESH = 0.3


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@dataclass
class BoxSelection:
    """The kept proposals, best first: their row in the input, class, score and box."""

    index: np.ndarray  # [N] int64 row of the proposal
    labels: np.ndarray  # [N] int64
    scores: np.ndarray  # [N] float32
    boxes: np.ndarray  # [N, 4] float32

    def __len__(self) -> int:
        return int(self.index.shape[0])


def select_boxes(
    boxes: np.ndarray, class_probs: np.ndarray, score_thresh: float, min_detections: int, max_detections: int
) -> BoxSelection:
    """``filter_results_peter``: ``boxes`` ``[R, 4]`` (shared by all classes) or ``[R, C, 4]``, ``class_probs`` ``[R, C]``."""
    probs = np.asarray(class_probs, dtype=np.float32)
    survivors = per_class_nms_mask(boxes if boxes.ndim == 2 else boxes[:, 1:], probs[:, 1:], PETER_NMS_THRESH)
    masked = np.zeros_like(probs)
    masked[:, 1:] = np.where(survivors, probs[:, 1:], 0)
    best = masked.argmax(axis=1)
    best_scores = masked[np.arange(len(masked)), best]
    index = np.flatnonzero(best_scores)
    labels, scores = best[index], best_scores[index]
    order = np.argsort(-scores, kind="stable")
    num_above = int((scores >= np.float32(score_thresh)).sum())
    if num_above < min_detections:
        order = order[:min_detections]
    else:
        order = order[: min(num_above, max_detections)]
    index, labels, scores = index[order], labels[order], scores[order]
    chosen = boxes[index] if boxes.ndim == 2 else boxes[index, labels]
    return BoxSelection(index.astype(np.int64), labels.astype(np.int64), scores, chosen.astype(np.float32))


def select_attributes(
    attr_probs: np.ndarray, threshold: float, max_per_image: int, max_per_object: int
) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """The official attribute filter (see module doc): per box, attribute indices and scores, best first."""
    scores = np.array(attr_probs, dtype=np.float32)
    scores[:, 0] = 0
    above = scores > np.float32(threshold)
    count = int(above.sum())
    scores[~above] = 0
    if count > max_per_image > 0:
        kth = np.partition(scores.ravel(), count - max_per_image)[count - max_per_image]
        scores[scores < kth] = 0
    k = min(max_per_object, scores.shape[1])
    labels: List[np.ndarray] = []
    values: List[np.ndarray] = []
    for row in scores:
        top = np.argsort(-row, kind="stable")[:k]
        top = top[row[top] > 0]
        labels.append(top.astype(np.int64))
        values.append(row[top])
    return labels, values


def rescale_boxes(boxes: np.ndarray, resized: Tuple[int, int], original: Tuple[int, int]) -> np.ndarray:
    """Boxes from the resized image back to the original ``(height, width)``, as ``BoxList.resize``."""
    ratio_h = np.float32(float(original[0]) / float(resized[0]))
    ratio_w = np.float32(float(original[1]) / float(resized[1]))
    out = np.array(boxes, dtype=np.float32)
    out[:, 0::2] *= ratio_w
    out[:, 1::2] *= ratio_h
    return out
