"""Ranks and R@K of vinvl.retrieval.metrics against hand-made matrices and a slow reference."""
import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU defaults before paddle)
from vinvl.retrieval.metrics import (
    candidate_i2t_ranks,
    fold_metrics,
    i2t_ranks,
    recall_at_k,
    rerank_metrics,
    retrieval_metrics,
    subset_metrics,
    t2i_ranks,
    top_k_indices,
)

# 3 images x 4 captions; captions 0 and 1 belong to image 0, 2 to image 1, 3 to image 2.
SCORES = np.array(
    [
        [0.9, 0.1, 0.9, 0.2],  # best own caption 0.9 ties with caption 2 -> rank 1
        [0.3, 0.8, 0.5, 0.5],  # own 0.5; 0.8 above, 0.5 tie -> rank 2
        [0.1, 0.2, 0.3, 0.4],  # own 0.4 above all -> rank 0
    ],
    dtype=np.float32,
)
CAPTION_TO_IMAGE = np.array([0, 0, 1, 2])


def reference_i2t(scores, caption_to_image):
    ranks = []
    for i, row in enumerate(scores):
        own = [j for j in range(len(row)) if caption_to_image[j] == i]
        best = max(row[j] for j in own)
        ranks.append(sum(1 for j in range(len(row)) if j not in own and row[j] >= best))
    return np.array(ranks)


def reference_t2i(scores, caption_to_image):
    ranks = []
    for j in range(scores.shape[1]):
        own = caption_to_image[j]
        ranks.append(sum(1 for i in range(scores.shape[0]) if i != own and scores[i, j] >= scores[own, j]))
    return np.array(ranks)


def reference_recall(ranks, k):
    return 100.0 * sum(1 for r in ranks if r < k) / len(ranks)


def random_case(rng, num_images, per_image, levels=None):
    counts = rng.integers(1, per_image + 1, num_images)
    caption_to_image = rng.permutation(np.repeat(np.arange(num_images), counts))
    scores = rng.random((num_images, len(caption_to_image))).astype(np.float32)
    if levels:  # few distinct values: many ties
        scores = np.round(scores * levels) / levels
    return scores, caption_to_image


def test_hand_made_ranks_with_ties_are_pessimistic():
    assert i2t_ranks(SCORES, CAPTION_TO_IMAGE).tolist() == [1, 2, 0]
    # caption 0: column [.9,.3,.1] own .9 -> 0; caption 1: own .1 < .8, .2 -> 2;
    # caption 2: own .5 < .9 -> 1; caption 3: own .4 < .5 -> 1
    assert t2i_ranks(SCORES, CAPTION_TO_IMAGE).tolist() == [0, 2, 1, 1]


def test_hand_made_recall_and_rsum():
    metrics = retrieval_metrics(SCORES, CAPTION_TO_IMAGE, ks=(1, 2, 3))
    assert metrics["i2t_R@1"] == pytest.approx(100 / 3)
    assert metrics["i2t_R@2"] == pytest.approx(200 / 3)
    assert metrics["i2t_R@3"] == pytest.approx(100.0)
    assert metrics["t2i_R@1"] == pytest.approx(25.0)
    assert metrics["t2i_R@2"] == pytest.approx(75.0)
    assert metrics["rsum"] == pytest.approx(sum(v for k, v in metrics.items() if k != "rsum"))


def test_constant_scores_give_worst_ranks():
    scores = np.full((4, 8), 0.5, dtype=np.float32)
    caption_to_image = np.repeat(np.arange(4), 2)
    assert i2t_ranks(scores, caption_to_image).tolist() == [6] * 4
    assert t2i_ranks(scores, caption_to_image).tolist() == [3] * 8
    assert retrieval_metrics(scores, caption_to_image, ks=(1, 3))["rsum"] == 0.0


def test_minus_inf_non_candidates_rank_below_candidates():
    scores = np.array([[0.1, -np.inf, -np.inf], [-np.inf, -np.inf, 0.2]], dtype=np.float32)
    caption_to_image = np.array([0, 1, 1])
    # image 0's caption is the only candidate; image 1's best own caption (0.2) beats caption 0's -inf
    assert i2t_ranks(scores, caption_to_image).tolist() == [0, 0]
    # caption 1 was no candidate of image 1: every image ties at -inf -> worst rank
    assert t2i_ranks(scores, caption_to_image).tolist() == [0, 1, 0]


@pytest.mark.parametrize("shape,levels", [((1, 3), None), ((5, 2), None), ((13, 5), 4), ((40, 3), None), ((64, 5), 10)])
def test_ranks_and_recall_match_reference(shape, levels):
    rng = np.random.default_rng(sum(shape))
    scores, caption_to_image = random_case(rng, *shape, levels=levels)
    i2t = i2t_ranks(scores, caption_to_image)
    t2i = t2i_ranks(scores, caption_to_image)
    np.testing.assert_array_equal(i2t, reference_i2t(scores, caption_to_image))
    np.testing.assert_array_equal(t2i, reference_t2i(scores, caption_to_image))
    metrics = retrieval_metrics(scores, caption_to_image)
    for k in (1, 5, 10):
        assert metrics[f"i2t_R@{k}"] == pytest.approx(reference_recall(reference_i2t(scores, caption_to_image), k))
        assert metrics[f"t2i_R@{k}"] == pytest.approx(reference_recall(reference_t2i(scores, caption_to_image), k))


