"""Checkpoint conversion: official PyTorch Oscar/VinVL, or a BERT, -> a vinvl-paddle model directory.

Two kinds of source directory are understood:

- an official Oscar/VinVL checkpoint (``config.json`` + ``pytorch_model.bin``, as written by
  microsoft/Oscar with PyTorch 1.x, legacy or zip serialization; read with torch when it is
  installed, else with a small built-in reader, so Paddle-only installs convert too). Its keys
  are already this package's parameter names; Linear weights are transposed (PyTorch stores
  ``[out, in]``, Paddle ``[in, out]``) and the pre-training ``cls.*`` heads are dropped.
- a BERT: HuggingFace/PyTorch (``model.safetensors`` or ``pytorch_model.bin``, keys with or
  without the ``bert.`` prefix) or PaddleNLP (``model_state.pdparams`` or ``model.safetensors``
  with PaddleNLP ``BertModel`` names). Its text stack becomes the Oscar encoder; the region
  embedding, image LayerNorm and match classifier are freshly initialised, which is how VinVL
  itself starts from BERT.

In both cases the contrastive heads (``text_proj``, ``image_proj``, ``contrastive_logit_scale``),
which official checkpoints do not have, stay freshly initialised.

The result is written to a temporary directory beside the destination and renamed into place
only when everything succeeded, so a failed conversion never leaves a half-written model.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .torch_io import TorchFileError, load_torch_file, read_torch_file

if TYPE_CHECKING:
    from .configuration import OscarConfig

__all__ = [
    "ConversionError",
    "convert_checkpoint",
    "load_state_dict",
    "load_torch_state_dict",
    "read_torch_pickle",
    "oscar_config_from_source",
    "add_arguments",
    "run",
    "main",
]

logger = logging.getLogger(__name__)

TORCH_LAYOUT = "torch"  # 2-D Linear weights stored [out, in]
PADDLE_LAYOUT = "paddle"  # 2-D Linear weights stored [in, out]

# Weight files looked for in a source directory, in order of preference, with their layout
# (None: decided by the safetensors header).
WEIGHT_FILES: Tuple[Tuple[str, Optional[str]], ...] = (
    ("model.safetensors", None),
    ("pytorch_model.bin", TORCH_LAYOUT),
    ("model_state.pdparams", PADDLE_LAYOUT),
)
VOCAB_FILE = "vocab.txt"

# Parameters a source may lack; they keep their fresh initialisation (with a warning).
POOLER_PREFIX = "bert.pooler."
CLASSIFIER_PREFIX = "classifier."
CONTRASTIVE_PREFIXES = ("text_proj.", "image_proj.", "contrastive_logit_scale")
IMAGE_PREFIXES = ("bert.img_embedding.", "bert.LayerNorm.")

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


class ConversionError(ValueError):
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
    if not isinstance(loaded, Mapping) or not all(isinstance(v, np.ndarray) for v in loaded.values()):
        raise ConversionError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return dict(loaded)


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


def load_state_dict(src_dir: str) -> Tuple[Dict[str, np.ndarray], str, str]:
    """Find and read the weights of a checkpoint directory.

    Returns ``(state_dict, layout, file_name)`` where layout is ``"torch"`` (Linear weights
    ``[out, in]``) or ``"paddle"`` (``[in, out]``).
    """
    for file_name, layout in WEIGHT_FILES:
        path = os.path.join(src_dir, file_name)
        if not os.path.isfile(path):
            continue
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
            import paddle

            try:
                loaded = paddle.load(path, return_numpy=True)
            except Exception as exc:
                raise ConversionError(f"cannot read {path} as Paddle parameters: {exc}") from exc
            state = {k: np.asarray(v) for k, v in loaded.items() if not k.startswith("StructuredToParameterName")}
        return state, layout, file_name
    raise ConversionError(
        f"no weights in {src_dir}: expected one of {', '.join(name for name, _ in WEIGHT_FILES)}"
    )


# --------------------------------------------------------------------------- config


def _oscar_config_fields() -> List[str]:
    """The named parameters of ``OscarConfig.__init__``: the fields a config.json may set."""
    from .configuration import OscarConfig

    params = inspect.signature(OscarConfig.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]


def oscar_config_from_source(
    source_config: Mapping, state: Mapping[str, np.ndarray], is_oscar: bool, layout: str
) -> "OscarConfig":
    """Map an official Oscar or a BERT ``config.json`` to an :class:`OscarConfig`.

    Only the fields OscarConfig knows are kept (HF/PaddleNLP extras are dropped). For official
    Oscar configs the defaults of the official code apply to absent fields: no image LayerNorm
    when ``use_img_layernorm`` is absent, a linear classifier when ``classifier`` is absent.
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
    fields = set(_oscar_config_fields())
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


