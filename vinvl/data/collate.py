"""Training pairs for image-text matching, and the collator that batches them.

Sampling follows the official ``RetrievalDataset`` of microsoft/Oscar: every (image, caption)
positive comes with one negative, which with probability 0.5 is a caption of another image
paired with this image, and otherwise this caption paired with another image (with that
image's own tags). The draw is a pure function of (seed, epoch, item), so a resumed run and
every data-parallel rank see exactly the negatives an uninterrupted run would.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

from ..processor import OscarProcessor

__all__ = ["MatchingPairDataset", "MatchingCollator"]


class MatchingPairDataset:
    """One item per (image, caption) positive of a corpus, with its sampled negative.

    ``corpus`` is anything with the RetrievalCorpus interface (``captions``, ``tags``,
    ``features(i)``, ``len``). With ``single_modality`` each item also carries the caption
    alone and the image (tags + regions) alone, for the contrastive objective.
    """

    def __init__(self, corpus: Any, processor: OscarProcessor, seed: int = 0, single_modality: bool = True):
        if len(corpus) < 2:
            raise ValueError(f"matching needs at least 2 images to draw negatives, the corpus has {len(corpus)}")
        self.corpus = corpus
        self.processor = processor
        self.seed = seed
        self.single_modality = single_modality
        self.epoch = 0
        counts = np.array([len(c) for c in corpus.captions], dtype=np.int64)
        self._image_of = np.repeat(np.arange(len(counts)), counts)
        self._caption_of = np.concatenate([np.arange(n) for n in counts]) if len(counts) else counts

    def set_epoch(self, epoch: int) -> None:
        """Negatives are drawn anew each epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._image_of)

    def _negative(self, rng: np.random.Generator, image: int, caption: str) -> Dict:
        other = int(rng.integers(len(self.corpus) - 1))
        other += other >= image
        if rng.random() <= 0.5:
            other_captions = self.corpus.captions[other]
            other_caption = other_captions[int(rng.integers(len(other_captions)))]
            return self.processor.encode(other_caption, self.corpus.tags[image], self.corpus.features(image))
        return self.processor.encode(caption, self.corpus.tags[other], self.corpus.features(other))

    def __getitem__(self, index: int) -> Dict:
        image, caption_idx = int(self._image_of[index]), int(self._caption_of[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        caption = self.corpus.captions[image][caption_idx]
        tags, feats = self.corpus.tags[image], self.corpus.features(image)
        item = {
            "positive": self.processor.encode(caption, tags, feats),
            "negative": self._negative(rng, image, caption),
            "image_index": image,
        }
        if self.single_modality:
            item["caption_only"] = self.processor.encode(caption)
            item["image_only"] = self.processor.encode("", tags, feats)
        return item


class MatchingCollator:
    """Pads a list of :class:`MatchingPairDataset` items into the model's keyword inputs.

    Output: the pair inputs (positives then negatives) with ``labels`` (1 then 0), and, when the
    items carry them, ``caption_inputs`` / ``image_inputs`` for the contrastive objective plus
    ``image_index`` (which captions share an image, so they are not taken as negatives).
    """

    def __init__(self, processor: OscarProcessor):
        self.processor = processor

    def __call__(self, items: Sequence[Dict]) -> Dict[str, Any]:
        import paddle

        pairs: List[Dict] = [it["positive"] for it in items] + [it["negative"] for it in items]
        batch = self.processor.pad(pairs)
        batch["labels"] = paddle.to_tensor([1] * len(items) + [0] * len(items), dtype="int64")
        if "caption_only" in items[0]:
            batch["caption_inputs"] = self.processor.pad([it["caption_only"] for it in items])
            batch["image_inputs"] = self.processor.pad([it["image_only"] for it in items])
            batch["image_index"] = paddle.to_tensor([it["image_index"] for it in items], dtype="int64")
        return batch
