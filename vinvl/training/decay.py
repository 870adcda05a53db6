"""Which parameters get weight decay: the official fine-tuning's groups, found by role.

The official ``run_retrieval.py`` exempts the parameters whose names contain ``bias`` or
``LayerNorm.weight``: every bias and every LayerNorm scale (a LayerNorm's shift is its bias).
paddlenlp's Trainer exempts names containing ``bias`` or ``norm``, case-sensitively, which misses
this model's ``...LayerNorm.weight`` (named as the official keys are), so it would decay every
LayerNorm scale. Here the rule reads what each parameter is, not how it is spelled: a parameter
is exempt when it is a layer's ``bias`` or belongs to a normalisation layer, so renaming a
sub-layer cannot change the groups. Every other parameter (weight matrices, embeddings, the
contrastive logit scale) is decayed, as the official rule decays every name it does not list.
"""
from __future__ import annotations

from typing import Callable, Iterable, List, Tuple

import paddle
import paddle.nn as nn

__all__ = ["NORMALISATION_LAYERS", "decay_groups", "decayed_parameter_names", "apply_decay_to"]

# The layers whose parameters are a normalisation's scale and shift.
NORMALISATION_LAYERS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm,
    nn.BatchNorm1D,
    nn.BatchNorm2D,
    nn.BatchNorm3D,
    nn.SyncBatchNorm,
    nn.InstanceNorm1D,
    nn.InstanceNorm2D,
    nn.InstanceNorm3D,
)


def _is_exempt(layer: nn.Layer, param: paddle.Tensor) -> bool:
    return isinstance(layer, NORMALISATION_LAYERS) or param is getattr(layer, "bias", None)


def decay_groups(model: nn.Layer) -> Tuple[List[str], List[str]]:
    """(decayed, exempt): the structured names of ``model``'s parameters in each group, in model order."""
    exempt = set()
    for layer in model.sublayers(include_self=True):
        for param in layer.parameters(include_sublayers=False):
            if _is_exempt(layer, param):
                exempt.add(id(param))
    decayed, kept = [], []
    for name, param in model.named_parameters():
        (kept if id(param) in exempt else decayed).append(name)
    return decayed, kept


def decayed_parameter_names(model: nn.Layer) -> List[str]:
    """The structured names of the parameters weight decay applies to."""
    return decay_groups(model)[0]


def apply_decay_to(model: nn.Layer, parameters: Iterable[paddle.Tensor]) -> Callable[[str], bool]:
    """The ``apply_decay_param_fun`` of a Paddle optimizer over ``parameters`` (some of ``model``'s):
    true for the decayed ones. Paddle calls it with a parameter's unique ``name``."""
    structured = dict(model.named_parameters())
    decayed = {structured[name].name for name in decayed_parameter_names(model)}
    unique = {param.name for param in parameters} & decayed
    return lambda name: name in unique
