"""Training pairs for image-text matching, and the collator that batches them.

Random negatives follow the official ``RetrievalDataset`` of microsoft/Oscar: every (image,
caption) positive comes with one negative, which with probability 0.5 is a caption of another
image paired with this image, and otherwise this caption paired with another image (with that
image's own tags). The draw is a pure function of (seed, epoch, item), so a resumed run and
every data-parallel rank see exactly the negatives an uninterrupted run would.

Mined negatives are chosen later, by the trainer, from the batch's contrastive similarities
(see :mod:`vinvl.training.negatives`); for them an item carries its caption's and its image's
token pieces, from which any (caption, image) pair of the batch is assembled.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..oscar.processor import OscarProcessor

__all__ = ["MatchingPairDataset", "MatchingCollator", "PAIR_SAMPLING"]

# How a MatchingPairDataset provides matching pairs (None: it provides none, contrastive only).
PAIR_SAMPLING = ("random", "mined")


class MatchingPairDataset:
    """One item per (image, caption) positive of a corpus.

    ``corpus`` is anything with the RetrievalCorpus interface (``captions``, ``tags``,
    ``features(i)``, ``len``). ``pairs`` says what an item holds for the matching objective:
    ``"random"``, the encoded positive and its sampled negative; ``"mined"``, the token pieces
    the trainer assembles pairs from; ``None``, nothing (a contrastive-only run). With
    ``single_modality`` each item also carries the caption alone and the image (tags +
    regions) alone, for the contrastive objective (mined negatives need them).
    """

    def __init__(
        self,
        corpus: Any,
        processor: OscarProcessor,
        seed: int = 0,
        single_modality: bool = True,
        pairs: Optional[str] = "random",
    ):
        if len(corpus) < 2:
            raise ValueError(f"matching needs at least 2 images to draw negatives, the corpus has {len(corpus)}")
        if pairs is not None and pairs not in PAIR_SAMPLING:
            raise ValueError(f"pairs must be one of {PAIR_SAMPLING} or None, got {pairs!r}")
        if pairs == "mined" and not single_modality:
            raise ValueError("mined negatives come from the contrastive similarities: they need single_modality=True")
        if pairs is None and not single_modality:
            raise ValueError("an item needs pairs, single-modality inputs or both")
        self.corpus = corpus
        self.processor = processor
        self.seed = seed
        self.single_modality = single_modality
        self.pairs = pairs
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
        caption = self.corpus.captions[image][caption_idx]
        tags, feats = self.corpus.tags[image], self.corpus.features(image)
        item: Dict[str, Any] = {"image_index": image}
        if self.pairs == "random":
            rng = np.random.default_rng([self.seed, self.epoch, index])
            item["positive"] = self.processor.encode(caption, tags, feats)
            item["negative"] = self._negative(rng, image, caption)
        elif self.pairs == "mined":
            item["caption_pieces"] = self.processor.caption_pieces([caption])
            item["tag_pieces"] = self.processor.tag_pieces([tags])
        if self.single_modality:
            item["caption_only"] = self.processor.encode(caption)
            item["image_only"] = self.processor.encode("", tags, feats)
        return item


class MatchingCollator:
    """Pads a list of :class:`MatchingPairDataset` items into the model's keyword inputs.

    Output, for what the items carry: the pair inputs (positives then negatives) with
    ``labels`` (1 then 0); ``caption_inputs`` / ``image_inputs`` for the contrastive objective;
    ``pair_pieces`` (numpy ``caption_ids``/``caption_lens``/``tag_ids``/``tag_lens``, row b =
    item b) for mined negatives; and always ``image_index`` (which items share an image, so
    they are not taken as each other's negatives).
    """

    def __init__(self, processor: OscarProcessor):
        self.processor = processor

    def __call__(self, items: Sequence[Dict]) -> Dict[str, Any]:
        import paddle

        first = items[0]
        batch: Dict[str, Any] = {}
        if "positive" in first:
            pairs: List[Dict] = [it["positive"] for it in items] + [it["negative"] for it in items]
            batch.update(self.processor.pad(pairs))
            batch["labels"] = paddle.to_tensor([1] * len(items) + [0] * len(items), dtype="int64")
        if "caption_pieces" in first:
            caption_ids, caption_lens = _stack_pieces(self.processor, [it["caption_pieces"] for it in items])
            tag_ids, tag_lens = _stack_pieces(self.processor, [it["tag_pieces"] for it in items])
            batch["pair_pieces"] = {
                "caption_ids": caption_ids, "caption_lens": caption_lens, "tag_ids": tag_ids, "tag_lens": tag_lens,
            }
        if "caption_only" in first:
            batch["caption_inputs"] = self.processor.pad([it["caption_only"] for it in items])
            batch["image_inputs"] = self.processor.pad([it["image_only"] for it in items])
        batch["image_index"] = paddle.to_tensor([it["image_index"] for it in items], dtype="int64")
        return batch


def _stack_pieces(processor: OscarProcessor, pieces: Sequence[tuple]) -> tuple:
    """Stack single-row ``(ids [1, L], lens [1])`` pieces into ``(ids [B, L_max], lens [B])``."""
    return processor.stack_pieces([ids[0, : int(lens[0])] for ids, lens in pieces])
