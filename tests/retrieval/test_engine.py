"""RetrievalEngine and Gallery on a tiny random Oscar model and an in-memory gallery."""
import os
from types import SimpleNamespace

import numpy as np
import pytest

import vinvl
import paddle
from vinvl import OscarConfig, OscarForImageTextRetrieval, OscarProcessor, OscarTokenizer
from vinvl.retrieval import Gallery, RetrievalEngine, i2t_ranks, rerank_metrics, t2i_ranks, top_k_indices
from vinvl.retrieval import engine as engine_module

from support.commands import launch_two_ranks

FEATURE_DIM = 2054
MAX_SEQ_LEN = 24
MAX_REGIONS = 10
WORDS = (
    "a man woman dog cat riding skateboard on the street red car with two people sitting "
    "bench near water tall building giraffe standing grass field kitchen table plate pizza"
).split()


@pytest.fixture(scope="module")
def tokenizer():
    return OscarTokenizer(os.path.join(os.path.dirname(vinvl.__file__), "assets", "vocab.txt"))


@pytest.fixture(scope="module")
def processor(tokenizer):
    return OscarProcessor(tokenizer, max_seq_len=MAX_SEQ_LEN, max_img_seq_len=MAX_REGIONS, img_feature_dim=FEATURE_DIM)


@pytest.fixture(scope="module")
def model():
    paddle.seed(7)
    config = OscarConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, contrastive_dim=16,
        img_feature_dim=FEATURE_DIM,
    )
    return OscarForImageTextRetrieval(config)


def make_gallery(seed=0, num_images=7):
    """Ragged everything: 1-3 captions of 2-30 words (some longer than max_seq_len), 0-24 tags,
    1-14 regions (some above max_img_seq_len)."""
    rng = np.random.default_rng(seed)
    captions = [
        [" ".join(rng.choice(WORDS, rng.integers(2, 31))) for _ in range(rng.integers(1, 4))] for _ in range(num_images)
    ]
    tags = [list(rng.choice(WORDS, rng.integers(0, 25))) for _ in range(num_images)]
    tags[0] = []
    feats = [rng.standard_normal((rng.integers(1, 15), FEATURE_DIM)).astype(np.float32) for _ in range(num_images)]
    return Gallery([f"img{i}" for i in range(num_images)], tags, captions, feats)


@pytest.fixture(scope="module")
def gallery():
    return make_gallery()


@pytest.fixture(scope="module")
def engine(model, processor):
    return RetrievalEngine(model, processor, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def exhaustive(engine, gallery):
    return engine.exhaustive(gallery)


def score_alone(model, processor, caption, tags, feats):
    """The match logit margin logit[1] - logit[0] of one pair, scored alone."""
    batch = processor.pad([processor.encode(caption, tags, feats)])
    with paddle.no_grad():
        logits = model(**batch).logits.numpy()[0]
    return float(logits[1] - logits[0])


def test_pair_id_arrays_equal_encode_oscar(tokenizer):
    rng = np.random.default_rng(1)
    captions = [" ".join(rng.choice(WORDS, n)) for n in rng.integers(0, 30, 40)]
    tags = [" ".join(rng.choice(WORDS, n)) for n in rng.integers(0, 30, 40)]
    tokenized_captions = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(c)) if c else [] for c in captions]
    tokenized_tags = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t)) if t else [] for t in tags]

    def matrix(rows):
        out = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
        for r, ids in enumerate(rows):
            out[r, : len(ids)] = ids
        return out, np.array([len(r) for r in rows])

    for max_len in (3, 5, 12, 70):
        input_ids, token_type_ids, lengths = tokenizer.build_pair_id_arrays(
            *matrix(tokenized_captions), *matrix(tokenized_tags), max_len
        )
        for b, (caption, tag) in enumerate(zip(captions, tags)):
            expected = tokenizer.encode_oscar(caption, tag, max_len)
            n = lengths[b]
            assert input_ids[b, :n].tolist() == expected["input_ids"]
            assert token_type_ids[b, :n].tolist() == expected["token_type_ids"]
            assert (input_ids[b, n:] == tokenizer.pad_token_id).all() and (token_type_ids[b, n:] == 0).all()


