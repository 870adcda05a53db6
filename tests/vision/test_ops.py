"""Detector ops against code we did not write: hand computations from the definitions, and torchvision when installed.

The official detector uses the legacy conventions: inclusive box corners (+1 in widths and areas),
NMS suppressing at IoU >= threshold, RoIAlign without the half-pixel offset with RoI sides clamped
to 1 and an adaptive sampling grid. Every check here would fail if one of those conventions slipped.
"""
from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from vinvl.vision import boxes as box_ops
from vinvl.vision.proposals import cell_anchors, grid_anchors
from vinvl.vision.roi_heads import pool


def _random_boxes(rng: np.random.Generator, n: int, size: float = 60.0) -> np.ndarray:
    x1 = rng.uniform(0, size, n)
    y1 = rng.uniform(0, size, n)
    w = rng.uniform(0, size / 2, n)
    h = rng.uniform(0, size / 2, n)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def _half_open_iou(a, b) -> float:
    """Plain IoU of half-open boxes (torchvision's definition), one pair, in Python floats."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _shift(box):
    """An inclusive-corner box as the half-open box covering the same pixels."""
    return [float(box[0]), float(box[1]), float(box[2]) + 1, float(box[3]) + 1]


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list:
    """Greedy NMS from its definition: best first, drop every box overlapping a kept one at IoU >= threshold."""
    kept = []
    for i in sorted(range(len(boxes)), key=lambda k: -scores[k]):
        if all(_half_open_iou(_shift(boxes[i]), _shift(boxes[j])) < threshold for j in kept):
            kept.append(i)
    return sorted(kept)


def test_legacy_iou_is_half_open_iou_of_boxes_grown_by_one_pixel():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 7), _random_boxes(rng, 5)
    expected = np.array([[_half_open_iou(_shift(p), _shift(q)) for q in b] for p in a])
    np.testing.assert_allclose(box_ops.pairwise_iou(a, b), expected, rtol=1e-5, atol=1e-6)
    # a one-pixel box has area 1, not 0: identical such boxes overlap fully
    point = np.array([[3, 3, 3, 3]], dtype=np.float32)
    assert box_ops.pairwise_iou(point, point)[0, 0] == 1.0


def test_nms_matches_the_definition_on_random_boxes():
    rng = np.random.default_rng(1)
    for threshold in (0.3, 0.5, 0.7):
        boxes = _random_boxes(rng, 60)
        scores = rng.random(60).astype(np.float32)
        assert box_ops.nms(boxes, scores, threshold).tolist() == _reference_nms(boxes, scores, threshold)


def test_nms_suppresses_at_exactly_the_threshold_and_counts_the_extra_pixel():
    # inclusive corners: areas 100 and 200, overlap 100 -> IoU exactly 0.5
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 19]], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert box_ops.nms(boxes, scores, 0.5).tolist() == [0]  # >= suppresses (torchvision's > would keep both)
    assert box_ops.nms(boxes, scores, 0.51).tolist() == [0, 1]
    # kept indices come back in index order, whatever the scores
    assert box_ops.nms(boxes, np.array([0.1, 0.9], dtype=np.float32), 0.5).tolist() == [1]


def test_per_class_nms_mask_equals_one_nms_per_class():
    rng = np.random.default_rng(2)
    shared = _random_boxes(rng, 40)
    scores = rng.random((40, 7)).astype(np.float32)
    mask = box_ops.per_class_nms_mask(shared, scores, 0.3, chunk=3)
    for c in range(7):
        assert np.flatnonzero(mask[:, c]).tolist() == _reference_nms(shared, scores[:, c], 0.3)
    per_class = np.stack([_random_boxes(rng, 40) for _ in range(7)], axis=1)
    mask = box_ops.per_class_nms_mask(per_class, scores, 0.3, chunk=4)
    for c in range(7):
        assert np.flatnonzero(mask[:, c]).tolist() == _reference_nms(per_class[:, c], scores[:, c], 0.3)


def _encode(gt: np.ndarray, ref: np.ndarray, weights) -> np.ndarray:
    """The official BoxCoder.encode, written from its definition (the inverse of decode)."""
    rw, rh = ref[:, 2] - ref[:, 0] + 1, ref[:, 3] - ref[:, 1] + 1
    gw, gh = gt[:, 2] - gt[:, 0] + 1, gt[:, 3] - gt[:, 1] + 1
    rx, ry = ref[:, 0] + 0.5 * rw, ref[:, 1] + 0.5 * rh
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    wx, wy, ww, wh = weights
    return np.stack([wx * (gx - rx) / rw, wy * (gy - ry) / rh, ww * np.log(gw / rw), wh * np.log(gh / rh)], axis=1)


def test_box_decoding_inverts_the_official_encoding():
    rng = np.random.default_rng(3)
    ref = _random_boxes(rng, 20).astype(np.float64)
    gt = _random_boxes(rng, 20).astype(np.float64)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        deltas = _encode(gt, ref, weights)
        np.testing.assert_allclose(box_ops.decode(deltas, ref, weights), gt, rtol=1e-5, atol=2e-4)


def test_box_decoding_clamps_the_scale_and_keeps_the_minus_one():
    ref = np.array([[10, 20, 25, 27]], dtype=np.float32)  # width 16, height 8 (inclusive)
    out = box_ops.decode(np.array([[0, 0, 100, 0]], dtype=np.float32), ref, (1, 1, 1, 1))[0]
    width = 16 * 1000 / 16  # exp(log(1000/16)) * 16
    assert out[0] == pytest.approx(18 - width / 2, rel=1e-5)
    assert out[2] == pytest.approx(18 + width / 2 - 1, rel=1e-5)
    assert out[1] == pytest.approx(20) and out[3] == pytest.approx(27)  # zero delta leaves the box as it was
    clipped = box_ops.clip(np.array([[-5, -5, 700, 90]], dtype=np.float32), height=80, width=640)
    assert clipped.tolist() == [[0, 0, 639, 79]]


def test_cell_anchors_are_the_published_detectron_anchors():
    # generate_anchors(base 16, ratios (0.5, 1, 2), scales (8, 16, 32)) as published with py-faster-rcnn
    published = [
        [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
        [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
        [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
    ]  # fmt: skip
    assert cell_anchors(16, (128, 256, 512), (0.5, 1.0, 2.0)).tolist() == published


def test_grid_anchors_are_location_major_then_anchor():
    cells = cell_anchors(16, (32, 64), (1.0,))
    grid = grid_anchors(cells, 16, height=2, width=3)
    assert grid.shape == (2 * 3 * 2, 4)
    # location (row 1, col 2) is the 6th location; its second anchor is cell 1 shifted by (32, 16)
    np.testing.assert_array_equal(grid[5 * 2 + 1], cells[1] + np.array([32, 16, 32, 16], dtype=np.float32))


def _bilinear(feature: np.ndarray, y: float, x: float) -> np.ndarray:
    """The legacy RoIAlign sample: zero outside [-1, size], edges clamped, else bilinear."""
    channels, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(channels)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        feature[:, y0, x0] * (1 - ly) * (1 - lx)
        + feature[:, y0, x1] * (1 - ly) * lx
        + feature[:, y1, x0] * ly * (1 - lx)
        + feature[:, y1, x1] * ly * lx
    )


def _legacy_roi_align(feature: np.ndarray, box, out: int, scale: float, sampling_ratio: int) -> np.ndarray:
    """RoIAlign as maskrcnn_benchmark's own kernel defines it, one RoI, sample by sample."""
    x1, y1, x2, y2 = (v * scale for v in box)  # no half-pixel offset
    roi_w, roi_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)  # sides clamped to 1
    bin_w, bin_h = roi_w / out, roi_h / out
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out)
    result = np.zeros((feature.shape[0], out, out))
    for ph in range(out):
        for pw in range(out):
            acc = np.zeros(feature.shape[0])
            for iy in range(grid_h):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    acc += _bilinear(feature, y, x)
            result[:, ph, pw] = acc / (grid_h * grid_w)
    return result


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_is_the_legacy_one(sampling_ratio):
    rng = np.random.default_rng(4)
    feature = rng.standard_normal((3, 9, 11)).astype(np.float32)
    boxes = np.array(
        [
            [0, 0, 160, 128],  # the whole map at scale 1/16
            [20.5, 30.2, 90.7, 70.1],
            [40, 40, 44, 41],  # smaller than one feature cell: sides clamp to 1
            [100, 100, 260, 200],  # runs past the bottom-right edge
            [-30, -20, 30, 20],  # starts before the top-left edge
            [33.3, 5.5, 150.1, 130.9],  # large: adaptive grid of several samples per bin
        ],
        dtype=np.float32,
    )
    got = pool(paddle.to_tensor(feature[None]), boxes, 4, 1 / 16, sampling_ratio).numpy()
    expected = np.stack([_legacy_roi_align(feature.astype(np.float64), b, 4, 1 / 16, sampling_ratio) for b in boxes])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ torchvision, when installed


def test_against_torchvision_ops():
    """torchvision's nms and roi_align(aligned=False) on boxes grown by one pixel (away from exact ties)."""
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 80)
    scores = rng.random(80).astype(np.float32)
    grown = torch.from_numpy(boxes + np.array([0, 0, 1, 1], dtype=np.float32))
    expected = sorted(tv_ops.nms(grown, torch.from_numpy(scores), 0.5).tolist())
    assert box_ops.nms(boxes, scores, 0.5).tolist() == expected
    feature = rng.standard_normal((1, 3, 9, 11)).astype(np.float32)
    rois = torch.from_numpy(np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes * 2], axis=1))
    theirs = tv_ops.roi_align(torch.from_numpy(feature), rois, 5, 1 / 16, 0, aligned=False).numpy()
    ours = pool(paddle.to_tensor(feature), boxes * 2, 5, 1 / 16, 0).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
