"""Checkpoints of the community Paddle port cattidea/VinVL-Paddle ("the seed"), converted and checked
against the PyTorch reference of the official layout in tests/support/official_oscar.py.

The seed's files are rebuilt here from the reference's known weights with a mapping written in
this test from the seed's own code, not from vinvl.oscar.convert:

- fine-tuned ``checkpoint-N/``: ``paddle.save({'epoch', 'model': state_dict})`` of a Paddle model,
  so every Linear weight is stored ``[in, out]``; ``config.json`` from the seed's BertConfig
  (``img_feat_dim`` / ``img_feat_type``, ...); tokenizer files from PaddleNLP's BertTokenizer.
- pre-trained ``paddle_model.bin``: the state dict itself, as the seed's
  ``tools/convert_model_params.py`` writes it from an official ``pytorch_model.bin``: it
  transposes exactly ``classifier.weight``, ``bert.img_embedding.weight``,
  ``bert.pooler.dense.weight`` and six Linear weights of encoder layers 0-23, and copies every
  other tensor as PyTorch stored it.

The seed's model computes what the official one does, except that its word embedding is a Paddle
``nn.Embedding(..., padding_idx=0)``, which outputs zeros for id 0; that is checked on its own.
"""
from __future__ import annotations

import json
import os

import pytest

from support.official_oscar import (
    IMG_DIM,
    REL_TOL,
    TINY_BERT,
    max_rel_err,
    official_config,
    random_oscar_inputs,
    reference_errors,
    write_official_checkpoint,
)
import paddle  # noqa: E402  (after vinvl, imported by support.official_oscar)
from vinvl import OscarConfig, OscarForImageTextRetrieval, OscarTokenizer  # noqa: E402
from vinvl.oscar.convert import ConversionError, convert_checkpoint  # noqa: E402

torch = pytest.importorskip("torch")

SEED_TOOL_LAYER_WEIGHTS = (
    "output.dense",
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
)
# The transpose list of the seed's tools/convert_model_params.py.
SEED_TOOL_TRANSPOSED = {"classifier.weight", "bert.img_embedding.weight", "bert.pooler.dense.weight"} | {
    f"bert.encoder.layer.{i}.{name}.weight" for i in range(24) for name in SEED_TOOL_LAYER_WEIGHTS
}


def write_tokenizer_files(path):
    """A tiny vocabulary saved by PaddleNLP's BertTokenizer, as the seed's training script saves its tokenizer."""
    from paddlenlp.transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "on", "the", "grass", "##s", "red", "car"]
    words += [f"w{i}" for i in range(TINY_BERT["vocab_size"] - len(words))]
    vocab = os.path.join(str(path), "source_vocab.txt")
    with open(vocab, "w") as handle:
        handle.write("\n".join(words) + "\n")
    tokenizer = BertTokenizer(vocab, do_lower_case=True)
    tokenizer.save_pretrained(str(path))
    os.remove(vocab)
    return tokenizer


def seed_config_json(official: dict) -> dict:
    """The config.json the seed's BertConfig writes for a model built from ``official``.

    The seed copies the pre-trained config, then sets its own ``img_feat_dim`` / ``img_feat_type``
    (its model reads those, not the official names) and ``num_labels`` / ``loss_type``.
    """
    config = dict(official, output_attentions=False, output_hidden_states=False)
    for name in ("img_feature_dim", "img_feature_type"):
        config.pop(name, None)
    config.update(img_feat_dim=official["img_feature_dim"], img_feat_type="frcnn", num_labels=2, loss_type="sfmx")
    return config


def write_seed_finetuned(path, reference, official: dict, epoch=29):
    """``checkpoint-{epoch+1}/`` as the seed's train_retrieval.py saves it; returns the directory."""
    linear = {f"{name}.weight" for name, module in reference.named_modules() if isinstance(module, torch.nn.Linear)}
    state = {
        name: paddle.to_tensor((param.detach().t() if name in linear else param.detach()).numpy())
        for name, param in reference.named_parameters()
    }
    folder = os.path.join(str(path), f"checkpoint-{epoch + 1}")
    os.makedirs(folder)
    paddle.save({"epoch": epoch, "model": state}, os.path.join(folder, "paddle_model.bin"))
    with open(os.path.join(folder, "config.json"), "w") as handle:
        handle.write(json.dumps(seed_config_json(official), indent=2, sort_keys=True) + "\n")
    write_tokenizer_files(folder)
    return folder


