"""Unit tests of the training pieces: contrastive loss, sampler, official negative sampling, collator, trainer loss."""
import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults before paddle)
import paddle

from vinvl.data.collate import MatchingCollator, MatchingPairDataset
from vinvl.oscar.model_dir import packaged_vocab_path
from vinvl.oscar.processor import OscarProcessor
from vinvl.oscar.tokenizer import OscarTokenizer
from vinvl.training.losses import contrastive_loss
from vinvl.training.sampler import EpochSeededBatchSampler

from support.corpora import FEATURE_DIM, ListCorpus


@pytest.fixture(scope="module")
def processor():
    return OscarProcessor(OscarTokenizer(packaged_vocab_path()), max_seq_len=24, max_img_seq_len=4, img_feature_dim=FEATURE_DIM)


def _log_softmax(x):
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def _soft_ce(logits, targets):
    return -(targets * _log_softmax(logits)).sum(1).mean()


def _unit_rows(rng, rows, width):
    x = rng.normal(size=(rows, width))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference_contrastive(c, v, scale, image_index):
    logits = scale * c @ v.T
    same = (image_index[:, None] == image_index[None, :]).astype(np.float64)
    targets = same / same.sum(1, keepdims=True)
    return (_soft_ce(logits, targets) + _soft_ce(logits.T, targets.T)) / 2


def test_contrastive_loss_matches_reference_with_shared_images():
    rng = np.random.default_rng(1)
    c, v = _unit_rows(rng, 6, 5), _unit_rows(rng, 6, 5)
    image_index = np.array([0, 1, 1, 2, 3, 3])
    got = contrastive_loss(
        paddle.to_tensor(c, dtype="float32"),
        paddle.to_tensor(v, dtype="float32"),
        paddle.to_tensor([10.0]),
        paddle.to_tensor(image_index),
    )
    assert float(got) == pytest.approx(_reference_contrastive(c, v, 10.0, image_index), rel=1e-5)


def test_contrastive_loss_is_low_for_aligned_embeddings():
    eye = paddle.eye(4)
    aligned = contrastive_loss(eye, eye, paddle.to_tensor([50.0]), paddle.arange(4))
    shuffled = contrastive_loss(eye, eye[[1, 2, 3, 0]], paddle.to_tensor([50.0]), paddle.arange(4))
    assert float(aligned) < 1e-6 < float(shuffled)


def test_sampler_is_deterministic_per_seed_and_epoch_and_shards_evenly():
    data = list(range(11))

    def batches(seed, epoch, rank):
        sampler = EpochSeededBatchSampler(data, batch_size=2, seed=seed, num_replicas=2, rank=rank)
        sampler.set_epoch(epoch)
        return list(sampler)

    rank0, rank1 = batches(3, 0, 0), batches(3, 0, 1)
    flat0 = [i for b in rank0 for i in b]
    flat1 = [i for b in rank1 for i in b]
    assert len(flat0) == len(flat1) == 6  # ceil(11 / 2), wrapped around
    assert set(flat0) | set(flat1) == set(data)
    assert len(EpochSeededBatchSampler(data, batch_size=2, seed=3, num_replicas=2, rank=0)) == len(rank0) == 3
    assert batches(3, 0, 0) == rank0  # same seed and epoch: same order
    assert batches(3, 1, 0) != rank0  # a new epoch reshuffles
    assert batches(4, 0, 0) != rank0  # the seed matters


