"""Resuming in the same process after other models were built: optimizer state found by structured names."""
import os

import numpy as np
import paddle
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults before paddle)
from vinvl.data import write_synthetic_corpus
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.training.optimizer_state import from_structured_names, to_structured_names
from vinvl.commands.train import main as train_main

from support.paths import TINY_MODEL as TINY


def _flags(corpus_dir, output_dir, **overrides):
    flags = {
        "model_name_or_path": TINY, "data_dir": corpus_dir, "output_dir": output_dir, "do_train": "true",
        "per_device_train_batch_size": "8", "learning_rate": "1e-3", "max_steps": "8", "save_strategy": "steps",
        "save_steps": "4", "evaluation_strategy": "no", "seed": "3", "disable_tqdm": "true", "report_to": "none",
        "logging_steps": "100", "overwrite_output_dir": "true",
    }
    flags.update({k: str(v) for k, v in overrides.items()})
    return [token for key, value in flags.items() for token in (f"--{key}", value)]


def _weights(model_dir):
    from safetensors.numpy import load_file

    return load_file(os.path.join(model_dir, "model.safetensors"))


@pytest.mark.parametrize("objective, train_only", [("itm+itc", "all"), ("distill", "heads")])
def test_in_process_resume_after_building_another_model_matches_the_uninterrupted_run(
    tmp_path, objective, train_only
):
    corpus = str(tmp_path / "corpus")
    write_synthetic_corpus(corpus, {"train": 24, "minival": 4, "val": 0, "test": 4}, seed=4)
    options = dict(objective=objective, train_only=train_only)
    straight = str(tmp_path / "straight")
    train_main(_flags(corpus, straight, **options))
    checkpoint = os.path.join(straight, "checkpoint-4")
    state = paddle.load(os.path.join(checkpoint, "optimizer.pdopt"))
    assert any(key.startswith("bert.encoder.layer.0.") or key.startswith("text_proj.") for key in state)

    load_retrieval_model(TINY)  # another model: every parameter name the process hands out shifts
    resumed = str(tmp_path / "resumed")
    train_main(_flags(corpus, resumed, resume_from_checkpoint=checkpoint, **options))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # And the resumed run did continue from step 4, not start over.
    first = _weights(checkpoint)
    assert any(not np.array_equal(first[key], b[key]) for key in first)


def test_structured_names_round_trip_onto_a_model_built_later():
    first, _ = load_retrieval_model(TINY)
    optimizer = paddle.optimizer.AdamW(parameters=first.parameters())
    first.classifier(paddle.ones([2, first.config.hidden_size])).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    structured = to_structured_names(state, first)
    assert "classifier.weight/moment1_0" in structured
    assert all("/" in key for key in structured if key != "LR_Scheduler")

    second, _ = load_retrieval_model(TINY)  # same structure, other auto-generated names
    assert second.classifier.weight.name != first.classifier.weight.name
    renamed = from_structured_names(structured, second)
    assert renamed.keys() - {"LR_Scheduler"} == {
        key.replace(first.classifier.weight.name, second.classifier.weight.name).replace(
            first.classifier.bias.name, second.classifier.bias.name
        )
        for key in state
        if key != "LR_Scheduler"
    }
    with pytest.raises(ValueError, match="does not have"):
        from_structured_names({"no_such.weight/moment1_0": 0}, second)
