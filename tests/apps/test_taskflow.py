"""Taskflow("image_text_retrieval") on a model trained in the test, over a gallery larger than the
first stage's candidates so every option's effect shows: the query kinds, each option (first_stage,
candidates, top_k, batch_size, gallery_dir / gallery_split / gallery_keys_file, gallery,
_static_mode, precision), the rejected ``mode=``, and bad queries. The reference for every ranking is the
engine run directly (margins of every pair, candidates from the first-stage functions)."""
import os

import numpy as np
import pytest

import vinvl  # noqa: F401  (registers the task, CPU runtime defaults)
from paddlenlp import Taskflow

from vinvl.data import load_corpus
from vinvl.errors import UsageError
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.retrieval import Gallery, RetrievalEngine, match_probability, tag_candidates
from vinvl.apps.taskflow import ImageTextRetrievalTask

from support.precision import (
    assert_within_tolerance, refuse_missing_instructions, save_wide_model, skip_unless_supported,
)
from support.tinymodel import assert_same_answers, derive

TEST_IMAGES = 24  # 120 captions: well above the candidates below
CANDIDATES = 4
TOP_K = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_tiny):
    model_dir, corpus = train_tiny(tmp_path_factory.mktemp("taskflow"), TEST_IMAGES)
    return model_dir, corpus, load_corpus(corpus, "test")


@pytest.fixture(scope="module")
def reference(trained):
    """(engine, gallery, margins [I, C]) of the test split, every pair, by the engine run directly."""
    model_dir, _, corpus = trained
    model, processor = load_retrieval_model(model_dir)
    gallery = Gallery.from_corpus(corpus)
    engine = RetrievalEngine(model, processor, progress=False)
    return engine, gallery, engine.exhaustive(gallery).i2t


def make(trained, **options):
    model_dir, corpus_dir, _ = trained
    settings = dict(task_path=model_dir, gallery_dir=corpus_dir, top_k=TOP_K, candidates=CANDIDATES, batch_size=5)
    settings.update(options)
    return Taskflow("image_text_retrieval", **settings)


@pytest.fixture(scope="module")
def retrieval(trained):
    return make(trained)


def ranked(margins, indices):
    """``indices`` by margin, best first, ties in index order."""
    indices = np.asarray(indices)
    return indices[np.lexsort((indices, -margins[indices]))].tolist()


def caption_column(gallery, caption):
    return int(np.flatnonzero(np.array(gallery.captions) == caption)[0])


def image_ids_of(result):
    return [r["image_id"] for r in result["images"]]


def captions_of(result):
    return [r["caption"] for r in result["captions"]]


QUERY_CAPTIONS = [(i, j) for i in range(0, TEST_IMAGES, 2) for j in (0, 3)]  # 24 caption queries


# ----- the options ------------------------------------------------------------------------


def test_mode_is_rejected_where_the_task_can_see_it(trained):
    model_dir, _, _ = trained
    # paddlenlp's Taskflow.__init__(task, model=None, mode=None, ...) keeps mode= and never passes it to
    # this task (documented in vinvl.apps.taskflow); a direct construction does pass it, and is refused.
    with pytest.raises(ValueError, match="first_stage='exhaustive'"):
        ImageTextRetrievalTask(task="image_text_retrieval", model="vinvl", task_path=model_dir, mode="two_stage")


def test_building_the_task_changes_no_process_wide_paddlenlp_setting(trained):
    from paddlenlp.taskflow import taskflow as paddlenlp_taskflow
    from paddlenlp.taskflow import utils as taskflow_utils

    model_dir, corpus_dir, _ = trained
    before = taskflow_utils.DOWNLOAD_CHECK
    other_models = {name: entry for name, entry in paddlenlp_taskflow.TASKS.items() if name != "image_text_retrieval"}
    Taskflow("image_text_retrieval", task_path=model_dir, gallery_dir=corpus_dir)
    assert taskflow_utils.DOWNLOAD_CHECK == before
    assert {name: entry for name, entry in paddlenlp_taskflow.TASKS.items() if name != "image_text_retrieval"} == other_models
    assert "vinvl" in paddlenlp_taskflow.TASKS["image_text_retrieval"]["models"]


