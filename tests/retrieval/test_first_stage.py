"""First stages and their coverage: the tags BM25 stage against a BM25 written here from the
formula, coverage against a per-query loop, and the identity coverage 1.0 => two-stage R@1 ==
exhaustive R@1 (on score matrices with ties, and through the engine)."""
import logging
import math
import os
import re

import numpy as np
import pytest

import vinvl
import paddle
from vinvl import OscarConfig, OscarForImageTextRetrieval, OscarProcessor, OscarTokenizer
from vinvl.retrieval import Gallery, RetrievalEngine
from vinvl.retrieval.first_stage import BM25Index, Candidates, fold_plural, resolve_first_stage, tag_candidates, words_of
from vinvl.retrieval.metrics import (
    coverage, first_stage_coverage, i2t_ranks, retrieval_metrics, right_answer_coverage, scored_coverage, t2i_ranks,
    two_stage_coverage,
)

FEATURE_DIM = 6


@pytest.fixture(scope="module")
def tokenizer():
    return OscarTokenizer(os.path.join(os.path.dirname(vinvl.__file__), "assets", "vocab.txt"))


# The plural words of the hand gallery below and the singulars they must meet, written out by hand.
HAND_SINGULARS = {"dogs": "dog", "sleeps": "sleep", "rides": "ride", "sits": "sit", "waits": "wait"}


def simple_words(text):
    """The reference's own word split: lower-case alphanumeric runs, the hand gallery's plurals singular."""
    return [HAND_SINGULARS.get(w, w) for w in re.findall(r"[a-z0-9]+", text.lower())]


def reference_bm25(query, documents, k1, b):
    """Okapi BM25 of one query (a word list; distinct words count once) against each document."""
    n = len(documents)
    avgdl = sum(len(d) for d in documents) / n
    out = []
    for doc in documents:
        total = 0.0
        for word in set(query):
            tf = doc.count(word)
            if tf == 0:
                continue
            df = sum(word in other for other in documents)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            total += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        out.append(total)
    return np.array(out)


def reference_order(scores, k):
    """Best first, equal scores (to 1e-12) in index order."""
    rounded = np.round(scores, 12)
    return sorted(range(len(scores)), key=lambda i: (-rounded[i], i))[:k]


# Hand-made: duplicate tag sets (images 1 and 4 tie for every query), repeated tags (tf > 1),
# multi-word and attribute tags, an image without tags, captions with capitals and punctuation,
# a caption sharing no word with any tag, and a caption repeating a word.
TAGS = [
    ["dog", "frisbee", "grass", "dog"],
    ["man", "red shirt", "skateboard"],
    ["cat", "sofa", "pillow"],
    [],
    ["man", "red shirt", "skateboard"],
    ["dog", "man", "park bench", "tree", "tree", "grass"],
]
CAPTIONS = [
    ["A dog, catching a Frisbee on the grass!", "two dogs play"],
    ["A man in a red shirt rides his skateboard."],
    ["The cat sleeps on a sofa next to a pillow", "cat cat cat"],
    ["An empty room."],
    ["Skateboard trick by a man"],
    ["A man sits on a park bench under a tree while his dog waits"],
]


@pytest.fixture(scope="module")
def hand_gallery():
    feats = [np.zeros((1, FEATURE_DIM), np.float32)] * len(TAGS)
    return Gallery([f"i{n}" for n in range(len(TAGS))], TAGS, CAPTIONS, feats)


def test_words_follow_the_tokenizers_basic_split(tokenizer):
    assert words_of(tokenizer, "A Dog's red-car, (Café)!") == ["a", "dog", "s", "red", "car", "cafe"]


