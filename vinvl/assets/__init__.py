"""Files the package ships and reads at run time, in one place, found through the package's resources
(``importlib.resources``), so they are there wherever pip installed vinvl-paddle.

- ``vinvl_labelmap.json``: the VinVL Visual Genome vocabulary (1594 classes, 524 attributes) the
  detector emits as object tags and the synthetic corpus draws its scenes from.
- ``vocab.txt``: the bert-base-uncased WordPiece vocabulary (the Oscar tokenizer's default).
- ``model_configs/``: the shipped configs, one directory per name, none with weights: the Oscar
  models ``tiny``, ``vinvl-base`` and ``vinvl-large`` (``config.json``, plus their training and
  head-fitting recipes, ``<model>/<recipe>.json``) and the detectors ``vinvl-detector-tiny`` and
  ``vinvl-detector-x152c4``. A source checkout's top-level ``model_configs`` links here, so this
  is the only copy.
- ``coco_minitest/``: ten COCO val2014 photos, their captions (``captions.txt``) and their
  attribution (``README.md``): what ``vinvl demo`` runs the tiny detector on, and the tests' photos.

:func:`resolve_config` is the one place where the name of a shipped config or recipe becomes its
packaged path; every argument that takes a config directory or a recipe file goes through it.
"""
from __future__ import annotations

import importlib.resources
import json
import os
from typing import List, Optional

from ..errors import UserError

__all__ = [
    "ASSETS_DIR",
    "CONFIG_FILE",
    "CONFIGS_DIR",
    "DEMO_CAPTIONS_PATH",
    "DEMO_PHOTOS_DIR",
    "LABELMAP_PATH",
    "VOCAB_PATH",
    "NotShippedError",
    "resolve_config",
    "shipped_configs",
    "shipped_recipes",
]

# pip installs packages as folders, so the package's resources are plain files with a path.
ASSETS_DIR = str(importlib.resources.files(__name__))
LABELMAP_PATH = os.path.join(ASSETS_DIR, "vinvl_labelmap.json")
VOCAB_PATH = os.path.join(ASSETS_DIR, "vocab.txt")
CONFIGS_DIR = os.path.join(ASSETS_DIR, "model_configs")
DEMO_PHOTOS_DIR = os.path.join(ASSETS_DIR, "coco_minitest")
DEMO_CAPTIONS_PATH = os.path.join(DEMO_PHOTOS_DIR, "captions.txt")

CONFIG_FILE = "config.json"  # what makes a directory of model_configs/ a config


class NotShippedError(UserError, FileNotFoundError):
    """A config or recipe named that is neither a local path nor shipped with the package."""


def shipped_configs(model_type: Optional[str] = None) -> List[str]:
    """The names of the shipped configs, sorted; with ``model_type`` (``"oscar"``, ``"vinvl-detector"``)
    only those whose ``config.json`` declares it."""
    names = []
    for name in sorted(os.listdir(CONFIGS_DIR)):
        config_file = os.path.join(CONFIGS_DIR, name, CONFIG_FILE)
        if not os.path.isfile(config_file):
            continue
        if model_type is not None:
            with open(config_file, encoding="utf-8") as f:
                if json.load(f).get("model_type") != model_type:
                    continue
        names.append(name)
    return names


def shipped_recipes() -> List[str]:
    """The names of the shipped training recipes, ``<model>/<recipe>`` (``vinvl-base/train_coco_ir``), sorted."""
    return [
        f"{name}/{os.path.splitext(file)[0]}"
        for name in shipped_configs()
        for file in sorted(os.listdir(os.path.join(CONFIGS_DIR, name)))
        if file.endswith(".json") and file != CONFIG_FILE
    ]


def resolve_config(name_or_path: str, argument: Optional[str] = None, kind: Optional[str] = None) -> str:
    """The path of a config directory or recipe file given by path or by name.

    A path that exists is returned as given: a local folder wins over a shipped config of the
    same name, so a converted ``vinvl-detector-x152c4/`` is read rather than the weightless
    shipped one. Otherwise a shipped config's name (``vinvl-base``, ``vinvl-detector-tiny``)
    gives its packaged directory and a recipe's name (``vinvl-base/train_coco_ir``) its packaged
    JSON file; ``kind`` (``"config"`` or ``"recipe"``) takes only names of that kind. Anything
    else raises :class:`NotShippedError` naming it (after ``argument``, the option it came from,
    such as ``--detector``, or a keyword ending in ``=``, such as ``detector_path=``) and the
    shipped names: nothing is ever downloaded.
    """
    if kind not in (None, "config", "recipe"):
        raise ValueError(f"kind must be None, 'config' or 'recipe', got {kind!r}")
    name_or_path = os.fspath(name_or_path)
    if os.path.exists(name_or_path):
        return name_or_path
    configs, recipes = shipped_configs(), shipped_recipes()
    if name_or_path in configs and kind != "recipe":
        return os.path.join(CONFIGS_DIR, name_or_path)
    if name_or_path in recipes and kind != "config":
        return os.path.join(CONFIGS_DIR, name_or_path + ".json")
    given = name_or_path
    if argument:  # an option (``--detector NAME``) or a keyword argument (``detector_path='NAME'``)
        given = f"{argument}{name_or_path!r}" if argument.endswith("=") else f"{argument} {name_or_path}"
    if kind == "recipe" and name_or_path in configs:
        own = [recipe for recipe in recipes if recipe.startswith(name_or_path + "/")]
        raise NotShippedError(f"{given}: a shipped config, not a recipe; its recipes: {', '.join(own) or 'none'}")
    if kind is None:
        kind = "recipe" if "/" in name_or_path else "config"
    names = recipes if kind == "recipe" else configs
    raise NotShippedError(
        f"{given}: no such file or directory, nor the name of a shipped {kind} ({', '.join(names)}); "
        "vinvl-paddle downloads nothing"
    )