def test_exhaustive_equals_each_pair_scored_alone(model, processor, gallery, exhaustive):
    expected = np.array(
        [
            [score_alone(model, processor, caption, gallery.tags[i], gallery.features(i)) for caption in gallery.captions]
            for i in range(gallery.num_images)
        ]
    )
    assert exhaustive.i2t.dtype == np.float32 and exhaustive.i2t.shape == expected.shape
    np.testing.assert_allclose(exhaustive.i2t, expected, atol=1e-5, rtol=0)
    assert exhaustive.t2i is exhaustive.i2t
    assert exhaustive.pairs_scored == gallery.num_images * gallery.num_captions


def test_saturated_probabilities_rank_by_the_margin(model, processor, gallery, exhaustive):
    """Scaled logits: every pair with a positive margin gets probability 1.0 in float32, margins stay
    distinct; ranks follow the margins."""
    saturated = OscarForImageTextRetrieval(model.config)
    saturated.set_state_dict(model.state_dict())
    # |margin| >= 40 everywhere, and positive for most pairs (the sign flips if most were negative)
    scale = 40.0 / float(np.abs(exhaustive.i2t).min()) * np.sign(np.median(exhaustive.i2t))
    for param in saturated.classifier.parameters():
        param.set_value(param * paddle.to_tensor(scale, dtype=param.dtype))
    scores = RetrievalEngine(saturated, processor, batch_size=8, progress=False).exhaustive(gallery)
    margins, probabilities = [], []
    with paddle.no_grad():
        for i in range(gallery.num_images):
            batch = processor.pad([processor.encode(c, gallery.tags[i], gallery.features(i)) for c in gallery.captions])
            logits = saturated(**batch).logits
            margins.append((logits[:, 1] - logits[:, 0]).numpy())
            probabilities.append(paddle.nn.functional.softmax(logits, axis=-1)[:, 1].numpy())
    margins, probabilities = np.stack(margins), np.stack(probabilities)
    assert (probabilities[margins > 0] == 1.0).all() and (margins > 0).sum() >= 2
    assert len(np.unique(margins[probabilities == 1.0])) == (probabilities == 1.0).sum()
    np.testing.assert_allclose(scores.i2t, margins, rtol=1e-4)
    c2i = gallery.caption_to_image
    assert (i2t_ranks(scores.i2t, c2i) == i2t_ranks(margins, c2i)).all()
    assert (t2i_ranks(scores.i2t, c2i) == t2i_ranks(margins, c2i)).all()
    assert (top_k_indices(scores.i2t, 5) == np.argsort(-margins, axis=1, kind="stable")[:, :5]).all()
    # Ranked by the saturated probability, ties would push ground truths down:
    assert (t2i_ranks(probabilities, c2i) > t2i_ranks(margins, c2i)).any()


def test_exhaustive_does_not_depend_on_batch_size_or_image_blocks(model, processor, gallery, exhaustive, monkeypatch):
    monkeypatch.setattr(engine_module, "IMAGE_BLOCK", 3)
    other = RetrievalEngine(model, processor, batch_size=1, progress=False).exhaustive(gallery)
    np.testing.assert_allclose(other.i2t, exhaustive.i2t, atol=1e-5, rtol=0)


def test_two_stage_with_k_covering_everything_equals_exhaustive(engine, gallery, exhaustive):
    for k in (gallery.num_captions, 10_000):
        result = engine.two_stage(gallery, k=k)
        np.testing.assert_array_equal(result.i2t, exhaustive.i2t)
        np.testing.assert_array_equal(result.t2i, exhaustive.i2t)
        assert result.pairs_scored == gallery.num_images * gallery.num_captions


