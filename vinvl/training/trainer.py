"""RetrievalTrainer: paddlenlp.Trainer with the VinVL objectives and R@K evaluation."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

import numpy as np
import paddle
from paddlenlp.trainer import Trainer
from paddlenlp.utils.env import PADDLE_WEIGHTS_NAME, SAFE_WEIGHTS_NAME

from ..processor import OscarProcessor
from ..data.collate import PAIR_SAMPLING
from .losses import OBJECTIVES, contrastive_loss
from .negatives import mined_pair_inputs, sample_negatives
from .sampler import EpochSeededBatchSampler

__all__ = ["RetrievalTrainer"]

_PAIR_KEYS = ("input_ids", "token_type_ids", "attention_mask", "img_feats", "labels")
_SINGLE_MODALITY_KEYS = ("caption_inputs", "image_inputs")


class RetrievalTrainer(Trainer):
    """paddlenlp.Trainer for image-text retrieval.

    - ``objective``: ``"itm"`` (the official matching loss over positive and negative pairs),
      ``"itc"`` (in-batch contrastive loss on caption-only and image-only passes) or ``"itm+itc"``.
    - ``itm_negatives``: ``"random"`` (the official negatives, sampled with the data) or
      ``"mined"`` (``itm+itc`` only: two negatives per positive drawn from the batch by their
      contrastive similarity, see :mod:`vinvl.training.negatives`).
    - ``evaluate`` ranks ``eval_dataset`` (a corpus with the RetrievalCorpus interface) with the
      retrieval engine and reports R@1/5/10 both ways and ``rsum`` (use ``metric_for_best_model
      rsum``), instead of paddlenlp's loss-only evaluation loop.
    - The training order and the negatives depend only on (seed, epoch), so resuming from a
      checkpoint continues exactly where an uninterrupted run would be.
    """

    def __init__(
        self,
        *args,
        processor: OscarProcessor,
        objective: str = "itm+itc",
        itm_negatives: str = "random",
        eval_mode: str = "exhaustive",
        eval_top_k: int = 16,
        eval_with_caption_index: bool = True,
        **kwargs,
    ):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if itm_negatives not in PAIR_SAMPLING:
            raise ValueError(f"itm_negatives must be one of {PAIR_SAMPLING}, got {itm_negatives!r}")
        if itm_negatives == "mined" and objective != "itm+itc":
            raise ValueError(f"mined negatives need the objective itm+itc (they come from its similarities), got {objective!r}")
        super().__init__(*args, **kwargs)
        self.processor = processor
        self.objective = objective
        self.itm_negatives = itm_negatives
        self._objectives = set(objective.split("+"))
        self.eval_mode = eval_mode
        self.eval_top_k = eval_top_k
        self.eval_with_caption_index = eval_with_caption_index

    def _get_train_sampler(self) -> EpochSeededBatchSampler:
        return EpochSeededBatchSampler(
            self.train_dataset,
            batch_size=self.args.per_device_train_batch_size,
            seed=self.args.seed,
            num_replicas=self.args.dataset_world_size,
            rank=self.args.dataset_rank,
            drop_last=self.args.dataloader_drop_last,
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
        image_index = inputs.pop("image_index")
        if self.itm_negatives == "mined":
            loss, outputs = self._mined_loss(model, inputs, image_index)
            return (loss, outputs) if return_outputs else loss
        use_itm, use_itc = "itm" in self._objectives, "itc" in self._objectives
        dropped = (() if use_itc else _SINGLE_MODALITY_KEYS) + (() if use_itm else _PAIR_KEYS)
        outputs = model(**{k: v for k, v in inputs.items() if k not in dropped})
        losses = []
        if use_itm:
            losses.append(outputs.loss)
        if use_itc:
            losses.append(
                contrastive_loss(outputs.caption_embeds, outputs.image_embeds, outputs.logit_scale, image_index)
            )
        loss = paddle.add_n(losses)
        return (loss, outputs) if return_outputs else loss

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
            top_k=self.eval_top_k,
            batch_size=self.args.per_device_eval_batch_size,
            use_caption_index=self.eval_with_caption_index,
            progress=not self.args.disable_tqdm and self.is_local_process_zero(),
        )
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in metrics.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
