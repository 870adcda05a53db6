"""RetrievalTrainer: paddlenlp.Trainer with the VinVL objectives and R@K evaluation."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

import numpy as np
import paddle
from paddlenlp.trainer import Trainer
from paddlenlp.trainer.trainer import OPTIMIZER_NAME
from paddlenlp.utils.env import PADDLE_WEIGHTS_NAME, SAFE_WEIGHTS_NAME
from paddlenlp.utils.log import logger

from ..data.collate import PAIR_SAMPLING
from ..oscar.processor import OscarProcessor
from .decay import apply_decay_to
from .frozen_states import split_projections
from .heads import TRAIN_ONLY, freeze_all_but, trainable_parameter_names
from .losses import contrastive_loss, distillation_loss, list_distillation_loss, objective_parts, trained_heads
from .negatives import mined_pair_inputs, sample_negatives
from .official_adamw import OfficialAdamW
from .optimizer_state import from_structured_names, to_structured_names
from .sampler import EpochSeededBatchSampler
from .teacher import match_margins

__all__ = ["RetrievalTrainer"]

_PAIR_KEYS = ("input_ids", "token_type_ids", "attention_mask", "img_feats", "labels")
_SINGLE_MODALITY_KEYS = ("caption_inputs", "image_inputs")


class RetrievalTrainer(Trainer):
    """paddlenlp.Trainer for image-text retrieval.

    - ``objective``: ``"itm"`` (the official matching loss over positive and negative pairs),
      ``"itc"`` (in-batch contrastive loss on caption-only and image-only passes), ``"itm+itc"``,
      ``"distill"`` (the match head's in-batch scores, computed without gradient, as the targets
      of the contrastive heads, see :func:`vinvl.training.losses.distillation_loss`) or
      ``"itc+distill"``.
    - ``distill_candidates``: 0 distils over in-batch candidates, running the encoder each step;
      N > 0 (``distill`` with ``train_only="heads"`` only) trains on fixed lists (each query's
      own match(es) and N random candidates) whose pooled states and teacher scores were computed once
      (:mod:`vinvl.training.frozen_states`; the train dataset is then a ``FrozenStateQueries``).
    - ``train_only``: ``"all"`` or ``"heads"``: only the objective's heads (plus the last
      ``trainable_layers`` encoder layers) train; everything else is frozen (``stop_gradient``,
      left out of the optimizer) and saved bit-identical. ``"heads"`` with ``"distill"`` fits the
      contrastive heads of a checkpoint whose match head is trained, without touching that head.
    - ``itm_negatives``: ``"random"`` (the official negatives, sampled with the data) or
      ``"mined"`` (``itm+itc`` only: two negatives per positive drawn from the batch by their
      contrastive similarity, see :mod:`vinvl.training.negatives`).
    - ``evaluate`` ranks ``eval_dataset`` (a corpus with the RetrievalCorpus interface) with the
      retrieval engine and reports R@1/5/10 both ways and ``rsum`` (use ``metric_for_best_model
      rsum``), instead of paddlenlp's loss-only evaluation loop.
    - Weight decay follows the official groups on every path: biases and normalisation weights
      are exempt, found by role (:mod:`vinvl.training.decay`).
    - The optimiser step is the official run's: torch's clipping and pytorch_transformers' AdamW
      (:class:`vinvl.training.official_adamw.OfficialAdamW`), the scheduler stepped before each update.
    - Each optimiser step takes ``per_device_train_batch_size x gradient_accumulation_steps x
      devices`` items, the last step of an epoch filled up (:class:`EpochSeededBatchSampler`).
    - The training order and the negatives depend only on (seed, epoch), and the optimizer state
      is saved under structured parameter names (:mod:`vinvl.training.optimizer_state`), so
      resuming from a checkpoint, in a new process or in one that built other models before,
      continues exactly where an uninterrupted run would be.
    - Training records the heads it trained in the model's config (``trained_heads``: what the
      start model recorded, plus ``match`` for itm and ``contrastive`` for itc / distill), so
      every checkpoint and the final model say which heads carry trained weights.
    """

    def __init__(
        self,
        *args,
        processor: OscarProcessor,
        objective: str = "itm+itc",
        itm_negatives: str = "random",
        eval_mode: str = "exhaustive",
        eval_candidates: int = 16,
        eval_with_caption_index: bool = True,
        train_only: str = "all",
        trainable_layers: int = 0,
        distill_temperature: float = 1.0,
        distill_candidates: int = 0,
        **kwargs,
    ):
        self._objectives = objective_parts(objective)
        if distill_candidates < 0:
            raise ValueError(f"distill_candidates must be >= 0, got {distill_candidates}")
        if distill_candidates and (objective != "distill" or train_only != "heads" or trainable_layers):
            raise ValueError(
                "distill_candidates fits the contrastive heads on a frozen encoder's states: it needs "
                f"objective='distill', train_only='heads' and no trainable_layers (got {objective!r}, "
                f"{train_only!r}, {trainable_layers})"
            )
        if itm_negatives not in PAIR_SAMPLING:
            raise ValueError(f"itm_negatives must be one of {PAIR_SAMPLING}, got {itm_negatives!r}")
        if itm_negatives == "mined" and objective != "itm+itc":
            raise ValueError(f"mined negatives need the objective itm+itc (they come from its similarities), got {objective!r}")
        if train_only not in TRAIN_ONLY:
            raise ValueError(f"train_only must be one of {TRAIN_ONLY}, got {train_only!r}")
        if trainable_layers and train_only != "heads":
            raise ValueError("trainable_layers unfreezes encoder layers beside the heads: it needs train_only='heads'")
        if trainable_layers and "distill" in self._objectives:
            raise ValueError(
                "trainable_layers with a distill objective trains the layers its teacher (the match head) "
                "reads: the targets would move with the student; fit the heads alone"
            )
        if distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be positive, got {distill_temperature}")
        super().__init__(*args, **kwargs)
        if self.args.use_async_save or self.args.unified_checkpoint:
            raise ValueError("RetrievalTrainer saves optimizer state itself: use_async_save / unified_checkpoint are not supported")
        self.processor = processor
        self.objective = objective
        self.itm_negatives = itm_negatives
        self.eval_mode = eval_mode
        self.eval_candidates = eval_candidates
        self.eval_with_caption_index = eval_with_caption_index
        self.train_only = train_only
        self.distill_temperature = distill_temperature
        self.distill_candidates = distill_candidates
        if train_only == "heads":
            self._freeze(trainable_layers)
        self._save_ckpt_func = self._structured_optimizer_saver(self._save_ckpt_func)

    def _freeze(self, trainable_layers: int) -> None:
        names = trainable_parameter_names(self.model, trained_heads(self.objective), trainable_layers)
        count = freeze_all_but(self.model, names)
        total = sum(int(p.size) for p in self.model.parameters())
        logger.info(f"Training {len(names)} tensors ({count:,} of {total:,} weights); the rest is frozen")
        if trainable_layers and "match" not in trained_heads(self.objective):
            logger.warning(
                f"The last {trainable_layers} encoder layers train, and the match head reads them too: "
                "its scores will change although the objective does not train it"
            )

    def create_optimizer(self, lr_scheduler=None):
        """The optimizer over the trainable parameters, with the official weight-decay groups: biases
        and normalisation weights exempt (:mod:`vinvl.training.decay`), where paddlenlp's own rule
        would decay every ``LayerNorm.weight``. For ``optim adamw`` (the default) it is
        :class:`OfficialAdamW`, the official run's clipping and AdamW update; other ``optim`` values
        keep paddlenlp's class with Paddle's clipping."""
        if self.optimizer is not None:
            return self.optimizer
        parameters = [p for p in self.model.parameters() if not p.stop_gradient]
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args)
        common = dict(
            learning_rate=self.lr_scheduler if lr_scheduler is None else lr_scheduler,
            apply_decay_param_fun=apply_decay_to(self.model, parameters),
            parameters=parameters,
            weight_decay=self.args.weight_decay,
            **optimizer_kwargs,
        )
        if optimizer_cls is paddle.optimizer.AdamW:
            self.optimizer = OfficialAdamW(max_grad_norm=self.args.max_grad_norm, **common)
            return self.optimizer
        if hasattr(optimizer_cls, "_create_master_weight") and self.args.fp16_opt_level == "O2":
            common["multi_precision"] = True  # as paddlenlp: float32 master weights under O2
        clip = paddle.nn.ClipGradByGlobalNorm(self.args.max_grad_norm) if self.args.max_grad_norm > 0 else None
        self.optimizer = optimizer_cls(grad_clip=clip, **common)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int):
        """paddlenlp's scheduler, stepped once at the start: the official loop steps the scheduler
        before each update and paddlenlp's after, so the k-th update takes the schedule's value at
        k as the official one does (with warm-up too; the last update's rate of a linear decay is 0)."""
        if self.lr_scheduler is None:
            super().create_scheduler(num_training_steps)
            self.lr_scheduler.step()
        return self.lr_scheduler

    def train(self, *args, **kwargs):
        """paddlenlp's training loop, with the heads it trains recorded in the model's config first
        (so checkpoints written during the run carry the record too)."""
        config = self.model.config
        config.trained_heads = sorted(config.heads_trained() | trained_heads(self.objective))
        return super().train(*args, **kwargs)

    def _structured_optimizer_saver(self, save):
        """Wrap paddlenlp's checkpoint-file writer so the optimizer file is keyed by structured names."""

        def save_checkpoint_file(state_dict, path, signal_path=None):
            if os.path.basename(path) == OPTIMIZER_NAME:
                state_dict = to_structured_names(state_dict, self.model)
            return save(state_dict, path, signal_path)

        return save_checkpoint_file

    def _load_optimizer_and_scheduler(self, checkpoint):
        """paddlenlp's loading, with the optimizer state renamed from structured names to the
        current parameters' names just before it is set."""
        if checkpoint is None or self.optimizer is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        set_state_dict = self.optimizer.set_state_dict
        self.optimizer.set_state_dict = lambda state: set_state_dict(from_structured_names(state, self.model))
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)
        finally:
            del self.optimizer.set_state_dict

    def _get_train_sampler(self) -> EpochSeededBatchSampler:
        return EpochSeededBatchSampler(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            seed=self.args.seed,
            num_replicas=self.args.dataset_world_size,
            rank=self.args.dataset_rank,
            drop_last=self.args.dataloader_drop_last,
            accumulation_steps=self.args.gradient_accumulation_steps,
        )

    def _load_from_checkpoint(self, resume_from_checkpoint=None):
        """Also resume from checkpoints whose weights are ``model.safetensors`` (what
        ``save_pretrained`` writes here); paddlenlp 3.0.0b4 looks for ``model_state.pdparams`` only."""
        if isinstance(resume_from_checkpoint, str):
            weights = os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME)
            if os.path.isfile(weights) and not os.path.isfile(os.path.join(resume_from_checkpoint, PADDLE_WEIGHTS_NAME)):
                from safetensors.numpy import load_file

                self.model.set_state_dict(load_file(weights))
                return
        super()._load_from_checkpoint(resume_from_checkpoint)

    def compute_loss(self, model, inputs: Dict[str, Any], return_outputs: bool = False):
        if self.distill_candidates:
            loss, outputs = self._frozen_state_loss(model, inputs)
            return (loss, outputs) if return_outputs else loss
        image_index = inputs.pop("image_index")
        if self.itm_negatives == "mined":
            loss, outputs = self._mined_loss(model, inputs, image_index)
            return (loss, outputs) if return_outputs else loss
        parts = self._objectives
        teacher = None
        if "distill" in parts:  # before the student's forward: data parallel allows one per backward
            teacher = match_margins(
                getattr(model, "_layers", model), self.processor, inputs["pair_pieces"], inputs["image_inputs"],
                chunk=self.args.per_device_eval_batch_size,
            )
        keys = (_PAIR_KEYS if "itm" in parts else ()) + (_SINGLE_MODALITY_KEYS if parts - {"itm"} else ())
        outputs = model(**{k: inputs[k] for k in keys if k in inputs})
        losses = []
        if "itm" in parts:
            losses.append(outputs.loss)
        if "itc" in parts:
            losses.append(
                contrastive_loss(outputs.caption_embeds, outputs.image_embeds, outputs.logit_scale, image_index)
            )
        if teacher is not None:
            losses.append(
                distillation_loss(
                    outputs.caption_embeds, outputs.image_embeds, outputs.logit_scale, teacher, self.distill_temperature
                )
            )
        loss = paddle.add_n(losses)
        return (loss, outputs) if return_outputs else loss

    def _frozen_state_loss(self, model, inputs: Dict[str, Any]) -> tuple:
        """Distillation over fixed candidate lists: the heads project precomputed encoder states
        (one forward), each query's list is ranked against its teacher scores, both directions
        weighted by their query counts."""
        outputs = model(caption_states=inputs["caption_states"], image_states=inputs["image_states"])
        parts = split_projections(outputs.caption_embeds, outputs.image_embeds, inputs)
        losses = [
            list_distillation_loss(query, candidates, outputs.logit_scale, teacher, self.distill_temperature, listed)
            * len(teacher)
            for query, candidates, teacher, listed in parts
        ]
        return paddle.add_n(losses) / sum(len(part[2]) for part in parts), outputs

    def _mined_loss(self, model, inputs: Dict[str, Any], image_index: paddle.Tensor) -> tuple:
        """Contrastive loss, plus the matching loss on negatives drawn from the batch's similarities.

        The draw needs the embeddings before the pairs exist, so a gradient-free pass of the
        caption-only and image-only inputs comes first; the training forward then takes the
        pairs and the single-modality inputs together, as one call, which is what data-parallel
        training requires (one forward per backward; a second forward of the same parameters
        fails there). The draw is seeded by (seed, step, rank), so a resumed run draws the same.
        """
        single = {"caption_inputs": inputs["caption_inputs"], "image_inputs": inputs["image_inputs"]}
        with paddle.no_grad():
            embedded = getattr(model, "_layers", model)(**single)
            similarity = embedded.logit_scale * paddle.matmul(embedded.caption_embeds, embedded.image_embeds, transpose_y=True)
        rng = np.random.default_rng([self.args.seed, self.state.global_step, self.args.dataset_rank])
        image_for_caption, caption_for_image = sample_negatives(similarity.numpy(), image_index.numpy(), rng)
        pairs = mined_pair_inputs(
            self.processor, inputs["pair_pieces"], inputs["image_inputs"], image_for_caption, caption_for_image
        )
        outputs = model(**pairs, **single)
        itc = contrastive_loss(outputs.caption_embeds, outputs.image_embeds, outputs.logit_scale, image_index)
        return itc + outputs.loss, outputs

    def evaluate(
        self,
        eval_dataset: Optional[Any] = None,
        ignore_keys: Optional[List[str]] = None,
        metric_key_prefix: str = "eval",
    ) -> Dict[str, float]:
        from ..retrieval import evaluate_corpus

        corpus = eval_dataset if eval_dataset is not None else self.eval_dataset
        if corpus is None:
            raise ValueError("evaluation needs an eval corpus (pass eval_dataset)")
        start = time.time()
        metrics = evaluate_corpus(
            self.model,
            self.processor,
            corpus,
            first_stage="contrastive" if self.eval_mode == "two_stage" else "exhaustive",
            top_k=self.eval_candidates,
            batch_size=self.args.per_device_eval_batch_size,
            use_caption_index=self.eval_with_caption_index,
            progress=not self.args.disable_tqdm and self.is_local_process_zero(),
        )
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in metrics.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
