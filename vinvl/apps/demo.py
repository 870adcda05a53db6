"""The whole flow on an embedded default, in a few minutes on a CPU (``vinvl demo``).

Writes a synthetic corpus in the official file format, fine-tunes the tiny Oscar config with
the PaddleNLP Trainer, evaluates exhaustive and two-stage retrieval, loads the saved model
through ``Taskflow("image_text_retrieval")``, answers a few text and image queries, and writes
an HTML report (R@K table, training curves, ranked results with drawings of the scenes). The
report also shows the ten COCO photos shipped with the package (``vinvl.assets.DEMO_PHOTOS_DIR``)
with the boxes of the shipped tiny detector config, run on them by ``vinvl extract``: that detector
is untrained, so its boxes show the photo path working, not what is in the photos. Everything it
reads ships with the package, so it runs from any folder wherever pip installed vinvl-paddle.

The work directory is marked as the demo's (a ``.vinvl_demo`` file): running the same command
again replaces the demo's own outputs there (``corpus/``, ``model/``, ``photos/``, ``report.html``) and
leaves anything else alone; a non-empty directory the demo did not write is refused.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Dict, List, Tuple

from ..assets import DEMO_PHOTOS_DIR
from ..data import load_corpus, write_synthetic_corpus
from ..errors import UsageError
from ..oscar.model_dir import load_retrieval_model
from ..retrieval import evaluate_corpus
from ..training.history import read_log_history
from ..training.recipe import arguments_from_options
from ..training.run import run_training
from ..vision.extract import extract
from .report import extraction_figures, scene_svg, write_report

__all__ = ["SIZES", "prepare_work_dir", "run_demo"]

# name -> (train images, test images, training steps); "ci" is the smallest honest run.
SIZES = {"default": (400, 100, 1200), "ci": (160, 40, 300)}
MINIVAL_IMAGES = 40  # the split the Trainer evaluates on while training
TINY_CONFIG = "tiny"  # shipped configs, by name (vinvl.assets.resolve_config)
TINY_DETECTOR = "vinvl-detector-tiny"
UNTRAINED_DETECTOR = (
    "The tiny detector (the shipped vinvl-detector-tiny config) is untrained: its weights are random, so its boxes, "
    "class names and features carry no meaning. This section only shows the photo path working end to end: each "
    "photo decoded, detected by `vinvl extract`, and read back by the coco_ir loading script, which the boxes are "
    "drawn from. For real regions, convert the official VinVL X152-C4 checkpoint with `vinvl convert-detector`."
)
TOP_K = 5
MARKER = ".vinvl_demo"  # marks a work directory as the demo's own
OUTPUTS = ("corpus", "model", "photos", "report.html")  # what a run writes there, replaced by the next run


def prepare_work_dir(work_dir: str) -> None:
    """Create ``work_dir``, or clear the outputs of an earlier demo in it; refuse a folder the demo did not write."""
    if os.path.exists(work_dir) and not os.path.isdir(work_dir):
        raise UsageError(f"--work_dir {work_dir} is a file, not a directory")
    marker = os.path.join(work_dir, MARKER)
    if os.path.isdir(work_dir) and os.listdir(work_dir) and not os.path.isfile(marker):
        raise UsageError(f"{work_dir} exists and was not written by `vinvl demo`; choose another --work_dir")
    for name in OUTPUTS:
        path = os.path.join(work_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    os.makedirs(work_dir, exist_ok=True)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(f"written by `vinvl demo`: the next run replaces {', '.join(OUTPUTS)} here\n")


def _train(corpus_dir: str, model_dir: str, steps: int, seed: int) -> None:
    flags = {
        "model_name_or_path": TINY_CONFIG,
        "data_dir": corpus_dir,
        "output_dir": model_dir,
        "overwrite_output_dir": True,
        "do_train": True,
        "objective": "itm+itc",
        "max_steps": steps,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 64,
        "learning_rate": 2e-3,
        "warmup_steps": 20,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "logging_steps": 10,
        "evaluation_strategy": "steps",
        "eval_steps": max(steps // 5, 1),
        "eval_split": "minival",
        "eval_with_caption_index": True,  # the official setting (the default), which _eval_setting describes
        "save_strategy": "no",
        "report_to": "visualdl",
        "seed": seed,
    }
    run_training(*arguments_from_options(flags))


def _evaluate(model_dir: str, corpus) -> Dict[str, Dict[str, float]]:
    model, processor = load_retrieval_model(model_dir)
    results = {}
    for name, first_stage in (("exhaustive", "exhaustive"), ("two-stage (k=16)", "contrastive")):
        start = time.time()
        metrics = evaluate_corpus(model, processor, corpus, first_stage=first_stage, top_k=16, batch_size=64)
        metrics["seconds"] = time.time() - start
        results[name] = metrics
    return results


def _queries(model_dir: str, corpus_dir: str, corpus) -> List[dict]:
    """Ask the saved model, through Taskflow, for images of a few captions and captions of a few images."""
    from paddlenlp import Taskflow

    retrieval = Taskflow("image_text_retrieval", task_path=model_dir, gallery_dir=corpus_dir, top_k=TOP_K)
    sections = []
    for i in (0, 7, 21):
        i %= len(corpus)
        caption = corpus.captions[i][0]
        (answer,) = retrieval(caption)
        sections.append(
            {
                "title": f"caption \u2192 images: \u201c{caption}\u201d (its image: {corpus.image_ids[i]})",
                "results": [
                    {
                        "label": f"image {r['image_id']}: {' '.join(corpus.tags[corpus.index_of(r['image_id'])][:6])}",
                        "score": r["score"],
                        "correct": r["image_id"] == corpus.image_ids[i],
                        "visual": _scene(corpus, r["image_id"]),
                    }
                    for r in answer["images"]
                ],
            }
        )
    for i in (3, 12):
        i %= len(corpus)
        (answer,) = retrieval({"image_id": corpus.image_ids[i]})
        sections.append(
            {
                "title": f"image \u2192 captions: image {corpus.image_ids[i]} (tags: {', '.join(corpus.tags[i])})",
                "visual": _scene(corpus, corpus.image_ids[i]),
                "results": [
                    {"label": r["caption"], "score": r["score"], "correct": r["image_id"] == corpus.image_ids[i]}
                    for r in answer["captions"]
                ],
            }
        )
    return sections


def _scene(corpus, image_id: str) -> str:
    index = corpus.index_of(image_id)
    return scene_svg(corpus.features(index), corpus.tags[index])


def _photos(work_dir: str) -> Dict:
    """The report's photo section: the shipped COCO photos through the tiny detector (``vinvl extract``)."""
    out_dir = os.path.join(work_dir, "photos")
    extract(DEMO_PHOTOS_DIR, out_dir, TINY_DETECTOR, progress=False)
    return {
        "title": "COCO photos through the untrained tiny detector",
        "note": UNTRAINED_DETECTOR,
        "items": extraction_figures(out_dir, DEMO_PHOTOS_DIR),
    }


