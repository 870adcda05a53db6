"""The tags first stage's BM25 postings in the gallery index, both sets (the images' tag words for
caption -> images, the captions' words for image -> captions): written by build and by add,
memory-mapped by QueryGallery.from_index, answering as BM25Index over the same documents bit for
bit; an index written before a set was stored still opens, answers the same (that set built in
memory, with a warning) and gets it for every document on its next add."""
import json
import os

import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults)
from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.index import GalleryIndex, GallerySource, add_to_index, bm25, build_index
from vinvl.index.versions import MANIFEST
from vinvl.oscar.model_dir import load_tokenizer
from vinvl.query.gallery import QueryGallery
from vinvl.retrieval.first_stage import BM25Index, tag_words, words_of
from vinvl.retrieval import postings as postings_module
from vinvl.retrieval.postings import PostingsBM25, build_postings

from support.tinymodel import save_random_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bm25_index")
    corpus = str(root / "corpus")
    write_synthetic_corpus(corpus, {"test": 12, "val": 7}, seed=5)
    model = save_random_model(root / "model", ["match"], seed=0)  # a tags-only index: nothing to embed
    return {"corpus": corpus, "model": model, "tokenizer": load_tokenizer(model)}


def _captions(setup, split):
    return [c for per_image in load_corpus(setup["corpus"], split).captions for c in per_image]


def _queries(setup):
    """Word lists: the corpus's captions (caption -> images), tag lists (image -> captions: the
    image's tag words query the captions), an unknown word, repeats, nothing."""
    tokenizer = setup["tokenizer"]
    captions = _captions(setup, "test") + _captions(setup, "val")
    tags = load_corpus(setup["corpus"], "val").tags + load_corpus(setup["corpus"], "test").tags[:4]
    queries = [words_of(tokenizer, c) for c in captions[::3]] + [tag_words(tokenizer, t) for t in tags]
    return queries + [["zebroid"], [], ["dog", "dog", "zebroid"]]


def _reference(setup, splits, kind=bm25.TAGS):
    """BM25Index over the documents of ``kind``: the images' tag words, or the captions' words (flattened)."""
    tokenizer = setup["tokenizer"]
    if kind == bm25.TAGS:
        return BM25Index([tag_words(tokenizer, t) for split in splits for t in load_corpus(setup["corpus"], split).tags])
    return BM25Index([words_of(tokenizer, c) for split in splits for c in _captions(setup, split)])


def _assert_answers_as(reference, search, queries):
    for k in (1, 4, 100):
        expected, got = reference.search(queries, k), search.search(queries, k)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])


def _gallery(setup, out):
    return QueryGallery.from_index(out, setup["model"], setup["tokenizer"])


def _strip_postings(out, kind):
    """Make the live version look written before ``kind`` postings were stored: no manifest entry, no files."""
    with GalleryIndex.open(out) as index:
        path = index.path
    with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    del manifest[kind.manifest_key]
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    for name in os.listdir(path):
        if name.startswith(kind.prefix):
            os.remove(os.path.join(path, name))


KINDS = pytest.mark.parametrize("kind", [bm25.TAGS, bm25.CAPTIONS], ids=["tags", "captions"])


def _searched(gallery, kind):
    """What the query core searches for ``kind``: the images (caption -> images) or the captions."""
    return gallery.image_bm25() if kind == bm25.TAGS else gallery.caption_bm25()


@KINDS
def test_build_writes_postings_that_answer_as_bm25index(setup, tmp_path, kind):
    out = str(tmp_path / "index")
    build_index(out, setup["model"], [GallerySource(setup["corpus"], "test")], progress=False)
    gallery = _gallery(setup, out)
    try:
        entry = gallery.index.manifest[kind.manifest_key]
        assert entry["documents"] == (12 if kind == bm25.TAGS else 60) and entry["postings"] > 0
        search = _searched(gallery, kind)
        assert isinstance(search, PostingsBM25) and search is gallery.index.bm25_search(kind)  # the stored postings
        assert isinstance(search.postings.docs, np.memmap)  # memory-mapped, not rebuilt from the tags / captions
        _assert_answers_as(_reference(setup, ["test"], kind), search, _queries(setup))
    finally:
        gallery.close()