@pytest.mark.parametrize(
    "plural, singular",
    [
        ("dogs", "dog"), ("berries", "berry"), ("benches", "bench"), ("glasses", "glass"), ("boxes", "box"),
        ("dishes", "dish"), ("houses", "house"), ("shoes", "shoe"), ("skis", "ski"), ("pies", "pie"),
        ("people", "person"), ("women", "woman"), ("knives", "knife"), ("buses", "bus"), ("tomatoes", "tomato"),
        ("cookies", "cookie"), ("grass", "grass"), ("cactus", "cactus"), ("bus", "bus"),
    ],
)
def test_plural_and_singular_fold_to_the_same_word(plural, singular):
    assert fold_plural(plural) == fold_plural(singular)
    assert fold_plural(singular) == fold_plural(fold_plural(singular))  # folding a folded word changes nothing


def test_a_plural_caption_finds_images_tagged_with_the_singular(tokenizer):
    feats = [np.zeros((1, FEATURE_DIM), np.float32)] * 4
    gallery = Gallery(["a", "b", "c", "d"], [["cat"], ["person", "bench"], ["sofa"], ["knife", "glass"]],
                      [["two benches and some people"], ["knives next to glasses"], ["x"], ["y"]], feats)
    t2i = tag_candidates(gallery, tokenizer, 1).t2i
    assert t2i[:2, 0].tolist() == [1, 3]  # without folding neither caption shares a word with any tag


@pytest.mark.parametrize("k1, b", [(1.2, 0.75), (2.0, 0.3), (0.5, 1.0)])
def test_bm25_scores_equal_the_formula(k1, b):
    documents = [simple_words(" ".join(t)) for t in TAGS]
    queries = [simple_words(c) for per_image in CAPTIONS for c in per_image]
    index = BM25Index(documents, k1=k1, b=b)
    expected = np.stack([reference_bm25(q, documents, k1, b) for q in queries])
    np.testing.assert_allclose(index.scores(queries), expected, rtol=1e-12, atol=1e-12)
    assert (expected[:, 1] == expected[:, 4]).all() and (expected[5] == 0).all()  # the ties are there


def test_tag_candidates_rank_as_reference_bm25_both_ways_with_ties(tokenizer, hand_gallery):
    tag_docs = [simple_words(" ".join(t)) for t in TAGS]
    caption_docs = [simple_words(c) for c in hand_gallery.captions]
    for k in (1, 2, 3, len(TAGS), 100):
        candidates = tag_candidates(hand_gallery, tokenizer, k)
        expected_t2i = [reference_order(reference_bm25(q, tag_docs, 1.2, 0.75), k) for q in caption_docs]
        expected_i2t = [reference_order(reference_bm25(q, caption_docs, 1.2, 0.75), k) for q in tag_docs]
        assert candidates.t2i.tolist() == expected_t2i, k
        assert candidates.i2t.tolist() == expected_i2t, k
    # The caption sharing no word with any tag ("An empty room.") gets the first images, in order;
    # the image without tags gets the first captions.
    assert tag_candidates(hand_gallery, tokenizer, 3).t2i[hand_gallery.caption_offsets[3]].tolist() == [0, 1, 2]
    assert tag_candidates(hand_gallery, tokenizer, 2).i2t[3].tolist() == [0, 1]


def test_bm25_rejects_bad_settings():
    with pytest.raises(ValueError, match="k1"):
        BM25Index([["a"]], k1=-1)
    with pytest.raises(ValueError, match="at least one document"):
        BM25Index([])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        BM25Index([["a"]]).top_k([["a"]], 0)


# ----- coverage --------------------------------------------------------------------------


def reference_coverage(scores, candidates, top):
    covered = []
    for row, proposed in zip(scores, candidates):
        nth = sorted(row, reverse=True)[min(top, len(row)) - 1]
        answers = {j for j, value in enumerate(row) if value >= nth}
        covered.append(answers <= set(int(c) for c in proposed))
    return float(np.mean(covered))