def test_first_stage_exhaustive_ranks_every_image_and_caption_by_margin(trained, reference):
    _, gallery, margins = reference
    exhaustive = make(trained, first_stage="exhaustive", top_k=10_000)
    contrastive = make(trained, first_stage="contrastive", top_k=10_000)
    differs = 0
    for i, j in QUERY_CAPTIONS:
        caption = gallery.captions_of(i)[j]
        column = caption_column(gallery, caption)
        (result,) = exhaustive(caption)
        expected = ranked(margins[:, column], np.arange(gallery.num_images))
        assert image_ids_of(result) == [gallery.image_ids[i] for i in expected]
        for item in result["images"]:
            row = gallery.image_ids.index(item["image_id"])
            assert item["margin"] == pytest.approx(float(margins[row, column]), abs=1e-4)
            assert item["score"] == pytest.approx(float(match_probability(margins[row, column])), abs=1e-5)
        differs += image_ids_of(contrastive(caption)[0])[:5] != image_ids_of(result)[:5]
    assert differs > 0  # the gallery is large enough for the first stage to matter
    for i in (0, 5, 11):
        (result,) = exhaustive({"image_id": gallery.image_ids[i]})
        assert captions_of(result) == [gallery.captions[c] for c in ranked(margins[i], np.arange(gallery.num_captions))]


def test_first_stage_contrastive_reranks_the_embedding_top_candidates(trained, reference, retrieval):
    engine, gallery, margins = reference
    image_embeds, caption_embeds = engine.embed_images(gallery), engine.embed_captions(gallery)
    task = make(trained, first_stage="contrastive", top_k=CANDIDATES)
    for i, j in QUERY_CAPTIONS[:8]:
        column = gallery.caption_offsets[i] + j
        proposed = np.argsort(-(image_embeds @ caption_embeds[column]), kind="stable")[:CANDIDATES]
        (result,) = task(gallery.captions[column])
        assert image_ids_of(result) == [gallery.image_ids[k] for k in ranked(margins[:, column], proposed)]
    for i in (1, 8):
        proposed = np.argsort(-(caption_embeds @ image_embeds[i]), kind="stable")[:CANDIDATES]
        (result,) = task({"image_id": gallery.image_ids[i]})
        assert captions_of(result) == [gallery.captions[c] for c in ranked(margins[i], proposed)]
    # the default first stage on a model recording trained contrastive heads is this one
    assert retrieval.task_instance.retriever.first_stage == "contrastive"
    assert retrieval(gallery.captions[7]) == [dict(r, images=r["images"][:TOP_K]) for r in task(gallery.captions[7])]


def test_first_stage_tags_reranks_the_bm25_candidates(trained, reference):
    engine, gallery, margins = reference
    proposed = tag_candidates(gallery, engine.processor.tokenizer, CANDIDATES)
    task = make(trained, first_stage="tags", top_k=CANDIDATES)
    for i, j in QUERY_CAPTIONS[:8]:
        column = gallery.caption_offsets[i] + j
        (result,) = task(gallery.captions[column])
        assert image_ids_of(result) == [gallery.image_ids[k] for k in ranked(margins[:, column], proposed.t2i[column])]
    for i in (2, 9):
        (by_id,) = task({"image_id": gallery.image_ids[i]})
        assert captions_of(by_id) == [gallery.captions[c] for c in ranked(margins[i], proposed.i2t[i])]
        (by_features,) = task({"features": gallery.features(i), "tags": gallery.tags[i]})
        assert captions_of(by_features) == captions_of(by_id)


@pytest.mark.slow
def test_candidates_and_top_k(trained, reference):
    _, gallery, margins = reference
    few = make(trained, first_stage="tags", candidates=2, top_k=10_000)
    more = make(trained, first_stage="tags", candidates=12, top_k=10_000)
    everything = make(trained, first_stage="tags", candidates=TEST_IMAGES, top_k=10_000)
    exhaustive = make(trained, first_stage="exhaustive", top_k=10_000)
    captions = [gallery.captions_of(i)[j] for i, j in QUERY_CAPTIONS]
    sizes = {len(r["images"]) for r in few(captions)}, {len(r["images"]) for r in more(captions)}
    assert sizes == ({2}, {12})  # a query's results are its candidates
    assert everything(captions) == exhaustive(captions)  # candidates covering the gallery: exhaustive
    short = make(trained, first_stage="exhaustive", top_k=TOP_K)
    for full, top in zip(exhaustive(captions[:6]), short(captions[:6])):
        assert top["images"] == full["images"][:TOP_K]