@KINDS
def test_add_merges_postings_as_one_build_of_the_union(setup, tmp_path, kind):
    grown, union = str(tmp_path / "grown"), str(tmp_path / "union")
    build_index(grown, setup["model"], [GallerySource(setup["corpus"], "test")], progress=False)
    add_to_index(grown, setup["model"], [GallerySource(setup["corpus"], "val")], progress=False)
    build_index(union, setup["model"], [GallerySource(setup["corpus"], s) for s in ("test", "val")], progress=False)
    with GalleryIndex.open(grown) as a, GalleryIndex.open(union) as b:
        (pa, _), (pb, _) = a.postings(kind), b.postings(kind)
        assert [pa.words[t] for t in range(pa.num_terms)] == [pb.words[t] for t in range(pb.num_terms)]
        for name in ("indptr", "docs", "tf", "lengths"):
            np.testing.assert_array_equal(getattr(pa, name), getattr(pb, name))
        _assert_answers_as(_reference(setup, ["test", "val"], kind), a.bm25_search(kind), _queries(setup))


@KINDS
def test_an_index_without_postings_opens_answers_the_same_and_gets_them_on_add(setup, tmp_path, caplog, kind):
    out = str(tmp_path / "old")
    build_index(out, setup["model"], [GallerySource(setup["corpus"], "test")], progress=False)
    _strip_postings(out, kind)
    gallery = _gallery(setup, out)
    try:
        assert gallery.index.bm25_search(kind) is None
        with pytest.raises(ValueError, match="vinvl index build"):
            gallery.index.postings(kind)
        search = _searched(gallery, kind)  # built in memory, with a warning naming the fix
        assert kind.manifest_key in caplog.text and "vinvl index build" in caplog.text
        assert not isinstance(search.postings.docs, np.memmap)
        _assert_answers_as(_reference(setup, ["test"], kind), search, _queries(setup))
    finally:
        gallery.close()
    add_to_index(out, setup["model"], [GallerySource(setup["corpus"], "val")], progress=False)
    with GalleryIndex.open(out) as index:
        assert index.manifest[kind.manifest_key]["documents"] == (19 if kind == bm25.TAGS else 95)
        _assert_answers_as(_reference(setup, ["test", "val"], kind), index.bm25_search(kind), _queries(setup))


@KINDS
def test_postings_spilled_a_few_documents_at_a_time_equal_one_build_in_memory(setup, tmp_path, monkeypatch, kind):
    """The build spills each _CHUNK_DOCUMENTS documents' postings to the staging folder and merges them;
    with chunks of 7 documents (12 images, 60 captions: several chunks, a partial last one) the stored
    arrays are those of one in-memory build over the same word lists."""
    tokenizer = setup["tokenizer"]
    out = str(tmp_path / "index")
    monkeypatch.setattr(postings_module, "_CHUNK_DOCUMENTS", 7)
    build_index(out, setup["model"], [GallerySource(setup["corpus"], "test")], progress=False)
    monkeypatch.undo()
    if kind == bm25.TAGS:
        documents = [tag_words(tokenizer, t) for t in load_corpus(setup["corpus"], "test").tags]
    else:
        documents = [words_of(tokenizer, c) for c in _captions(setup, "test")]
    expected = build_postings(documents)
    with GalleryIndex.open(out) as index:
        stored, _ = index.postings(kind)
        assert [stored.words[t] for t in range(stored.num_terms)] == list(expected.words)
        for name in ("indptr", "docs", "tf", "lengths"):
            np.testing.assert_array_equal(getattr(stored, name), getattr(expected, name))
