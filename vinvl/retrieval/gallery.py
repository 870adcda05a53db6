"""Gallery: the images (ids, tags, region features) and captions a retrieval run scores.

Captions are flattened into one list with ``caption_to_image`` naming each caption's image,
which is the column layout of every score matrix in :mod:`vinvl.retrieval`. Region features
are read on demand (``features(i)``), so a 5K-image gallery never has to sit in memory.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["Gallery", "checked_features"]

FeatureSource = Union[Callable[[int], np.ndarray], Sequence[np.ndarray]]


class Gallery:
    """Images with tags and region features, and their ground-truth captions.

    Args:
        image_ids: one id per image, distinct.
        tags: per image, its object tags (a list of tag strings or one string).
        captions: per image, its captions (at least one each, none empty).
        features: per image ``[R, D]`` float32 region features, either a sequence of arrays or
            a callable ``features(i)`` that reads image ``i`` (e.g. ``RetrievalCorpus.features``).
            Every image must have the same width ``D``; image 0 is read at construction to learn it.
        candidates: optional ``[I, K]`` caption indices (into the flattened captions) that each
            image is re-ranked against (the official minival top-20 setting).
    """

    def __init__(
        self,
        image_ids: Sequence[str],
        tags: Sequence[Union[str, Sequence[str]]],
        captions: Sequence[Sequence[str]],
        features: FeatureSource,
        candidates: Optional[np.ndarray] = None,
    ):
        self._set_images(image_ids, tags, features)
        num_images = len(self.image_ids)
        if len(captions) != num_images:
            raise ValueError(f"got {num_images} image ids and {len(captions)} caption lists")
        counts = np.array([len(c) for c in captions], dtype=np.int64)
        if (counts == 0).any() and counts.sum() > 0:
            raise ValueError(f"every image needs at least one caption; image {self.image_ids[int(np.argmin(counts))]!r} has none")
        self._set_captions([c for per_image in captions for c in per_image])
        self.caption_to_image = np.repeat(np.arange(num_images, dtype=np.int64), counts)
        self.caption_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.candidates = None if candidates is None else self._check_candidates(candidates)

    @classmethod
    def for_queries(cls, image_ids: Sequence[str], tags: Sequence, features: FeatureSource, captions: Sequence[str]) -> "Gallery":
        """Images and free captions with no ground truth between them (``caption_to_image`` is -1).

        For answering queries (Taskflow): scoring and ranking work, recall metrics do not apply.
        The caption list may be empty (a gallery of images only).
        """
        gallery = cls.__new__(cls)
        gallery._set_images(image_ids, tags, features)
        gallery._set_captions(captions, allow_empty=True)
        gallery.caption_to_image = np.full(len(gallery.captions), -1, dtype=np.int64)
        gallery.caption_offsets = None
        gallery.candidates = None
        return gallery

    def _set_images(self, image_ids: Sequence[str], tags: Sequence, features: FeatureSource) -> None:
        self.image_ids: List[str] = [str(i) for i in image_ids]
        num_images = len(self.image_ids)
        if num_images == 0:
            raise ValueError("the gallery has no images")
        if len(set(self.image_ids)) != num_images:
            raise ValueError("gallery image ids must be distinct")
        if len(tags) != num_images:
            raise ValueError(f"got {num_images} image ids and {len(tags)} tag lists")
        self.tags = list(tags)
        self._read = features if callable(features) else features.__getitem__
        if not callable(features) and len(features) != num_images:
            raise ValueError(f"got {len(features)} feature arrays for {num_images} images")
        self.feature_dim = int(self._checked(0, self._read(0), None).shape[1])

    def _set_captions(self, captions: Sequence[str], allow_empty: bool = False) -> None:
        self.captions: List[str] = [str(c) for c in captions]
        if not self.captions and not allow_empty:
            raise ValueError("the gallery has no captions (empty caption set)")
        empty = [i for i, c in enumerate(self.captions) if not c.strip()]
        if empty:
            raise ValueError(f"{len(empty)} captions are empty (first: caption {empty[0]})")

    @classmethod
    def from_corpus(cls, corpus: Any) -> "Gallery":
        """A gallery over anything with the RetrievalCorpus interface (``image_ids``, ``tags``,
        ``captions``, ``features(i)``, ``caption_index``); features stay on disk until scored."""
        return cls(
            corpus.image_ids,
            corpus.tags,
            corpus.captions,
            corpus.features,
            candidates=_caption_index_to_candidates(corpus),
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def features(self, index: int) -> np.ndarray:
        """Region features ``[R, D]`` float32 of image ``index``, checked."""
        return self._checked(index, self._read(index), self.feature_dim)

    def _checked(self, index: int, feats: Any, width: Optional[int]) -> np.ndarray:
        return checked_features(feats, width, lambda: self.image_ids[index])

    def index_of(self, image_ids: Sequence[str]) -> np.ndarray:
        """Positions of the given image ids; unknown ids are an error that names them."""
        position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        unknown = [str(i) for i in image_ids if str(i) not in position]
        if unknown:
            raise KeyError(f"{len(unknown)} image ids are not in the gallery, e.g. {unknown[:5]}")
        return np.array([position[str(i)] for i in image_ids], dtype=np.int64)

    def subset(self, images: Sequence[Union[int, str]]) -> "Gallery":
        """A gallery of the given images (indices or ids, in the given order) and their captions.

        Re-rank candidates are dropped: they index the full gallery's captions.
        """
        if len(images) and isinstance(images[0], str):
            index = self.index_of(images)
        else:
            index = np.asarray(images, dtype=np.int64)
        if len(index) == 0 or index.min() < 0 or index.max() >= self.num_images:
            raise ValueError(f"subset needs image indices in 0..{self.num_images - 1}")
        order = [int(i) for i in index]
        return Gallery(
            [self.image_ids[i] for i in order],
            [self.tags[i] for i in order],
            [self.captions_of(i) for i in order],
            lambda j: self._read(order[j]),
        )

    def captions_of(self, index: int) -> List[str]:
        """The captions of image ``index``."""
        if self.caption_offsets is None:
            raise ValueError("a query gallery's captions belong to no image")
        return self.captions[self.caption_offsets[index] : self.caption_offsets[index + 1]]

    def _check_candidates(self, candidates: np.ndarray) -> np.ndarray:
        candidates = np.asarray(candidates, dtype=np.int64)
        if candidates.ndim != 2 or len(candidates) != self.num_images or candidates.shape[1] == 0:
            raise ValueError(
                f"candidates must be [images={self.num_images}, K>0] caption indices, got {list(candidates.shape)}"
            )
        if candidates.min() < 0 or candidates.max() >= self.num_captions:
            raise ValueError(f"candidates must index the {self.num_captions} captions")
        return candidates


def _caption_index_to_candidates(corpus: Any) -> Optional[np.ndarray]:
    """The corpus' ``caption_index`` (image id -> [(image id, caption idx)]) as ``[I, K]`` flat caption indices."""
    caption_index: Optional[Dict[str, List[Tuple[str, int]]]] = getattr(corpus, "caption_index", None)
    if caption_index is None:
        return None
    image_ids = [str(i) for i in corpus.image_ids]
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in corpus.captions])])
    rows = []
    for image_id in image_ids:
        if image_id not in caption_index:
            raise ValueError(f"caption_index has no candidates for image {image_id!r}")
        row = []
        for other_id, caption_idx in caption_index[image_id]:
            other = position.get(str(other_id))
            if other is None or not 0 <= int(caption_idx) < offsets[other + 1] - offsets[other]:
                raise ValueError(f"caption_index of image {image_id!r} names an unknown caption ({other_id!r}, {caption_idx})")
            row.append(offsets[other] + int(caption_idx))
        rows.append(row)
    if len({len(r) for r in rows}) != 1:
        raise ValueError("caption_index lists a different number of candidates for different images")
    return np.array(rows, dtype=np.int64)


def checked_features(feats: Any, width: Optional[int], image_id: Callable[[], str]) -> np.ndarray:
    """One image's region features as float32 ``[R, D]``; a ValueError naming the image when they are
    not 2-D or (``width`` given) not ``width`` wide. Every gallery kind checks its reads with it;
    ``image_id`` is asked only for the error (an index reads it from disk)."""
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or (width is not None and feats.shape[1] != width):
        expected = f"[num_regions, {width}]" if width is not None else "[num_regions, width]"
        raise ValueError(f"image {image_id()!r}: region features have shape {list(feats.shape)}, expected {expected}")
    return feats
