"""Milvus as the store of the first stage, on Milvus Lite files under tmp_path: the searcher equals exact
top-k (ties at the k boundary included), rows past the live end are never seen, an index built with
``store=`` answers as the local index does, refuses a collection rebuilt with other weights, adds by
upsert (and survives a writer killed mid-add), and a bad or unreachable store URI is one line, exit 2."""
import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from vinvl.index import milvus  # noqa: E402
from vinvl.retrieval.search import ExactSearch  # noqa: E402


def _unit(rng, num, dim=16):
    points = rng.standard_normal((num, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def _store(tmp_path, embeddings, index_type="FLAT", index_params=None, name="store.db"):
    """A Lite store holding ``embeddings`` as image rows 0..N-1."""
    store = milvus.MilvusStore(milvus.StoreURI.parse(f"milvus-lite:{tmp_path / name}"))
    store.create(embeddings.shape[1], str(tmp_path / "index"), "sha", index_type, index_params or {})
    ids = [f"img{i}" for i in range(len(embeddings))]
    store.upsert(milvus.IMAGE, 0, embeddings, ids, [["tag"]] * len(embeddings))
    return store


def test_flat_search_equals_exact_search_and_ignores_rows_past_the_live_end(tmp_path):
    rng = np.random.default_rng(0)
    embeddings, queries = _unit(rng, 300), _unit(rng, 12)
    with _store(tmp_path, embeddings) as store:
        for count in (300, 250):  # 250: the rows 250.. a dead writer left are not part of the gallery
            scores, rows = milvus.MilvusSearch(store, milvus.IMAGE, count).search(queries, 10)
            exact_scores, exact_rows = ExactSearch(embeddings[:count]).search(queries, 10)
            np.testing.assert_array_equal(rows, exact_rows)
            np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
            assert rows.max() < count
        short_scores, short_rows = milvus.MilvusSearch(store, milvus.IMAGE, 5).search(queries[:2], 10)
        assert short_rows.shape == (2, 5)  # k above the row count: every row, as ExactSearch gives
        np.testing.assert_array_equal(short_rows, ExactSearch(embeddings[:5]).search(queries[:2], 10)[1])


def test_ties_at_the_k_boundary_go_to_the_lower_rows_as_exact_search_orders_them(tmp_path):
    rng = np.random.default_rng(1)
    embeddings = _unit(rng, 80)
    tied = np.sort(rng.choice(80, 40, replace=False))
    embeddings[tied] = embeddings[tied[0]]  # 40 rows with one vector: more than k + TIE_MARGIN hits tie
    queries = np.stack([embeddings[tied[0]], _unit(rng, 1)[0]])
    with _store(tmp_path, embeddings) as store:
        # Rewritten rows (a repeated add) come back last among equal scores: Milvus' first 13 hits miss them.
        store.upsert(milvus.IMAGE, int(tied[0]), embeddings[tied[:1]], ["again"], [[]])
        store.upsert(milvus.IMAGE, int(tied[1]), embeddings[tied[1:2]], ["again"], [[]])
        scores, rows = milvus.MilvusSearch(store, milvus.IMAGE, 80).search(queries, 5)
    exact_scores, exact_rows = ExactSearch(embeddings).search(queries, 5)
    np.testing.assert_array_equal(rows[0], tied[:5])
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_ivf_flat_probing_every_list_is_exact_and_rows_read_back_by_position(tmp_path):
    rng = np.random.default_rng(2)
    embeddings, queries = _unit(rng, 200), _unit(rng, 6)
    with _store(tmp_path, embeddings, "IVF_FLAT", {"nlist": 4}) as store:
        _, rows = milvus.MilvusSearch(store, milvus.IMAGE, 200, {"nprobe": 4}).search(queries, 8)
        np.testing.assert_array_equal(rows, ExactSearch(embeddings).search(queries, 8)[1])
        view = milvus.MilvusRows(store, milvus.IMAGE, 200, 16)
        assert view.shape == (200, 16)
        np.testing.assert_array_equal(view[np.array([7, 3, 7, 199])], embeddings[[7, 3, 7, 199]])
        np.testing.assert_array_equal(view[-1], embeddings[199])
        with pytest.raises(IndexError, match="200"):
            view[np.array([200])]


@pytest.mark.parametrize(
    "uri, message",
    [
        ("milvus://localhost/gallery", "numeric port"),
        ("milvus://localhost:19530/", "collection name"),
        ("milvus://localhost:19530/bad-name", "collection name"),
        ("milvus-lite:gallery.sqlite", "must end in .db"),
        ("milvus-lite:/no/such/folder/g.db", "/no/such/folder does not exist"),
        ("faiss:/tmp/x", "expected milvus://HOST:PORT/COLLECTION or milvus-lite:PATH.db"),
    ],
)
def test_a_malformed_store_uri_is_refused_naming_what_is_wrong(uri, message):
    with pytest.raises(milvus.StoreError, match=message):
        milvus.StoreURI.parse(uri)


def test_an_unreachable_server_is_one_store_error_within_the_timeout():
    with pytest.raises(milvus.StoreError, match=r"milvus://127\.0\.0\.1:1/gallery: cannot open it") as caught:
        milvus.MilvusStore(milvus.StoreURI.parse("milvus://127.0.0.1:1/gallery"), timeout=1.0)
    assert "\n" not in str(caught.value)
