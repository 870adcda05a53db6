"""OscarConfig, OscarModel, OscarForImageTextRetrieval and OscarProcessor on a tiny config.

Parity with independent implementations lives in test_convert.py; here: round trips, the
padding/mask invariances the retrieval code relies on, the embedding heads and the errors.
"""
from __future__ import annotations

import math
import os
import random

import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU defaults before paddle)
import paddle
from vinvl import OscarConfig, OscarForImageTextRetrieval, OscarModel, OscarProcessor, OscarTokenizer
from vinvl.assets import VOCAB_PATH as VOCAB
from vinvl.oscar.modeling import match_loss

from support.realdata import labelmap_names, read_captions

IMG_DIM = 10

TINY = dict(
    vocab_size=30522,  # the real vocab, so real captions can be fed
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=80,
    img_feature_dim=IMG_DIM,
    contrastive_dim=16,
)


def tiny_config(**overrides) -> OscarConfig:
    return OscarConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides) -> OscarForImageTextRetrieval:
    paddle.seed(seed)
    model = OscarForImageTextRetrieval(tiny_config(**overrides))
    with paddle.no_grad():  # larger than BERT's init, so every weight visibly changes the output
        for param in model.parameters():
            param.set_value(paddle.normal(0.0, 0.2, shape=param.shape).astype(param.dtype))
    model.eval()
    return model


def real_pairs(count: int, seed: int = 0):
    """Real COCO captions with tag strings from the VinVL labelmap and random region features."""
    captions = read_captions()
    labels = labelmap_names()[0]
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    pairs = []
    for i in range(count):
        tags = [rng.choice(labels) for _ in range(rng.randint(1, 25))]
        feats = nprng.normal(size=(rng.randint(1, 12), IMG_DIM)).astype(np.float32)
        pairs.append((captions[(i * 7) % len(captions)], tags, feats))
    return pairs


@pytest.fixture(scope="module")
def tokenizer() -> OscarTokenizer:
    return OscarTokenizer(VOCAB)


@pytest.fixture(scope="module")
def processor(tokenizer) -> OscarProcessor:
    return OscarProcessor(tokenizer, max_seq_len=70, max_img_seq_len=70, img_feature_dim=IMG_DIM)


def logits_of(model, batch) -> np.ndarray:
    with paddle.no_grad():
        return model(**batch).logits.numpy()


# --------------------------------------------------------------------------- config