def convert_checkpoint(
    src: str,
    dst: str,
    *,
    config_overrides: Optional[Mapping] = None,
    overwrite: bool = False,
) -> str:
    """Convert an official Oscar/VinVL or a BERT checkpoint directory into a vinvl-paddle model directory.

    ``dst`` ends up with ``config.json`` and ``model.safetensors`` (loadable with
    ``OscarForImageTextRetrieval.from_pretrained(dst)``) plus the tokenizer files when ``src``
    has a ``vocab.txt``. ``config_overrides`` sets OscarConfig fields on top of what the source
    config gives (e.g. ``{"max_seq_length": 50}``). ``overwrite`` allows replacing an existing,
    non-empty ``dst``. Returns ``dst``. Raises :class:`ConversionError` naming what is wrong;
    nothing is written to ``dst`` unless the whole conversion succeeded.
    """
    from .modeling import OscarForImageTextRetrieval

    src, dst = os.path.abspath(src), os.path.abspath(dst)
    if not os.path.isdir(src):
        raise ConversionError(f"source checkpoint directory {src} does not exist")
    config_path = os.path.join(src, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{src} has no config.json")
    if os.path.exists(dst) and not overwrite and (not os.path.isdir(dst) or os.listdir(dst)):
        raise ConversionError(f"destination {dst} already exists and is not empty (pass overwrite=True to replace it)")
    source_config = _read_json(config_path)
    if source_config.get("model_type") == "oscar":
        raise ConversionError(
            f"{src} is already a vinvl-paddle model directory; load it with OscarForImageTextRetrieval.from_pretrained"
        )

    raw_state, layout, weights_file = load_state_dict(src)
    renamed_keys = {_canonical_name(k) for k in raw_state}
    is_oscar = "img_feature_dim" in source_config or "bert.img_embedding.weight" in renamed_keys
    state, dropped = _map_state_dict(raw_state, is_oscar)
    if dropped:
        logger.warning(
            "dropped %d parameters of heads Oscar retrieval does not use (%s): %s",
            len(dropped),
            "pre-training heads" if is_oscar else "BERT pre-training/task heads",
            ", ".join(sorted({".".join(k.split(".")[:2]) for k in dropped})),
        )
    config = oscar_config_from_source(source_config, state, is_oscar, layout)
    if config_overrides:
        fields = set(_oscar_config_fields())
        unknown = sorted(set(config_overrides) - fields)
        if unknown:
            raise ConversionError(f"config_overrides: unknown OscarConfig fields {unknown}")
        from .configuration import OscarConfig

        try:
            config = OscarConfig(**{**{k: getattr(config, k) for k in fields}, **dict(config_overrides)})
        except ValueError as exc:
            raise ConversionError(f"config_overrides: {exc}") from exc

    model = OscarForImageTextRetrieval(config)
    source_name = os.path.join(src, weights_file)
    _load_into_model(model, state, layout, is_oscar, source_name)
    logger.info(
        "converted %s (%s, %s layout) with %d tensors",
        source_name,
        "Oscar/VinVL" if is_oscar else "BERT",
        layout,
        len(state),
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


# --------------------------------------------------------------------------- command line


def _parse_override(text: str) -> Tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``convert`` arguments (SRC, DST, --set, --overwrite) to ``parser``."""
    parser.add_argument("src", help="official Oscar/VinVL checkpoint dir, or a HuggingFace/PaddleNLP BERT dir")
    parser.add_argument("dst", help="output model directory (config.json, model.safetensors, vocab.txt)")
    parser.add_argument(
        "--set",
        dest="config_overrides",
        metavar="KEY=VALUE",
        action="append",
        type=_parse_override,
        default=[],
        help="override an OscarConfig field (VALUE parsed as JSON when possible); repeatable",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a conversion from parsed :func:`add_arguments` arguments; returns a process exit code."""
    try:
        out = convert_checkpoint(
            args.src, args.dst, config_overrides=dict(args.config_overrides), overwrite=args.overwrite
        )
    except ConversionError as exc:
        logger.error("%s", exc)
        return 2
    print(out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m vinvl.convert SRC DST``: the same as ``vinvl convert``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