def test_coverage_equals_a_per_query_loop_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(9, 23)).astype(np.float32)  # many ties
    for k in (1, 3, 8, 23):
        i2t = np.stack([rng.choice(23, k, replace=False) for _ in range(9)])
        t2i = np.stack([rng.choice(9, min(k, 9), replace=False) for _ in range(23)])
        got = first_stage_coverage(scores, i2t, t2i)
        for top in (1, 10):
            assert got[f"i2t_top{top}"] == pytest.approx(reference_coverage(scores, i2t, top))
            assert got[f"t2i_top{top}"] == pytest.approx(reference_coverage(scores.T, t2i, top))
    # A tie at the top counts both tied answers: covering one of them is not enough.
    tied = np.array([[5.0, 5.0, 1.0]], np.float32)
    assert coverage(tied, np.array([[0]]), 1) == 0.0 and coverage(tied, np.array([[1, 0]]), 1) == 1.0
    with pytest.raises(ValueError, match="finite"):
        coverage(np.array([[1.0, -np.inf]]), np.array([[0]]))
    with pytest.raises(ValueError, match="candidates"):
        coverage(tied, np.array([[3]]))


def test_scored_coverage_equals_a_per_query_loop_over_the_pairs_each_query_ranks():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=(9, 23)).astype(np.float32)  # many ties
    for k in (1, 3, 8):
        candidates = Candidates(np.stack([rng.choice(23, k, replace=False) for _ in range(9)]),
                                np.stack([rng.choice(9, min(k, 9), replace=False) for _ in range(23)]))
        scored = candidates.scored(23)
        rows = [np.flatnonzero(row) for row in scored]
        columns = [np.flatnonzero(column) for column in scored.T]
        got = two_stage_coverage(scores, scored)
        for top in (1, 10):
            assert got[f"i2t_top{top}"] == pytest.approx(reference_coverage(scores, rows, top))
            assert got[f"t2i_top{top}"] == pytest.approx(reference_coverage(scores.T, columns, top))
        # Ranking every scored pair both ways covers at least what each query's own candidates do.
        own = first_stage_coverage(scores, candidates.i2t, candidates.t2i)
        assert all(got[name] >= own[name] for name in own)
    # An image's best caption that only the caption's own candidates hold still counts for the image.
    best_only_by_caption = Candidates(np.array([[1], [1]]), np.array([[0], [1], [1]]))
    pair_scores = np.array([[9.0, 1.0, 0.0], [0.0, 5.0, 1.0]], np.float32)
    assert coverage(pair_scores, best_only_by_caption.i2t) == 0.5
    assert scored_coverage(pair_scores, best_only_by_caption.scored(3)) == 1.0
    with pytest.raises(ValueError, match=r"scored must be a \[2, 3\] mask"):
        scored_coverage(pair_scores, np.ones((3, 2), bool))


def test_right_answer_coverage_counts_only_queries_whose_top1_is_right():
    rng = np.random.default_rng(8)
    scores = rng.integers(0, 5, size=(9, 23)).astype(np.float32)  # many ties
    right = rng.random((9, 23)) < 0.5
    scored = rng.random((9, 23)) < 0.4
    for axis, (matrix, mask, truth) in enumerate(((scores.T, scored.T, right.T), (scores, scored, right))):
        counted = covered = 0
        for row, proposed, good in zip(matrix, mask, truth):
            answers = np.flatnonzero(row == row.max())  # the top-1, ties included
            if good[answers].all():
                counted += 1
                covered += bool(proposed[answers].all())
        assert 0 < counted < len(matrix)
        assert right_answer_coverage(scores, scored, right, axis) == pytest.approx(covered / counted)
    assert math.isnan(right_answer_coverage(scores, scored, np.zeros_like(right), 1))  # no top-1 is right
    with pytest.raises(ValueError, match=r"right must be a \[9, 23\] mask"):
        right_answer_coverage(scores, scored, right.T)


