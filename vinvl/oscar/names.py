"""The shipped Oscar configs by name, as PaddleNLP's model families offer theirs.

``OscarConfig.from_pretrained("vinvl-base")`` and ``OscarTokenizer.from_pretrained("vinvl-base")``
work offline, from the files shipped in :mod:`vinvl.assets`: the names are the classes'
``pretrained_init_configuration`` keys, PaddleNLP's convention for built-in models. No weights
ship, so ``OscarForImageTextRetrieval.from_pretrained("vinvl-base")`` says so in one line instead of
trying a download; anything that is neither a local path nor a shipped name is refused the same
way. A local path wins over a shipped name (see :func:`vinvl.assets.resolve_config`).
"""
from __future__ import annotations

import json
import os
from typing import Dict

from ..assets import CONFIG_FILE, resolve_config, shipped_configs
from ..errors import UserError

__all__ = ["SHIPPED_CONFIGS", "WeightsNotShippedError", "pretrained_source", "refuse_weightless_name"]

MODEL_TYPE = "oscar"


def _read_shipped_configs() -> Dict[str, dict]:
    configs = {}
    for name in shipped_configs(MODEL_TYPE):
        with open(os.path.join(resolve_config(name, kind="config"), CONFIG_FILE), encoding="utf-8") as f:
            configs[name] = json.load(f)
    return configs


# name -> config.json contents, for every shipped Oscar config (tiny, vinvl-base, vinvl-large)
SHIPPED_CONFIGS = _read_shipped_configs()


class WeightsNotShippedError(UserError, OSError):
    """Weights asked for by the name of a shipped config, which ships without any."""


def pretrained_source(name_or_path) -> str:
    """What to hand PaddleNLP's ``from_pretrained``: a shipped name as it is (PaddleNLP reads it from
    ``pretrained_init_configuration``), a local path made absolute (so a folder named like a shipped
    config is read as that folder); anything else raises :class:`vinvl.assets.NotShippedError`."""
    name_or_path = os.fspath(name_or_path)
    if name_or_path in SHIPPED_CONFIGS and not os.path.exists(name_or_path):
        return name_or_path
    return os.path.abspath(resolve_config(name_or_path, kind="config"))


def refuse_weightless_name(name_or_path) -> None:
    """Raise :class:`WeightsNotShippedError` when weights are asked for by a shipped config's name."""
    name = os.fspath(name_or_path)
    if name in SHIPPED_CONFIGS and not os.path.exists(name):
        raise WeightsNotShippedError(
            f"{name} is a config shipped without weights, and vinvl-paddle downloads none: convert the official "
            f"checkpoint (vinvl convert) and load its directory, or build an untrained model with "
            f"OscarForImageTextRetrieval(OscarConfig.from_pretrained({name!r}))"
        )