def write_seed_pretrained(path, official_dir, official: dict):
    """The seed's pre-trained folder: its tool's ``paddle_model.bin`` from the official weights, and the config."""
    torch_state = torch.load(os.path.join(official_dir, "pytorch_model.bin"), weights_only=True)
    state = {
        name: paddle.to_tensor((value.transpose(1, 0) if name in SEED_TOOL_TRANSPOSED else value).cpu().numpy())
        for name, value in torch_state.items()
    }
    folder = str(path)
    os.makedirs(folder)
    paddle.save(state, os.path.join(folder, "paddle_model.bin"))
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(official, handle)
    return folder


def seed_checkpoint(tmp_path, classifier="linear", use_img_layernorm=True):
    """(reference, fine-tuned seed checkpoint dir) for one head variant."""
    official = official_config(classifier, use_img_layernorm)
    reference = write_official_checkpoint(str(tmp_path / "official"), official, legacy=False, extra_keys=False)
    return reference, write_seed_finetuned(tmp_path / "seed", reference, official)


def update_config(src, **changes):
    """Change fields of ``src``/config.json in place."""
    path = os.path.join(src, "config.json")
    with open(path) as handle:
        config = json.load(handle)
    config.update(changes)
    with open(path, "w") as handle:
        json.dump(config, handle)


def drop_official_config_keys(config: dict, variant: str) -> dict:
    """Remove what a config may leave out: the seed (like the official code) then uses its defaults."""
    config = dict(config)
    if variant == "defaults":
        for name in ("classifier", "cls_hidden_scale", "use_img_layernorm", "img_layer_norm_eps"):
            config.pop(name)
    elif variant == "mlp-default-scale":
        config.pop("cls_hidden_scale")
    return config


# --------------------------------------------------------------------------- fine-tuned checkpoint-N


@pytest.mark.parametrize(
    "classifier,use_img_layernorm,variant",
    [
        ("linear", True, "explicit"),
        ("linear", False, "explicit"),
        ("mlp", True, "explicit"),
        ("mlp", False, "explicit"),
        ("mlp", True, "mlp-default-scale"),  # no cls_hidden_scale: the seed widens by 2
        ("linear", False, "defaults"),  # no classifier / use_img_layernorm: linear head, no image LayerNorm
    ],
)
@pytest.mark.slow
def test_seed_finetuned_checkpoint_parity(tmp_path, classifier, use_img_layernorm, variant):
    official = drop_official_config_keys(official_config(classifier, use_img_layernorm), variant)
    reference = write_official_checkpoint(str(tmp_path / "official"), official, legacy=False, extra_keys=False)
    src = write_seed_finetuned(tmp_path / "seed", reference, official)
    assert "img_feature_dim" not in json.load(open(os.path.join(src, "config.json")))  # only the seed's names

    dst = convert_checkpoint(src, str(tmp_path / "converted"))
    config = OscarConfig.from_pretrained(dst)
    assert config.classifier == classifier and config.use_img_layernorm is use_img_layernorm
    assert config.img_feature_dim == IMG_DIM
    assert config.cls_hidden_scale == (3 if variant == "explicit" else 2)
    assert config.trained_heads == ["match"]  # the seed fine-tuned its classifier; contrastive heads are fresh

    logits_err, sequence_err = reference_errors(dst, reference, attended_only=True)
    print(f"seed fine-tuned {classifier} ln={use_img_layernorm} {variant}: logits {logits_err:.2e} "
          f"seq {sequence_err:.2e}")
    assert logits_err < REL_TOL and sequence_err < REL_TOL


