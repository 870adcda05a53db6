"""The faiss first stage (when faiss-cpu is installed): recall@k against exact top-k on a synthetic
gallery above a stated floor, exactness when every list is probed, determinism, and the index's
faiss file built, memory-mapped and extended with the gallery."""
import os

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from vinvl.index import ivf as ann  # noqa: E402
from vinvl.retrieval.topk import exact_top_k  # noqa: E402

RECALL_FLOOR = 0.9  # recall@10 of IVF-Flat (nprobe 8 of 64 lists) against exact, clustered data


def _clustered(rng, num, dim=32, centers=40):
    """Normalised points around a few centres: the structure real embeddings have and IVF relies on."""
    means = rng.standard_normal((centers, dim))
    points = means[rng.integers(0, centers, num)] + 0.35 * rng.standard_normal((num, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_flat_recall_against_exact_top_k_is_above_the_floor():
    rng = np.random.default_rng(0)
    embeddings, queries = _clustered(rng, 6000), _clustered(rng, 50)
    index = ann.build_ivf_flat(embeddings, nlist=64)
    _, approx = ann.search(index, queries, 10, nprobe=8)
    _, exact = exact_top_k(embeddings, queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    print(f"faiss IVF-Flat recall@10 = {recall:.3f} (floor {RECALL_FLOOR})")
    assert recall >= RECALL_FLOOR


def test_probing_every_list_is_exact_and_ordered_like_exact_top_k():
    rng = np.random.default_rng(1)
    embeddings, queries = _clustered(rng, 800), _clustered(rng, 7)
    index = ann.build_ivf_flat(embeddings, nlist=8)
    scores, rows = ann.search(index, queries, 12, nprobe=8)
    exact_scores, exact_rows = exact_top_k(embeddings, queries, 12)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)


def test_building_twice_gives_the_same_index_and_a_saved_index_opens_memory_mapped(tmp_path):
    rng = np.random.default_rng(2)
    embeddings, queries = _clustered(rng, 3000), _clustered(rng, 5)
    first = ann.search(ann.build_ivf_flat(embeddings, nlist=30), queries, 5, nprobe=3)
    path = str(tmp_path / "ivf.index")
    ann.save(ann.build_ivf_flat(embeddings, nlist=30), path)
    second = ann.search(ann.load(path), queries, 5, nprobe=3)
    np.testing.assert_array_equal(first[1], second[1])


def test_extend_adds_rows_with_their_positions_as_ids():
    rng = np.random.default_rng(3)
    embeddings = _clustered(rng, 1000)
    index = ann.build_ivf_flat(embeddings[:600], nlist=10)
    ann.extend(index, embeddings, 600)
    assert index.ntotal == 1000
    _, rows = ann.search(index, embeddings[[900, 10]], 1, nprobe=10)
    np.testing.assert_array_equal(rows[:, 0], [900, 10])
    with pytest.raises(ValueError, match="holds 1000 vectors"):
        ann.extend(index, embeddings, 600)


def test_default_nlist_keeps_enough_training_points():
    assert ann.default_nlist(10) == 1
    assert ann.default_nlist(1_000_000) == 4000
    assert 39 * ann.default_nlist(5000) <= 5000


def test_gallery_index_with_faiss_matches_exact_when_probing_all_lists_and_grows_with_add(tmp_path):
    from support.tinymodel import caption_embeddings, save_random_model
    from vinvl.data import write_synthetic_corpus
    from vinvl.index import GalleryIndex, GallerySource, add_to_index, build_index

    corpus = str(tmp_path / "corpus")
    write_synthetic_corpus(corpus, {"test": 120, "val": 10}, seed=4)
    model = save_random_model(tmp_path / "model", ["contrastive", "match"], seed=0)
    out = str(tmp_path / "index")
    with pytest.raises(ValueError, match=r"nlist must be in 1\.\.120"):
        build_index(out, model, [GallerySource(corpus, "test")], use_faiss=True, faiss_nlist=121, progress=False)
    assert not os.path.exists(os.path.join(out, "CURRENT"))
    build_index(out, model, [GallerySource(corpus, "test")], use_faiss=True, faiss_nlist=3, progress=False)
    queries = caption_embeddings(model, ["a dog next to a car", "a red chair", "a photo of a tree"])
    with GalleryIndex.open(out) as index:
        assert index.manifest["faiss"]["nlist"] == 3
        assert os.path.isfile(os.path.join(index.path, "faiss.index"))
        np.testing.assert_array_equal(index.search(queries, 5, method="faiss", nprobe=3)[1], index.search(queries, 5)[1])
    add_to_index(out, model, [GallerySource(corpus, "val")], progress=False)
    with GalleryIndex.open(out) as index:
        assert index.faiss_index().ntotal == index.num_images == 130
        np.testing.assert_array_equal(index.search(queries, 5, method="faiss", nprobe=3)[1], index.search(queries, 5)[1])