def test_config_round_trip_keeps_every_oscar_field(tmp_path):
    oscar_fields = dict(
        img_feature_dim=33,
        img_feature_type="frcnn",
        use_img_layernorm=False,
        img_layer_norm_eps=1e-5,
        num_labels=2,
        loss_type="sfmx",
        classifier="mlp",
        cls_hidden_scale=3,
        max_seq_length=50,
        max_img_seq_length=40,
        contrastive_dim=24,
        contrastive_hidden_size=48,
    )
    bert_fields = dict(TINY, hidden_act="gelu_new", layer_norm_eps=1e-6, hidden_dropout_prob=0.2)
    bert_fields.pop("img_feature_dim")
    bert_fields.pop("contrastive_dim")
    config = OscarConfig(**bert_fields, **oscar_fields)
    config.save_pretrained(str(tmp_path))
    loaded = OscarConfig.from_pretrained(str(tmp_path))
    for key, value in {**bert_fields, **oscar_fields}.items():
        assert getattr(loaded, key) == value, key
    assert loaded.model_type == "oscar"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(classifier="deep"), "classifier must be one of"),
        (dict(loss_type="kl"), "loss_type must be one of"),
        (dict(img_feature_type="dis_code"), "img_feature_type"),
        (dict(hidden_size=30, num_attention_heads=4), "not a multiple"),
        (dict(contrastive_hidden_size=-1), "contrastive_hidden_size"),
        (dict(contrastive_hidden_size=2.5), "contrastive_hidden_size"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("classifier", ["linear", "mlp"])
def test_save_and_load_give_identical_logits(tmp_path, processor, classifier):
    model = tiny_model(classifier=classifier)
    batch = processor([c for c, _, _ in real_pairs(5)], [t for _, t, _ in real_pairs(5)],
                      [f for _, _, f in real_pairs(5)])
    before = logits_of(model, batch)
    model.save_pretrained(str(tmp_path))
    assert "model.safetensors" in os.listdir(tmp_path)
    assert "model_state.pdparams" not in os.listdir(tmp_path)
    loaded = OscarForImageTextRetrieval.from_pretrained(str(tmp_path))
    loaded.eval()
    np.testing.assert_array_equal(logits_of(loaded, batch), before)
    assert loaded.config.classifier == classifier
    # The encoder alone loads from the same directory (base-model prefix "bert").
    encoder = OscarModel.from_pretrained(str(tmp_path))
    encoder.eval()
    with paddle.no_grad():
        np.testing.assert_array_equal(encoder(**batch).pooler_output.numpy(), model.bert(**batch).pooler_output.numpy())


def test_dynamic_padding_equals_fixed_padding_and_single_pairs(processor):
    model = tiny_model()
    pairs = real_pairs(6)
    examples = [processor.encode(c, t, f) for c, t, f in pairs]
    dynamic = processor.pad(examples)
    assert dynamic["input_ids"].shape[1] == max(len(e["input_ids"]) for e in examples) < 70
    assert dynamic["img_feats"].shape[1] == max(len(e["img_feats"]) for e in examples) < 70
    fixed = processor.pad(examples, pad_text_to=70, pad_regions_to=70)
    assert list(fixed["attention_mask"].shape) == [6, 140]
    dynamic_logits = logits_of(model, dynamic)
    np.testing.assert_allclose(dynamic_logits, logits_of(model, fixed), rtol=1e-5, atol=1e-5)
    alone = np.concatenate([logits_of(model, processor.pad([e])) for e in examples])
    np.testing.assert_allclose(dynamic_logits, alone, rtol=1e-5, atol=1e-5)
    assert np.abs(dynamic_logits[:, 1] - dynamic_logits[0, 1]).max() > 1e-3  # pairs really differ


def test_text_only_forward(processor):
    model = tiny_model()
    pairs = real_pairs(3)
    text_batch = processor([c for c, _, _ in pairs], [t for _, t, _ in pairs])
    assert "img_feats" not in text_batch
    assert text_batch["attention_mask"].shape == text_batch["input_ids"].shape
    logits = logits_of(model, text_batch)
    assert logits.shape == (3, 2) and np.isfinite(logits).all()
    # Same as attaching regions that are all masked out.
    with_regions = processor([c for c, _, _ in pairs], [t for _, t, _ in pairs], [f for _, _, f in pairs])
    with_regions["attention_mask"][:, text_batch["input_ids"].shape[1]:] = 0
    np.testing.assert_allclose(logits_of(model, with_regions), logits, rtol=1e-5, atol=1e-5)
    # Defaults: no token types, no mask.
    with paddle.no_grad():
        out = model.bert(text_batch["input_ids"][:1, :5])
    assert list(out.last_hidden_state.shape) == [1, 5, 32] and list(out.pooler_output.shape) == [1, 32]


@pytest.mark.parametrize("use_img_layernorm", [True, False])
def test_img_embeds_path_equals_img_feats_path(processor, use_img_layernorm):
    model = tiny_model(use_img_layernorm=use_img_layernorm)
    pairs = real_pairs(4)
    batch = processor([c for c, _, _ in pairs], [t for _, t, _ in pairs], [f for _, _, f in pairs])
    with paddle.no_grad():
        img_embeds = model.bert.embed_regions(batch["img_feats"])
        by_embeds = model(
            batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], img_embeds=img_embeds
        ).logits.numpy()
    assert list(img_embeds.shape) == list(batch["img_feats"].shape[:2]) + [32]
    np.testing.assert_allclose(by_embeds, logits_of(model, batch), rtol=1e-6, atol=1e-6)