def test_separate_direction_matrices():
    rng = np.random.default_rng(1)
    i2t_scores, caption_to_image = random_case(rng, 9, 3)
    t2i_scores = rng.random(i2t_scores.shape).astype(np.float32)
    metrics = retrieval_metrics(i2t_scores, caption_to_image, t2i_scores)
    assert metrics["i2t_R@1"] == pytest.approx(reference_recall(reference_i2t(i2t_scores, caption_to_image), 1))
    assert metrics["t2i_R@1"] == pytest.approx(reference_recall(reference_t2i(t2i_scores, caption_to_image), 1))
    with pytest.raises(ValueError, match="differ"):
        retrieval_metrics(i2t_scores, caption_to_image, t2i_scores[:, :-1])


def test_candidate_rerank_ranks():
    caption_to_image = np.array([0, 0, 1, 1, 2, 2])
    candidates = np.array([[0, 2, 4], [5, 3, 0], [0, 1, 2]])
    candidate_scores = np.array([[0.5, 0.7, 0.1], [0.9, 0.9, 0.2], [0.9, 0.8, 0.7]], dtype=np.float32)
    # image 0: own 0.5 below 0.7 -> 1; image 1: own 0.9 ties caption 5 -> 1; image 2: no own caption -> K = 3
    assert candidate_i2t_ranks(candidate_scores, candidates, caption_to_image).tolist() == [1, 1, 3]
    metrics = rerank_metrics(candidate_scores, candidates, caption_to_image, ks=(1, 2))
    assert metrics == {"i2t_R@1": 0.0, "i2t_R@2": pytest.approx(200 / 3)}


def test_candidate_rerank_matches_full_matrix_with_minus_inf():
    rng = np.random.default_rng(3)
    scores, caption_to_image = random_case(rng, 12, 4, levels=5)
    candidates = np.stack([rng.choice(scores.shape[1], 6, replace=False) for _ in range(12)])
    masked = np.full_like(scores, -np.inf)
    rows = np.arange(12)[:, None]
    masked[rows, candidates] = scores[rows, candidates]
    ranks = candidate_i2t_ranks(scores[rows, candidates], candidates, caption_to_image)
    has_own = (caption_to_image[candidates] == rows).any(axis=1)
    np.testing.assert_array_equal(ranks[has_own], i2t_ranks(masked, caption_to_image)[has_own])
    assert (ranks[~has_own] == 6).all()


def test_five_fold_average_and_subset():
    rng = np.random.default_rng(5)
    num_images = 20
    caption_to_image = np.repeat(np.arange(num_images), 5)
    scores = rng.random((num_images, 100)).astype(np.float32)
    folds = []
    for f in range(5):
        images = np.arange(f * 4, f * 4 + 4)
        cols = np.flatnonzero(np.isin(caption_to_image, images))
        sub, sub_index = scores[np.ix_(images, cols)], caption_to_image[cols] - f * 4
        folds.append(
            [reference_recall(reference_i2t(sub, sub_index), 1), reference_recall(reference_t2i(sub, sub_index), 5)]
        )
        single = subset_metrics(scores, caption_to_image, images)
        assert single["i2t_R@1"] == pytest.approx(folds[-1][0])
    metrics = fold_metrics(scores, caption_to_image, num_folds=5)
    assert metrics["i2t_R@1"] == pytest.approx(np.mean([f[0] for f in folds]))
    assert metrics["t2i_R@5"] == pytest.approx(np.mean([f[1] for f in folds]))
    with pytest.raises(ValueError, match="equal folds"):
        fold_metrics(scores, caption_to_image, num_folds=3)


def test_subset_keeps_given_image_order():
    caption_to_image = np.array([0, 1, 2, 2])
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    forward = subset_metrics(scores, caption_to_image, [2, 0])
    backward = subset_metrics(scores, caption_to_image, [0, 2])
    assert forward == backward
    with pytest.raises(ValueError, match="distinct"):
        subset_metrics(scores, caption_to_image, [0, 0])


def test_top_k_indices_lists_best_first_ties_by_index():
    assert top_k_indices(SCORES, 3).tolist() == [[0, 2, 3], [1, 2, 3], [3, 2, 1]]
    assert top_k_indices(SCORES, 2, axis=0).tolist() == [[0, 1], [1, 2], [0, 1], [1, 2]]
    with_minus_inf = np.array([[-np.inf, 0.5, -np.inf]], dtype=np.float32)
    assert top_k_indices(with_minus_inf, 10).tolist() == [[1, 0, 2]]
    with pytest.raises(ValueError, match="positive"):
        top_k_indices(SCORES, 0)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        i2t_ranks(np.array([[np.nan]], dtype=np.float32), np.array([0]))
    with pytest.raises(ValueError, match="one per column"):
        t2i_ranks(SCORES, CAPTION_TO_IMAGE[:-1])
    with pytest.raises(ValueError, match="no caption|none"):
        i2t_ranks(np.zeros((3, 2), dtype=np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        t2i_ranks(np.zeros((2, 0), dtype=np.float32), np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="no ranks"):
        recall_at_k(np.array([]))
