"""The shipped Oscar configs by name, as PaddleNLP's from_pretrained takes built-in names: configs and
the tokenizer load offline; weights, which never ship, are refused in one line without any download."""
import json
import os
import socket

import pytest

from vinvl.assets import CONFIGS_DIR, NotShippedError
from vinvl.oscar import OscarConfig, OscarForImageTextRetrieval, OscarTokenizer
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.oscar.names import WeightsNotShippedError


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty working folder and no network: any connection attempt fails the test."""
    monkeypatch.chdir(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", ["tiny", "vinvl-base", "vinvl-large"])
def test_configs_load_by_name(offline, name):
    with open(os.path.join(CONFIGS_DIR, name, "config.json")) as f:
        shipped = json.load(f)
    config = OscarConfig.from_pretrained(name)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "img_feature_dim"):
        assert getattr(config, key) == shipped[key], key


def test_the_tokenizer_loads_by_name(offline):
    tokenizer = OscarTokenizer.from_pretrained("vinvl-base")
    assert tokenizer.tokenize("A Man Riding") == ["a", "man", "riding"]
    assert not os.listdir(".")  # nothing written where the user stands


def test_a_config_only_name_builds_an_untrained_model(offline):
    model, processor = load_retrieval_model("tiny")
    assert model.config.hidden_size == 64 and model.config.trained_heads == []


def test_weights_by_name_are_refused_in_one_line(offline):
    with pytest.raises(WeightsNotShippedError) as error:
        OscarForImageTextRetrieval.from_pretrained("vinvl-base")
    message = str(error.value)
    assert "\n" not in message and "shipped without weights" in message and "vinvl convert" in message


@pytest.mark.parametrize("load", [OscarConfig.from_pretrained, OscarForImageTextRetrieval.from_pretrained,
                                  OscarTokenizer.from_pretrained])
def test_a_name_that_is_not_shipped_is_refused_without_a_download(offline, load):
    with pytest.raises(NotShippedError, match="bert-base-uncased: no such file or directory, nor the name of a shipped config"):
        load("bert-base-uncased")
