"""First stage at scale: chunked exact top-k against a plain argsort of the full score matrix, and the
merge of per-shard top-k lists against one computation over the whole gallery (ties, short shards)."""
import numpy as np
import pytest

from vinvl.retrieval.topk import PAD_INDEX, exact_top_k, merge_top_k, top_k_of_block


def _reference(embeddings, queries, k):
    """Top-k by a full argsort: score descending, ties by lower index (np.lexsort, last key primary)."""
    scores = queries @ embeddings.T
    columns = np.broadcast_to(np.arange(len(embeddings)), scores.shape)
    order = np.lexsort((columns, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def _tied(rng, rows, dim=6):
    """Values in {-1, -0.5, 0, 0.5, 1}: every inner product is exact in float32 and ties are frequent."""
    return (rng.integers(-2, 3, (rows, dim)) / 2).astype(np.float32)


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
def test_chunked_exact_top_k_equals_full_argsort_with_ties(chunk_rows):
    rng = np.random.default_rng(0)
    embeddings, queries = _tied(rng, 300), _tied(rng, 9)
    scores, indices = exact_top_k(embeddings, queries, 25, chunk_rows=chunk_rows)
    ref_scores, ref_indices = _reference(embeddings, queries, 25)
    assert (queries @ embeddings.T == 0).sum() > 100  # the data really is full of ties
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(scores, ref_scores)


def test_chunked_exact_top_k_on_a_memory_map(tmp_path):
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((5000, 32)).astype(np.float32)
    np.save(tmp_path / "e.npy", embeddings)
    mapped = np.load(tmp_path / "e.npy", mmap_mode="r")
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    scores, indices = exact_top_k(mapped, queries, 10, chunk_rows=333)
    ref_scores, ref_indices = _reference(embeddings, queries, 10)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_k_larger_than_the_gallery_returns_every_image():
    rng = np.random.default_rng(2)
    embeddings, queries = _tied(rng, 5), _tied(rng, 3)
    scores, indices = exact_top_k(embeddings, queries, 10, chunk_rows=2)
    assert indices.shape == (3, 5)
    np.testing.assert_array_equal(indices, _reference(embeddings, queries, 5)[1])


def test_row_range_searches_one_shard_with_global_indices():
    rng = np.random.default_rng(3)
    embeddings, queries = _tied(rng, 100), _tied(rng, 4)
    _, indices = exact_top_k(embeddings, queries, 8, chunk_rows=9, rows=(40, 70))
    expected = _reference(embeddings[40:70], queries, 8)[1] + 40
    np.testing.assert_array_equal(indices, expected)


def test_top_k_of_block_keeps_the_lowest_indices_among_ties():
    scores = np.array([[1.0, 2.0, 2.0, 2.0, 0.0, 2.0]], dtype=np.float32)
    top_scores, top = top_k_of_block(scores, 2, offset=10)
    np.testing.assert_array_equal(top, [[11, 12]])
    np.testing.assert_array_equal(top_scores, [[2.0, 2.0]])


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_merging_shard_answers_equals_one_search_of_the_whole_gallery(num_shards):
    rng = np.random.default_rng(4)
    embeddings, queries = _tied(rng, 60), _tied(rng, 11)
    k = 12
    # each shard answers for its own image range with global ids, as a shard server would
    bounds = np.linspace(0, len(embeddings), num_shards + 1).round().astype(int)  # contiguous ranges
    answers = [exact_top_k(embeddings, queries, k, rows=(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:])]
    merged_scores, merged = merge_top_k(answers, k)
    ref_scores, ref = _reference(embeddings, queries, k)
    np.testing.assert_array_equal(merged, ref)
    np.testing.assert_array_equal(merged_scores, ref_scores)


def test_merge_with_shards_holding_fewer_than_k_images():
    rng = np.random.default_rng(5)
    embeddings, queries = _tied(rng, 13), _tied(rng, 6)
    ranges = [(0, 2), (2, 3), (3, 13)]  # two shards smaller than k
    answers = [exact_top_k(embeddings, queries, 5, rows=r) for r in ranges]
    assert [a[1].shape[1] for a in answers] == [2, 1, 5]
    scores, indices = merge_top_k(answers, 5)
    np.testing.assert_array_equal(indices, _reference(embeddings, queries, 5)[1])
    # fewer images than k in total: every image, in order
    scores, indices = merge_top_k(answers[:2], 5)
    np.testing.assert_array_equal(indices, _reference(embeddings[:3], queries, 3)[1])


def test_merge_ties_across_shards_go_to_the_lower_global_id_whatever_the_shard_order():
    a = (np.array([[0.5, 0.5]], np.float32), np.array([[7, 9]]))
    b = (np.array([[0.5, 0.9]], np.float32), np.array([[3, 20]]))
    for parts in ([a, b], [b, a]):
        scores, indices = merge_top_k(parts, 3)
        np.testing.assert_array_equal(indices, [[20, 3, 7]])
        np.testing.assert_array_equal(scores, np.array([[0.9, 0.5, 0.5]], np.float32))


def test_merge_drops_padding_and_pads_short_rows():
    a = (np.array([[0.3, -np.inf], [0.1, 0.2]], np.float32), np.array([[4, PAD_INDEX], [1, 2]]))
    b = (np.array([[-np.inf], [0.0]], np.float32), np.array([[PAD_INDEX], [8]]))
    scores, indices = merge_top_k([a, b], 3)
    np.testing.assert_array_equal(indices, [[4, PAD_INDEX, PAD_INDEX], [2, 1, 8]])
    assert scores[0, 0] == np.float32(0.3) and np.isneginf(scores[0, 1:]).all()


def test_merge_rejects_bad_parts():
    good = (np.zeros((2, 3), np.float32), np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="part 1"):
        merge_top_k([good, (np.zeros((3, 3)), np.zeros((3, 3), np.int64))], 2)
    with pytest.raises(ValueError, match="NaN"):
        merge_top_k([(np.full((2, 3), np.nan), good[1])], 2)
    with pytest.raises(ValueError, match="k must be"):
        merge_top_k([good], 0)