def test_negatives_follow_the_official_rules(processor):
    corpus = ListCorpus(5)
    dataset = MatchingPairDataset(corpus, processor, seed=0)
    assert len(dataset) == 15
    caption_negatives = image_negatives = 0
    tokenizer = processor.tokenizer
    for index in range(len(dataset)):
        item = dataset[index]
        image = item["image_index"]
        pos_text = tokenizer.decode(item["positive"]["input_ids"])
        neg_text = tokenizer.decode(item["negative"]["input_ids"])
        assert f"image {image} caption" in pos_text and f"tag{image}" in pos_text
        if f"tag{image}" in neg_text:
            # a caption of another image, with this image's tags and regions
            assert f"image {image} caption" not in neg_text
            np.testing.assert_array_equal(item["negative"]["img_feats"], corpus.features(image)[:4])
            caption_negatives += 1
        else:
            # this caption with another image's tags and regions
            assert pos_text.split("[SEP]")[0] == neg_text.split("[SEP]")[0]
            image_negatives += 1
        assert tokenizer.decode(item["caption_only"]["input_ids"]) == pos_text.split("[SEP]")[0] + "[SEP]"
        np.testing.assert_array_equal(item["image_only"]["img_feats"], corpus.features(image)[:4])
    assert caption_negatives > 0 and image_negatives > 0


def test_negatives_depend_only_on_seed_epoch_and_index(processor):
    corpus = ListCorpus(6)
    a, b = MatchingPairDataset(corpus, processor, seed=7), MatchingPairDataset(corpus, processor, seed=7)
    assert [a[i]["negative"]["input_ids"] for i in (4, 2, 9)] == [b[i]["negative"]["input_ids"] for i in (4, 2, 9)]
    epoch0 = [a[i]["negative"]["input_ids"] for i in range(len(a))]
    a.set_epoch(1)
    assert [a[i]["negative"]["input_ids"] for i in range(len(a))] != epoch0


def test_matching_needs_two_images(processor):
    with pytest.raises(ValueError, match="at least 2 images"):
        MatchingPairDataset(ListCorpus(1), processor)


def test_collator_builds_labelled_pairs_and_single_modality_inputs(processor):
    corpus = ListCorpus(4)
    dataset = MatchingPairDataset(corpus, processor, seed=0)
    batch = MatchingCollator(processor)([dataset[i] for i in (0, 5, 7)])
    assert batch["labels"].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["input_ids"].shape[0] == 6
    assert batch["attention_mask"].shape[1] == batch["input_ids"].shape[1] + batch["img_feats"].shape[1]
    assert batch["image_index"].tolist() == [0, 1, 2]
    assert "img_feats" not in batch["caption_inputs"]
    assert batch["image_inputs"]["img_feats"].shape[0] == 3


def _per_pair_margins(model, processor, corpus, captions, images):
    """Match-head logit margins of (captions[b], image images[b']) for every b, b', each pair
    encoded on its own by the processor (independent of the trainer's in-batch assembly)."""
    model.eval()
    with paddle.no_grad():
        out = np.zeros((len(captions), len(images)))
        for b, caption in enumerate(captions):
            for b2, image in enumerate(images):
                pair = processor.pad([processor.encode(caption, corpus.tags[image], corpus.features(image))])
                logits = model(**pair).logits.numpy()[0]
                out[b, b2] = logits[1] - logits[0]
    model.train()
    return out


def _reference_distillation(c, v, scale, teacher, temperature):
    logits = scale * c @ v.T
    t = teacher / temperature
    return (_soft_ce(logits, np.exp(_log_softmax(t))) + _soft_ce(logits.T, np.exp(_log_softmax(t.T)))) / 2


def test_distillation_loss_matches_reference():
    from vinvl.training.losses import distillation_loss

    rng = np.random.default_rng(4)
    c, v = _unit_rows(rng, 5, 3), _unit_rows(rng, 5, 3)
    teacher = rng.normal(scale=4.0, size=(5, 5))
    for temperature in (1.0, 0.5):
        got = distillation_loss(
            paddle.to_tensor(c, dtype="float32"), paddle.to_tensor(v, dtype="float32"),
            paddle.to_tensor([7.0]), paddle.to_tensor(teacher, dtype="float32"), temperature,
        )
        np.testing.assert_allclose(float(got), _reference_distillation(c, v, 7.0, teacher, temperature), rtol=1e-5)
    # Minimal exactly where the student's softmax is the teacher's, in both directions.
    same = paddle.to_tensor(np.eye(5) * 6.0, dtype="float32")
    eye = paddle.eye(5)
    aligned = float(distillation_loss(eye, eye, paddle.to_tensor([1.0]), same))
    shuffled = float(distillation_loss(eye, eye, paddle.to_tensor([1.0]), paddle.to_tensor(np.roll(np.eye(5), 1, 0) * 6.0, dtype="float32")))
    assert aligned < shuffled
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(eye, eye, paddle.to_tensor([1.0]), same, 0.0)