def test_two_stage_small_k_scores_the_top_k_union_and_ranks_it_both_ways(engine, gallery, exhaustive):
    k = 2
    result = engine.two_stage(gallery, k=k)
    similarity = engine.embed_images(gallery) @ engine.embed_captions(gallery).T
    i2t_expected = np.zeros_like(similarity, dtype=bool)
    np.put_along_axis(i2t_expected, np.argsort(-similarity, axis=1)[:, :k], True, axis=1)
    t2i_expected = np.zeros_like(similarity, dtype=bool)
    np.put_along_axis(t2i_expected, np.argsort(-similarity, axis=0)[:k], True, axis=0)
    union = i2t_expected | t2i_expected
    # Every scored pair ranks in both directions: an image also ranks the captions that chose it.
    assert (union & ~i2t_expected).any(axis=1).sum() > 0
    for matrix in (result.i2t, result.t2i):
        np.testing.assert_array_equal(np.isfinite(matrix), union)
        np.testing.assert_allclose(matrix[union], exhaustive.i2t[union], atol=1e-5, rtol=0)
        assert (matrix[~union] == -np.inf).all()
    assert result.pairs_scored == union.sum() < exhaustive.pairs_scored
    metrics = result.metrics(gallery.caption_to_image)
    assert set(metrics) == {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum"}


def test_score_pairs_tokenizes_only_the_pairs_it_scores(engine, gallery, exhaustive, monkeypatch):
    seen = {"captions": 0, "tags": 0}
    for name, kind in (("caption_pieces", "captions"), ("tag_pieces", "tags")):
        original = getattr(engine.processor, name)

        def counted(texts, original=original, kind=kind):
            seen[kind] += len(texts)
            return original(texts)

        monkeypatch.setattr(engine.processor, name, counted)
    images, captions = np.array([5, 2, 5]), np.array([3, 3, 9])
    scores = engine.score_pairs(gallery, images, captions)
    np.testing.assert_allclose(scores, exhaustive.i2t[images, captions], atol=1e-5, rtol=0)
    assert seen == {"captions": 2, "tags": 2}


def test_first_stage_embeddings_use_the_oscar_layout(model, processor, engine, gallery):
    captions = engine.embed_captions(gallery)
    images = engine.embed_images(gallery)
    with paddle.no_grad():
        for c in (0, 5, gallery.num_captions - 1):
            batch = processor.pad([processor.encode_text(gallery.captions[c])])
            np.testing.assert_allclose(captions[c], model.embed_text(**batch).numpy()[0], atol=1e-5)
        for i in range(gallery.num_images):
            batch = processor.pad([processor.encode("", gallery.tags[i], gallery.features(i))])
            np.testing.assert_allclose(images[i], model.embed_image(**batch).numpy()[0], atol=1e-5)


def test_score_pairs_and_rerank(engine, gallery, exhaustive):
    images = np.array([3, 0, 3, 6])
    captions = np.array([1, 4, 1, 0])
    np.testing.assert_allclose(
        engine.score_pairs(gallery, images, captions), exhaustive.i2t[images, captions], atol=1e-5, rtol=0
    )
    rng = np.random.default_rng(2)
    candidates = np.stack([rng.choice(gallery.num_captions, 4, replace=False) for _ in range(gallery.num_images)])
    candidates[:, 0] = gallery.caption_offsets[:-1]  # each image's first caption is a candidate
    scores = engine.rerank(gallery, candidates)
    np.testing.assert_allclose(scores, np.take_along_axis(exhaustive.i2t, candidates, axis=1), atol=1e-5, rtol=0)
    assert 0.0 <= rerank_metrics(scores, candidates, gallery.caption_to_image)["i2t_R@1"] <= 100.0
    with pytest.raises(ValueError, match="no re-rank candidates"):
        engine.rerank(gallery)


def test_gallery_from_corpus_reads_lazily_and_maps_caption_index():
    class Corpus:
        image_ids = ["a", "b", "c"]
        captions = [["a one", "a two"], ["b one"], ["c one", "c two", "c three"]]
        tags = [["dog"], [], ["cat", "grass"]]
        caption_index = {"a": [("a", 1), ("c", 2)], "b": [("a", 0), ("b", 0)], "c": [("c", 0), ("b", 0)]}
        reads = []

        def __len__(self):
            return 3

        def features(self, i):
            self.reads.append(i)
            return np.ones((2, FEATURE_DIM), dtype=np.float32) * i

    corpus = Corpus()
    gallery = Gallery.from_corpus(corpus)
    assert corpus.reads == [0]
    assert gallery.caption_to_image.tolist() == [0, 0, 1, 2, 2, 2]
    assert gallery.candidates.tolist() == [[1, 5], [0, 2], [3, 2]]
    assert gallery.features(2)[0, 0] == 2.0
    sub = gallery.subset(["c", "a"])
    assert sub.captions == ["c one", "c two", "c three", "a one", "a two"]
    assert sub.features(1)[0, 0] == 0.0 and sub.candidates is None
    with pytest.raises(KeyError, match="'zzz'"):
        gallery.subset(["a", "zzz"])
    corpus.caption_index = {"a": [("a", 5)], "b": [("b", 0)], "c": [("c", 0)]}
    with pytest.raises(ValueError, match="unknown caption"):
        Gallery.from_corpus(corpus)


def test_bad_gallery_input_errors(model, processor, engine):
    feats = [np.zeros((3, FEATURE_DIM), np.float32), np.zeros((2, FEATURE_DIM), np.float32)]
    with pytest.raises(ValueError, match="empty caption set"):
        Gallery(["a", "b"], [[], []], [[], []], feats)
    with pytest.raises(ValueError, match="at least one caption"):
        Gallery(["a", "b"], [[], []], [["x"], []], feats)
    with pytest.raises(ValueError, match="empty"):
        Gallery(["a", "b"], [[], []], [["x"], [" "]], feats)
    with pytest.raises(ValueError, match="distinct"):
        Gallery(["a", "a"], [[], []], [["x"], ["y"]], feats)
    narrow = Gallery(["a", "b"], [[], []], [["x"], ["y"]], [f[:, :100] for f in feats])
    with pytest.raises(ValueError, match="100 wide but the model expects 2054"):
        engine.exhaustive(narrow)
    mixed = Gallery(["a", "b"], [[], []], [["x"], ["y"]], [feats[0], feats[1][:, :100]])
    with pytest.raises(ValueError, match="'b'.*expected \\[num_regions, 2054\\]"):
        engine.exhaustive(mixed)


def test_bad_engine_input_errors(model, processor, engine, gallery):
    for k in (0, -3, 2.5):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            engine.two_stage(gallery, k=k)
    with pytest.raises(ValueError, match="batch_size"):
        RetrievalEngine(model, processor, batch_size=0)
    with pytest.raises(ValueError, match="caption indices"):
        engine.score_pairs(gallery, [0], [gallery.num_captions])
    other = OscarProcessor(processor.tokenizer, img_feature_dim=100)
    with pytest.raises(ValueError, match="img_feature_dim"):
        RetrievalEngine(model, other)


class NoisyScorer:
    """Stands in for a low-precision scorer: the model's logits plus an error fixed per pair (drawn
    from the pair's caption ids and regions, so any batch gives a pair the same one), large enough
    to swap near answers as rounding does at low precision."""

    def __init__(self, model, scale):
        self.model, self.scale = model, scale

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, input_ids, img_embeds, **inputs):
        logits = self.model(input_ids=input_ids, img_embeds=img_embeds, **inputs).logits.numpy()
        error = np.zeros_like(logits)
        for row, (ids, regions) in enumerate(zip(input_ids.numpy(), img_embeds.numpy())):
            seed = [int(i) for i in ids[ids > 0]] + [int(abs(regions).sum() * 1000)]
            error[row, 1] = self.scale * np.random.default_rng(seed).standard_normal()
        return SimpleNamespace(logits=paddle.to_tensor(logits + error))


