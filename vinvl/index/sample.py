"""A random sample of a gallery index's images as a :class:`vinvl.retrieval.Gallery`: what a
calibration (``vinvl calibrate --index``) scores pairs of, read from the index without loading it
whole."""
from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..retrieval import Gallery
from .store import GalleryIndex

__all__ = ["sample_index_gallery"]


def sample_index_gallery(index_path: str, images: int, seed: int = 0) -> Gallery:
    """Up to ``images`` images of the index at ``index_path``, drawn at random among those with
    captions, with their tags, captions and region features (read now: the index is closed after)."""
    with GalleryIndex.open(index_path) as index:
        if index.num_captions == 0:
            raise UsageError(
                f"{index_path}: the index stores no captions, and a calibration pairs images with captions; "
                "calibrate from the gallery's data directory (--gallery_dir) instead"
            )
        rows = [int(r) for r in np.random.default_rng(seed).permutation(index.num_images)[: 4 * images]]
        rows = sorted(r for r in rows if index.captions(r))[:images]
        return Gallery(
            [index.image_id(r) for r in rows], [index.tags(r) for r in rows],
            [index.captions(r) for r in rows], [index.features(r) for r in rows],
        )
