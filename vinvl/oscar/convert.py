"""Checkpoint conversion: official PyTorch Oscar/VinVL, the cattidea/VinVL-Paddle port, or a BERT
-> a vinvl-paddle model directory.

Four kinds of source directory are understood:

- an official Oscar/VinVL checkpoint (``config.json`` + ``pytorch_model.bin``, as written by
  microsoft/Oscar with PyTorch 1.x, legacy or zip serialization; read with torch when it is
  installed, else with a small built-in reader, so Paddle-only installs convert too). Its keys
  are already this package's parameter names; Linear weights are transposed (PyTorch stores
  ``[out, in]``, Paddle ``[in, out]``) and the pre-training ``cls.*`` heads are dropped.
- a checkpoint of the community Paddle port cattidea/VinVL-Paddle (``config.json`` +
  ``paddle_model.bin``): a fine-tuned ``checkpoint-N/`` holds ``{'epoch': ..., 'model': state
  dict}`` in Paddle layout; a pre-trained one holds the state dict itself, as that port's
  ``tools/convert_model_params.py`` wrote it from an official checkpoint: the weights that tool
  lists transposed, every other weight (``cls.*``, an mlp classifier) still in PyTorch layout.
  That port's config names ``img_feat_dim`` / ``img_feat_type`` are read (they win over the
  official names, since that port's model reads them), and the row of the ``[PAD]`` id in the
  word embeddings is zeroed: that port's ``nn.Embedding(..., padding_idx=0)`` outputs zeros
  for it, whatever the stored row holds.
- a BERT: HuggingFace/PyTorch (``model.safetensors`` or ``pytorch_model.bin``, keys with or
  without the ``bert.`` prefix) or PaddleNLP (``model_state.pdparams`` or ``model.safetensors``
  with PaddleNLP ``BertModel`` names). Its text stack becomes the Oscar encoder; the region
  embedding, image LayerNorm and match classifier are freshly initialised, which is how VinVL
  itself starts from BERT.
- a vinvl-paddle model directory (``model_type`` ``oscar``, e.g. a Trainer checkpoint): copied,
  with any ``--set`` overrides applied.

Heads a source does not hold stay freshly initialised: the contrastive heads (``text_proj``,
``image_proj``, ``contrastive_logit_scale``), which no external checkpoint has, and the match
classifier of pre-trained checkpoints and BERTs. The saved config's ``trained_heads`` records
which heads came from the source: ``["match"]`` for a fine-tuned retrieval checkpoint, ``[]``
for a pre-trained one or a BERT; a vinvl-paddle directory keeps its own record.

The result is written to a temporary directory beside the destination and renamed into place
only when everything succeeded, so a failed conversion never leaves a half-written model.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import tempfile
from typing import TYPE_CHECKING, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from ..errors import UserError
from ..torch_io import TorchFileError, load_torch_file, read_torch_file

if TYPE_CHECKING:
    from .configuration import OscarConfig

__all__ = [
    "ConversionError",
    "convert_checkpoint",
    "SourceWeights",
    "load_state_dict",
    "load_seed_port_weights",
    "load_torch_state_dict",
    "read_torch_pickle",
    "oscar_config_from_source",
]

logger = logging.getLogger(__name__)

TORCH_LAYOUT = "torch"  # 2-D Linear weights stored [out, in]
PADDLE_LAYOUT = "paddle"  # 2-D Linear weights stored [in, out]

SEED_WEIGHTS_FILE = "paddle_model.bin"  # what cattidea/VinVL-Paddle saves (paddle.save)
SEED_FINETUNED = "fine-tuned"  # {'epoch': ..., 'model': state dict}
SEED_PRETRAINED = "pre-trained"  # the state dict itself (its tools/convert_model_params.py)

# Weight files looked for in a source directory, in order of preference, with their layout
# (None: decided by the file: the safetensors header, or the seed port's two forms).
WEIGHT_FILES: Tuple[Tuple[str, Optional[str]], ...] = (
    ("model.safetensors", None),
    ("pytorch_model.bin", TORCH_LAYOUT),
    ("model_state.pdparams", PADDLE_LAYOUT),
    (SEED_WEIGHTS_FILE, None),
)
WEIGHT_FILE_ORIGINS = {
    "model.safetensors": "HuggingFace/PaddleNLP/vinvl-paddle",
    "pytorch_model.bin": "official Oscar/VinVL or HuggingFace",
    "model_state.pdparams": "PaddleNLP",
    SEED_WEIGHTS_FILE: "cattidea/VinVL-Paddle",
}
SHARDED_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json", "model_state.pdparams.index.json")
VOCAB_FILE = "vocab.txt"

# The seed port's config names -> OscarConfig's; the seed's model reads these, so they win.
SEED_CONFIG_ALIASES = {"img_feat_dim": "img_feature_dim", "img_feat_type": "img_feature_type"}
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
SEED_PADDING_ID = 0  # the seed's BertEmbeddings: nn.Embedding(..., padding_idx=0)

# The weights the seed's tools/convert_model_params.py transposes to Paddle layout (it lists
# encoder layers 0-23 only); everything else it copies in PyTorch layout.
_SEED_TOOL_TRANSPOSED_RE = re.compile(
    r"^(?:classifier\.weight|bert\.img_embedding\.weight|bert\.pooler\.dense\.weight"
    r"|bert\.encoder\.layer\.(?P<layer>\d+)\.(?:attention\.self\.(?:query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)\.weight)$"
)
_SEED_TOOL_LAYERS = 24

# Parameters a source may lack; they keep their fresh initialisation (with a warning).
POOLER_PREFIX = "bert.pooler."
CLASSIFIER_PREFIX = "classifier."
CONTRASTIVE_PREFIXES = ("text_proj.", "image_proj.", "contrastive_logit_scale")
IMAGE_PREFIXES = ("bert.img_embedding.", "bert.LayerNorm.")
# The parameters of each head a config can record as trained (configuration.HEAD_NAMES).
HEAD_PREFIXES = {"match": (CLASSIFIER_PREFIX,), "contrastive": CONTRASTIVE_PREFIXES}

# Top-level module names of an Oscar/BERT encoder saved without the ``bert.`` wrapper.
_BARE_ENCODER_MODULES = ("embeddings.", "encoder.", "pooler.", "img_embedding.", "LayerNorm.")

# PaddleNLP BertModel (nn.TransformerEncoderLayer) names -> official/HF BERT names.
_PADDLENLP_LAYER_RENAMES = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "linear1": "intermediate.dense",
    "linear2": "output.dense",
    "norm1": "attention.output.LayerNorm",
    "norm2": "output.LayerNorm",
}
_PADDLENLP_LAYER_RE = re.compile(r"^bert\.encoder\.layers\.(\d+)\.(\w+(?:\.\w+_proj)?)\.(weight|bias)$")


class ConversionError(UserError, ValueError):
    """A source checkpoint that cannot be converted; the message says what is wrong."""


# --------------------------------------------------------------------------- loading


def load_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
    """Read a ``torch.save`` state dict (legacy or zip serialization) as numpy arrays.

    Through torch when it is installed, else the built-in reader (:mod:`vinvl.torch_io`); both
    unpickle tensors and plain containers only, so a downloaded checkpoint cannot run code on load.
    """
    return _as_state_dict(load_torch_file, path)


def read_torch_pickle(path: str) -> Dict[str, np.ndarray]:
    """:func:`load_torch_state_dict` through the built-in reader only (no torch needed)."""
    return _as_state_dict(read_torch_file, path)


def _as_state_dict(reader, path: str) -> Dict[str, np.ndarray]:
    try:
        loaded = reader(path)
    except TorchFileError as exc:
        raise ConversionError(str(exc)) from exc
    return _numpy_state(loaded, path)


def _safetensors_layout(path: str) -> Optional[str]:
    """The layout recorded in a safetensors header: ``pt`` is PyTorch's, ``np``/``paddle`` Paddle's."""
    from safetensors import safe_open

    with safe_open(path, framework="np") as handle:
        fmt = (handle.metadata() or {}).get("format")
    if fmt == "pt":
        return TORCH_LAYOUT
    if fmt in ("np", "paddle", "pd"):
        return PADDLE_LAYOUT
    return None


class SourceWeights(NamedTuple):
    """The weights of a source directory as read, before renaming."""

    state: Dict[str, np.ndarray]
    layout: str  # "torch" (Linear weights [out, in]) or "paddle" ([in, out])
    file_name: str
    seed_form: Optional[str] = None  # SEED_FINETUNED / SEED_PRETRAINED for the seed port's files


def _is_state_dict(loaded) -> bool:
    """A non-empty mapping of names to arrays (paddle.save's name table aside)."""
    if not isinstance(loaded, Mapping):
        return False
    values = [v for k, v in loaded.items() if not str(k).startswith("StructuredToParameterName")]
    return bool(values) and all(isinstance(v, np.ndarray) for v in values)


def _numpy_state(loaded, path: str) -> Dict[str, np.ndarray]:
    """``loaded`` as a state dict of numpy arrays, or a ConversionError naming ``path``."""
    if not _is_state_dict(loaded):
        raise ConversionError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return {k: v for k, v in loaded.items() if not k.startswith("StructuredToParameterName")}


def _read_paddle_file(path: str):
    import paddle

    try:
        return paddle.load(path, return_numpy=True)
    except Exception as exc:
        raise ConversionError(f"cannot read {path} as a paddle.save file: {exc}") from exc


def _seed_tool_layout_to_torch(state: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Undo the seed tool's transposes, so that the whole state dict is in PyTorch layout."""
    result = {}
    for name, value in state.items():
        match = _SEED_TOOL_TRANSPOSED_RE.match(name)
        transposed = match is not None and (match.group("layer") is None or int(match.group("layer")) < _SEED_TOOL_LAYERS)
        result[name] = value.T if transposed and value.ndim == 2 else value
    return result


def load_seed_port_weights(path: str) -> SourceWeights:
    """Read a cattidea/VinVL-Paddle ``paddle_model.bin`` in either of its two forms.

    A fine-tuned ``{'epoch': ..., 'model': state dict}`` is all in Paddle layout (a trained
    Paddle model's ``state_dict()``); a bare state dict is that port's conversion of an official
    checkpoint, returned here in PyTorch layout (its transposes undone).
    """
    loaded = _read_paddle_file(path)
    file_name = os.path.basename(path)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        logger.info("%s: the seed port's fine-tuned checkpoint (epoch %s)", path, loaded.get("epoch"))
        return SourceWeights(_numpy_state(loaded["model"], path), PADDLE_LAYOUT, file_name, SEED_FINETUNED)
    if _is_state_dict(loaded):
        state = _seed_tool_layout_to_torch(_numpy_state(loaded, path))
        return SourceWeights(state, TORCH_LAYOUT, file_name, SEED_PRETRAINED)
    raise ConversionError(
        f"{path} holds neither a fine-tuned checkpoint of cattidea/VinVL-Paddle ({{'epoch': ..., 'model': "
        "state dict}) nor a state dict (parameter names -> tensors)"
    )


def load_state_dict(src_dir: str) -> SourceWeights:
    """Find and read the weights of a checkpoint directory (the first of ``WEIGHT_FILES`` present)."""
    for file_name, layout in WEIGHT_FILES:
        path = os.path.join(src_dir, file_name)
        if not os.path.isfile(path):
            continue
        if file_name == SEED_WEIGHTS_FILE:
            return load_seed_port_weights(path)
        if file_name.endswith(".safetensors"):
            from safetensors.numpy import load_file

            try:
                state = load_file(path)
            except Exception as exc:
                raise ConversionError(f"cannot read {path} as safetensors: {exc}") from exc
            layout = _safetensors_layout(path)
            if layout is None:
                # No format in the header: PaddleNLP BERT names mean Paddle, anything else PyTorch.
                paddle_names = any(".layers." in k and "self_attn" in k for k in state)
                layout = PADDLE_LAYOUT if paddle_names else TORCH_LAYOUT
        elif layout == TORCH_LAYOUT:
            state = load_torch_state_dict(path)
        else:
            state = _numpy_state(_read_paddle_file(path), path)
        return SourceWeights(state, layout, file_name)
    sharded = [name for name in SHARDED_INDEX_FILES if os.path.isfile(os.path.join(src_dir, name))]
    if sharded:
        raise ConversionError(
            f"{src_dir} holds sharded weights ({sharded[0]}), which conversion does not read; "
            "load them with from_pretrained and save_pretrained them as one file"
        )
    raise ConversionError(f"no weights in {src_dir}: looked for {_expected_weight_files()}")


def _expected_weight_files() -> str:
    return ", ".join(f"{name} ({WEIGHT_FILE_ORIGINS[name]})" for name, _ in WEIGHT_FILES)


# --------------------------------------------------------------------------- config


def _oscar_config_fields() -> List[str]:
    """The named parameters of ``OscarConfig.__init__``: the fields a config.json may set."""
    from .configuration import OscarConfig

    params = inspect.signature(OscarConfig.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]


def with_seed_config_names(source_config: Mapping) -> dict:
    """``source_config`` with the seed port's ``img_feat_dim`` / ``img_feat_type`` under OscarConfig's names.

    The seed's model reads its own names, so they win over the official ones when both are present.
    """
    config = dict(source_config)
    for seed_name, name in SEED_CONFIG_ALIASES.items():
        if seed_name not in config:
            continue
        value = config.pop(seed_name)
        if name in config and config[name] != value:
            logger.info("config.json: %s=%r (what the seed port's model reads) used over %s=%r",
                        seed_name, value, name, config[name])
        config[name] = value
    return config


def oscar_config_from_source(
    source_config: Mapping, state: Mapping[str, np.ndarray], is_oscar: bool, layout: str
) -> "OscarConfig":
    """Map an official Oscar, a seed-port or a BERT ``config.json`` to an :class:`OscarConfig`.

    Only the fields OscarConfig knows are kept (HF/PaddleNLP extras are dropped); the seed
    port's config names are read (:func:`with_seed_config_names`). For Oscar configs the
    defaults of the official code (and of the seed port, which keeps them) apply to absent
    fields: no image LayerNorm when ``use_img_layernorm`` is absent, a linear classifier when
    ``classifier`` is absent. ``trained_heads`` is left for the caller, who knows the weights.
    Any continuous ``img_feature_type`` (e.g. ``faster_r-cnn``) means region features, which is
    what this package reads; the discrete-code variants are rejected.
    """
    from .configuration import OscarConfig

    pool_act = source_config.get("pool_act", "tanh")
    if pool_act != "tanh":
        raise ConversionError(f"config.json: pool_act {pool_act!r} is not supported (the Oscar pooler is tanh)")
    pos_type = source_config.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ConversionError(
            f"config.json: position_embedding_type {pos_type!r} is not supported (Oscar uses absolute positions)"
        )
    source_config = with_seed_config_names(source_config)
    fields = set(_oscar_config_fields()) - {"trained_heads"}
    kwargs = {k: v for k, v in source_config.items() if k in fields}
    if is_oscar:
        feature_type = str(source_config.get("img_feature_type", "frcnn"))
        if feature_type.startswith("dis_code"):
            raise ConversionError(
                f"config.json: img_feature_type {feature_type!r} (discrete region codes) is not supported; "
                "only continuous region features are"
            )
        kwargs["img_feature_type"] = "frcnn"
        kwargs["use_img_layernorm"] = bool(source_config.get("use_img_layernorm", False))
        kwargs.setdefault("classifier", "linear")
        if "img_feature_dim" not in kwargs and "bert.img_embedding.weight" in state:
            shape = state["bert.img_embedding.weight"].shape
            kwargs["img_feature_dim"] = int(shape[1] if layout == TORCH_LAYOUT else shape[0])
            logger.info("config.json has no img_feature_dim; took %d from bert.img_embedding.weight",
                        kwargs["img_feature_dim"])
        loss_type = kwargs.get("loss_type")
        if loss_type is not None and loss_type != "sfmx":
            logger.warning(
                "config.json: loss_type %r replaced by 'sfmx' (softmax over the 2 match logits, the only "
                "retrieval objective here); the logits themselves do not depend on it", loss_type
            )
            kwargs["loss_type"] = "sfmx"
    else:
        for name in ("img_feature_type", "loss_type", "classifier", "num_labels"):
            kwargs.pop(name, None)  # a BERT's task-head settings say nothing about the Oscar heads
    try:
        return OscarConfig(**kwargs)
    except ValueError as exc:
        raise ConversionError(f"config.json: {exc}") from exc


# --------------------------------------------------------------------------- key mapping


def _canonical_name(name: str) -> str:
    """Official/HF BERT name for a key from any supported source (prefix, PaddleNLP names, gamma/beta)."""
    if name.startswith(_BARE_ENCODER_MODULES):
        name = "bert." + name
    if name.endswith(".gamma"):
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    if name.startswith("bert.embeddings.layer_norm."):
        return name.replace("bert.embeddings.layer_norm.", "bert.embeddings.LayerNorm.")
    match = _PADDLENLP_LAYER_RE.match(name)
    if match and match.group(2) in _PADDLENLP_LAYER_RENAMES:
        index, module, param = match.groups()
        return f"bert.encoder.layer.{index}.{_PADDLENLP_LAYER_RENAMES[module]}.{param}"
    return name


def _map_state_dict(
    state: Mapping[str, np.ndarray], is_oscar: bool
) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Rename every key to this package's names and drop heads that have no place in Oscar.

    Returns the renamed state dict and the names of dropped pre-training/task heads.
    """
    mapped: Dict[str, np.ndarray] = {}
    dropped: List[str] = []
    for name, value in state.items():
        if name.endswith("position_ids"):  # a buffer some BERT versions save, not a parameter
            continue
        canonical = _canonical_name(name)
        if canonical.startswith("cls.") or (not is_oscar and canonical.startswith(CLASSIFIER_PREFIX)):
            dropped.append(name)
            continue
        if canonical in mapped:
            raise ConversionError(f"state dict has two keys for {canonical!r} (one is {name!r})")
        mapped[canonical] = value
    return mapped, dropped


# --------------------------------------------------------------------------- conversion


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from exc


def _source_config_path(src: str) -> str:
    """``src``'s config.json, or a ConversionError saying what a checkpoint directory must hold."""
    if not os.path.isdir(src):
        what = "is not a directory" if os.path.exists(src) else "does not exist"
        raise ConversionError(f"source checkpoint directory {src} {what}")
    config_path = os.path.join(src, "config.json")
    if os.path.isfile(config_path):
        return config_path
    try:
        inside = sorted(name for name in os.listdir(src) if os.path.isfile(os.path.join(src, name, "config.json")))
    except OSError as exc:
        raise ConversionError(f"cannot read source checkpoint directory {src}: {exc}") from exc
    hint = f"; folders inside it that have one: {', '.join(inside[:5])}" if inside else ""
    raise ConversionError(
        f"{src} is not a checkpoint directory: it has no config.json (a checkpoint holds config.json beside "
        f"one of {_expected_weight_files()}){hint}"
    )


def _own_model_config(source_config: Mapping, config_path: str) -> "OscarConfig":
    """The OscarConfig of a vinvl-paddle model directory, as it records it."""
    from .configuration import OscarConfig

    fields = set(_oscar_config_fields())
    try:
        return OscarConfig(**{k: v for k, v in source_config.items() if k in fields})
    except ValueError as exc:
        raise ConversionError(f"{config_path}: {exc}") from exc


def _apply_overrides(config: "OscarConfig", overrides: Mapping) -> "OscarConfig":
    """``config`` with the OscarConfig fields in ``overrides`` replaced."""
    from .configuration import OscarConfig

    fields = set(_oscar_config_fields())
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConversionError(f"config_overrides: unknown OscarConfig fields {unknown}")
    if "trained_heads" in overrides:
        raise ConversionError(
            "config_overrides: trained_heads cannot be set; the conversion records it from the weights the "
            "checkpoint holds"
        )
    try:
        return OscarConfig(**{**{k: getattr(config, k) for k in fields}, **dict(overrides)})
    except ValueError as exc:
        raise ConversionError(f"config_overrides: {exc}") from exc


def _zero_seed_padding_row(state: Dict[str, np.ndarray]) -> None:
    """Zero the ``[PAD]`` row of the word embeddings, which the seed port's Paddle embedding never outputs."""
    if WORD_EMBEDDINGS in state:
        table = np.array(state[WORD_EMBEDDINGS], copy=True)
        table[SEED_PADDING_ID] = 0
        state[WORD_EMBEDDINGS] = table


def _heads_in_state(state: Mapping[str, np.ndarray], params: Sequence[str], src: str) -> Set[str]:
    """The heads (HEAD_NAMES) whose parameters all come from ``state``; a head only partly there is an error."""
    heads = set()
    for head, prefixes in HEAD_PREFIXES.items():
        names = [k for k in params if k.startswith(prefixes)]
        missing = [k for k in names if k not in state]
        if names and not missing:
            heads.add(head)
        elif len(missing) < len(names):
            raise ConversionError(f"{src}: the {head} head is incomplete: it lacks {', '.join(missing)}")
    return heads


def _trained_heads(loaded: Set[str], recorded: Optional[Sequence[str]]) -> Optional[List[str]]:
    """What the converted config records: the heads loaded from the source that the source had trained.

    ``recorded`` is the source's own record (None: not recorded, read as all trained, which is
    what every head an external checkpoint holds is). None is kept when every head is loaded.
    """
    from .configuration import HEAD_NAMES

    if recorded is None and loaded == set(HEAD_NAMES):
        return None
    trained = set(HEAD_NAMES) if recorded is None else set(recorded)
    return sorted(trained & loaded)


def _load_into_model(model, state: Mapping[str, np.ndarray], layout: str, is_oscar: bool, src: str) -> None:
    """Check names and shapes against ``model`` and copy the weights in (transposing when needed)."""
    import paddle.nn as nn
    from paddle.base.data_feeder import convert_dtype

    params = model.state_dict()
    linear_weights = {
        f"{prefix}.weight" if prefix else "weight"
        for prefix, layer in model.named_sublayers()
        if isinstance(layer, nn.Linear)
    }
    unexpected = sorted(k for k in state if k not in params)
    if unexpected:
        shown = ", ".join(unexpected[:10]) + (f", ... ({len(unexpected)} in all)" if len(unexpected) > 10 else "")
        raise ConversionError(f"{src}: unexpected keys that fit no Oscar parameter: {shown}")

    converted = {}
    for name, value in state.items():
        if layout == TORCH_LAYOUT and name in linear_weights and value.ndim == 2:
            value = value.T
        expected = list(params[name].shape)
        if list(value.shape) != expected:
            raise ConversionError(
                f"{src}: {name} has shape {list(value.shape)} in the checkpoint (after conversion to Paddle "
                f"layout) but the config gives {expected}; the checkpoint does not fit its config.json"
            )
        converted[name] = np.ascontiguousarray(value, dtype=convert_dtype(params[name].dtype))

    missing = [k for k in params if k not in converted]
    may_be_fresh = (POOLER_PREFIX, CLASSIFIER_PREFIX) + CONTRASTIVE_PREFIXES
    if not is_oscar:
        may_be_fresh += IMAGE_PREFIXES
    required_missing = [k for k in missing if not k.startswith(may_be_fresh)]
    if required_missing:
        shown = ", ".join(required_missing[:10]) + (
            f", ... ({len(required_missing)} in all)" if len(required_missing) > 10 else ""
        )
        raise ConversionError(f"{src}: checkpoint lacks parameters the config requires: {shown}")

    fresh_groups = sorted({_group_name(k) for k in missing})
    if fresh_groups:
        logger.warning(
            "not in the checkpoint, left freshly initialised (train before relying on them): %s",
            ", ".join(fresh_groups),
        )
    model.set_state_dict({**params, **converted})


def _group_name(param_name: str) -> str:
    """``bert.pooler.dense.weight`` -> ``bert.pooler``: a readable name for a fresh head."""
    for prefix in (POOLER_PREFIX, CLASSIFIER_PREFIX) + CONTRASTIVE_PREFIXES + IMAGE_PREFIXES:
        if param_name.startswith(prefix):
            return prefix.rstrip(".")
    return param_name


def _write_tokenizer(src: str, out_dir: str) -> bool:
    """Save an OscarTokenizer built on SRC's vocab.txt into ``out_dir``; False when SRC has no vocab."""
    from .tokenizer import OscarTokenizer

    vocab = os.path.join(src, VOCAB_FILE)
    if not os.path.isfile(vocab):
        return False
    do_lower_case = True
    tok_config = os.path.join(src, "tokenizer_config.json")
    if os.path.isfile(tok_config):
        do_lower_case = bool(_read_json(tok_config).get("do_lower_case", True))
    OscarTokenizer(vocab, do_lower_case=do_lower_case).save_pretrained(out_dir)
    return True


def _publish(tmp_dir: str, dst: str, overwrite: bool) -> None:
    """Move the finished ``tmp_dir`` to ``dst``; an old ``dst`` is removed only after the move is possible."""
    if not os.path.exists(dst):
        os.rename(tmp_dir, dst)
        return
    old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(dst))
    os.rmdir(old)
    os.rename(dst, old)
    os.rename(tmp_dir, dst)
    shutil.rmtree(old, ignore_errors=True)


class _Source(NamedTuple):
    """A source directory read and mapped to this package's names, before any override."""

    state: Dict[str, np.ndarray]
    config: "OscarConfig"
    layout: str
    is_oscar: bool  # an Oscar (image stack present), not a BERT
    recorded_heads: Optional[List[str]]  # the source's own trained_heads record (None: all it holds)
    weights_path: str
    description: str


def _read_source(src: str, config_path: str) -> _Source:
    """Read ``src``'s config and weights, whichever of the supported kinds it is."""
    source_config = _read_json(config_path)
    if not isinstance(source_config, dict):
        raise ConversionError(f"{config_path} does not hold a JSON object")
    weights = load_state_dict(src)
    own = source_config.get("model_type") == "oscar"
    if own:
        is_oscar, description = True, "vinvl-paddle model directory"
    else:
        source_config = with_seed_config_names(source_config)
        renamed_keys = {_canonical_name(k) for k in weights.state}
        is_oscar = "img_feature_dim" in source_config or "bert.img_embedding.weight" in renamed_keys
        description = "Oscar/VinVL" if is_oscar else "BERT"
        if weights.seed_form:
            description = f"cattidea/VinVL-Paddle, {weights.seed_form}"
    state, dropped = _map_state_dict(weights.state, is_oscar)
    if dropped:
        logger.warning(
            "dropped %d parameters of heads Oscar retrieval does not use (%s): %s",
            len(dropped),
            "pre-training heads" if is_oscar else "BERT pre-training/task heads",
            ", ".join(sorted({".".join(k.split(".")[:2]) for k in dropped})),
        )
    if weights.seed_form:
        _zero_seed_padding_row(state)
    if own:
        config = _own_model_config(source_config, config_path)
        recorded = config.trained_heads
    else:
        config = oscar_config_from_source(source_config, state, is_oscar, weights.layout)
        recorded = None  # every head an external checkpoint holds carries its trained weights
    weights_path = os.path.join(src, weights.file_name)
    return _Source(state, config, weights.layout, is_oscar, recorded, weights_path, description)


def convert_checkpoint(
    src: str,
    dst: str,
    *,
    config_overrides: Optional[Mapping] = None,
    overwrite: bool = False,
) -> str:
    """Convert an official Oscar/VinVL, a cattidea/VinVL-Paddle or a BERT checkpoint directory (or
    copy a vinvl-paddle model directory) into a vinvl-paddle model directory.

    ``dst`` ends up with ``config.json`` and ``model.safetensors`` (loadable with
    ``OscarForImageTextRetrieval.from_pretrained(dst)``) plus the tokenizer files when ``src``
    has a ``vocab.txt``. The config records in ``trained_heads`` which heads came from the
    source. ``config_overrides`` sets OscarConfig fields on top of what the source config gives
    (e.g. ``{"max_seq_length": 50}``). ``overwrite`` allows replacing an existing, non-empty
    ``dst``. Returns ``dst``. Raises :class:`ConversionError` naming what is wrong; nothing is
    written to ``dst`` unless the whole conversion succeeded.
    """
    from .modeling import OscarForImageTextRetrieval

    src, dst = os.path.abspath(src), os.path.abspath(dst)
    config_path = _source_config_path(src)
    if os.path.exists(dst) and not overwrite and (not os.path.isdir(dst) or os.listdir(dst)):
        raise ConversionError(f"destination {dst} already exists and is not empty (pass --overwrite, or overwrite=True, to replace it)")
    source = _read_source(src, config_path)
    config = _apply_overrides(source.config, config_overrides) if config_overrides else source.config

    try:
        model = OscarForImageTextRetrieval(config)
    except ValueError as exc:
        raise ConversionError(f"{config_path}: {exc}") from exc
    loaded_heads = _heads_in_state(source.state, list(model.state_dict()), source.weights_path)
    _load_into_model(model, source.state, source.layout, source.is_oscar, source.weights_path)
    model.config.trained_heads = _trained_heads(loaded_heads, source.recorded_heads)
    logger.info(
        "converted %s (%s, %s layout) with %d tensors; trained heads: %s",
        source.weights_path,
        source.description,
        source.layout,
        len(source.state),
        "all" if model.config.trained_heads is None else (", ".join(model.config.trained_heads) or "none"),
    )

    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.tmp-", dir=parent)
    try:
        model.save_pretrained(tmp_dir)
        if not _write_tokenizer(src, tmp_dir):
            logger.warning("%s has no %s; %s gets no tokenizer files", src, VOCAB_FILE, dst)
        _publish(tmp_dir, dst, overwrite)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return dst