def _eval_setting(corpus_dir: str) -> Tuple[str, str]:
    """Title and caption of the recall curves: the Trainer evaluated on minival, each image ranking
    only the captions its caption index lists (the official setting while training), not the table's."""
    minival = load_corpus(corpus_dir, "minival")
    candidates = len(next(iter(minival.caption_index.values())))
    title = f"minival, {len(minival)} images: image \u2192 text among\neach image's {candidates} listed captions"
    caption = (
        f"Recall measured while training, on the minival split ({len(minival)} images) in the official setting: each "
        f"image ranks only the {candidates} captions its caption index lists (its own and hard negatives), and only "
        "image \u2192 text is measured. This is an easier task than the table's, where each image ranks every caption of "
        "the test split, so these numbers run higher."
    )
    return title, caption


def run_demo(work_dir: str = "vinvl_demo", size: str = "default", seed: int = 0) -> str:
    """Run every step in ``work_dir`` (see :func:`prepare_work_dir`) and return the report path."""
    if size not in SIZES:
        raise UsageError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    prepare_work_dir(work_dir)
    train_images, test_images, steps = SIZES[size]
    corpus_dir = os.path.join(work_dir, "corpus")
    model_dir = os.path.join(work_dir, "model")
    start = time.time()
    print(f"[1/4] writing a synthetic corpus in the official format to {corpus_dir}")
    write_synthetic_corpus(
        corpus_dir, {"train": train_images, "minival": MINIVAL_IMAGES, "val": 40, "test": test_images}, seed=seed
    )
    print(f"[2/4] fine-tuning the tiny Oscar config for {steps} steps (paddlenlp Trainer) -> {model_dir}")
    _train(corpus_dir, model_dir, steps, seed)
    test = load_corpus(corpus_dir, "test")
    num_captions = sum(len(c) for c in test.captions)
    print(f"[3/4] evaluating on {len(test)} test images and {num_captions} captions")
    metrics = _evaluate(model_dir, test)
    print("[4/4] answering queries through Taskflow, running the tiny detector on the shipped COCO photos, "
          "writing the report")
    sections = _queries(model_dir, corpus_dir, test)
    photos = _photos(work_dir)
    eval_title, eval_caption = _eval_setting(corpus_dir)
    report = write_report(
        os.path.join(work_dir, "report.html"),
        title="vinvl-paddle demo: VinVL retrieval on a synthetic COCO-format corpus",
        metrics=metrics,
        metrics_setting=(
            f"On the test split: {len(test)} images and {num_captions} captions, every caption ranking every "
            "image and every image every caption. Exhaustive: the match head scores every pair. Two-stage: the "
            "contrastive heads pick each query's 16 best candidates, which the match head re-ranks."
        ),
        log_history=read_log_history(model_dir),
        eval_title=eval_title,
        eval_caption=eval_caption,
        queries=sections,
        queries_note=(
            f"Through Taskflow, top {TOP_K} of the test split. Score: the match head's probability that the caption "
            "describes the image (the softmax of its two logits); green frames mark the right answers."
        ),
        photos=photos,
        notes=[
            f"{train_images} training images, {steps} steps of the tiny config (2 layers, hidden 64) from random "
            f"initialisation; test gallery of {len(test)} images. Chance R@1 is {100 / len(test):.1f}% for "
            "text \u2192 image. Scenes are drawn from the box geometry stored in each image's region features; "
            "green frames mark the ground truth.",
            f"Total time {time.time() - start:.0f} s. The model is in {model_dir} (save_pretrained), "
            f"VisualDL logs under {os.path.join(model_dir, 'runs')}.",
        ],
    )
    _print_table(metrics)
    print(f"report: {os.path.abspath(report)}")
    return report


def _print_table(metrics: Dict[str, Dict[str, float]]) -> None:
    """The report's recall table on stdout: recalls and rsum to one decimal, pairs scored as a count."""
    head = "".join(f"{name:>7}" for name in ("R@1", "R@5", "R@10"))
    print(f"{'':18}{'text -> image':^21}  {'image -> text':^21}".rstrip())
    print(f"{'setting':<18}{head}  {head}{'rsum':>8}{'pairs scored':>14}")
    for name, values in metrics.items():
        t2i, i2t = ("".join(f"{values[f'{d}_r{k}']:7.1f}" for k in (1, 5, 10)) for d in ("t2i", "i2t"))
        print(f"{name:<18}{t2i}  {i2t}{values['rsum']:8.1f}{int(values['pairs_scored']):>14,}")

