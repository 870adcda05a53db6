"""A gallery index version seen as the query core sees a :class:`~vinvl.retrieval.Gallery`, holding nothing.

The query core reads a gallery's ``image_ids[i]``, ``tags[i]``, flattened ``captions[c]`` and
``features(i)`` for the few rows a query touches. A :class:`Gallery` holds the first three as
Python lists, which for an index of a million images (five million captions) is gigabytes in
every server process and a start that reads the whole index. :class:`IndexImages` answers the
same reads from the index's memory-mapped columns, one row at a time
(:class:`~vinvl.index.store.GalleryIndex`), so a server holds a few arrays' mapped pages and
opens in the time the index does.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Iterator, List, Optional, Union

import numpy as np

from ..index.store import GalleryIndex
from ..retrieval.gallery import checked_features

__all__ = ["ColumnView", "IndexImages"]


class ColumnView(Sequence):
    """A read-only sequence of ``length`` values, value ``i`` read by ``read(i)`` when asked
    (a slice gives a list); ``rows()``, when given, iterates faster than one read per value."""

    def __init__(self, length: int, read: Callable[[int], Any], rows: Optional[Callable[[], Iterator[Any]]] = None):
        self._length, self._read, self._rows = length, read, rows

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Union[int, slice]) -> Any:
        if isinstance(index, slice):
            return [self._read(i) for i in range(*index.indices(self._length))]
        index = int(index)
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"row {index} is not in 0..{self._length - 1}")
        return self._read(index)

    def __iter__(self) -> Iterator[Any]:
        if self._rows is not None:
            return self._rows()
        return (self._read(i) for i in range(self._length))


class IndexImages:
    """The images and flattened captions of an index version, read from its columns on demand.

    What the query core uses of a :class:`~vinvl.retrieval.Gallery`: ``image_ids``, ``tags`` and
    ``captions`` (:class:`ColumnView` s), ``caption_image_ids`` (each caption row's image id),
    ``features(i)`` (checked as a Gallery checks them), ``feature_dim`` (image 0 read once, as a
    Gallery does), ``num_images``, ``num_captions`` and ``index_of(ids)``. Image ids are distinct:
    the index refuses duplicates when it is written.
    """

    def __init__(self, index: GalleryIndex):
        self.index = index
        self.image_ids = ColumnView(index.num_images, index.image_id)
        self.tags = ColumnView(index.num_images, index.tags)
        self.captions = ColumnView(index.num_captions, index.caption, self._every_caption)
        self.caption_image_ids = ColumnView(index.num_captions, lambda row: index.image_id(index.caption_owner(row)))
        self._read = index.features
        self.feature_dim = int(self._checked(0, None).shape[1])

    def _every_caption(self) -> Iterator[str]:
        return (c for i in range(self.index.num_images) for c in self.index.captions(i))

    def __len__(self) -> int:
        return self.index.num_images

    @property
    def num_images(self) -> int:
        return self.index.num_images

    @property
    def num_captions(self) -> int:
        return self.index.num_captions

    def features(self, index: int) -> np.ndarray:
        """Region features ``[R, D]`` float32 of image ``index``, read from its feature file, checked."""
        return self._checked(index, self.feature_dim)

    def _checked(self, index: int, width: Optional[int]) -> np.ndarray:
        return checked_features(self._read(index), width, lambda: self.index.image_id(index))

    def index_of(self, image_ids: List[str]) -> np.ndarray:
        """Positions of the given image ids (binary search in the index's id column); unknown ids are
        a KeyError naming them."""
        positions = np.array([self.index.find(str(i)) for i in image_ids], dtype=np.int64)
        unknown = [str(i) for i, p in zip(image_ids, positions) if p < 0]
        if unknown:
            raise KeyError(f"{len(unknown)} image ids are not in the gallery, e.g. {unknown[:5]}")
        return positions
