"""Optimizer state keyed by structured parameter names, so a checkpoint resumes in any process.

Paddle keys an optimizer's state by the parameters' auto-generated names (``linear_12.w_0``
plus the accumulator, ``linear_12.w_0_moment1_0``), which count the layers the process built
before: the same model built after another one gets other names, and a checkpoint written by
one process no longer matches the parameters of the next model built in it. As paddlenlp's
unified checkpoints do, the state is saved under ``<structured name>/<accumulator>``
(``bert.encoder.layer.0.attention.self.query.weight/moment1_0``) and renamed back to the
current parameters' names on load. State keyed the old way loads unchanged.
"""
from __future__ import annotations

from typing import Any, Dict

import paddle.nn as nn

__all__ = ["to_structured_names", "from_structured_names"]

_SEPARATOR = "/"
# Entries of an optimizer state dict that are not per-parameter accumulators.
_SCHEDULER_KEY = "LR_Scheduler"
_MASTER_WEIGHTS_KEY = "master_weights"


def _owner(key: str, names_by_length: list) -> str:
    """The parameter name ``key`` is an accumulator of (``<param name>_<accumulator>``), or ''."""
    for name in names_by_length:
        if key.startswith(name + "_"):
            return name
    return ""


def to_structured_names(state: Dict[str, Any], model: nn.Layer) -> Dict[str, Any]:
    """``optimizer.state_dict()`` with each accumulator keyed ``<structured name>/<accumulator>``."""
    structured = {param.name: name for name, param in model.named_parameters()}
    names_by_length = sorted(structured, key=len, reverse=True)  # linear_12.w_0 before linear_1.w_0
    out: Dict[str, Any] = {}
    for key, value in state.items():
        if key == _SCHEDULER_KEY:
            out[key] = value
        elif key == _MASTER_WEIGHTS_KEY:
            out[key] = {structured.get(name, name): weight for name, weight in value.items()}
        else:
            owner = _owner(key, names_by_length)
            if not owner:
                raise ValueError(f"optimizer state {key!r} belongs to no parameter of the model")
            out[structured[owner] + _SEPARATOR + key[len(owner) + 1 :]] = value
    return out


def from_structured_names(state: Dict[str, Any], model: nn.Layer) -> Dict[str, Any]:
    """The inverse of :func:`to_structured_names` for ``model``'s current parameter names."""
    current = {name: param.name for name, param in model.named_parameters()}
    out: Dict[str, Any] = {}
    for key, value in state.items():
        if key == _MASTER_WEIGHTS_KEY:
            out[key] = {current.get(name, name): weight for name, weight in value.items()}
        elif _SEPARATOR in key:
            name, accumulator = key.split(_SEPARATOR, 1)
            if name not in current:
                raise ValueError(
                    f"the checkpoint's optimizer state names parameter {name!r}, which this model does not have"
                )
            out[current[name] + "_" + accumulator] = value
        else:  # the scheduler, or state saved under auto-generated names
            out[key] = value
    return out
