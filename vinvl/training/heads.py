"""The retrieval model's heads as sets of parameters: freezing all but some, and resetting them.

Fitting the contrastive heads of a converted checkpoint must not change its match head: every
parameter outside the trained set gets ``stop_gradient`` (no gradient is computed for it, and
none flows through the frozen encoder at all when only heads train) and is left out of the
optimizer, so it is saved bit for bit as loaded.
"""
from __future__ import annotations

from typing import Iterable, List

import paddle

from ..oscar.convert import HEAD_PREFIXES
from ..oscar.modeling import OscarForImageTextRetrieval

__all__ = [
    "TRAIN_ONLY",
    "HEAD_PARAMETER_PREFIXES",
    "trainable_parameter_names",
    "freeze_all_but",
    "reset_heads",
    "reshape_contrastive_heads",
]

# What `--train_only` may name: every parameter, or the heads of the objective being trained.
TRAIN_ONLY = ("all", "heads")
# Parameter-name prefixes of each head (OscarConfig.HEAD_NAMES): conversion's own table.
HEAD_PARAMETER_PREFIXES = HEAD_PREFIXES


def _head_prefixes(model: OscarForImageTextRetrieval, heads: Iterable[str]) -> tuple:
    heads = set(heads)
    unknown = heads - set(HEAD_PARAMETER_PREFIXES)
    if unknown:
        raise ValueError(f"unknown heads {sorted(unknown)}; known: {sorted(HEAD_PARAMETER_PREFIXES)}")
    if "contrastive" in heads and model.config.contrastive_dim <= 0:
        raise ValueError("the model has no contrastive heads (config.contrastive_dim is 0)")
    return tuple(prefix for head in sorted(heads) for prefix in HEAD_PARAMETER_PREFIXES[head])


def trainable_parameter_names(
    model: OscarForImageTextRetrieval, heads: Iterable[str], trainable_layers: int = 0
) -> List[str]:
    """Names of the parameters of ``heads`` and of the last ``trainable_layers`` encoder layers."""
    num_layers = model.config.num_hidden_layers
    if not 0 <= trainable_layers <= num_layers:
        raise ValueError(f"trainable_layers must be in 0..{num_layers} (the model's layers), got {trainable_layers}")
    prefixes = _head_prefixes(model, heads)
    prefixes += tuple(f"bert.encoder.layer.{i}." for i in range(num_layers - trainable_layers, num_layers))
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


def freeze_all_but(model: OscarForImageTextRetrieval, names: Iterable[str]) -> int:
    """Set ``stop_gradient`` on every parameter not named (and clear it on those named); returns
    how many weights stay trainable."""
    keep = set(names)
    for name, param in model.named_parameters():
        param.stop_gradient = name not in keep
    return sum(int(param.size) for name, param in model.named_parameters() if name in keep)


def reset_heads(model: OscarForImageTextRetrieval, heads: Iterable[str], seed: int = 0) -> None:
    """Give ``heads`` the fresh initialisation a new model of the same config has (under
    ``paddle.seed(seed)``) and record them as untrained, as conversion leaves heads its source
    lacks: the stand-in for a converted checkpoint when measuring how a first stage is fitted."""
    heads = set(heads)
    prefixes = _head_prefixes(model, heads)
    paddle.seed(seed)
    fresh = type(model)(model.config).state_dict()
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.set_value(fresh[name])
    model.config.trained_heads = sorted(model.config.heads_trained() - heads)


def reshape_contrastive_heads(model: OscarForImageTextRetrieval, hidden_size: int, seed: int = 0) -> bool:
    """Give the model fresh contrastive heads of ``contrastive_hidden_size = hidden_size`` (0:
    linear, N: an MLP), recorded as untrained, when its heads have another shape; returns
    whether they were replaced. The match head and the encoder are not touched."""
    config = model.config
    if config.contrastive_dim <= 0:
        raise ValueError("the model has no contrastive heads (config.contrastive_dim is 0)")
    if config.contrastive_hidden_size == hidden_size:
        return False
    config.contrastive_hidden_size = hidden_size
    paddle.seed(seed)
    fresh = type(model)(config)
    model.text_proj, model.image_proj = fresh.text_proj, fresh.image_proj
    model.contrastive_logit_scale.set_value(fresh.contrastive_logit_scale)
    config.trained_heads = sorted(config.heads_trained() - {"contrastive"})
    return True
