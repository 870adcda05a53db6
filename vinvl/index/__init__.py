"""The gallery index on disk: ids, tags, captions, feature pointers and first-stage embeddings of a
gallery, built once (streamed), opened memory-mapped in milliseconds, switched atomically between
versions, and refusing queries from weights other than those that built it."""
from .store import FIRST_STAGES, GalleryIndex, GallerySource, IndexWeightsError, add_to_index, build_index
from .versions import IndexBusyError

__all__ = [
    "FIRST_STAGES",
    "GalleryIndex",
    "GallerySource",
    "IndexWeightsError",
    "IndexBusyError",
    "add_to_index",
    "build_index",
]