def test_embed_text_and_image_are_unit_vectors(processor):
    model = tiny_model()
    pairs = real_pairs(5)
    captions = processor([c for c, _, _ in pairs])
    images = processor([""] * 5, [t for _, t, _ in pairs], [f for _, _, f in pairs])
    with paddle.no_grad():
        text = model.embed_text(**captions).numpy()
        image = model.embed_image(**images).numpy()
        both = model(caption_inputs=captions, image_inputs=images)
    for emb in (text, image):
        assert emb.shape == (5, 16)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(both.caption_embeds.numpy(), text, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(both.image_embeds.numpy(), image, rtol=1e-6, atol=1e-6)
    assert both.logits is None
    expected_scale = min(float(np.exp(model.contrastive_logit_scale.numpy()[0])), 100.0)
    np.testing.assert_allclose(float(both.logit_scale), expected_scale, rtol=1e-5)
    fresh = OscarForImageTextRetrieval(tiny_config())  # the contrastive temperature starts at 0.07
    np.testing.assert_allclose(float(np.exp(fresh.contrastive_logit_scale.numpy()[0])), 1 / 0.07, rtol=1e-5)


@pytest.mark.parametrize("hidden", [0, 24])
def test_embeddings_are_the_heads_applied_to_the_pooled_states(processor, tmp_path, hidden):
    """embed_* = project_*(pool_*), pool_* is the mask-weighted mean of the encoder's last states, and
    the MLP heads (contrastive_hidden_size > 0) compute GELU(x W1 + b1) W2 + b2 and survive a round trip."""
    model = tiny_model(contrastive_hidden_size=hidden)
    pairs = real_pairs(4)
    captions = processor([c for c, _, _ in pairs])
    images = processor([""] * 4, [t for _, t, _ in pairs], [f for _, _, f in pairs])
    with paddle.no_grad():
        pooled_text = model.pool_text(**captions)
        pooled_image = model.pool_image(**images)
        hidden_states = model.bert(**captions, return_dict=False)[0].numpy()
        by_states = model(caption_states=pooled_text, image_states=pooled_image)
    mask = captions["attention_mask"].numpy()[..., None].astype(np.float32)
    np.testing.assert_allclose(pooled_text.numpy(), (hidden_states * mask).sum(1) / mask.sum(1), rtol=1e-5, atol=1e-6)
    weights = {k: v.numpy() for k, v in model.state_dict().items() if k.startswith("text_proj.")}
    x = pooled_text.numpy()
    if hidden:
        assert sorted(weights) == ["text_proj.0.bias", "text_proj.0.weight", "text_proj.2.bias", "text_proj.2.weight"]
        inner = x @ weights["text_proj.0.weight"] + weights["text_proj.0.bias"]
        inner = 0.5 * inner * (1 + np.vectorize(math.erf)(inner / math.sqrt(2)))
        projected = inner @ weights["text_proj.2.weight"] + weights["text_proj.2.bias"]
    else:
        assert sorted(weights) == ["text_proj.bias", "text_proj.weight"]
        projected = x @ weights["text_proj.weight"] + weights["text_proj.bias"]
    expected = projected / np.linalg.norm(projected, axis=-1, keepdims=True)
    np.testing.assert_allclose(by_states.caption_embeds.numpy(), expected, rtol=1e-4, atol=1e-5)
    with paddle.no_grad():
        np.testing.assert_allclose(model.embed_text(**captions).numpy(), expected, rtol=1e-4, atol=1e-5)
        image = model.embed_image(**images).numpy()
    np.testing.assert_allclose(by_states.image_embeds.numpy(), image, rtol=1e-5, atol=1e-6)
    model.save_pretrained(str(tmp_path))
    loaded = OscarForImageTextRetrieval.from_pretrained(str(tmp_path))
    loaded.eval()
    assert loaded.config.contrastive_hidden_size == hidden
    with paddle.no_grad():
        np.testing.assert_array_equal(loaded.embed_text(**captions).numpy(), model.embed_text(**captions).numpy())
    with pytest.raises(ValueError, match="not both"):
        model(caption_inputs=captions, caption_states=pooled_text)


def test_match_loss_is_softmax_cross_entropy(processor):
    model = tiny_model()
    pairs = real_pairs(4)
    batch = processor([c for c, _, _ in pairs], [t for _, t, _ in pairs], [f for _, _, f in pairs])
    labels = np.array([1, 0, 1, 0])
    with paddle.no_grad():
        out = model(**batch, labels=paddle.to_tensor(labels))
    logits = out.logits.numpy().astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_probs[np.arange(4), labels].mean()
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(match_loss(out.logits, paddle.to_tensor(labels))), expected, rtol=1e-5)


def test_dropout_active_only_in_train_mode(processor):
    model = tiny_model(hidden_dropout_prob=0.5)
    pairs = real_pairs(2)
    batch = processor([c for c, _, _ in pairs], [t for _, t, _ in pairs], [f for _, _, f in pairs])
    np.testing.assert_array_equal(logits_of(model, batch), logits_of(model, batch))
    model.train()
    assert np.abs(logits_of(model, batch) - logits_of(model, batch)).max() > 0


# --------------------------------------------------------------------------- model errors


def test_img_feats_width_must_match_config():
    model = tiny_model()
    with pytest.raises(ValueError, match=f"width {IMG_DIM + 1} .*img_feature_dim={IMG_DIM}"):
        model(paddle.ones([2, 4], dtype="int64"), img_feats=paddle.zeros([2, 3, IMG_DIM + 1]))