def rescored_set(scores, k):
    """The pairs re-scoring picks: each image's k best captions and each caption's k best images."""
    chosen = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(chosen, np.argsort(-scores, axis=1, kind="stable")[:, :k], True, axis=1)
    np.put_along_axis(chosen, np.argsort(-scores, axis=0, kind="stable")[:k], True, axis=0)
    return chosen


def test_rescore_top_gives_each_querys_top_pairs_the_fp32_scores(model, processor, gallery, exhaustive):
    noisy = NoisyScorer(model, scale=0.1 * float(exhaustive.i2t.std()))
    low = RetrievalEngine(noisy, processor, batch_size=8, progress=False).exhaustive(gallery).i2t
    # The stand-in disagrees with fp32 at the top, or re-scoring would have nothing to restore.
    assert (low.argmax(0) != exhaustive.i2t.argmax(0)).sum() + (low.argmax(1) != exhaustive.i2t.argmax(1)).sum() >= 2
    k = 2
    engine = RetrievalEngine(noisy, processor, batch_size=8, progress=False, rescore_model=model, rescore_top=k)
    result = engine.exhaustive(gallery)
    chosen = rescored_set(low, k)
    assert result.pairs_rescored == chosen.sum() < low.size
    np.testing.assert_allclose(result.i2t[chosen], exhaustive.i2t[chosen], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(result.i2t[~chosen], low[~chosen])
    # The re-scored ranking gives back fp32's best answer to queries the stand-in gave another.
    agree = [(scores.argmax(axis) == exhaustive.i2t.argmax(axis)).sum() for scores in (low, result.i2t) for axis in (0, 1)]
    assert agree[2] == gallery.num_captions and agree[3] == gallery.num_images and sum(agree[2:]) > sum(agree[:2])


def test_rescore_top_covering_everything_equals_fp32(model, processor, gallery, exhaustive):
    noisy = NoisyScorer(model, scale=float(exhaustive.i2t.std()))
    k = max(gallery.num_images, gallery.num_captions)
    result = RetrievalEngine(noisy, processor, batch_size=8, progress=False, rescore_model=model,
                             rescore_top=k).exhaustive(gallery)
    np.testing.assert_allclose(result.i2t, exhaustive.i2t, atol=1e-5, rtol=0)
    assert result.pairs_rescored == result.pairs_scored == exhaustive.pairs_scored


def test_rescore_top_after_a_first_stage_scores_no_unscored_pair(model, processor, gallery, exhaustive):
    noisy = NoisyScorer(model, scale=float(exhaustive.i2t.std()))
    low = RetrievalEngine(noisy, processor, batch_size=8, progress=False).two_stage(gallery, k=2)
    result = RetrievalEngine(noisy, processor, batch_size=8, progress=False, rescore_model=model,
                             rescore_top=3).two_stage(gallery, k=2)
    np.testing.assert_array_equal(np.isfinite(result.i2t), np.isfinite(low.i2t))
    chosen = rescored_set(low.i2t, 3) & np.isfinite(low.i2t)
    assert result.pairs_rescored == chosen.sum() > 0
    np.testing.assert_allclose(result.i2t[chosen], exhaustive.i2t[chosen], atol=1e-5, rtol=0)


def test_rescore_of_chosen_queries_only(model, processor, gallery, exhaustive):
    noisy = NoisyScorer(model, scale=float(exhaustive.i2t.std()))
    engine = RetrievalEngine(noisy, processor, batch_size=8, progress=False, rescore_model=model, rescore_top=2)
    low = RetrievalEngine(noisy, processor, batch_size=8, progress=False).exhaustive(gallery).i2t
    scores = low.copy()
    assert engine.rescore(gallery, scores, images=[3], captions=np.zeros(0, dtype=np.int64)) == 2
    chosen = np.zeros(low.shape, dtype=bool)
    chosen[3, np.argsort(-low[3], kind="stable")[:2]] = True
    np.testing.assert_allclose(scores[chosen], exhaustive.i2t[chosen], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(scores[~chosen], low[~chosen])


def test_bad_rescore_arguments(model, processor, engine, gallery):
    for k in (-1, 1.5, True):
        with pytest.raises(ValueError, match="rescore_top must be a non-negative integer"):
            RetrievalEngine(model, processor, rescore_model=model, rescore_top=k)
    with pytest.raises(ValueError, match="needs a rescore_model"):
        RetrievalEngine(model, processor, rescore_top=2)
    with pytest.raises(ValueError, match="no rescore_top"):
        engine.rescore(gallery, np.zeros((gallery.num_images, gallery.num_captions), dtype=np.float32))
    rescoring = RetrievalEngine(model, processor, rescore_model=model, rescore_top=2)
    with pytest.raises(ValueError, match=r"scores must be \[7, "):
        rescoring.rescore(gallery, np.zeros((gallery.num_captions, gallery.num_images), dtype=np.float32))


WORKER = """
import pickle, sys
import numpy as np
import vinvl
import paddle.distributed as dist
from vinvl import OscarForImageTextRetrieval, OscarProcessor, OscarTokenizer
from vinvl.parallel import leave_after_rank_zero
from vinvl.retrieval import Gallery, RetrievalEngine

model_dir, data_path, out_prefix = sys.argv[1:4]
dist.init_parallel_env()
with open(data_path, "rb") as f:
    data = pickle.load(f)
model = OscarForImageTextRetrieval.from_pretrained(model_dir)
processor = OscarProcessor(OscarTokenizer(data["vocab"]), **data["limits"])
gallery = Gallery(data["ids"], data["tags"], data["captions"], data["feats"])
engine = RetrievalEngine(model, processor, batch_size=8, progress=False)
scored = []
score_batch = engine._score_batch
engine._score_batch = lambda tokens, images, *rest: scored.append(len(images)) or score_batch(tokens, images, *rest)
exhaustive = engine.exhaustive(gallery)
two_stage = engine.two_stage(gallery, k=2)
np.savez(f"{out_prefix}{dist.get_rank()}.npz", exhaustive=exhaustive.i2t, i2t=two_stage.i2t, t2i=two_stage.t2i,
         pairs=two_stage.pairs_scored, scored_here=sum(scored))
leave_after_rank_zero()
"""


@pytest.mark.slow
def test_two_cpu_ranks_equal_one_process(model, processor, engine, gallery, exhaustive, tmp_path):
    import pickle

    model.save_pretrained(str(tmp_path / "model"))
    data = {
        "vocab": os.path.join(os.path.dirname(vinvl.__file__), "assets", "vocab.txt"),
        "limits": dict(max_seq_len=MAX_SEQ_LEN, max_img_seq_len=MAX_REGIONS, img_feature_dim=FEATURE_DIM),
        "ids": gallery.image_ids,
        "tags": gallery.tags,
        "captions": [gallery.captions_of(i) for i in range(gallery.num_images)],
        "feats": [gallery.features(i) for i in range(gallery.num_images)],
    }
    with open(tmp_path / "data.pkl", "wb") as f:
        pickle.dump(data, f)
    (tmp_path / "worker.py").write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "OMP_NUM_THREADS"))}
    worker = ["worker.py", tmp_path / "model", tmp_path / "data.pkl", tmp_path / "out"]
    launch_two_ranks(worker, tmp_path, tmp_path / "log", env, timeout=180)
    two_stage = engine.two_stage(gallery, k=2)
    scored_here = []
    for rank in (0, 1):
        out = np.load(tmp_path / f"out{rank}.npz")
        # Same batches as the engine fixture (batch_size 8); each rank runs 1 thread and this
        # process 2, and MKL may round a last bit differently across thread counts.
        np.testing.assert_allclose(out["exhaustive"], exhaustive.i2t, atol=1e-6, rtol=0)
        np.testing.assert_allclose(out["i2t"], two_stage.i2t, atol=1e-6, rtol=0)
        np.testing.assert_allclose(out["t2i"], two_stage.t2i, atol=1e-6, rtol=0)
        assert int(out["pairs"]) == two_stage.pairs_scored
        scored_here.append(int(out["scored_here"]))
    assert sum(scored_here) == exhaustive.pairs_scored + two_stage.pairs_scored
    assert max(scored_here) < sum(scored_here) * 0.6  # the work was shared
