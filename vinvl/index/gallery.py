"""A gallery index as the gallery of ``Taskflow("image_text_retrieval", index_path=...)``.

A process that opens an index does not re-read the gallery's region features nor re-embed its
images and captions: ids, tags and captions are read from the index's columns, the contrastive
embeddings stay memory-mapped, and an image's region features are read from their original
file only when a query scores that image. :class:`IndexGallery` offers the Taskflow exactly what
its in-memory gallery offers (images, caption owners, embeddings, BM25 statistics), so the
Taskflow answers a query the same way, to the bit, over either.

The BM25 statistics of the ``tags`` first stage are computed on first use (once per opened
version). ``is_stale`` tells a long-running process (a serving worker) that ``vinvl index add``
made a newer version live, so it can reopen the index.
"""
from __future__ import annotations

from functools import cached_property
from typing import Any, List, Optional

import numpy as np

from ..retrieval import BM25Index, Gallery
from ..retrieval.first_stage import tag_words, words_of
from .store import GalleryIndex
from .versions import VersionedDir

__all__ = ["IndexGallery"]


class IndexGallery:
    """The live version of an index, pinned, in the shape the Taskflow's queries read a gallery.

    Args:
        index: an opened :class:`GalleryIndex` (this object closes it in :meth:`close`).
        first_stage: the first stage the Taskflow runs by default (checked to be servable).
        tokenizer: the model's tokenizer (words for the ``tags`` first stage).
    """

    def __init__(self, index: GalleryIndex, first_stage: str, tokenizer: Any):
        self.index = index
        self._tokenizer = tokenizer
        ids = [index.image_id(i) for i in range(index.num_images)]
        captions = [index.captions(i) for i in range(index.num_images)]
        flat = [c for per_image in captions for c in per_image]
        self.caption_image_ids: List[Optional[str]] = [ids[i] for i, per_image in enumerate(captions) for _ in per_image]
        tags = [index.tags(i) for i in range(index.num_images)]
        self.images = Gallery.for_queries(ids, tags, index.features, flat)
        if not self.supports(first_stage):
            index.require_embeddings()  # raises, naming what the index holds

    @classmethod
    def open(cls, index_path: str, model_dir: str, first_stage: str, tokenizer: Any) -> "IndexGallery":
        """The live version of the index at ``index_path``, checked to be built with ``model_dir``'s weights."""
        index = GalleryIndex.open(index_path, model_dir=model_dir)
        try:
            return cls(index, first_stage, tokenizer)
        except BaseException:
            index.close()
            raise

    def close(self) -> None:
        self.index.close()

    # ----- what the Taskflow reads ----------------------------------------------------------

    def supports(self, first_stage: str) -> bool:
        """Whether queries can run ``first_stage`` (``contrastive`` needs the index's embeddings)."""
        return first_stage != "contrastive" or self.index.embeddings is not None

    @property
    def image_embeds(self) -> np.ndarray:
        """``[I, E]`` image embeddings, memory-mapped."""
        return self.index.require_embeddings()

    @property
    def caption_embeds(self) -> Optional[np.ndarray]:
        """``[C, E]`` caption embeddings, memory-mapped (None when the index holds no captions)."""
        if self.index.num_captions == 0:
            return None
        if self.index.caption_embeddings is None:
            self.index.require_embeddings()
        return self.index.caption_embeddings

    @cached_property
    def image_index(self) -> BM25Index:
        """The images as BM25 documents of their tag words (the ``tags`` first stage, caption -> images)."""
        return BM25Index([tag_words(self._tokenizer, t) for t in self.images.tags])

    @cached_property
    def caption_index(self) -> Optional[BM25Index]:
        """The captions as BM25 documents of their words (the ``tags`` first stage, image -> captions)."""
        captions = self.images.captions
        return BM25Index([words_of(self._tokenizer, c) for c in captions]) if captions else None

    # ----- versions -------------------------------------------------------------------------

    @property
    def root(self) -> str:
        return self.index.root

    @property
    def version(self) -> str:
        return self.index.version

    def is_stale(self) -> bool:
        """Whether another version of the index went live since this one was opened."""
        return VersionedDir(self.index.root).current() != self.index.version
