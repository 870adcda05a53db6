"""vinvl.assets: what ships with the package, found through the package's resources, and the one
resolver from a shipped config's or recipe's name to its packaged path."""
import json
import os

import pytest

import vinvl
from vinvl import assets
from vinvl.assets import CONFIGS_DIR, DEMO_CAPTIONS_PATH, DEMO_PHOTOS_DIR, NotShippedError, resolve_config
from vinvl.errors import UserError

from support.paths import REPO

PACKAGE = os.path.dirname(os.path.abspath(vinvl.__file__))
CONFIGS = {"tiny", "vinvl-base", "vinvl-large", "vinvl-detector-tiny", "vinvl-detector-x152c4"}


def test_the_shipped_files_are_inside_the_package():
    for path in (CONFIGS_DIR, DEMO_PHOTOS_DIR, DEMO_CAPTIONS_PATH, assets.LABELMAP_PATH, assets.VOCAB_PATH):
        assert os.path.realpath(path).startswith(os.path.realpath(PACKAGE) + os.sep), path
        assert os.path.exists(path), path
    photos = sorted(name for name in os.listdir(DEMO_PHOTOS_DIR) if name.endswith(".jpg"))
    assert len(photos) == 10 and os.path.isfile(os.path.join(DEMO_PHOTOS_DIR, "README.md"))
    with open(DEMO_CAPTIONS_PATH, encoding="utf-8") as f:
        assert sum(line.rstrip().endswith(".jpg") for line in f) == 10  # an image-path line per photo


def test_the_checkouts_model_configs_is_the_packaged_copy():
    # One copy: the top-level folder users of a checkout know points into the package.
    assert os.path.realpath(os.path.join(REPO, "model_configs")) == os.path.realpath(CONFIGS_DIR)


def test_every_shipped_config_and_recipe_resolves_by_name(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an empty folder: nothing there to find by a relative path
    assert set(assets.shipped_configs()) == CONFIGS
    assert set(assets.shipped_configs("vinvl-detector")) == {"vinvl-detector-tiny", "vinvl-detector-x152c4"}
    for name in CONFIGS:
        path = resolve_config(name)
        assert path == os.path.join(CONFIGS_DIR, name)
        with open(os.path.join(path, "config.json")) as f:
            assert "model_type" in json.load(f)
    recipes = assets.shipped_recipes()
    assert {"tiny/train_synthetic", "vinvl-base/train_coco_ir", "vinvl-large/train_coco_ir"} <= set(recipes)
    for recipe in recipes:
        path = resolve_config(recipe, kind="recipe")
        assert path == os.path.join(CONFIGS_DIR, recipe + ".json") and os.path.isfile(path)


def test_a_local_path_wins_over_a_shipped_name(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vinvl-detector-x152c4").mkdir()  # say, a converted detector with weights
    assert resolve_config("vinvl-detector-x152c4") == "vinvl-detector-x152c4"
    recipe = tmp_path / "mine.json"
    recipe.write_text("{}")
    assert resolve_config(str(recipe), kind="recipe") == str(recipe)


def test_an_unknown_name_is_refused_in_one_line_naming_the_option_and_the_shipped_names(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotShippedError) as error:
        resolve_config("vinvl-huge", "--model_name_or_path", kind="config")
    message = str(error.value)
    assert isinstance(error.value, UserError) and "\n" not in message
    assert message.startswith("--model_name_or_path vinvl-huge: no such file or directory")
    assert all(name in message for name in CONFIGS) and "downloads nothing" in message
    with pytest.raises(NotShippedError, match="RECIPE vinvl-base: a shipped config, not a recipe; its recipes: "
                                               "vinvl-base/fit_first_stage, "):
        resolve_config("vinvl-base", "RECIPE", kind="recipe")
    with pytest.raises(NotShippedError, match="tiny/train_synthetic"):
        resolve_config("tiny/nope", "RECIPE", kind="recipe")
    with pytest.raises(NotShippedError):
        resolve_config("tiny/train_synthetic", kind="config")  # a recipe where a config directory is wanted