def test_list_distillation_loss_matches_reference():
    from vinvl.training.losses import list_distillation_loss

    rng = np.random.default_rng(5)
    queries = _unit_rows(rng, 4, 3)
    lists = np.stack([_unit_rows(rng, 6, 3) for _ in range(4)])  # [Q, L, E]
    teacher = rng.normal(scale=3.0, size=(4, 6))
    for temperature in (1.0, 0.25):
        got = list_distillation_loss(
            paddle.to_tensor(queries, dtype="float32"), paddle.to_tensor(lists, dtype="float32"),
            paddle.to_tensor([5.0]), paddle.to_tensor(teacher, dtype="float32"), temperature,
        )
        logits = 5.0 * np.einsum("qe,qle->ql", queries, lists)
        expected = _soft_ce(logits, np.exp(_log_softmax(teacher / temperature)))
        np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    # Padded lists: the padding is in neither softmax, so each row equals its unpadded loss.
    listed = np.ones((4, 6), dtype=bool)
    listed[1, 4:] = listed[3, 2:] = False
    got = list_distillation_loss(
        paddle.to_tensor(queries, dtype="float32"), paddle.to_tensor(lists, dtype="float32"),
        paddle.to_tensor([5.0]), paddle.to_tensor(teacher, dtype="float32"), 1.0, paddle.to_tensor(listed),
    )
    rows = [
        _soft_ce(logits[q : q + 1, listed[q]], np.exp(_log_softmax(teacher[q : q + 1, listed[q]])))
        for q in range(4)
    ]
    np.testing.assert_allclose(float(got), np.mean(rows), rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        list_distillation_loss(paddle.eye(2), paddle.eye(2).unsqueeze(0).tile([2, 1, 1]), paddle.to_tensor([1.0]), paddle.eye(2), 0.0)


def test_frozen_state_batches_pair_each_query_with_its_list():
    """Captions of uneven counts: each image's list holds all its captions (padding marked), and a
    mixed batch's projections split back into the right queries and lists."""
    from vinvl.retrieval.gallery import Gallery
    from vinvl.training.frozen_states import (
        DistillationTargets, FrozenStateCollator, FrozenStateQueries, _own_captions, split_projections,
    )

    features = [np.zeros((1, 3), dtype=np.float32)] * 3
    gallery = Gallery(["a", "b", "c"], [["x"]] * 3, [["a0", "a1"], ["b0"], ["c0", "c1", "c2"]], features)
    np.testing.assert_array_equal(_own_captions(gallery), [[0, 1, -1], [2, -1, -1], [3, 4, 5]])
    states_c = np.arange(6, dtype=np.float32)[:, None] * [1.0, 0.0]  # caption j -> (j, 0)
    states_i = np.arange(3, dtype=np.float32)[:, None] * [0.0, 1.0] + [0.0, 10.0]  # image i -> (0, 10 + i)
    image_lists = np.concatenate([_own_captions(gallery), [[2], [0], [1]]], axis=1)
    targets = DistillationTargets(
        caption_states=states_c, image_states=states_i,
        caption_lists=np.array([[0, 1], [0, 2], [1, 0], [2, 1], [2, 0], [2, 1]]),
        caption_scores=np.arange(12, dtype=np.float32).reshape(6, 2),
        image_lists=image_lists, image_scores=np.where(image_lists >= 0, 1.0, 0.0).astype(np.float32),
    )
    dataset = FrozenStateQueries(targets)
    assert len(dataset) == 9 and dataset[5] == {"kind": 0, "index": 5} and dataset[7] == {"kind": 1, "index": 1}
    batch = FrozenStateCollator(targets)([dataset[i] for i in (7, 3, 6, 0)])  # images 1, 0; captions 3, 0
    parts = split_projections(batch["caption_states"], batch["image_states"], batch)
    (caption_queries, image_candidates, caption_teacher, none), (image_queries, caption_candidates, _, listed) = parts
    assert none is None and listed is batch["image_listed"] and caption_teacher is batch["caption_teacher"]
    np.testing.assert_array_equal(caption_queries.numpy()[:, 0], [3, 0])
    np.testing.assert_array_equal(image_candidates.numpy()[..., 1], [[12, 11], [10, 11]])
    np.testing.assert_array_equal(image_queries.numpy()[:, 1], [11, 10])
    np.testing.assert_array_equal(caption_candidates.numpy()[..., 0], [[2, 0, 0, 0], [0, 1, 0, 2]])
    np.testing.assert_array_equal(listed.numpy(), [[True, False, False, True], [True, True, False, True]])
    np.testing.assert_array_equal(caption_teacher.numpy(), [[6, 7], [0, 1]])
    only_images = FrozenStateCollator(targets)([dataset[8]])
    (query, candidates, _, _), = split_projections(only_images["caption_states"], only_images["image_states"], only_images)
    np.testing.assert_array_equal(query.numpy()[:, 1], [12])
    np.testing.assert_array_equal(candidates.numpy()[..., 0], [[3, 4, 5, 1]])


def test_teacher_margins_equal_each_pair_scored_alone(processor):
    from vinvl import OscarConfig, OscarForImageTextRetrieval
    from vinvl.training.teacher import match_margins

    paddle.seed(2)
    config = OscarConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, contrastive_dim=16,
        img_feature_dim=FEATURE_DIM, initializer_range=0.3,  # wide weights: pairs score far apart
    )
    model = OscarForImageTextRetrieval(config)
    model.train()  # dropout on: the teacher must switch it off, and restore training mode
    corpus = ListCorpus(4)
    dataset = MatchingPairDataset(corpus, processor, seed=0, single_modality=True, pairs="mined")
    items = (0, 4, 9, 10)  # images 0, 1, 3, 3 (two captions of image 3)
    batch = MatchingCollator(processor)([dataset[i] for i in items])
    got = match_margins(model, processor, batch["pair_pieces"], batch["image_inputs"], chunk=5).numpy()
    assert model.training
    captions = [corpus.captions[i // 3][i % 3] for i in items]
    expected = _per_pair_margins(model, processor, corpus, captions, [i // 3 for i in items])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.ptp(expected) > 0.1  # the pairs do score differently


@pytest.mark.parametrize(
    "objective, itm_negatives",
    [
        ("itm", "random"), ("itc", "random"), ("itm+itc", "random"), ("itm+itc", "mined"),
        ("distill", "random"), ("itc+distill", "random"),
    ],
)
def test_trainer_loss_is_the_objectives_sum(processor, tmp_path, objective, itm_negatives):
    from paddlenlp.trainer import TrainingArguments

    from vinvl import OscarConfig, OscarForImageTextRetrieval
    from vinvl.oscar.modeling import match_loss
    from vinvl.training.losses import distillation_loss
    from vinvl.training.negatives import mined_pair_inputs, sample_negatives
    from vinvl.training.trainer import RetrievalTrainer

    paddle.seed(3)
    config = OscarConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, contrastive_dim=16,
        img_feature_dim=FEATURE_DIM, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = OscarForImageTextRetrieval(config)
    objectives = objective.split("+")
    corpus = ListCorpus(5)
    distill = "distill" in objectives
    dataset = MatchingPairDataset(
        corpus, processor, seed=0, single_modality="itc" in objectives or distill,
        pairs=itm_negatives if "itm" in objectives else ("mined" if distill else None),
    )
    items = (0, 4, 8, 12, 13)
    batch = MatchingCollator(processor)([dataset[i] for i in items])
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], disable_tqdm=True, seed=5)
    trainer = RetrievalTrainer(
        model=model, args=args, processor=processor, objective=objective, itm_negatives=itm_negatives
    )
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    assert model.classifier.weight.grad is not None if "itm" in objectives else model.classifier.weight.grad is None
    contrastive_trained = "itc" in objectives or distill
    assert model.text_proj.weight.grad is not None if contrastive_trained else model.text_proj.weight.grad is None

    teacher = None
    if distill:
        captions = [corpus.captions[i // 3][i % 3] for i in items]
        teacher = _per_pair_margins(model, processor, corpus, captions, [i // 3 for i in items])
    with paddle.no_grad():
        expected = 0.0
        if contrastive_trained:
            single = model(caption_inputs=batch["caption_inputs"], image_inputs=batch["image_inputs"])
        if "itc" in objectives:
            expected += float(contrastive_loss(single.caption_embeds, single.image_embeds, single.logit_scale, batch["image_index"]))
        if distill:
            embeds = (single.caption_embeds, single.image_embeds, single.logit_scale)
            expected += float(distillation_loss(*embeds, paddle.to_tensor(teacher, dtype="float32")))
        if itm_negatives == "mined":
            similarity = (single.logit_scale * single.caption_embeds @ single.image_embeds.T).numpy()
            rng = np.random.default_rng([5, 0, 0])  # (seed, step, rank)
            drawn = sample_negatives(similarity, batch["image_index"].numpy(), rng)
            pairs = mined_pair_inputs(processor, batch["pair_pieces"], batch["image_inputs"], *drawn)
            assert len(pairs["labels"]) == 5 + 2 * 5  # each item has items of another image to draw
            expected += float(model(**pairs).loss)
        elif "itm" in objectives:
            keys = ("input_ids", "token_type_ids", "attention_mask", "img_feats")
            expected += float(match_loss(model(**{k: batch[k] for k in keys}).logits, batch["labels"]))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


@pytest.mark.parametrize("objective", ["distill", "itc+distill"])
def test_trainer_refuses_to_train_the_layers_a_distill_teacher_reads(processor, objective, tmp_path):
    from paddlenlp.trainer import TrainingArguments

    from vinvl import OscarConfig, OscarForImageTextRetrieval
    from vinvl.training.trainer import RetrievalTrainer

    config = OscarConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, contrastive_dim=16)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], disable_tqdm=True)
    with pytest.raises(ValueError, match="teacher"):
        RetrievalTrainer(
            model=OscarForImageTextRetrieval(config), args=args, processor=processor, objective=objective,
            train_only="heads", trainable_layers=1,
        )


def test_mined_candidates_are_the_best_unlisted_items_in_order_whatever_the_chunking(monkeypatch):
    from vinvl.training import frozen_states

    rng = np.random.default_rng(3)
    queries, items = rng.normal(size=(23, 8)).astype(np.float32), rng.normal(size=(40, 8)).astype(np.float32)
    listed = rng.integers(0, 40, size=(23, 5))
    listed[::3, 3:] = -1  # padding lists nothing: query 0's best item is the last one, never listed
    items[39] = 5 * queries[0]
    listed[listed == 39] = 38
    expected = []
    for query, row in zip(queries, listed):
        ranked = sorted(range(40), key=lambda item: -float(items[item] @ query))
        expected.append([item for item in ranked if item not in set(row.tolist())][:4])
    for budget in (1 << 25, 100):  # one chunk, then 2 queries per chunk
        monkeypatch.setattr(frozen_states, "_MINING_BUDGET", budget)
        np.testing.assert_array_equal(frozen_states.mine_candidates(queries, items, listed, 4), expected)
    with pytest.raises(ValueError, match="cannot mine 36 candidates per query among 40 items"):
        frozen_states.mine_candidates(queries, items, listed, 36)