def test_seed_finetuned_tokenizer_files_carried_over(tmp_path):
    _, src = seed_checkpoint(tmp_path)
    dst = convert_checkpoint(src, str(tmp_path / "converted"))
    with open(os.path.join(src, "vocab.txt")) as a, open(os.path.join(dst, "vocab.txt")) as b:
        assert a.read().split() == b.read().split()
    from paddlenlp.transformers import BertTokenizer

    seed_tokenizer = BertTokenizer.from_pretrained(src)
    ours = OscarTokenizer.from_pretrained(dst)
    for text in ("A red car on the grass", "Dogs on the grass", "a zebra"):
        assert ours.encode_oscar(text, None, max_seq_len=32)["input_ids"] == seed_tokenizer(text)["input_ids"]


@pytest.mark.slow
def test_seed_feat_dim_name_wins_over_a_stale_official_one(tmp_path):
    """A seed config keeps the pre-trained ``img_feature_dim`` beside its own ``img_feat_dim``; the seed's model
    reads ``img_feat_dim``, so a conversion using the other name would not fit the weights."""
    reference, src = seed_checkpoint(tmp_path)
    update_config(src, img_feature_dim=2054, img_feature_type="faster_r-cnn")
    dst = convert_checkpoint(src, str(tmp_path / "converted"))
    assert OscarConfig.from_pretrained(dst).img_feature_dim == IMG_DIM
    assert reference_errors(dst, reference)[0] < REL_TOL


@pytest.mark.slow
def test_seed_padding_id_embeds_to_zero_as_in_paddle(tmp_path):
    """With id 0 at attended positions the seed's model differs from the official one: Paddle's
    ``nn.Embedding(padding_idx=0)`` looks id 0 up as zeros. The converted model computes what the seed does."""
    lookup = paddle.nn.Embedding(4, 3, padding_idx=0)
    lookup.weight.set_value(paddle.ones([4, 3]))
    assert not lookup(paddle.to_tensor([0])).numpy().any()  # the premise: Paddle outputs zeros for padding_idx

    reference, src = seed_checkpoint(tmp_path)
    dst = convert_checkpoint(src, str(tmp_path / "converted"))
    official_dst = convert_checkpoint(str(tmp_path / "official"), str(tmp_path / "converted_official"))

    input_ids, token_type_ids, mask, img_feats = random_oscar_inputs()
    input_ids[:, 3] = 0  # an attended [PAD] id in every row
    assert mask[:, 3].all()
    inputs = (input_ids, token_type_ids, mask, img_feats)
    # The official conversion matches the untouched reference and therefore not the seed.
    assert reference_errors(official_dst, reference, inputs)[0] < REL_TOL
    seed_vs_official = reference_errors(dst, reference, inputs)
    assert seed_vs_official[0] > 10 * REL_TOL and seed_vs_official[1] > 100 * REL_TOL
    with torch.no_grad():  # the seed's lookup: the same weights, id 0 embedded as zeros
        reference.bert.embeddings.word_embeddings.weight[0] = 0
    logits_err, sequence_err = reference_errors(dst, reference, inputs)
    print(f"seed fine-tuned, attended id 0: logits {logits_err:.2e} seq {sequence_err:.2e}")
    assert logits_err < REL_TOL and sequence_err < REL_TOL


# --------------------------------------------------------------------------- pre-trained paddle_model.bin


@pytest.mark.parametrize("use_img_layernorm", [True, False], ids=["img-ln", "no-img-ln"])
@pytest.mark.parametrize("classifier", ["linear", "mlp"])
@pytest.mark.slow
def test_seed_tool_output_with_classifier_parity(tmp_path, classifier, use_img_layernorm):
    """The seed's tool run on an official fine-tuned checkpoint. It transposes ``classifier.weight`` but not an
    mlp's ``classifier.0/2.weight``, which stay in PyTorch layout and are converted as such."""
    official = official_config(classifier, use_img_layernorm)
    official_dir = str(tmp_path / "official")
    reference = write_official_checkpoint(official_dir, official, legacy=False, extra_keys=False)
    src = write_seed_pretrained(tmp_path / "seed_pretrained", official_dir, official)

    dst = convert_checkpoint(src, str(tmp_path / "converted"))
    assert OscarConfig.from_pretrained(dst).trained_heads == ["match"]
    logits_err, sequence_err = reference_errors(dst, reference, attended_only=True)
    print(f"seed pre-trained form {classifier} ln={use_img_layernorm}: logits {logits_err:.2e} "
          f"seq {sequence_err:.2e}")
    assert logits_err < REL_TOL and sequence_err < REL_TOL


