"""The shipped configs and recipes by name on the command line, from an empty folder of the user's
(nothing there, nothing of the source tree needed): `vinvl train RECIPE`, `--model_name_or_path NAME`,
`vinvl extract --detector NAME`, and one-line refusals of names that are not shipped."""
import json
import os
import shutil

import pytest

from vinvl.data import write_synthetic_corpus

from support.commands import assert_user_error, run, vinvl_cmd
from support.paths import PHOTO_DIR

PHOTO = "COCO_val2014_000000317441.jpg"
QUICK = ["--max_steps", "1", "--evaluation_strategy", "no", "--save_strategy", "no", "--report_to", "none",
         "--per_device_train_batch_size", "2", "--logging_steps", "1"]


@pytest.mark.slow
def test_train_takes_a_shipped_recipe_and_a_shipped_config_by_name(tmp_path):
    write_synthetic_corpus(str(tmp_path / "corpus"), {"train": 8, "minival": 4, "val": 0, "test": 0}, seed=0)
    done = run(vinvl_cmd("train", "tiny/train_synthetic", "--data_dir", "corpus", "--output_dir", "by_recipe", *QUICK),
               tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "by_recipe" / "config.json") as f:
        assert json.load(f)["hidden_size"] == 64  # the tiny config the recipe names
    done = run(vinvl_cmd("train", "--model_name_or_path", "tiny", "--data_dir", "corpus", "--output_dir", "by_name",
                         "--do_train", *QUICK), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "by_name" / "model.safetensors").is_file()


def test_train_refuses_names_that_are_no_recipe_in_one_line(tmp_path):
    assert_user_error(run(vinvl_cmd("train", "vinvl-base", "--output_dir", "x"), tmp_path), "vinvl train",
                      "RECIPE vinvl-base: a shipped config, not a recipe", "vinvl-base/train_coco_ir")
    assert_user_error(run(vinvl_cmd("train", "vinvl-base/train_cocoir"), tmp_path), "vinvl train",
                      "RECIPE vinvl-base/train_cocoir: no such file or directory, nor the name of a shipped recipe")
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_extract_takes_the_shipped_tiny_detector_by_name(tmp_path):
    (tmp_path / "photos").mkdir()
    shutil.copy(os.path.join(PHOTO_DIR, PHOTO), tmp_path / "photos" / PHOTO)
    done = run(vinvl_cmd("extract", "photos", "out", "--detector", "vinvl-detector-tiny", "--no_progress"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "extracted 1 of 1 images into out" in done.stdout
    assert "vinvl-detector-tiny has a config but no weights" in done.stderr  # the random-weights notice
    with open(tmp_path / "out" / "predictions.tsv") as f:
        assert f.readline().startswith(os.path.splitext(PHOTO)[0])
    assert_user_error(run(vinvl_cmd("extract", "photos", "out2", "--detector", "vinvl-detector-huge"), tmp_path),
                      "vinvl extract", "--detector vinvl-detector-huge: no such file or directory", "vinvl-detector-tiny")
    assert not (tmp_path / "out2").exists()
