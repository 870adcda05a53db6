"""The gallery a :class:`~vinvl.query.Retriever` answers against, with what its first stages need.

One class for every gallery source: an in-memory gallery (arrays or a data directory read by the
``coco_ir`` loading script, embedded once when it is set) and the live version of a gallery index
(``vinvl index build``). Either way the query core sees the same things: the images and their
flattened captions (a :class:`Gallery`, or for an index an
:class:`~vinvl.query.index_images.IndexImages` that reads ids, tags and captions from the index's
columns when a query asks for them, so a server never holds a list of the whole gallery), the
image each caption came with, and per first stage a search: contrastive embeddings through a
:class:`~vinvl.retrieval.search.Searcher` (the index's faiss IVF index when it has one) and BM25
over tag words / caption words by posting lists (:class:`~vinvl.retrieval.postings.PostingsBM25`):
an index version's stored postings, memory-mapped; otherwise (an in-memory gallery, an index
written before postings were stored) built on first use.

A gallery is immutable once made; a new index version is a new gallery (the core swaps it in).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from ..index import bm25
from ..index.store import GalleryIndex
from ..index.versions import VersionedDir
from ..retrieval import Gallery
from ..retrieval.first_stage import BM25_B, BM25_K1, tag_word_lists, words_of
from ..retrieval.postings import PostingsBM25, build_postings
from ..retrieval.search import ExactSearch, Searcher
from .index_images import IndexImages

__all__ = ["QueryGallery"]

logger = logging.getLogger(__name__)


class QueryGallery:
    """Images (with tags and region features) and captions, and the first-stage data built from them.

    Use :meth:`from_arrays` or :meth:`from_index`. Thread-safe for reading; BM25 statistics are
    built once, under a lock, on first use.
    """

    def __init__(
        self,
        images: Union[Gallery, IndexImages],
        caption_image_ids: Sequence[Optional[str]],
        tokenizer: Any,
        image_embeds: Optional[np.ndarray] = None,
        caption_embeds: Optional[np.ndarray] = None,
        index: Optional[GalleryIndex] = None,
    ):
        self.images = images
        self.caption_image_ids = caption_image_ids
        self.index = index
        self._tokenizer = tokenizer
        self._image_embeds = image_embeds
        self._caption_embeds = caption_embeds
        self._bm25: dict = {}
        self._lock = threading.Lock()

    @classmethod
    def from_arrays(
        cls,
        engine: Any,
        image_ids: Sequence[str],
        features: Any,
        tags: Sequence[Sequence[str]],
        captions: Optional[Sequence[Sequence[str]]] = None,
        embed: bool = False,
    ) -> "QueryGallery":
        """An in-memory gallery; ``embed``: compute the contrastive embeddings now (with ``engine``).

        ``features`` is a list of ``[R, img_feature_dim]`` arrays or a callable ``features(i)``;
        ``captions`` per image, optional.
        """
        captions = [list(c) for c in captions] if captions is not None else [[] for _ in image_ids]
        if len(captions) != len(image_ids):
            raise ValueError(f"got {len(image_ids)} image ids but {len(captions)} caption lists")
        flat = [c for per_image in captions for c in per_image]
        owners = [str(image_ids[i]) for i, per_image in enumerate(captions) for _ in per_image]
        images = Gallery.for_queries(image_ids, tags, features, flat)
        image_embeds = caption_embeds = None
        if embed:
            image_embeds = engine.embed_images(images)
            caption_embeds = engine.embed_captions(images) if flat else None
        return cls(images, owners, engine.processor.tokenizer, image_embeds, caption_embeds)

    @classmethod
    def from_index(cls, index_path: str, model_dir: str, tokenizer: Any) -> "QueryGallery":
        """The live version of the index at ``index_path``, checked to be built with ``model_dir``'s weights."""
        index = GalleryIndex.open(index_path, model_dir=model_dir)
        try:
            images = IndexImages(index)
            return cls(images, images.caption_image_ids, tokenizer, index.embeddings, index.caption_embeddings, index=index)
        except BaseException:
            index.close()
            raise

    def close(self) -> None:
        """Let go of the index version (a no-op for an in-memory gallery)."""
        if self.index is not None:
            self.index.close()

    # ----- first stages -----------------------------------------------------------------

    def supports(self, first_stage: str) -> bool:
        """Whether queries can run ``first_stage`` here (``contrastive`` needs embeddings)."""
        return first_stage != "contrastive" or self._image_embeds is not None

    def require(self, first_stage: str) -> None:
        """ValueError naming what the gallery holds when it cannot serve ``first_stage``."""
        if self.supports(first_stage):
            return
        if self.index is not None:
            self.index.require_embeddings()  # raises, naming what the index holds
        raise ValueError(
            "first_stage 'contrastive' is not available on this gallery: it was set without embeddings "
            "(its first stage was not contrastive when it was set); 'exhaustive' and 'tags' always work"
        )

    def image_searcher(self, nprobe: Optional[int] = None) -> Searcher:
        """Contrastive search over the images (the index's faiss IVF index when it has one)."""
        self.require("contrastive")
        if self.index is not None:
            return self.index.image_searcher(nprobe)
        return ExactSearch(self._image_embeds)

    def caption_searcher(self) -> Searcher:
        """Contrastive search over the captions."""
        self.require("contrastive")
        if self._caption_embeds is None:
            raise ValueError("the gallery holds no captions")
        if self.index is not None:
            return self.index.caption_searcher()
        return ExactSearch(self._caption_embeds)

    def image_embeddings(self, rows: np.ndarray) -> np.ndarray:
        """``[len(rows), E]`` stored image embeddings."""
        self.require("contrastive")
        return np.asarray(self._image_embeds[np.asarray(rows)], dtype=np.float32)

    def image_bm25(self) -> PostingsBM25:
        """The images as BM25 documents of their tag words (``tags``, caption -> images): the index
        version's stored postings, or built in memory on first use."""
        return self._bm25_of(bm25.TAGS, lambda: tag_word_lists(self._tokenizer, self.images.tags))

    def caption_bm25(self) -> PostingsBM25:
        """The captions as BM25 documents of their words (``tags``, image -> captions): the index
        version's stored postings, or built in memory on first use."""
        return self._bm25_of(bm25.CAPTIONS, lambda: (words_of(self._tokenizer, c) for c in self.images.captions))

    def _bm25_of(self, kind: bm25.PostingsKind, documents: Callable[[], Iterable[Sequence[str]]]) -> PostingsBM25:
        if self.index is not None:
            stored = self.index.bm25_search(kind)
            if stored is not None:
                return stored
        with self._lock:
            if kind not in self._bm25:
                if self.index is not None:
                    logger.warning(
                        "the index %s stores no BM25 %s (built before they were stored): building them in this "
                        "process; `vinvl index build` again to store them", self.index.root, kind.manifest_key
                    )
                postings = build_postings(documents())
                vocabulary = {word: term for term, word in enumerate(postings.words)}
                self._bm25[kind] = PostingsBM25(postings, lambda w: vocabulary.get(w, -1), BM25_K1, BM25_B)
            return self._bm25[kind]

    # ----- index versions ---------------------------------------------------------------

    def is_stale(self) -> bool:
        """Whether another version of the index went live since this one was opened (False in memory)."""
        return self.index is not None and VersionedDir(self.index.root).current() != self.index.version
