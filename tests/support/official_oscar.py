"""A PyTorch reference of the official Oscar checkpoint layout (microsoft/Oscar's ``BertImgModel`` and
``ImageBertForSequenceClassification``, built on HuggingFace's BERT modules), the official
config.json and ``torch.save`` files it writes, and the errors of a converted model against it.

Importing this module skips the importing test module when torch or transformers is missing."""
import json
import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import vinvl  # noqa: E402,F401  (CPU defaults before paddle)
import paddle  # noqa: E402
from vinvl import OscarForImageTextRetrieval  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.models.bert import modeling_bert as hf_bert  # noqa: E402

REL_TOL = 1e-4

TINY_BERT = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
)
IMG_DIM = 14


def max_rel_err(actual, reference) -> float:
    """max |actual - reference| / max |reference| over the whole tensor."""
    actual, reference = np.asarray(actual, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.abs(actual - reference).max() / np.abs(reference).max())


class ReferenceBertImgModel(torch.nn.Module):
    """The official ``BertImgModel`` layout on HF's BERT modules: text embeddings, region Linear
    (+ optional LayerNorm), dropout, concat, encoder with additive mask ``(1 - m) * -10000``, pooler."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = hf_bert.BertEmbeddings(config)
        self.encoder = hf_bert.BertEncoder(config)
        self.pooler = hf_bert.BertPooler(config)
        self.img_embedding = torch.nn.Linear(config.img_feature_dim, config.hidden_size)
        # Official: a config without the attribute means no image LayerNorm.
        self.use_img_layernorm = getattr(config, "use_img_layernorm", False)
        if self.use_img_layernorm:
            self.LayerNorm = torch.nn.LayerNorm(config.hidden_size, eps=config.img_layer_norm_eps)
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, attention_mask, img_feats):
        text = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        regions = self.img_embedding(img_feats)
        if self.use_img_layernorm:
            regions = self.LayerNorm(regions)
        hidden = torch.cat([text, self.dropout(regions)], dim=1)
        additive = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        sequence = self.encoder(hidden, attention_mask=additive).last_hidden_state
        return sequence, self.pooler(sequence)


class ReferenceImageBertForSequenceClassification(torch.nn.Module):
    """Official ``ImageBertForSequenceClassification``: pooled -> dropout -> linear or mlp classifier."""

    def __init__(self, config):
        super().__init__()
        self.bert = ReferenceBertImgModel(config)
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob)
        # Official: no `classifier` attribute means linear; mlp without `cls_hidden_scale` widens by 2.
        if getattr(config, "classifier", "linear") == "linear":
            self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        else:
            wide = config.hidden_size * getattr(config, "cls_hidden_scale", 2)
            self.classifier = torch.nn.Sequential(
                torch.nn.Linear(config.hidden_size, wide), torch.nn.ReLU(), torch.nn.Linear(wide, config.num_labels)
            )

    def forward(self, input_ids, token_type_ids, attention_mask, img_feats):
        sequence, pooled = self.bert(input_ids, token_type_ids, attention_mask, img_feats)
        return sequence, self.classifier(self.dropout(pooled))


def official_config(classifier: str, use_img_layernorm: bool) -> dict:
    """An official-style config.json: HF BERT fields plus what run_retrieval.py adds."""
    config = transformers.BertConfig(**TINY_BERT).to_dict()
    config.update(
        img_feature_dim=IMG_DIM,
        img_feature_type="faster_r-cnn",
        use_img_layernorm=use_img_layernorm,
        img_layer_norm_eps=1e-5,
        num_labels=2,
        loss_type="sfmx",
        classifier=classifier,
        cls_hidden_scale=3,
    )
    return config


def write_official_checkpoint(path, config: dict, legacy: bool, extra_keys: bool = True):
    """Build the reference with random weights, save it like microsoft/Oscar does; returns the reference."""
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**config)
    hf_config._attn_implementation = "eager"
    reference = ReferenceImageBertForSequenceClassification(hf_config).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0.0, 0.3)  # larger than BERT's init so every parameter visibly matters
    state = dict(reference.state_dict())
    if extra_keys:  # what a pre-training checkpoint also carries
        state["cls.predictions.bias"] = torch.zeros(config["vocab_size"])
        state["cls.predictions.transform.dense.weight"] = torch.zeros(config["hidden_size"], config["hidden_size"])
        state["cls.seq_relationship.weight"] = torch.zeros(2, config["hidden_size"])
    os.makedirs(path, exist_ok=True)
    torch.save(state, os.path.join(path, "pytorch_model.bin"), _use_new_zipfile_serialization=not legacy)
    with open(os.path.join(path, "config.json"), "w") as handle:
        json.dump(config, handle)
    return reference


def reference_errors(dst, reference, inputs=None, attended_only=False):
    """Max relative errors (logits, sequence output) of the converted model in ``dst`` against ``reference``.

    ``attended_only`` compares the sequence output at attended positions only.
    """
    input_ids, token_type_ids, mask, img_feats = inputs if inputs is not None else random_oscar_inputs()
    model = OscarForImageTextRetrieval.from_pretrained(dst)
    model.eval()
    with torch.no_grad():
        ref_sequence, ref_logits = reference(
            *(torch.from_numpy(a) for a in (input_ids, token_type_ids, mask, img_feats))
        )
    with paddle.no_grad():
        args = [paddle.to_tensor(a) for a in (input_ids, token_type_ids, mask)]
        logits = model(*args, img_feats=paddle.to_tensor(img_feats)).logits.numpy()
        sequence = model.bert(*args, img_feats=paddle.to_tensor(img_feats)).last_hidden_state.numpy()
    ref_sequence = ref_sequence.numpy()
    if attended_only:
        sequence, ref_sequence = sequence[mask == 1], ref_sequence[mask == 1]
    return max_rel_err(logits, ref_logits.numpy()), max_rel_err(sequence, ref_sequence)


def random_oscar_inputs(batch=4, text_len=11, regions=7, seed=1):
    """Random ids, segments, region features and a ragged text+region attention mask."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(1, TINY_BERT["vocab_size"], size=(batch, text_len)).astype(np.int64)
    token_type_ids = np.zeros_like(input_ids)
    mask = np.zeros((batch, text_len + regions), dtype=np.int64)
    for i in range(batch):
        n_text = text_len - 2 * i
        n_regions = regions - i
        token_type_ids[i, n_text // 2 : n_text] = 1
        input_ids[i, n_text:] = 0
        mask[i, :n_text] = 1
        mask[i, text_len : text_len + n_regions] = 1
    img_feats = rng.normal(size=(batch, regions, IMG_DIM)).astype(np.float32)
    return input_ids, token_type_ids, mask, img_feats
