"""The query core: :class:`Retriever` answers caption, image, photo and pair queries over a gallery
(in memory, a data directory, a photo folder or a gallery index); Taskflow, ``vinvl retrieve`` and
the HTTP service are adapters over it."""
from .core import QUERY_KEYS, Query, Retriever
from .gallery import QueryGallery

__all__ = ["Retriever", "Query", "QueryGallery", "QUERY_KEYS"]
