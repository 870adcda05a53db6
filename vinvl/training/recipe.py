"""Training recipes: a JSON object of options (the shipped ones: vinvl/assets/model_configs/*/*.json) into the typed arguments of a run.

A recipe's keys are the fields of :class:`ModelArguments`, :class:`DataArguments` and
:class:`RetrievalTrainingArguments` (paddlenlp's TrainingArguments plus the total batch). Every key
is checked before anything runs: an unknown or renamed key, a value of the wrong type, or a
missing required option is refused in one line that names the recipe and the key.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import typing
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ..errors import UsageError
from .arguments import RENAMED_OPTIONS, DataArguments, ModelArguments, RetrievalTrainingArguments

__all__ = ["ARGUMENT_CLASSES", "read_recipe", "arguments_from_options", "load_recipe"]

ARGUMENT_CLASSES = (ModelArguments, DataArguments, RetrievalTrainingArguments)

Arguments = Tuple[ModelArguments, DataArguments, RetrievalTrainingArguments]


def read_recipe(path: str) -> Dict[str, Any]:
    """The options a JSON recipe holds (a JSON object)."""
    try:
        with open(path, encoding="utf-8") as handle:
            options = json.load(handle)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(options, dict):
        raise UsageError(f"{path}: a recipe is a JSON object of options, got {type(options).__name__}")
    return options


def _fields() -> Dict[str, Tuple[type, dataclasses.Field, Any]]:
    """option name -> (its argument class, its field, its type hint)."""
    table = {}
    for cls in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if item.init:
                table[item.name] = (cls, item, hints[item.name])
    return table


def _type_error(value: Any, hint: Any) -> Optional[str]:
    """Why ``value`` cannot be an option of type ``hint``, or None when it can (or the type is not checked)."""
    if typing.get_origin(hint) is Union:
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None and len(members) < len(typing.get_args(hint)):
            return None
        reasons = [_type_error(value, member) for member in members]
        return None if any(reason is None for reason in reasons) else reasons[0]
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, list):
            return next((reason for reason in (_type_error(v, item) for v in value) if reason), None)
        return _type_error(value, item)  # one value where a list is taken (as a single flag value is)
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is str or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return None if isinstance(value, str) else "a string"
    return None


def arguments_from_options(options: Mapping[str, Any], source: Optional[str] = None) -> Arguments:
    """The typed arguments of a run from a flat mapping of options; ``source`` (a recipe's path)
    starts the message of every error."""
    prefix = f"{source}: " if source else ""
    fields = _fields()
    for key in options:
        if key in RENAMED_OPTIONS:
            raise UsageError(f"{prefix}{key!r} was renamed {RENAMED_OPTIONS[key]!r}: use that key")
        if key not in fields:
            raise UsageError(f"{prefix}{key!r} is not an option of `vinvl train` (see `vinvl train --help_all`)")
    for key, value in options.items():
        reason = _type_error(value, fields[key][2])
        if reason:
            raise UsageError(f"{prefix}{key!r} must be {reason}, got {value!r}")
    missing = [
        f"--{name}"
        for name, (_, item, _) in fields.items()
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING and name not in options
    ]
    if missing:
        raise UsageError(f"{prefix}the following arguments are required: {', '.join(missing)}")
    built = []
    for cls in ARGUMENT_CLASSES:
        names = {item.name for item in dataclasses.fields(cls) if item.init}
        try:
            built.append(cls(**{key: value for key, value in options.items() if key in names}))
        except ValueError as exc:  # the total batch's split, TrainingArguments' own checks of a combination
            raise UsageError(f"{prefix}{exc}") from exc
    return tuple(built)


def load_recipe(path: str, overrides: Optional[Mapping[str, Any]] = None) -> Arguments:
    """The arguments of the recipe at ``path``, with ``overrides`` replacing or adding options."""
    return arguments_from_options({**read_recipe(path), **(overrides or {})}, source=path)
