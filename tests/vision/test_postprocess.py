"""Post-processing against the official rules written out in the test (filter_results_peter, attributes)."""
from __future__ import annotations

import numpy as np

from vinvl.vision.postprocess import rescale_boxes, select_attributes, select_boxes, softmax
from vinvl.vision.transforms import resized_size


def _nms_keep(boxes, scores, threshold):
    """Greedy NMS with inclusive corners and the >= rule, one class, in plain Python."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
        return w * h / (area(a) + area(b) - w * h)

    kept = []
    for i in sorted(range(len(boxes)), key=lambda k: -scores[k]):
        if all(iou(boxes[i], boxes[j]) < threshold for j in kept):
            kept.append(i)
    return kept


def _reference_peter(boxes, probs, thresh, min_det, max_det):
    """filter_results_peter spelled out: per-class NMS at 0.3, best surviving class per box, then selection."""
    best = {}
    for c in range(1, probs.shape[1]):
        for i in _nms_keep(boxes, probs[:, c], 0.3):
            if probs[i, c] > best.get(i, (0, 0.0))[1]:
                best[i] = (c, probs[i, c])
    ranked = sorted(best.items(), key=lambda item: -item[1][1])
    above = sum(1 for _, (_, s) in ranked if s >= thresh)
    count = min_det if above < min_det else min(above, max_det)
    return [(i, c) for i, (c, _) in ranked[:count]]


def _random_case(seed, n=30, classes=6):
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, 50, n), rng.uniform(0, 50, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(5, 30, n), y1 + rng.uniform(5, 30, n)], 1).astype(np.float32)
    probs = softmax(rng.normal(0, 2.0, (n, classes)))
    return boxes, probs


def test_select_boxes_is_filter_results_peter():
    for seed, (thresh, min_det, max_det) in enumerate([(0.2, 10, 100), (0.05, 3, 8), (0.9, 10, 100), (0.0, 0, 5)]):
        boxes, probs = _random_case(seed)
        got = select_boxes(boxes, probs, thresh, min_det, max_det)
        expected = _reference_peter(boxes, probs, thresh, min_det, max_det)
        assert list(zip(got.index.tolist(), got.labels.tolist())) == expected
        np.testing.assert_array_equal(got.boxes, boxes[got.index])
        np.testing.assert_array_equal(got.scores, probs[got.index, got.labels])
        assert (np.diff(got.scores) <= 0).all()


def test_min_detections_fallback_and_cap():
    boxes, probs = _random_case(7, n=40)
    above = select_boxes(boxes, probs, 0.0, 0, 1000)
    assert len(above) > 12
    # nothing clears 0.99: the best 10 are kept anyway, the fallback the VinVL features rely on
    fallback = select_boxes(boxes, probs, 0.99, 10, 100)
    assert len(fallback) == 10 and (fallback.scores < 0.99).all()
    np.testing.assert_array_equal(fallback.index, above.index[:10])
    # more than the cap clear the threshold: the best `max` are kept
    capped = select_boxes(boxes, probs, 0.0, 10, 12)
    np.testing.assert_array_equal(capped.index, above.index[:12])


def test_background_and_fully_suppressed_boxes_are_never_returned():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float32)
    probs = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.9, 0.05, 0.05]], dtype=np.float32)
    got = select_boxes(boxes, probs, 0.2, 10, 100)
    # box 1 duplicates box 0 and loses both classes to it; box 2 keeps its best foreground class
    assert got.index.tolist() == [0, 2] and got.labels.tolist() == [1, 1]


def test_class_specific_boxes_take_the_box_of_the_kept_class():
    boxes, probs = _random_case(11, n=20, classes=4)
    per_class = np.stack([boxes + 3 * c for c in range(4)], axis=1)
    got = select_boxes(per_class, probs, 0.1, 5, 100)
    np.testing.assert_array_equal(got.boxes, per_class[got.index, got.labels])


def _reference_attributes(probs, thresh, max_img, max_obj):
    """AttributePostProcessor.filter_results spelled out, with torch.kthvalue's k-th smallest."""
    scores = probs.copy()
    scores[:, 0] = 0
    count = int((scores > thresh).sum())
    scores[scores <= thresh] = 0
    if count > max_img > 0:
        kth = sorted(scores.ravel().tolist())[count - max_img]  # 1-indexed k = count - max + 1
        scores[scores < kth] = 0
    out = []
    for row in scores:
        top = sorted(range(len(row)), key=lambda a: -row[a])[:max_obj]
        out.append([a for a in top if row[a] > 0])
    return out


def test_attributes_follow_the_official_filter_including_its_kthvalue_cap():
    rng = np.random.default_rng(8)
    probs = softmax(rng.normal(0, 2.5, (12, 30)))
    for thresh, max_img, max_obj in [(0.05, 100, 16), (0.05, 5, 16), (0.0, 20, 3)]:
        labels, scores = select_attributes(probs, thresh, max_img, max_obj)
        expected = _reference_attributes(probs, thresh, max_img, max_obj)
        assert [row.tolist() for row in labels] == expected
        for row_labels, row_scores, p in zip(labels, scores, probs):
            np.testing.assert_array_equal(row_scores, p[row_labels])
    # the cap counts the zeroed scores too, so with many boxes below threshold it removes nothing
    many = select_attributes(probs, 0.05, 5, 16)[0]
    assert sum(len(r) for r in many) > 5
    # with (almost) no zeros the k-th smallest is positive and the cap bites
    dense = np.full((3, 4), 0.25, dtype=np.float32) + np.arange(12, dtype=np.float32).reshape(3, 4) * 1e-3
    capped = select_attributes(dense, 0.0, 4, 16)[0]
    assert sum(len(r) for r in capped) < 9 and 0 not in np.concatenate(capped)


def test_resize_rule_and_box_rescaling():
    assert resized_size(480, 640, 600, 1000) == (600, 800)
    assert resized_size(331, 500, 600, 1000) == (600, 906)  # truncated, as int()
    assert resized_size(200, 1000, 600, 1000) == (200, 1000)  # long side capped: short side round(200)
    assert resized_size(600, 900, 600, 1000) == (600, 900)  # already the size: untouched
    boxes = np.array([[10, 20, 30, 40]], dtype=np.float32)
    np.testing.assert_allclose(rescale_boxes(boxes, (600, 800), (480, 640)), [[8, 16, 24, 32]], rtol=1e-6)
