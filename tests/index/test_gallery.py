"""Taskflow over a gallery index (``index_path=``) on a tiny model trained in the test: it answers every
query kind and first stage exactly as the Taskflow over the same images in memory, opens without
embedding anything or reading more than one image's features, refuses an index of other weights;
and the index's captions (+ caption embeddings) format, including indexes written before it."""
import json
import os

import numpy as np
import pytest

import vinvl  # noqa: F401  (registers the task, CPU runtime defaults)
from paddlenlp import Taskflow

from vinvl.data import load_corpus
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.retrieval import Gallery, RetrievalEngine
from vinvl.index import GalleryIndex, GallerySource, IndexWeightsError, add_to_index, build_index
from vinvl.index.versions import MANIFEST

from support.tinymodel import derive, in_memory_gallery

TEST_IMAGES = 12
OPTIONS = dict(top_k=3, candidates=4, batch_size=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_tiny):
    root = tmp_path_factory.mktemp("index_gallery")
    model_dir, corpus = train_tiny(root, TEST_IMAGES)
    index = str(root / "index")
    build_index(index, model_dir, [GallerySource(corpus, "test"), GallerySource(corpus, "minival")], progress=False)
    return root, model_dir, corpus, index


def queries(corpus_dir):
    test, minival = load_corpus(corpus_dir, "test"), load_corpus(corpus_dir, "minival")
    return [
        test.captions[1][0],
        minival.captions[6][2],
        "a dog on a red couch",
        {"image_id": test.image_ids[3]},
        {"image_id": minival.image_ids[0]},
        {"features": minival.features(4), "tags": minival.tags[4]},
        {"image_id": test.image_ids[8], "caption": minival.captions[2][1]},
    ]


@pytest.mark.parametrize("first_stage", ["contrastive", "tags", "exhaustive"])
def test_taskflow_over_the_index_answers_as_over_the_same_gallery_in_memory(trained, first_stage):
    _, model_dir, corpus, index = trained
    over_index = Taskflow("image_text_retrieval", task_path=model_dir, index_path=index, first_stage=first_stage, **OPTIONS)
    in_mem = Taskflow("image_text_retrieval", task_path=model_dir, gallery=in_memory_gallery(corpus, ["test", "minival"]),
                      first_stage=first_stage, **OPTIONS)
    asked = queries(corpus)
    answers = over_index(asked)
    assert answers == in_mem(asked)
    assert [len(a.get("images", a.get("captions", [None]))) for a in answers[:6]] == [3] * 6  # real rankings


def test_opening_the_index_embeds_nothing_and_reads_one_image(trained, monkeypatch):
    _, model_dir, _, index = trained

    def refuse(*args, **kwargs):
        raise AssertionError("the gallery was embedded again")

    reads = []
    features = GalleryIndex.features
    monkeypatch.setattr(RetrievalEngine, "embed_images", refuse)
    monkeypatch.setattr(RetrievalEngine, "embed_captions", refuse)
    monkeypatch.setattr(GalleryIndex, "features", lambda self, i: reads.append(i) or features(self, i))
    flow = Taskflow("image_text_retrieval", task_path=model_dir, index_path=index, first_stage="contrastive", **OPTIONS)
    assert reads == [0]  # the width check; every other image is read when a query scores it
    index = flow.task_instance.retriever.gallery.index
    assert isinstance(index.embeddings, np.memmap) and isinstance(index.caption_embeddings, np.memmap)


def test_an_index_of_other_weights_is_refused(trained, tmp_path):
    _, model_dir, corpus, index = trained
    other = derive(model_dir, str(tmp_path / "other"), trained_heads=["match", "contrastive"], logit_scale=2.0)
    with pytest.raises(IndexWeightsError, match="rebuild the index"):
        Taskflow("image_text_retrieval", task_path=other, index_path=index)
    with pytest.raises(ValueError, match="one of gallery_dir=, gallery=, index_path= and gallery_images="):
        Taskflow("image_text_retrieval", task_path=model_dir, index_path=index, gallery_dir=corpus)


def _engine(model_dir, batch_size=32):
    model, processor = load_retrieval_model(model_dir)
    return RetrievalEngine(model, processor, batch_size=batch_size, progress=False)


def test_the_index_holds_captions_and_the_engines_caption_embeddings(trained):
    _, model_dir, corpus, index = trained
    test, minival = load_corpus(corpus, "test"), load_corpus(corpus, "minival")
    captions = test.captions + minival.captions
    flat = [c for per_image in captions for c in per_image]
    whole = Gallery.for_queries(test.image_ids[:1], test.tags[:1], [test.features(0)], flat)
    # Every caption in one engine call, as the Taskflow embeds an in-memory gallery's, with the batch
    # size the index was built with (64) and with another one, equal to float32 rounding: a batch
    # pads its captions to its longest, and with 2 threads the kernels' rounding depends on the
    # batch's composition (bit for bit at 1 thread; 1.5e-7 apart at 2).
    expected = _engine(model_dir, batch_size=64).embed_captions(whole)
    other_batches = _engine(model_dir, batch_size=5).embed_captions(whole)
    with GalleryIndex.open(index) as opened:
        assert [opened.captions(i) for i in range(opened.num_images)] == captions
        assert opened.num_captions == len(flat) == (TEST_IMAGES + 8) * 5
        assert isinstance(opened.caption_embeddings, np.memmap)
        np.testing.assert_allclose(np.asarray(opened.caption_embeddings), expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(opened.caption_embeddings), other_batches, rtol=0, atol=1e-6)


def _drop_captions(index):
    """Make the live version look like one written before captions were stored."""
    with GalleryIndex.open(index) as opened:
        path = opened.path
    with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    del manifest["captions"]
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    for name in ("captions.npy", "captions_offsets.npy", "caption_embeddings.npy"):
        os.remove(os.path.join(path, name))


def test_an_index_written_before_captions_reads_as_captionless_and_add_appends_captions(trained, tmp_path):
    _, model_dir, corpus, _ = trained
    old, union = str(tmp_path / "old"), str(tmp_path / "union")
    build_index(old, model_dir, [GallerySource(corpus, "test")], progress=False)
    _drop_captions(old)
    with GalleryIndex.open(old) as opened:
        assert opened.num_captions == 0 and opened.captions(3) == [] and opened.caption_embeddings is None
    flow = Taskflow("image_text_retrieval", task_path=model_dir, index_path=old, **OPTIONS)
    test = load_corpus(corpus, "test")
    assert len(flow(test.captions[0][0])[0]["images"]) == 3  # caption -> images needs no captions
    with pytest.raises(ValueError, match="needs a gallery with captions, and this one has none"):
        flow({"image_id": test.image_ids[0]})

    add_to_index(old, model_dir, [GallerySource(corpus, "val")], progress=False)
    build_index(union, model_dir, [GallerySource(corpus, "test"), GallerySource(corpus, "val")], progress=False)
    with GalleryIndex.open(old) as grown, GalleryIndex.open(union) as full:
        val = load_corpus(corpus, "val")
        assert [grown.captions(i) for i in range(grown.num_images)] == [[]] * TEST_IMAGES + val.captions
        assert grown.num_captions == sum(len(c) for c in val.captions)
        # the union embeds val's captions in batches with test's: equal up to 2-thread rounding
        np.testing.assert_allclose(
            np.asarray(grown.caption_embeddings), np.asarray(full.caption_embeddings)[TEST_IMAGES * 5 :], rtol=0, atol=1e-6
        )
