"""BM25 by posting lists (vinvl.retrieval.postings) against BM25Index, the dense reference: the same
float64 scores and the same top-k, ties and absent or repeated words included, also after documents
are added to built postings; and the cached tag words against tag_words."""
import collections
import json
import os

import numpy as np
import pytest

import vinvl
from vinvl import OscarTokenizer
from vinvl.assets import LABELMAP_PATH
from vinvl.retrieval.first_stage import BM25Index, tag_word_lists, tag_words
from vinvl.retrieval import postings as postings_module
from vinvl.retrieval.postings import PostingsBM25, build_postings

WORDS = [f"w{i}" for i in range(30)]


def _documents(rng, count):
    """Word lists of 0-11 words drawn Zipf-like from WORDS: common words, repeats and empty documents."""
    return [[WORDS[j % len(WORDS)] for j in rng.zipf(1.5, size=rng.integers(0, 12))] for _ in range(count)]


def _queries(rng, count):
    queries = [[f"w{j}" if j < len(WORDS) else "absent" for j in rng.integers(0, 36, size=rng.integers(0, 6))] for _ in range(count)]
    return queries + [[], ["absent"], ["w1", "w1", "w1"], ["w0", "w1", "w0"], ["new", "w2"]]


def _search(postings, k1=1.2, b=0.75):
    vocabulary = {w: t for t, w in enumerate(postings.words)}
    return PostingsBM25(postings, lambda w: vocabulary.get(w, -1), k1, b)


def _assert_same(reference, search, queries, ks=(1, 3, 16, 1000)):
    np.testing.assert_array_equal(np.stack([search.scores(q) for q in queries]), reference.scores(queries))
    for k in ks:
        expected, got = reference.search(queries, k), search.search(queries, k)
        assert got[0].dtype == expected[0].dtype == np.float64
        np.testing.assert_array_equal(got[1], expected[1])  # same documents, same order (ties: lower index)
        np.testing.assert_array_equal(got[0], expected[0])  # bit-identical scores


@pytest.mark.parametrize("k1,b", [(1.2, 0.75), (0.0, 0.0), (2.0, 1.0)])
def test_postings_search_equals_bm25index(k1, b):
    rng = np.random.default_rng(0)
    documents, queries = _documents(rng, 300), _queries(rng, 150)
    _assert_same(BM25Index(documents, k1, b), _search(build_postings(documents), k1, b), queries)


def test_postings_extended_by_added_documents_equal_bm25index_over_all():
    rng = np.random.default_rng(1)
    old, new = _documents(rng, 200), _documents(rng, 60) + [["new", "new", "w3"], []]
    grown = build_postings(new, base=build_postings(old))
    once = build_postings(old + new)
    assert list(grown.words) == list(once.words)  # new words numbered after the old ones, as one build numbers them
    for name in ("indptr", "docs", "tf", "lengths"):
        np.testing.assert_array_equal(getattr(grown, name), getattr(once, name))
    _assert_same(BM25Index(old + new), _search(grown), _queries(rng, 100))


def test_ties_and_documents_no_query_word_occurs_in():
    documents = [["dog"], ["cat"], ["dog", "ball"], ["dog"], ["tree"], [], ["dog", "dog"]]
    search = _search(build_postings(documents))
    scores, docs = search.search([["dog"], ["nothing"], ["ball", "ball"]], 5)
    assert docs[0].tolist() == [6, 0, 3, 2, 1]  # 0 and 3 tie: lower index first; then score 0 in index order
    assert docs[1].tolist() == [0, 1, 2, 3, 4]  # no word known: the first k documents, score 0
    assert docs[2].tolist() == [2, 0, 1, 3, 4]  # a repeated query word counts once
    assert scores[0][3] > 0 and scores[0][4] == 0 and scores[1].tolist() == [0.0] * 5
    assert search.top_k([["dog"]], 100).shape == (1, 7)  # k capped at the number of documents


def _layered_documents(rng, count):
    """Documents where each search path is taken: 6 common words (in 15-60% of the documents), 60
    rare ones (about 0.5%, 1 to 3 times), and a word held only by the first 1,500 documents."""
    documents = []
    for d in range(count):
        words = [f"c{c}" for c in range(6) if rng.random() < 0.6 - 0.09 * c]
        words += [f"r{r}" for r in rng.integers(0, 60, size=rng.integers(0, 3)) for _ in range(rng.integers(1, 4))]
        words += ["first"] * (d < 1500) + ["pad"] * int(rng.integers(0, 4))
        documents.append(list(rng.permutation(words)))
    return documents


def test_every_search_path_answers_as_bm25index(monkeypatch):
    rng = np.random.default_rng(3)
    documents = _layered_documents(rng, 20000)
    queries = (
        [[f"r{r}", f"c{c}", "c0"] for r, c in zip(rng.integers(0, 60, 15), rng.integers(0, 6, 15))]  # a rare word, common ones
        + [[f"r{r}"] for r in range(8)] + [["r1", "r2", "absent"]]  # few postings: their union
        + [["c0", "c1", "c2"], ["c3"], ["c1", "pad"], ["c5", "c4", "c5"]]  # a dense row
        + [["first"], ["first", "r3"]]  # a dense row with hits in fewer than k blocks: zeros fill in
    )
    calls, depth = [], [0]

    def record(name, function):
        def wrapper(*args, **kwargs):
            calls.append((name, depth[0]))  # depth 1: called from within the other
            depth[0] += 1
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapper

    monkeypatch.setattr(postings_module, "_top_k_of_hits", record("hits", postings_module._top_k_of_hits))
    monkeypatch.setattr(postings_module, "_top_k_of_row", record("row", postings_module._top_k_of_row))
    _assert_same(BM25Index(documents), _search(build_postings(documents)), queries, ks=(16, 40))
    taken = collections.Counter(calls)
    assert taken[("hits", 0)] > 0  # the union of few postings
    assert taken[("row", 0)] > taken[("hits", 1)] > 0  # dense rows: ranked by block maxima, and with too few hits


def test_postings_refuse_bad_settings():
    with pytest.raises(ValueError, match="k1 >= 0"):
        _search(build_postings([["a"]]), k1=-1)
    with pytest.raises(ValueError, match="at least one document"):
        _search(build_postings([]))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        _search(build_postings([["a"]])).search([["a"]], 0)


def test_cached_tag_words_equal_tag_words():
    tokenizer = OscarTokenizer(os.path.join(os.path.dirname(vinvl.__file__), "assets", "vocab.txt"))
    with open(LABELMAP_PATH, encoding="utf-8") as f:
        labels = list(json.load(f)["label_to_idx"])
    rng = np.random.default_rng(2)
    tag_lists = [list(rng.choice(labels, size=rng.integers(0, 20))) for _ in range(50)]
    tag_lists += [
        ["Café", "hot-dog", "t-shirt,", "red  car", "", "Dogs", "a\x00b", "\tbench\n", "KNIVES"],
        "a dog, two cats",
        None,
        ["white shirt", "shirt", "white shirt"],
    ]
    assert list(tag_word_lists(tokenizer, tag_lists)) == [tag_words(tokenizer, t) for t in tag_lists]
