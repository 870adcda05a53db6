"""The one top-k rule (score descending, then lower index) through every first-stage search."""
import numpy as np
import pytest

from vinvl.retrieval.first_stage import BM25Index
from vinvl.retrieval.metrics import top_k_indices
from vinvl.retrieval.search import ExactSearch
from vinvl.retrieval.topk import top_k


def _reference(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's k best columns by a plain stable sort (ties: lower column first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_exact_search_orders_ties_by_lower_row():
    rng = np.random.default_rng(0)
    keys = rng.integers(-2, 3, size=(300, 4)).astype(np.float32)  # many exact ties
    queries = rng.integers(-2, 3, size=(17, 4)).astype(np.float32)
    scores, rows = ExactSearch(keys, chunk_rows=64).search(queries, 20)
    np.testing.assert_array_equal(rows, _reference(queries @ keys.T, 20))
    np.testing.assert_array_equal(scores, np.take_along_axis(queries @ keys.T, rows, axis=1))


def test_exact_search_of_a_memory_map(tmp_path):
    rng = np.random.default_rng(1)
    keys = rng.standard_normal((1000, 8)).astype(np.float32)
    np.save(tmp_path / "keys.npy", keys)
    mapped = np.load(tmp_path / "keys.npy", mmap_mode="r")
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_array_equal(ExactSearch(mapped, chunk_rows=99).search(queries, 7)[1], _reference(queries @ keys.T, 7))


def test_bm25_search_uses_the_same_rule():
    index = BM25Index([["dog"], ["cat"], ["dog", "ball"], ["dog"], ["tree"]])
    scores, docs = index.search([["dog"], ["nothing"]], 3)
    assert docs[0].tolist() == [0, 3, 2]  # equal scores for 0 and 3: lower index first
    assert docs[1].tolist() == [0, 1, 2]  # no word matches: the first k documents
    assert scores.dtype == np.float64 and scores[1].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_array_equal(index.top_k([["dog"]], 3), docs[:1])


def test_listing_top_k_matches_the_search_rule():
    scores = np.array([[0.5, 0.9, 0.5, -np.inf], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(top_k(scores, 3)[1], _reference(scores, 3))
    np.testing.assert_array_equal(top_k_indices(scores, 3), _reference(scores, 3))
    np.testing.assert_array_equal(top_k_indices(scores, 2, axis=0), _reference(scores.T, 2))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k(scores, 0)