def test_batch_size_bounds_every_forward_and_changes_no_result(trained):
    one, seven = make(trained, batch_size=1, first_stage="exhaustive"), make(trained, batch_size=7, first_stage="exhaustive")
    seen = {1: [], 7: []}
    for size, task in ((1, one), (7, seven)):
        head = task.task_instance._model.classifier  # runs once per forward of scored pairs
        hook = head.register_forward_pre_hook(lambda layer, inputs, size=size: seen[size].append(inputs[0].shape[0]))
        queries = [trained[2].captions[3][0], {"image_id": trained[2].image_ids[2]}]
        results = task(queries)
        hook.remove()
        if size == 1:
            first = results
    assert set(seen[1]) == {1} and max(seen[7]) == 7
    for a, b in zip(first, results):
        key = "images" if "images" in a else "captions"
        assert [r.get("image_id") for r in a[key]] == [r.get("image_id") for r in b[key]]
        np.testing.assert_allclose([r["margin"] for r in a[key]], [r["margin"] for r in b[key]], atol=1e-4)


def test_gallery_split_keys_file_and_in_memory_gallery(trained, tmp_path):
    _, corpus_dir, corpus = trained
    val = load_corpus(corpus_dir, "val")
    caption = corpus.captions[0][0]
    (result,) = make(trained, gallery_split="val", first_stage="exhaustive", top_k=100)(caption)
    assert sorted(image_ids_of(result)) == sorted(val.image_ids)
    keys = tmp_path / "keys.tsv"
    keys.write_text("".join(f"{i}\n" for i in corpus.image_ids[5:11]))
    (result,) = make(trained, gallery_keys_file=str(keys), first_stage="exhaustive", top_k=100)(caption)
    assert sorted(image_ids_of(result)) == sorted(corpus.image_ids[5:11])
    picked = [3, 4, 20]
    in_memory = dict(image_ids=[corpus.image_ids[i] for i in picked], tags=[corpus.tags[i] for i in picked],
                     features=[corpus.features(i) for i in picked], captions=[corpus.captions[i] for i in picked])
    task = make(trained, gallery_dir=None, gallery=in_memory, first_stage="exhaustive", top_k=100)
    (result,) = task(caption)
    assert sorted(image_ids_of(result)) == sorted(in_memory["image_ids"])
    (result,) = task({"image_id": corpus.image_ids[4]})
    assert sorted(captions_of(result)) == sorted(c for i in picked for c in corpus.captions[i])


@pytest.mark.slow
def test_order_comes_from_the_margin_where_probabilities_saturate(trained, reference, tmp_path):
    model_dir, corpus_dir, corpus = trained
    scale = 40.0 / float(np.abs(reference[2]).min())  # every |margin| above 40: float32 probabilities are 0 or 1
    saturated = derive(model_dir, str(tmp_path / "saturated"), ["match", "contrastive"], logit_scale=scale)
    model, processor = load_retrieval_model(saturated)
    gallery = Gallery.from_corpus(corpus)
    margins = RetrievalEngine(model, processor, progress=False).exhaustive(gallery).i2t
    task = Taskflow("image_text_retrieval", task_path=saturated, gallery_dir=corpus_dir, first_stage="exhaustive", top_k=100)
    tied_queries = out_of_index_order = 0
    for i, j in QUERY_CAPTIONS:
        column = gallery.caption_offsets[i] + j
        (result,) = task(gallery.captions[column])
        assert image_ids_of(result) == [gallery.image_ids[k] for k in ranked(margins[:, column], np.arange(TEST_IMAGES))]
        at_one = [gallery.image_ids.index(r["image_id"]) for r in result["images"] if r["score"] == 1.0]
        if len(at_one) >= 2:  # probabilities tie at 1.0 in float32 ...
            tied_queries += 1
            assert len({float(margins[k, column]) for k in at_one}) == len(at_one)  # ... margins do not
            out_of_index_order += at_one != sorted(at_one)  # a probability + index order would differ
    assert tied_queries > 0 and out_of_index_order > 0


