"""Serving: the gallery index on disk and its first stage at scale (exact chunked top-k, faiss, shard merge)."""
from .index import FIRST_STAGES, GalleryIndex, GallerySource, IndexWeightsError, add_to_index, build_index
from .topk import exact_top_k, merge_top_k, shard_ranges
from .versions import IndexBusyError

__all__ = [
    "FIRST_STAGES",
    "GalleryIndex",
    "GallerySource",
    "IndexBusyError",
    "IndexWeightsError",
    "add_to_index",
    "build_index",
    "exact_top_k",
    "merge_top_k",
    "shard_ranges",
]
