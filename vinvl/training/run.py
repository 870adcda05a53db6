"""A fine-tuning run from its typed arguments: what ``vinvl train`` and ``scripts/train_retrieval.py`` call.

:func:`build_trainer` checks the arguments, loads the data and the model and returns the
RetrievalTrainer; :func:`run_training` trains, saves and evaluates with it. Recipes and options
become arguments in :mod:`vinvl.training.recipe`; the command line is :mod:`vinvl.commands.train`'s.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Optional

import paddle
from paddlenlp.trainer import TrainingArguments, set_seed
from paddlenlp.utils.log import logger

from ..assets import resolve_config
from ..data import load_corpus
from ..data.collate import MatchingCollator, MatchingPairDataset
from ..errors import UsageError
from ..oscar.model_dir import SINGLE_FILE_WEIGHTS, load_retrieval_model
from ..retrieval.engine import RetrievalEngine
from ..retrieval.gallery import Gallery
from .arguments import DataArguments, ModelArguments, validate_arguments
from .frozen_states import FrozenStateCollator, FrozenStateQueries, load_or_compute_targets, target_settings
from .heads import reshape_contrastive_heads
from .history import LogHistoryCallback
from .losses import objective_parts
from .trainer import RetrievalTrainer

__all__ = ["build_trainer", "run_training", "is_complete_checkpoint", "last_complete_checkpoint"]


# What a checkpoint holds once the Trainer has finished writing it (the scheduler comes last).
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pdopt", "scheduler.pdparams")


def is_complete_checkpoint(path: str) -> bool:
    """Whether a checkpoint directory was written to the end (a run killed while saving leaves a
    partial one: files missing, or the last one created but not yet written, so it must load)."""
    has_weights = any(os.path.isfile(os.path.join(path, name)) for name in SINGLE_FILE_WEIGHTS)
    if not has_weights or not all(os.path.isfile(os.path.join(path, name)) for name in CHECKPOINT_FILES):
        return False
    try:
        paddle.load(os.path.join(path, CHECKPOINT_FILES[-1]))
    except Exception:  # truncated or empty: whatever the unpickler raises
        return False
    return True


def last_complete_checkpoint(output_dir: str) -> Optional[str]:
    """The newest complete ``checkpoint-N`` in ``output_dir``, or None."""
    steps = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if match and is_complete_checkpoint(os.path.join(output_dir, name)):
            steps.append(int(match.group(1)))
    return os.path.join(output_dir, f"checkpoint-{max(steps)}") if steps else None


def _checkpoint_to_resume(training_args: TrainingArguments) -> Optional[str]:
    """The checkpoint to resume: the one asked for, else the newest complete one in output_dir
    unless overwriting.

    Every rank creates output_dir itself and waits for the others before looking, so no rank
    sees a missing directory while another finds checkpoints (the classic hang in all_reduce).
    """
    import paddle.distributed as dist

    os.makedirs(training_args.output_dir, exist_ok=True)
    if training_args.world_size > 1:
        dist.barrier()
    asked = training_args.resume_from_checkpoint
    if asked:
        if not is_complete_checkpoint(asked):
            raise FileNotFoundError(
                f"--resume_from_checkpoint {asked!r} is not a complete checkpoint (needs weights and {CHECKPOINT_FILES})"
            )
        return asked
    if training_args.overwrite_output_dir:
        return None
    last = last_complete_checkpoint(training_args.output_dir)
    if last is not None:
        logger.info(f"Resuming from {last} (pass --overwrite_output_dir to start over)")
    return last


def build_trainer(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> RetrievalTrainer:
    """Check the arguments (before anything loads), load the corpora and the model, and return
    the RetrievalTrainer of the run. A shipped config's name (``tiny``, ``vinvl-base``) as
    ``model_name_or_path`` stands for its packaged directory."""
    model_args.model_name_or_path = resolve_config(model_args.model_name_or_path, "--model_name_or_path", kind="config")
    try:
        validate_arguments(model_args, data_args, training_args)
    except ValueError as exc:  # each check names the flag at fault
        raise UsageError(str(exc)) from exc
    corpus_options = dict(features_dir=data_args.features_dir, add_od_labels=data_args.add_od_labels)
    train_corpus = load_corpus(data_args.data_dir, data_args.train_split, **corpus_options) if training_args.do_train else None
    eval_corpus = None
    if training_args.do_eval:  # paddlenlp turns it on whenever an evaluation strategy is set
        eval_corpus = load_corpus(
            data_args.data_dir,
            data_args.eval_split,
            eval_img_keys_file=data_args.eval_img_keys_file,
            **corpus_options,
        )
    set_seed(training_args.seed)  # before the model exists: a config-only directory is randomly initialised
    overrides = {} if model_args.hidden_dropout_prob is None else {"hidden_dropout_prob": model_args.hidden_dropout_prob}
    model, processor = load_retrieval_model(
        model_args.model_name_or_path,
        config_overrides=overrides,
        max_seq_len=data_args.max_seq_length,
        max_img_seq_len=data_args.max_img_seq_length,
    )
    if model_args.contrastive_hidden_size is not None:
        if reshape_contrastive_heads(model, model_args.contrastive_hidden_size, seed=training_args.seed):
            logger.info(f"Fresh contrastive heads with contrastive_hidden_size {model_args.contrastive_hidden_size}")
    objectives = objective_parts(model_args.objective)
    if training_args.ddp_find_unused_parameters is None:
        # Only itm+itc reaches every head; otherwise some weights get no gradient, and data parallel must know.
        training_args.ddp_find_unused_parameters = objectives != {"itm", "itc"}
    train_dataset, collator = None, MatchingCollator(processor)
    if train_corpus is not None and model_args.distill_candidates:
        train_dataset, collator = _frozen_state_data(model, processor, train_corpus, model_args, data_args, training_args)
    elif train_corpus is not None:
        # Distillation scores every in-batch (caption, image) pair, assembled from token pieces as
        # the pairs of mined negatives are.
        pairs = model_args.itm_negatives if "itm" in objectives else ("mined" if "distill" in objectives else None)
        train_dataset = MatchingPairDataset(
            train_corpus,
            processor,
            seed=training_args.seed,
            single_modality=bool(objectives - {"itm"}),
            pairs=pairs,
        )
    return RetrievalTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_corpus,
        data_collator=collator,
        tokenizer=processor.tokenizer,
        processor=processor,
        objective=model_args.objective,
        itm_negatives=model_args.itm_negatives,
        eval_mode=data_args.eval_mode,
        eval_candidates=data_args.eval_candidates,
        eval_with_caption_index=data_args.eval_with_caption_index,
        train_only=model_args.train_only,
        trainable_layers=model_args.trainable_layers,
        distill_temperature=model_args.distill_temperature,
        distill_candidates=model_args.distill_candidates,
        callbacks=[LogHistoryCallback()],
    )


def run_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> Dict[str, float]:
    """Fine-tune on ``train_split``, evaluate on ``eval_split``, save the model; returns final metrics.

    The model saved in ``output_dir`` is the last step's unless ``load_best_model_at_end`` asks for
    the best checkpoint by ``metric_for_best_model`` (the official fine-tuning keeps the last step).
    """
    plan = getattr(training_args, "batch_plan", None)
    if plan is not None:
        logger.info(plan.describe())
    trainer = build_trainer(model_args, data_args, training_args)
    metrics: Dict[str, float] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=_checkpoint_to_resume(training_args))
        trainer.save_model()
        trainer.save_state()
        metrics.update(result.metrics)
        trainer.save_metrics("train", result.metrics)
    if trainer.eval_dataset is not None and training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    return metrics


def _frozen_state_data(model, processor, corpus, model_args, data_args, training_args) -> tuple:
    """The dataset and collator of a fit over fixed candidate lists (targets computed or reused)."""
    engine = RetrievalEngine(
        model, processor, batch_size=training_args.per_device_eval_batch_size, progress=not training_args.disable_tqdm
    )
    if model_args.distill_mined and "contrastive" not in model.config.heads_trained():
        raise UsageError(
            f"--distill_mined ranks candidates with the model's contrastive heads, and those of "
            f"{model_args.model_name_or_path} are not trained (or were replaced by --contrastive_hidden_size): "
            "fit them first with --distill_candidates alone, then mine with that run's output"
        )
    gallery = Gallery.from_corpus(corpus)
    settings = target_settings(
        model, data_args.data_dir, data_args.train_split, gallery,
        model_args.distill_candidates, model_args.distill_mined, training_args.seed, processor,
    )
    targets = load_or_compute_targets(
        engine, gallery, settings, training_args.output_dir, start_dir=model_args.model_name_or_path
    )
    return FrozenStateQueries(targets), FrozenStateCollator(targets)