def test_text_longer_than_max_position_embeddings():
    model = tiny_model()
    with pytest.raises(ValueError, match="81 tokens, more than max_position_embeddings=80"):
        model(paddle.ones([1, 81], dtype="int64"))


def test_attention_mask_must_cover_text_and_regions():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"attention_mask has shape \[2, 4\]; expected \[2, 7\]"):
        model(paddle.ones([2, 4], dtype="int64"), attention_mask=paddle.ones([2, 4]),
              img_feats=paddle.zeros([2, 3, IMG_DIM]))


def test_other_model_errors():
    model = tiny_model()
    ids = paddle.ones([2, 4], dtype="int64")
    with pytest.raises(ValueError, match="either img_feats or img_embeds"):
        model(ids, img_feats=paddle.zeros([2, 3, IMG_DIM]), img_embeds=paddle.zeros([2, 3, 32]))
    with pytest.raises(ValueError, match="image batch 3 differs from text batch 2"):
        model(ids, img_feats=paddle.zeros([3, 3, IMG_DIM]))
    no_heads = tiny_model(contrastive_dim=0)
    assert not hasattr(no_heads, "text_proj")
    with pytest.raises(ValueError, match="no contrastive heads"):
        no_heads.embed_text(ids)


# --------------------------------------------------------------------------- processor


def test_processor_pads_and_masks(processor, tokenizer):
    pairs = [
        ("a dog", ["dog", "grass"], np.ones((3, IMG_DIM), np.float32)),
        ("a red double decker bus on a street", ["bus"], np.full((5, IMG_DIM), 2, np.float32)),
        ("nothing to see", None, None),
    ]
    batch = processor([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs], return_tensors="np")
    encoded = [tokenizer.encode_oscar(c, t, 70) for c, t, _ in pairs]
    text_len = max(len(e["input_ids"]) for e in encoded)
    assert batch["input_ids"].shape == (3, text_len)
    assert batch["img_feats"].shape == (3, 5, IMG_DIM)
    assert batch["attention_mask"].shape == (3, text_len + 5)
    for i, (enc, (_, _, feats)) in enumerate(zip(encoded, pairs)):
        n, r = len(enc["input_ids"]), 0 if feats is None else len(feats)
        assert batch["input_ids"][i, :n].tolist() == enc["input_ids"]
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
        assert batch["token_type_ids"][i, :n].tolist() == enc["token_type_ids"]
        assert (batch["token_type_ids"][i, n:] == 0).all()
        expected_mask = [1] * n + [0] * (text_len - n) + [1] * r + [0] * (5 - r)
        assert batch["attention_mask"][i].tolist() == expected_mask
        if r:
            np.testing.assert_array_equal(batch["img_feats"][i, :r], feats)
        assert (batch["img_feats"][i, r:] == 0).all()
    tensors = processor.pad([processor.encode(*p) for p in pairs])
    assert all(isinstance(v, paddle.Tensor) for v in tensors.values())
    assert tensors["input_ids"].dtype == paddle.int64 and tensors["img_feats"].dtype == paddle.float32


def test_processor_truncates_regions_and_text(tokenizer):
    processor = OscarProcessor(tokenizer, max_seq_len=12, max_img_seq_len=4, img_feature_dim=IMG_DIM)
    feats = np.arange(9 * IMG_DIM, dtype=np.float32).reshape(9, IMG_DIM)
    example = processor.encode("a very long caption about many things on a table in a room", ["cat"], feats)
    np.testing.assert_array_equal(example["img_feats"], feats[:4])
    assert len(example["input_ids"]) == 12


def test_processor_errors(processor, tokenizer):
    with pytest.raises(ValueError, match=rf"\[num_regions, {IMG_DIM}\], got \[3, {IMG_DIM + 2}\]"):
        processor.encode("a cat", None, np.zeros((3, IMG_DIM + 2)))
    with pytest.raises(ValueError, match="empty batch"):
        processor.pad([])
    example = processor.encode("a cat on a mat", None, np.zeros((6, IMG_DIM)))
    with pytest.raises(ValueError, match="longer than the fixed padding"):
        processor.pad([example], pad_regions_to=4)
    with pytest.raises(ValueError, match="return_tensors"):
        processor.pad([example], return_tensors="pt")
    with pytest.raises(ValueError, match="differ in length"):
        processor(["a", "b"], [None])
    with pytest.raises(ValueError, match="max_img_seq_len"):
        OscarProcessor(tokenizer, max_img_seq_len=-1)
