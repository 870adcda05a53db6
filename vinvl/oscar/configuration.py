"""OscarConfig: the BERT hyper-parameters plus what Oscar/VinVL adds for regions and the match head."""
from __future__ import annotations

from typing import List, Optional, Set

from paddlenlp.transformers.configuration_utils import PretrainedConfig

from .names import SHIPPED_CONFIGS, pretrained_source

__all__ = ["HEAD_NAMES", "OscarConfig"]

CLASSIFIER_TYPES = ("linear", "mlp")
# The heads a model directory can record as trained: the cross-encoder match head and the
# caption-only / image-only contrastive heads of the first retrieval stage.
HEAD_NAMES = ("match", "contrastive")
LOSS_TYPES = ("sfmx",)


class OscarConfig(PretrainedConfig):
    """Configuration of an Oscar/VinVL encoder and its image-text retrieval heads.

    The BERT fields keep their HuggingFace names so an official Oscar ``config.json``
    loads as is. The Oscar fields follow ``oscar/run_retrieval.py``:

    - ``img_feature_dim``: width of one region feature (2054 = 2048 appearance + 6 geometry).
    - ``img_feature_type``: only ``"frcnn"`` style continuous features are supported.
    - ``use_img_layernorm`` / ``img_layer_norm_eps``: LayerNorm after the region projection.
    - ``num_labels`` / ``loss_type``: the match head (2 logits, softmax cross-entropy).
    - ``classifier`` / ``cls_hidden_scale``: ``"linear"`` or a 2-layer ``"mlp"`` head.
    - ``max_seq_length`` / ``max_img_seq_length``: text tokens and regions per pair.
    - ``contrastive_dim``: width of the caption-only / image-only embedding heads used by
      the contrastive objective and the first retrieval stage (0 disables them).
    - ``contrastive_hidden_size``: 0 makes each contrastive head one linear projection of the
      mean-pooled encoder states; N > 0 a two-layer MLP (hidden -> N -> GELU -> contrastive_dim),
      which a first stage fitted to a frozen encoder needs to follow its match head closely.
    - ``trained_heads``: which of ``HEAD_NAMES`` carry trained weights, written by whoever
      produced the weights (conversion, the Trainer); ``None`` means not recorded (directories
      saved before the record existed), read as all heads trained.
    """

    model_type = "oscar"
    pretrained_init_configuration = SHIPPED_CONFIGS

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "OscarConfig":
        """A config from a local directory or ``config.json``, or by the name of a shipped config
        (``tiny``, ``vinvl-base``, ``vinvl-large``); never from the network (see :mod:`vinvl.oscar.names`)."""
        return super().from_pretrained(pretrained_source(pretrained_model_name_or_path), **kwargs)

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        img_feature_dim: int = 2054,
        img_feature_type: str = "frcnn",
        use_img_layernorm: bool = True,
        img_layer_norm_eps: float = 1e-12,
        num_labels: int = 2,
        loss_type: str = "sfmx",
        classifier: str = "linear",
        cls_hidden_scale: int = 2,
        max_seq_length: int = 70,
        max_img_seq_length: int = 70,
        contrastive_dim: int = 256,
        contrastive_hidden_size: int = 0,
        trained_heads: Optional[List[str]] = None,
        **kwargs,
    ):
        super().__init__(pad_token_id=pad_token_id, num_labels=num_labels, **kwargs)
        if classifier not in CLASSIFIER_TYPES:
            raise ValueError(f"OscarConfig: classifier must be one of {CLASSIFIER_TYPES}, got {classifier!r}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"OscarConfig: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if img_feature_type != "frcnn":
            raise ValueError(
                f"OscarConfig: img_feature_type {img_feature_type!r} is not supported; "
                "only continuous region features ('frcnn') are"
            )
        if trained_heads is not None and not set(trained_heads) <= set(HEAD_NAMES):
            raise ValueError(f"OscarConfig: trained_heads must be a subset of {HEAD_NAMES}, got {trained_heads!r}")
        if type(contrastive_hidden_size) is not int or contrastive_hidden_size < 0:
            raise ValueError(
                f"OscarConfig: contrastive_hidden_size must be an integer >= 0, got {contrastive_hidden_size!r}"
            )
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"OscarConfig: hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.img_feature_dim = img_feature_dim
        self.img_feature_type = img_feature_type
        self.use_img_layernorm = bool(use_img_layernorm)
        self.img_layer_norm_eps = img_layer_norm_eps
        self.loss_type = loss_type
        self.classifier = classifier
        self.cls_hidden_scale = cls_hidden_scale
        self.max_seq_length = max_seq_length
        self.max_img_seq_length = max_img_seq_length
        self.contrastive_dim = contrastive_dim
        self.contrastive_hidden_size = contrastive_hidden_size
        self.trained_heads = None if trained_heads is None else sorted(set(trained_heads))

    def heads_trained(self) -> Set[str]:
        """The heads whose weights are trained (all of them when nothing was recorded)."""
        return set(HEAD_NAMES) if self.trained_heads is None else set(self.trained_heads)
