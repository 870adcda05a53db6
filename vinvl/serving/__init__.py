"""Serving: the gallery index on disk, its first stage at scale (exact chunked top-k, faiss, shard merge), the
Taskflow gallery over it, and the HTTP service (:mod:`vinvl.serving.server`, imported on its own: it needs FastAPI)."""
from .index import FIRST_STAGES, GalleryIndex, GallerySource, IndexWeightsError, add_to_index, build_index
from .index_gallery import IndexGallery
from .topk import exact_top_k, merge_top_k, shard_ranges
from .versions import IndexBusyError

__all__ = [
    "FIRST_STAGES",
    "GalleryIndex",
    "GallerySource",
    "IndexGallery",
    "IndexBusyError",
    "IndexWeightsError",
    "add_to_index",
    "build_index",
    "exact_top_k",
    "merge_top_k",
    "shard_ranges",
]
