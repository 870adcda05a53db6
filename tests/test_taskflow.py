"""Taskflow("image_text_retrieval") on a model trained in the test: the three query kinds, batch sizes,
static vs dynamic scoring, and bad queries."""
import os

import numpy as np
import pytest

import vinvl  # noqa: F401  (registers the task, CPU runtime defaults)
from paddlenlp import Taskflow

from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.model_dir import load_retrieval_model
from vinvl.retrieval import Gallery, RetrievalEngine
from vinvl.training.run import main as train_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_K = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("taskflow")
    corpus = str(root / "corpus")
    write_synthetic_corpus(corpus, {"train": 48, "minival": 8, "val": 8, "test": 12}, seed=5)
    model_dir = str(root / "model")
    flags = {
        "model_name_or_path": os.path.join(REPO, "model_configs", "tiny"),
        "data_dir": corpus,
        "output_dir": model_dir,
        "do_train": "true",
        "max_steps": "40",
        "per_device_train_batch_size": "12",
        "learning_rate": "1e-3",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": "true",
        "seed": "1",
    }
    train_main([t for k, v in flags.items() for t in (f"--{k}", v)])
    return model_dir, corpus, load_corpus(corpus, "test")


@pytest.fixture(scope="module")
def retrieval(trained):
    model_dir, corpus, _ = trained
    return Taskflow("image_text_retrieval", task_path=model_dir, gallery_dir=corpus, top_k=TOP_K, candidates=4, batch_size=5)


def _reference_scores(model_dir, corpus):
    """Every (image, caption) match score, by the engine run directly (an independent entry point)."""
    model, processor = load_retrieval_model(model_dir)
    gallery = Gallery.from_corpus(corpus)
    return RetrievalEngine(model, processor, progress=False).exhaustive(gallery).i2t, gallery


def test_caption_query_returns_ranked_images(trained, retrieval):
    model_dir, _, corpus = trained
    caption = corpus.captions[2][0]
    (result,) = retrieval(caption)
    assert result["caption"] == caption
    assert len(result["images"]) == TOP_K
    scores = [r["score"] for r in result["images"]]
    assert scores == sorted(scores, reverse=True)
    reference, gallery = _reference_scores(model_dir, corpus)
    column = int(np.flatnonzero(np.array(gallery.captions) == caption)[0])
    for item in result["images"]:  # the re-ranked scores are the model's own match scores
        row = corpus.index_of(item["image_id"])
        assert item["score"] == pytest.approx(float(reference[row, column]), abs=1e-5)


def test_exhaustive_mode_ranks_every_image_by_the_match_score(trained):
    model_dir, corpus_dir, corpus = trained
    exhaustive = Taskflow("image_text_retrieval", task_path=model_dir, gallery_dir=corpus_dir, mode="exhaustive", top_k=len(corpus))
    caption = corpus.captions[5][1]
    (result,) = exhaustive(caption)
    reference, gallery = _reference_scores(model_dir, corpus)
    column = int(np.flatnonzero(np.array(gallery.captions) == caption)[0])
    expected = [corpus.image_ids[i] for i in np.lexsort((np.arange(len(corpus)), -reference[:, column]))]
    assert [r["image_id"] for r in result["images"]] == expected


def test_image_queries_by_id_and_by_features_agree(trained, retrieval):
    _, _, corpus = trained
    (by_id,) = retrieval({"image_id": corpus.image_ids[4]})
    (by_features,) = retrieval({"features": corpus.features(4), "tags": corpus.tags[4]})
    assert by_id["image_id"] == corpus.image_ids[4] and by_features["image_id"] is None
    assert len(by_id["captions"]) == TOP_K
    assert [c["caption"] for c in by_id["captions"]] == [c["caption"] for c in by_features["captions"]]
    np.testing.assert_allclose([c["score"] for c in by_id["captions"]], [c["score"] for c in by_features["captions"]], atol=1e-6)
    for item in by_id["captions"]:
        owner = corpus.index_of(item["image_id"])
        assert item["caption"] in corpus.captions[owner]


def test_pair_score_and_batches_of_queries(trained, retrieval):
    model_dir, _, corpus = trained
    reference, _ = _reference_scores(model_dir, corpus)
    (pair,) = retrieval({"image_id": corpus.image_ids[1], "caption": corpus.captions[1][0]})
    assert pair["score"] == pytest.approx(float(reference[1, 5]), abs=1e-5)  # caption 0 of image 1 is column 5
    captions = [corpus.captions[i][0] for i in range(4)]
    batch = retrieval(captions)
    assert [r["caption"] for r in batch] == captions
    assert batch == [retrieval(c)[0] for c in captions]  # a batch answers as single queries do


def test_static_graph_gives_the_dynamic_scores(trained, retrieval):
    model_dir, corpus_dir, corpus = trained
    static = Taskflow("image_text_retrieval", task_path=model_dir, gallery_dir=corpus_dir, top_k=TOP_K, candidates=4, _static_mode=True)
    assert os.path.isfile(os.path.join(model_dir, "static", "inference.pdiparams"))
    for query in (corpus.captions[3][2], {"image_id": corpus.image_ids[7]}):
        (dynamic_result,) = retrieval(query)
        (static_result,) = static(query)
        key = "images" if isinstance(query, str) else "captions"
        np.testing.assert_allclose(
            [r["score"] for r in static_result[key]], [r["score"] for r in dynamic_result[key]], atol=1e-5
        )


@pytest.mark.parametrize(
    "query, message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ({"image_id": "no-such-image"}, "not in the gallery"),
        ({"features": np.zeros((3, 10), np.float32), "tags": ["dog"]}, "2054"),
        ({"image_id": "x", "features": np.zeros((1, 2054))}, "not both"),
        ({"caption": "a dog"}, "image_id"),
        ({"image_id": "500000", "caption": ""}, "caption"),
        ({"picture": 1}, "unknown keys"),
        (42, "caption string or a dict"),
        ([], "non-empty"),
    ],
)
def test_bad_queries_raise_a_clear_value_error(retrieval, query, message):
    with pytest.raises(ValueError, match=message):
        retrieval(query)


def test_a_failed_gallery_update_keeps_the_old_gallery(trained, retrieval):
    _, _, corpus = trained
    before = retrieval(corpus.captions[0][0])
    task = retrieval.task_instance
    with pytest.raises(ValueError, match="wide"):
        task.set_gallery(["a", "b"], [np.zeros((2, 7), np.float32)] * 2, [["x"], ["y"]])
    assert retrieval(corpus.captions[0][0]) == before


def test_task_path_is_required():
    with pytest.raises(ValueError, match="task_path"):
        Taskflow("image_text_retrieval")
