"""Box arithmetic in maskrcnn_benchmark's pixel convention, in float32 numpy.

Boxes are ``x1, y1, x2, y2`` with inclusive corners: a box's width is ``x2 - x1 + 1``. This is the
convention of the code VinVL was extracted with (its own compiled NMS, not torchvision's), and it
differs from torchvision's in two ways that change detections: areas and overlaps add 1, and NMS
suppresses a box when its IoU is ``>=`` the threshold (torchvision: ``>``). ``paddle.vision.ops.nms``
follows torchvision's rule (measured: it keeps both boxes of an IoU of exactly 0.5 at threshold
0.5), so NMS is implemented here; RoIAlign does come from paddle (see :mod:`.roi_heads`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Largest log-scale a box delta may apply (the official BoxCoder's bbox_xform_clip).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def areas(boxes: np.ndarray) -> np.ndarray:
    """``(x2 - x1 + 1) * (y2 - y1 + 1)`` for ``[N, 4]`` boxes."""
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, M]`` IoU of ``a [N, 4]`` and ``b [M, 4]`` with the +1 convention (overlap clamped at 0)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    w = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1, 0)
    h = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1, 0)
    inter = w * h
    return inter / (areas(a)[:, None] + areas(b)[None, :] - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes in ascending index order (as the official kernel returns them).

    Visits boxes by descending score; a visited box suppresses every later box whose IoU with it
    is ``>= threshold``. Callers that pass boxes sorted by score get the kept ones in score order.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    order = np.argsort(-np.asarray(scores), kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = areas(boxes)
    suppressed = np.zeros(len(boxes), dtype=bool)
    threshold = np.float32(threshold)
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        rest = order[position + 1 :]
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            break
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1, 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1, 0)
        inter = w * h
        suppressed[rest[inter / (area[i] + area[rest] - inter) >= threshold]] = True
    return np.flatnonzero(~suppressed)


def per_class_nms_mask(boxes: np.ndarray, scores: np.ndarray, threshold: float, chunk: int = 256) -> np.ndarray:
    """``[R, C]`` bool: which of ``R`` boxes survive :func:`nms` run separately for each of ``C`` classes.

    ``boxes`` is ``[R, 4]`` (every class scores the same boxes, as with IGNORE_BOX_REGRESSION) or
    ``[R, C, 4]`` (class-specific boxes). Equivalent to calling :func:`nms` per class, but runs the
    greedy pass for all classes of a chunk at once.
    """
    scores = np.asarray(scores, dtype=np.float32)
    num_boxes, num_classes = scores.shape
    keep = np.zeros((num_boxes, num_classes), dtype=bool)
    if num_boxes == 0:
        return keep
    threshold = np.float32(threshold)
    shared = boxes.ndim == 2
    overlap = pairwise_iou(boxes, boxes) >= threshold if shared else None
    for start in range(0, num_classes, chunk):
        stop = min(start + chunk, num_classes)
        rows = np.arange(stop - start)
        if shared:
            over = overlap  # [R, R], the same for every class
        else:
            over = np.stack([pairwise_iou(boxes[:, c], boxes[:, c]) >= threshold for c in range(start, stop)])
        order = np.argsort(-scores[:, start:stop].T, axis=1, kind="stable")  # [c, R]
        suppressed = np.zeros((stop - start, num_boxes), dtype=bool)
        kept = np.zeros((stop - start, num_boxes), dtype=bool)
        for rank in range(num_boxes):
            candidate = order[:, rank]
            alive = ~suppressed[rows, candidate]
            live_rows, live_boxes = rows[alive], candidate[alive]
            kept[live_rows, live_boxes] = True
            suppressed[live_rows] |= over[live_boxes] if shared else over[live_rows, live_boxes]
        keep[:, start:stop] = kept.T
    return keep


def decode(deltas: np.ndarray, reference: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Apply ``[N, 4k]`` deltas ``(dx, dy, dw, dh)`` to ``[N, 4]`` reference boxes -> ``[N, 4k]`` boxes.

    The official BoxCoder.decode: widths with +1, centres at ``x1 + 0.5 w``, ``dw``/``dh`` divided by
    their weights and clamped at log(1000/16), and ``x2 = centre + 0.5 w - 1``.
    """
    deltas = np.asarray(deltas, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    widths = reference[:, 2] - reference[:, 0] + 1
    heights = reference[:, 3] - reference[:, 1] + 1
    ctr_x = reference[:, 0] + np.float32(0.5) * widths
    ctr_y = reference[:, 1] + np.float32(0.5) * heights
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, np.float32(BBOX_XFORM_CLIP))
    dh = np.minimum(deltas[:, 3::4] / wh, np.float32(BBOX_XFORM_CLIP))
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = np.exp(dw) * widths[:, None]
    pred_h = np.exp(dh) * heights[:, None]
    out = np.empty_like(deltas)
    out[:, 0::4] = pred_ctr_x - np.float32(0.5) * pred_w
    out[:, 1::4] = pred_ctr_y - np.float32(0.5) * pred_h
    out[:, 2::4] = pred_ctr_x + np.float32(0.5) * pred_w - 1
    out[:, 3::4] = pred_ctr_y + np.float32(0.5) * pred_h - 1
    return out


def clip(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clamp ``[N, 4]`` boxes to ``[0, width - 1] x [0, height - 1]`` (a copy)."""
    out = np.array(boxes, dtype=np.float32)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width - 1)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height - 1)
    return out
