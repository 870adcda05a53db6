"""The arguments of fine-tuning (a recipe's keys): the model's, the data's, and paddlenlp's
TrainingArguments with the total batch the recipe states."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import paddle
from paddlenlp.trainer import TrainingArguments
from paddlenlp.trainer.training_args import OptimizerNames

from ..data.collate import PAIR_SAMPLING
from ..errors import UsageError
from .batch import BatchPlan, plan_total_batch
from .heads import TRAIN_ONLY
from .losses import OBJECTIVES, trained_heads

__all__ = [
    "ModelArguments",
    "DataArguments",
    "RetrievalTrainingArguments",
    "RENAMED_OPTIONS",
    "validate_arguments",
]

# Options renamed since a recipe could hold them: old key -> new key (the old one is refused, naming the new).
RENAMED_OPTIONS = {"eval_top_k": "eval_candidates"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "A model directory: a converted checkpoint, a converted BERT, or a config directory "
            "(config.json without weights: random initialisation), such as a shipped config by name: "
            "tiny, vinvl-base, vinvl-large."
        }
    )
    objective: str = field(
        default="itm+itc",
        metadata={
            "help": f"Training objective, one of {OBJECTIVES}: image-text matching, contrastive, both; "
            "distill: the match head's in-batch scores as the contrastive heads' targets (fits a first stage "
            "to a checkpoint whose match head is trained), alone or with the contrastive loss."
        },
    )
    train_only: str = field(
        default="all",
        metadata={
            "help": f"One of {TRAIN_ONLY}: train every weight, or only the heads the objective trains (plus "
            "--trainable_layers); the rest is frozen and saved unchanged."
        },
    )
    trainable_layers: int = field(
        default=0,
        metadata={
            "help": "With --train_only heads and --objective itc: also train the last N encoder layers (the "
            "match head reads them too, so its scores change; refused with distill, whose teacher they are)."
        },
    )
    distill_temperature: float = field(
        default=1.0,
        metadata={"help": "Divides the match head's logit margins before their softmax (the distillation targets)."},
    )
    distill_candidates: int = field(
        default=0,
        metadata={
            "help": "With --objective distill --train_only heads: N > 0 fits the heads on fixed lists (each "
            "caption's image + N random images, each image's captions + N random captions) scored by the match "
            "head once, over the frozen encoder's states computed once (saved in output_dir, reused by a run "
            "with the same settings): many epochs over a large collection for the price of its pairs. "
            "0: in-batch candidates, the encoder run every step."
        },
    )
    distill_mined: int = field(
        default=0,
        metadata={
            "help": "With --distill_candidates: M > 0 adds to each caption's and image's list the M candidates the "
            "model's own contrastive heads rank highest (not listed yet), scored by the match head too. Needs "
            "trained contrastive heads: run it on the output of a first --distill_candidates fit, which it "
            "continues (M x (captions + images) more pairs to score)."
        },
    )
    contrastive_hidden_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "Give the model fresh contrastive heads of this shape before training (0: linear, N: an MLP "
            "hidden -> N -> GELU -> contrastive_dim) when it differs from the model's; needs an objective that trains "
            "the contrastive heads. Default: keep the model's heads."
        },
    )
    hidden_dropout_prob: Optional[float] = field(
        default=None,
        metadata={
            "help": "Dropout of the hidden states, set in the model's config before it is built. The official "
            "fine-tuning sets it (--drop_out 0.1) whatever the pre-trained checkpoint's config says; default: "
            "keep the checkpoint's."
        },
    )
    itm_negatives: str = field(
        default="random",
        metadata={
            "help": f"Negatives of the matching loss, one of {PAIR_SAMPLING}: the official random ones, or "
            "two per positive drawn from the batch by contrastive similarity (itm+itc only)."
        },
    )


@dataclass
class DataArguments:
    data_dir: str = field(metadata={"help": "The coco_ir directory (captions, key files, features)."})
    features_dir: Optional[str] = field(
        default=None, metadata={"help": "Where the per-split feature folders are (default: data_dir/features)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="minival", metadata={"help": "Split evaluated during training."})
    add_od_labels: bool = field(default=True, metadata={"help": "Append the detector's object tags to the text."})
    eval_img_keys_file: Optional[str] = field(
        default=None, metadata={"help": "Key file (in data_dir) restricting the evaluation images."}
    )
    eval_with_caption_index: bool = field(
        default=True,
        metadata={"help": "On minival, rank only each image's top-20 hard-negative captions when the index exists."},
    )
    eval_mode: str = field(default="exhaustive", metadata={"help": "exhaustive or two_stage evaluation."})
    eval_candidates: int = field(
        default=16, metadata={"help": "First-stage candidates per query re-ranked in two_stage mode."}
    )
    max_seq_length: Optional[int] = field(default=None, metadata={"help": "Text tokens per pair (default: config)."})
    max_img_seq_length: Optional[int] = field(default=None, metadata={"help": "Regions per pair (default: config)."})


@dataclass
class RetrievalTrainingArguments(TrainingArguments):
    """paddlenlp's TrainingArguments, plus the total batch a recipe states.

    With ``total_train_batch_size`` set, ``per_device_train_batch_size`` is the most pairs a device
    takes per forward, and both it and ``gradient_accumulation_steps`` are derived from the number of
    data-parallel devices (:func:`vinvl.training.batch.plan_total_batch`); ``batch_plan`` records the split.
    """

    total_train_batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "Pairs per optimiser step over all devices (official VinVL: 128). Derives the per-device "
            "batch (at most --per_device_train_batch_size) and the gradient accumulation from the number of "
            "devices; refused when the devices cannot reach it exactly. Default: per-device batch x devices."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.batch_plan: Optional[BatchPlan] = None
        if self.total_train_batch_size is None:
            return
        if self.gradient_accumulation_steps != 1:
            raise UsageError(
                "--gradient_accumulation_steps is derived from --total_train_batch_size: give one of them, not both"
            )
        self.batch_plan = plan_total_batch(
            self.total_train_batch_size, self.dataset_world_size, self.per_device_train_batch_size
        )
        self.per_device_train_batch_size = self.batch_plan.per_device
        self.gradient_accumulation_steps = self.batch_plan.accumulation_steps


def runs_on_cpu() -> bool:
    """Whether paddle computes on the CPU (no GPU or other accelerator in use)."""
    return paddle.device.get_device().startswith("cpu")


def validate_arguments(model_args: ModelArguments, data_args: DataArguments, training_args) -> None:
    """Fail at start, with the argument named, on what would otherwise fail deep into a run."""
    for flag in ("fp16", "bf16"):
        if getattr(training_args, flag) and runs_on_cpu():
            raise ValueError(f"--{flag} needs a GPU: mixed precision does not run on the CPU (train in float32 there)")
        if getattr(training_args, flag) and training_args.fp16_opt_level == "O2" and training_args.optim == OptimizerNames.ADAMW:
            raise ValueError(
                "--fp16_opt_level O2 keeps float32 master weights, which the official AdamW step "
                "(vinvl.training.official_adamw) does not update: use O1 (the default) with --optim adamw"
            )
    if model_args.objective not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {OBJECTIVES}, got {model_args.objective!r}")
    if model_args.train_only not in TRAIN_ONLY:
        raise ValueError(f"--train_only must be one of {TRAIN_ONLY}, got {model_args.train_only!r}")
    if model_args.trainable_layers < 0:
        raise ValueError(f"--trainable_layers must be >= 0, got {model_args.trainable_layers}")
    if model_args.trainable_layers and model_args.train_only != "heads":
        raise ValueError("--trainable_layers needs --train_only heads (otherwise every layer trains)")
    if model_args.trainable_layers and "distill" in model_args.objective.split("+"):
        raise ValueError(
            "--trainable_layers with a distill objective trains the encoder layers its teacher, the match "
            "head, reads: the targets would move with the student and the match head would change; fit the "
            "heads alone (--trainable_layers 0)"
        )
    if model_args.distill_temperature <= 0:
        raise ValueError(f"--distill_temperature must be positive, got {model_args.distill_temperature}")
    if "distill" in model_args.objective.split("+") and training_args.per_device_train_batch_size < 2:
        raise ValueError("--objective distill ranks the batch's candidates: --per_device_train_batch_size must be >= 2")
    if model_args.distill_candidates < 0:
        raise ValueError(f"--distill_candidates must be >= 0, got {model_args.distill_candidates}")
    if model_args.distill_candidates and (model_args.objective != "distill" or model_args.train_only != "heads"):
        raise ValueError(
            "--distill_candidates fits the contrastive heads on the frozen encoder's states: it needs "
            f"--objective distill --train_only heads (got {model_args.objective!r}, {model_args.train_only!r})"
        )
    if model_args.distill_mined < 0:
        raise ValueError(f"--distill_mined must be >= 0, got {model_args.distill_mined}")
    if model_args.distill_mined and not model_args.distill_candidates:
        raise ValueError("--distill_mined adds to the lists of a --distill_candidates fit: give --distill_candidates N")
    if model_args.contrastive_hidden_size is not None:
        if model_args.contrastive_hidden_size < 0:
            raise ValueError(f"--contrastive_hidden_size must be >= 0, got {model_args.contrastive_hidden_size}")
        if "contrastive" not in trained_heads(model_args.objective):
            raise ValueError(
                f"--contrastive_hidden_size gives the model new contrastive heads, which --objective "
                f"{model_args.objective} does not train"
            )
    if model_args.hidden_dropout_prob is not None and not 0 <= model_args.hidden_dropout_prob < 1:
        raise ValueError(f"--hidden_dropout_prob must be in [0, 1), got {model_args.hidden_dropout_prob}")
    if model_args.itm_negatives not in PAIR_SAMPLING:
        raise ValueError(f"--itm_negatives must be one of {PAIR_SAMPLING}, got {model_args.itm_negatives!r}")
    if model_args.itm_negatives == "mined" and model_args.objective != "itm+itc":
        raise ValueError(f"--itm_negatives mined needs --objective itm+itc, got {model_args.objective!r}")
    if model_args.itm_negatives == "mined" and training_args.per_device_train_batch_size < 2:
        raise ValueError("--itm_negatives mined draws negatives from the batch: --per_device_train_batch_size must be >= 2")
    if not os.path.isfile(os.path.join(model_args.model_name_or_path, "config.json")):
        raise FileNotFoundError(
            f"--model_name_or_path {model_args.model_name_or_path!r} is not a model directory (no config.json there)"
        )
    if not os.path.isdir(data_args.data_dir):
        raise FileNotFoundError(f"--data_dir {data_args.data_dir!r} does not exist")
    if data_args.eval_mode not in ("exhaustive", "two_stage"):
        raise ValueError(f"--eval_mode must be 'exhaustive' or 'two_stage', got {data_args.eval_mode!r}")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(training_args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(training_args, name)}")
    if data_args.eval_candidates <= 0:
        raise ValueError(f"--eval_candidates must be positive, got {data_args.eval_candidates}")
    for name in ("max_seq_length", "max_img_seq_length"):
        value = getattr(data_args, name)
        if value is not None and value < (3 if name == "max_seq_length" else 0):
            raise ValueError(f"--{name} is too small: {value}")