def test_candidate_pairs_are_the_union_of_both_directions():
    rng = np.random.default_rng(6)
    candidates = Candidates(rng.integers(0, 7, size=(4, 3)), rng.integers(0, 4, size=(7, 2)))
    expected = {(i, c) for i in range(4) for c in candidates.i2t[i]} | {
        (i, c) for c in range(7) for i in candidates.t2i[c]}
    assert sorted(expected) == [(code // 7, code % 7) for code in candidates.pairs(7)]
    assert {tuple(p) for p in np.argwhere(candidates.scored(7))} == expected


def _two_stage_matrix(scores, candidates, axis):
    """One direction ranked over each query's own candidates only (exhaustive scores there, -inf
    elsewhere): the least two-stage ranks; the engine ranks a superset, which keeps the property."""
    out = np.full_like(scores, -np.inf)
    if axis == 1:
        rows = np.arange(len(scores))[:, None]
        out[rows, candidates] = scores[rows, candidates]
    else:
        cols = np.arange(scores.shape[1])[:, None]
        out[candidates, cols] = scores[candidates, cols]
    return out


def test_full_top1_coverage_gives_exhaustive_r1_and_full_top10_gives_every_rank_below_10():
    rng = np.random.default_rng(1)
    num_images, per_image = 12, 3
    c2i = np.repeat(np.arange(num_images), per_image)
    for trial in range(40):
        scores = rng.integers(0, 6, size=(num_images, num_images * per_image)).astype(np.float32)  # ties galore
        k = int(rng.integers(1, 12))
        for top in (1, 10):
            i2t = _covering(scores, k, top, rng)
            t2i = _covering(scores.T, k, top, rng)
            got = first_stage_coverage(scores, i2t, t2i, tops=(top,))
            assert got == {f"i2t_top{top}": 1.0, f"t2i_top{top}": 1.0}
            i2t_matrix, t2i_matrix = _two_stage_matrix(scores, i2t, 1), _two_stage_matrix(scores, t2i, 0)
            exhaustive = retrieval_metrics(scores, c2i)
            two_stage = retrieval_metrics(i2t_matrix, c2i, t2i_matrix)
            assert two_stage["i2t_R@1"] == exhaustive["i2t_R@1"] and two_stage["t2i_R@1"] == exhaustive["t2i_R@1"]
            if top == 10:
                ex_i2t, ex_t2i = i2t_ranks(scores, c2i), t2i_ranks(scores, c2i)
                ts_i2t, ts_t2i = i2t_ranks(i2t_matrix, c2i), t2i_ranks(t2i_matrix, c2i)
                assert ((ex_i2t < 10) == (ts_i2t < 10)).all() and (ts_i2t[ex_i2t < 10] == ex_i2t[ex_i2t < 10]).all()
                assert ((ex_t2i < 10) == (ts_t2i < 10)).all() and (ts_t2i[ex_t2i < 10] == ex_t2i[ex_t2i < 10]).all()
                assert two_stage == exhaustive


def _covering(scores, k, top, rng):
    """Per row: every answer at or above the top-th best score, then random others up to at least k."""
    rows = []
    width = 0
    for row in scores:
        nth = np.sort(row)[::-1][min(top, len(row)) - 1]
        must = np.flatnonzero(row >= nth)
        rest = rng.permutation(np.setdiff1d(np.arange(len(row)), must))
        rows.append(np.concatenate([must, rest]))
        width = max(width, len(must))
    width = max(width, min(k, scores.shape[1]))
    return np.stack([r[:width] for r in rows])


# ----- the engine with the tags first stage ---------------------------------------------


WORDS = "dog cat man woman red car bench tree grass pizza table kite beach horse bus".split()


@pytest.fixture(scope="module")
def engine_and_gallery(tokenizer):
    paddle.seed(3)
    config = OscarConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         contrastive_dim=8, img_feature_dim=2054, initializer_range=0.2)
    model = OscarForImageTextRetrieval(config)
    processor = OscarProcessor(tokenizer, max_seq_len=20, max_img_seq_len=6, img_feature_dim=2054)
    rng = np.random.default_rng(4)
    tags = [list(rng.choice(WORDS, 4, replace=False)) for _ in range(10)]
    captions = [[" ".join(rng.choice(t, 2)) + " and a " + rng.choice(WORDS) for _ in range(2)] for t in tags]
    feats = [rng.standard_normal((int(rng.integers(1, 6)), 2054)).astype(np.float32) for _ in tags]
    return RetrievalEngine(model, processor, batch_size=16, progress=False), Gallery(
        [f"g{i}" for i in range(10)], tags, captions, feats
    )


def test_engine_tags_two_stage_scores_the_bm25_candidates(engine_and_gallery, tokenizer):
    engine, gallery = engine_and_gallery
    exhaustive = engine.exhaustive(gallery)
    k = 3
    candidates = engine.first_stage_candidates(gallery, "tags", k)
    expected = tag_candidates(gallery, tokenizer, k)
    np.testing.assert_array_equal(candidates.i2t, expected.i2t)
    np.testing.assert_array_equal(candidates.t2i, expected.t2i)
    result = engine.two_stage(gallery, k=k, first_stage="tags")
    kept = np.zeros(exhaustive.i2t.shape, bool)
    np.put_along_axis(kept, expected.i2t, True, axis=1)
    np.put_along_axis(kept, expected.t2i.T, True, axis=0)
    np.testing.assert_array_equal(candidates.scored(gallery.num_captions), kept)
    for matrix in (result.i2t, result.t2i):
        np.testing.assert_array_equal(np.isfinite(matrix), kept)
        np.testing.assert_allclose(matrix[kept], exhaustive.i2t[kept], atol=1e-5, rtol=0)
    assert result.pairs_scored == kept.sum()


def test_engine_identity_at_full_top1_coverage(engine_and_gallery):
    engine, gallery = engine_and_gallery
    exhaustive = engine.exhaustive(gallery)
    c2i = gallery.caption_to_image
    expected = exhaustive.metrics(c2i)
    checked = 0
    for first_stage in ("tags", "contrastive"):
        for direction, items in (("i2t", gallery.num_captions), ("t2i", gallery.num_images)):
            # the smallest k whose scored pairs cover every query's exhaustive top-1 in this direction
            k = next(k for k in range(1, items + 1)
                     if two_stage_coverage(exhaustive.i2t, _scored(engine, gallery, first_stage, k), tops=(1,))[f"{direction}_top1"] == 1.0)
            if k < items:  # otherwise two-stage is exhaustive in this direction and proves nothing
                got = engine.two_stage(gallery, k=k, first_stage=first_stage).metrics(c2i)
                assert got[f"{direction}_R@1"] == expected[f"{direction}_R@1"], (first_stage, direction, k)
                checked += 1
    assert checked >= 1


def _scored(engine, gallery, first_stage, k):
    return engine.first_stage_candidates(gallery, first_stage, k).scored(gallery.num_captions)


# ----- choosing a first stage from what the model records -------------------------------


def test_resolve_first_stage_follows_trained_heads(caplog):
    trained = OscarConfig(contrastive_dim=8, trained_heads=["match", "contrastive"])
    converted = OscarConfig(contrastive_dim=8, trained_heads=["match"])
    unrecorded = OscarConfig(contrastive_dim=8)
    headless = OscarConfig(contrastive_dim=0)
    assert resolve_first_stage("auto", trained) == "contrastive"
    assert resolve_first_stage("auto", unrecorded) == "contrastive"
    with caplog.at_level(logging.WARNING, logger="vinvl.retrieval.first_stage"):
        assert resolve_first_stage("auto", converted) == "exhaustive"
    assert len(caplog.records) == 1 and "not trained" in caplog.text and "tags" in caplog.text
    assert resolve_first_stage("auto", headless) == "exhaustive"
    for config in (converted, headless):
        assert resolve_first_stage("tags", config) == "tags"
        assert resolve_first_stage("exhaustive", config) == "exhaustive"
        with pytest.raises(ValueError, match="needs trained contrastive heads.*'tags'"):
            resolve_first_stage("contrastive", config)
    with pytest.raises(ValueError, match="first_stage must be one of"):
        resolve_first_stage("two_stage", trained)