@pytest.mark.parametrize("use_img_layernorm", [True, False], ids=["img-ln", "no-img-ln"])
def test_seed_pretrained_from_pretraining_checkpoint(tmp_path, use_img_layernorm):
    """An official pre-training checkpoint holds ``cls.*`` heads and no ``classifier``: through the seed's tool
    the encoder converts exactly, the pre-training heads are dropped and no head is recorded as trained."""
    official = official_config("linear", use_img_layernorm)
    official_dir = str(tmp_path / "official")
    reference = write_official_checkpoint(official_dir, official, legacy=False, extra_keys=True)
    weights = os.path.join(official_dir, "pytorch_model.bin")
    state = torch.load(weights, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("classifier.")}, weights)
    src = write_seed_pretrained(tmp_path / "seed_pretrained", official_dir, official)

    dst = convert_checkpoint(src, str(tmp_path / "converted"))
    assert OscarConfig.from_pretrained(dst).trained_heads == []

    input_ids, token_type_ids, mask, img_feats = random_oscar_inputs()
    model = OscarForImageTextRetrieval.from_pretrained(dst)
    model.eval()
    with torch.no_grad():
        ref_sequence, ref_pooled = reference.bert(
            *(torch.from_numpy(a) for a in (input_ids, token_type_ids, mask, img_feats))
        )
    with paddle.no_grad():
        out = model.bert(*(paddle.to_tensor(a) for a in (input_ids, token_type_ids, mask)),
                         img_feats=paddle.to_tensor(img_feats))
    attended = mask == 1  # [PAD] positions differ by design (see the padding-id test)
    sequence_err = max_rel_err(out.last_hidden_state.numpy()[attended], ref_sequence.numpy()[attended])
    pooled_err = max_rel_err(out.pooler_output.numpy(), ref_pooled.numpy())
    print(f"seed pre-trained (pre-training ckpt) ln={use_img_layernorm}: seq {sequence_err:.2e} pooled {pooled_err:.2e}")
    assert sequence_err < REL_TOL and pooled_err < REL_TOL


# --------------------------------------------------------------------------- bad seed files


def test_seed_file_of_another_shape_is_named(tmp_path):
    src = tmp_path / "seed"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(seed_config_json(official_config("linear", True))))
    paddle.save({"epoch": 3, "optimizer": {"lr": 0.1}}, str(src / "paddle_model.bin"))
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match=r"paddle_model\.bin holds neither .*VinVL-Paddle"):
        convert_checkpoint(str(src), dst)
    assert not os.path.exists(dst)


def test_seed_classifier_half_present_is_an_error(tmp_path):
    _, src = seed_checkpoint(tmp_path, classifier="mlp")
    path = os.path.join(src, "paddle_model.bin")
    checkpoint = paddle.load(path)
    del checkpoint["model"]["classifier.2.weight"]
    paddle.save(checkpoint, path)
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match=r"match head is incomplete.*classifier\.2\.weight"):
        convert_checkpoint(src, dst)
    assert not os.path.exists(dst)


def test_seed_activation_we_do_not_have_is_named(tmp_path):
    """The seed's BertIntermediate also offers ``swish``; this package's Oscar does not, and says so."""
    _, src = seed_checkpoint(tmp_path)
    update_config(src, hidden_act="swish")
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match=r"config\.json: .*hidden_act 'swish'"):
        convert_checkpoint(src, dst)
    assert not os.path.exists(dst)