def test_image_queries_by_id_and_by_features_agree(trained, retrieval):
    _, _, corpus = trained
    (by_id,) = retrieval({"image_id": corpus.image_ids[4]})
    (by_features,) = retrieval({"features": corpus.features(4), "tags": corpus.tags[4]})
    assert by_id["image_id"] == corpus.image_ids[4] and by_features["image_id"] is None
    assert len(by_id["captions"]) == TOP_K
    assert captions_of(by_id) == captions_of(by_features)
    np.testing.assert_allclose([c["margin"] for c in by_id["captions"]], [c["margin"] for c in by_features["captions"]], atol=1e-5)
    for item in by_id["captions"]:
        owner = corpus.index_of(item["image_id"])
        assert item["caption"] in corpus.captions[owner]


def test_pair_score_and_batches_of_queries(trained, retrieval, reference):
    _, gallery, margins = reference
    _, _, corpus = trained
    (pair,) = retrieval({"image_id": corpus.image_ids[1], "caption": corpus.captions[1][0]})
    column = gallery.caption_offsets[1]
    assert pair["margin"] == pytest.approx(float(margins[1, column]), abs=1e-4)
    assert pair["score"] == pytest.approx(float(match_probability(margins[1, column])), abs=1e-5)
    captions = [corpus.captions[i][0] for i in range(4)]
    batch = retrieval(captions)
    assert [r["caption"] for r in batch] == captions
    assert_same_answers(batch, [retrieval(c)[0] for c in captions])  # a batch answers as single queries do


def test_static_graph_gives_the_dynamic_scores(trained, retrieval):
    model_dir, _, corpus = trained
    static = make(trained, _static_mode=True)
    # the one export of the match head (vinvl.oscar.inference), run in fp32 by Paddle Inference
    assert os.path.isfile(os.path.join(model_dir, "inference", "match_head.pdiparams"))
    assert static.task_instance.retriever.model.predictor is static.task_instance.predictor
    for query in (corpus.captions[3][2], {"image_id": corpus.image_ids[7]}):
        (dynamic_result,) = retrieval(query)
        (static_result,) = static(query)
        key = "images" if isinstance(query, str) else "captions"
        np.testing.assert_allclose(
            [r["margin"] for r in static_result[key]], [r["margin"] for r in dynamic_result[key]], atol=1e-4
        )


@pytest.fixture(scope="module")
def wide(trained, tmp_path_factory):
    """The wide-drawn tiny model (support.precision) and the fp32 task over the trained fixture's corpus."""
    model_dir = save_wide_model(tmp_path_factory.mktemp("taskflow_precision") / "model")
    return model_dir, make(trained, task_path=model_dir, first_stage="exhaustive", top_k=TEST_IMAGES)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_answers_within_its_tolerance(trained, wide, precision):
    skip_unless_supported(precision)
    model_dir, fp32 = wide
    _, _, corpus = trained
    low = make(trained, task_path=model_dir, first_stage="exhaustive", top_k=TEST_IMAGES, precision=precision)
    assert low.task_instance.retriever.model.precision == precision
    queries = [corpus.captions[i][0] for i in range(0, TEST_IMAGES, 3)]
    margins, reference = [], []
    for low_answer, answer in zip(low(queries), fp32(queries)):
        by_id = {r["image_id"]: r["margin"] for r in low_answer["images"]}
        assert by_id.keys() == {r["image_id"] for r in answer["images"]}
        margins += [by_id[r["image_id"]] for r in answer["images"]]
        reference += [r["margin"] for r in answer["images"]]
    assert_within_tolerance(margins, reference, precision, np.std(reference))


def test_a_precision_the_cpu_lacks_is_refused_before_the_model_loads(trained, monkeypatch):
    refuse_missing_instructions(monkeypatch)
    monkeypatch.setattr(ImageTextRetrievalTask, "_construct_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(UsageError, match="avx512_vnni"):
        make(trained, precision="int8")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"first_stage": "two_stage"}, "first_stage must be one of"),
        ({"candidates": 0}, "candidates"),
        ({"top_k": True}, "top_k"),
        ({"batch_size": -1}, "batch_size"),
    ],
)
def test_bad_options_raise_a_clear_value_error(trained, options, message):
    with pytest.raises(ValueError, match=message):
        make(trained, **options)


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
