"""What a conversion records in ``trained_heads``: the heads whose weights came from the source.

Official fine-tuned checkpoints, seed-port checkpoints and BERTs are covered beside their parity
tests (test_convert.py, test_convert_seed.py); here: official pre-training
checkpoints and vinvl-paddle model directories converted again.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from support.official_oscar import official_config, reference_errors, write_official_checkpoint
from vinvl import OscarConfig, OscarForImageTextRetrieval  # noqa: E402
from vinvl.oscar.convert import ConversionError, convert_checkpoint  # noqa: E402

torch = pytest.importorskip("torch")

TINY = dict(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=40, img_feature_dim=6)


def test_official_pretraining_checkpoint_records_no_trained_head(tmp_path, caplog):
    """An official pre-training checkpoint (BertImgForPreTraining) holds ``bert.*`` and ``cls.*``, no classifier."""
    src = str(tmp_path / "official")
    write_official_checkpoint(src, official_config("linear", True), legacy=False, extra_keys=True)
    weights = os.path.join(src, "pytorch_model.bin")
    state = torch.load(weights, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("classifier.")}, weights)

    with caplog.at_level(logging.WARNING, logger="vinvl.oscar.convert"):
        dst = convert_checkpoint(src, str(tmp_path / "converted"))
    assert OscarConfig.from_pretrained(dst).trained_heads == []
    fresh = [r.getMessage() for r in caplog.records if "freshly initialised" in r.getMessage()]
    assert fresh and "classifier" in fresh[0]


@pytest.mark.slow
def test_official_finetuned_then_converted_again_keeps_record_and_weights(tmp_path):
    src = str(tmp_path / "official")
    reference = write_official_checkpoint(src, official_config("mlp", True), legacy=False, extra_keys=False)
    first = convert_checkpoint(src, str(tmp_path / "first"))
    again = convert_checkpoint(first, str(tmp_path / "again"), config_overrides={"max_seq_length": 30})
    config = OscarConfig.from_pretrained(again)
    assert config.trained_heads == ["match"] and config.max_seq_length == 30
    before, after = load_file(os.path.join(first, "model.safetensors")), load_file(os.path.join(again, "model.safetensors"))
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert reference_errors(again, reference)[0] < 1e-4


def _save_own(path, trained_heads, contrastive_dim=8):
    model = OscarForImageTextRetrieval(OscarConfig(**TINY, contrastive_dim=contrastive_dim, trained_heads=trained_heads))
    model.save_pretrained(str(path))
    return str(path)


@pytest.mark.parametrize("recorded", [None, [], ["match"], ["contrastive", "match"]], ids=str)
def test_own_model_dir_keeps_its_record(tmp_path, recorded):
    src = _save_own(tmp_path / "mine", recorded)
    dst = convert_checkpoint(src, str(tmp_path / "copy"))
    assert OscarConfig.from_pretrained(dst).trained_heads == recorded


def test_own_model_dir_with_heads_added_by_an_override_records_them_untrained(tmp_path):
    """No contrastive heads in the source (contrastive_dim 0): added by ``--set contrastive_dim=8``, they are fresh."""
    src = _save_own(tmp_path / "mine", None, contrastive_dim=0)
    dst = convert_checkpoint(src, str(tmp_path / "copy"), config_overrides={"contrastive_dim": 8})
    config = OscarConfig.from_pretrained(dst)
    assert config.contrastive_dim == 8 and config.trained_heads == ["match"]


def test_own_model_dir_without_weights_is_an_error(tmp_path):
    config_only = tmp_path / "config_only"
    OscarConfig(**TINY).save_pretrained(str(config_only))
    with pytest.raises(ConversionError, match=rf"no weights in {config_only}: looked for model\.safetensors"):
        convert_checkpoint(str(config_only), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_trained_heads_cannot_be_overridden(tmp_path):
    src = _save_own(tmp_path / "mine", [])
    with pytest.raises(ConversionError, match="trained_heads cannot be set"):
        convert_checkpoint(src, str(tmp_path / "out"), config_overrides={"trained_heads": ["match", "contrastive"]})
    assert not os.path.exists(tmp_path / "out")
