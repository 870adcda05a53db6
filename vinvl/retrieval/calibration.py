"""Static int8 calibration from a sample of the user's gallery (``vinvl calibrate``).

The activation scales of static int8 are set from the match head's inputs on calibration pairs:
matching pairs (an image and one of its own captions) and as many non-matching ones (an image and
a caption of another image), drawn at random from the gallery, and padded and batched exactly as
:class:`RetrievalEngine` scores them (the engine itself assembles the batches), so the scales see
the lengths, padding and region counts of real scoring. The quantized graph and its manifest are
written beside the model (:func:`vinvl.oscar.inference.calibrate_match_head`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import paddle

from ..errors import UsageError
from ..oscar.inference import calibrate_match_head
from ..oscar.model_dir import has_weights, load_retrieval_model
from ..oscar.modeling import OscarForImageTextRetrieval
from ..oscar.processor import OscarProcessor
from .engine import RetrievalEngine
from .gallery import Gallery

__all__ = ["DEFAULT_PAIRS", "calibration_pairs", "calibration_batches", "calibrate"]

DEFAULT_PAIRS = 512  # half matching, half not (measured in docs/benchmarks.md, "Precision")
BATCH_SIZE = 32  # the engine's default batch: the padding the scores are computed with


def calibration_pairs(gallery: Gallery, pairs: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(image indices, caption indices) of ``pairs`` pairs: half matching (distinct captions drawn
    at random, each with its own image; fewer when the gallery has fewer captions), half not (a
    random caption with a random other image)."""
    owners = gallery.caption_to_image
    if gallery.num_captions == 0 or (owners < 0).all():
        raise UsageError("a calibration needs a gallery whose images have captions")
    if gallery.num_images < 2:
        raise UsageError("a calibration needs a gallery of at least 2 images (for non-matching pairs)")
    rng = np.random.default_rng(seed)
    owned = np.flatnonzero(owners >= 0)  # captions of a gallery image (a query-only caption has none)
    matching = rng.permutation(owned)[: pairs - pairs // 2]
    captions = rng.choice(owned, pairs // 2)
    images = rng.integers(0, gallery.num_images - 1, pairs // 2)
    images += images >= owners[captions]  # any image but the caption's own
    return np.concatenate([owners[matching], images]), np.concatenate([matching, captions])


@dataclass
class _Logits:
    logits: paddle.Tensor


class _InputRecorder:
    """Stands where the engine calls the model: keeps each batch of match-head inputs (numpy, as
    the quantizer feeds them) and answers zero logits, the scores being of no use here; any other
    attribute (region projection, config) is the model's."""

    def __init__(self, model: OscarForImageTextRetrieval):
        self._model = model
        self.batches: List[Dict[str, np.ndarray]] = []

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, **inputs: paddle.Tensor) -> _Logits:
        self.batches.append({name: tensor.numpy() for name, tensor in inputs.items()})
        return _Logits(paddle.zeros([inputs["input_ids"].shape[0], 2]))


def calibration_batches(
    model: OscarForImageTextRetrieval, processor: OscarProcessor, gallery: Gallery, pairs: int, seed: int = 0
) -> List[Dict[str, np.ndarray]]:
    """The match head's inputs for :func:`calibration_pairs`, batched and padded by the engine."""
    recorder = _InputRecorder(model)
    engine = RetrievalEngine(recorder, processor, batch_size=BATCH_SIZE, progress=False)
    engine.score_pairs(gallery, *calibration_pairs(gallery, pairs, seed))
    return recorder.batches


def calibrate(model_dir: str, gallery: Gallery, pairs: int = DEFAULT_PAIRS, seed: int = 0, source: str = "") -> str:
    """Calibrate static int8 for the saved model ``model_dir`` on ``pairs`` pairs of ``gallery``
    (``source`` names it in the manifest); returns the calibration directory."""
    if pairs < 2:
        raise UsageError(f"a calibration needs at least 2 pairs (one matching, one not), got {pairs}")
    if not has_weights(model_dir):
        raise UsageError(f"{model_dir!r} has no saved weights: a calibration is made for a saved model's weights")
    model, processor = load_retrieval_model(model_dir)
    model.eval()
    batches = calibration_batches(model, processor, gallery, pairs, seed)
    return calibrate_match_head(
        model, model_dir, batches, pairs=pairs, images=gallery.num_images, seed=seed, gallery=source
    )
