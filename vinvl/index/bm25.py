"""The tags first stage's BM25 postings in an index version, written by build and add, memory-mapped by readers.

Two sets, one per direction of the ``tags`` first stage, each stored as:

```
bm25_<kind>_terms.npy (+ _order)   the vocabulary: words by term id (an IdColumn: binary search by word)
bm25_<kind>_indptr.npy             int64 [V + 1]: term t's postings are [indptr[t], indptr[t + 1])
bm25_<kind>_docs.npy               int32 [P]: the documents holding the term, ascending
bm25_<kind>_tf.npy                 int32 [P]: how often the term occurs in them
bm25_<kind>_lengths.npy            int32 [N]: each document's number of words
```

- :data:`TAGS` (``bm25_tags_*``, manifest entry ``tag_postings``): the images as documents of their
  tag words (:func:`vinvl.retrieval.first_stage.tag_word_lists` with the model's tokenizer), in
  gallery order; caption -> images.
- :data:`CAPTIONS` (``bm25_captions_*``, manifest entry ``caption_postings``): the captions as
  documents of their words (:func:`vinvl.retrieval.first_stage.words_of`), flattened in image
  order as the index's caption rows are; image -> captions.

The manifest entry counts documents, terms and postings. Raw term frequencies and lengths are
stored, not BM25 weights: weights depend on the number of documents and their mean length, which
an add changes, so ``vinvl index add`` merges the new documents' postings into the old ones
(copied term by term, nothing re-tokenized) and the weights are computed at search time
(:class:`vinvl.retrieval.postings.PostingsBM25`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from ..retrieval.postings import Postings, PostingsBuilder
from .tables import IdColumn, load_array

__all__ = ["PREFIX", "PostingsKind", "TAGS", "CAPTIONS", "write_postings", "load_postings"]

PREFIX = "bm25_"  # every postings file's name starts with it
_ARRAYS = ("indptr", "docs", "tf", "lengths")


@dataclass(frozen=True)
class PostingsKind:
    """One set of postings in a version: its files' name prefix and its manifest entry's key."""

    prefix: str
    manifest_key: str


TAGS = PostingsKind(f"{PREFIX}tags", "tag_postings")
CAPTIONS = PostingsKind(f"{PREFIX}captions", "caption_postings")


def write_postings(
    folder: str, documents: Iterable[Sequence[str]], base: Optional[Postings] = None, kind: PostingsKind = TAGS
) -> dict:
    """Write the ``kind`` postings of ``base``'s documents (if any) then ``documents`` (word lists)
    into ``folder``; returns the manifest entry. The arrays are filled as memory maps and the new
    documents' postings wait in a scratch folder inside ``folder``, so memory stays bounded
    whatever the number of documents."""
    maps = {}

    def allocate(name: str, length: int, dtype: type) -> np.ndarray:
        path = os.path.join(folder, f"{kind.prefix}_{name}.npy")
        maps[name] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(length,))
        return maps[name]

    with tempfile.TemporaryDirectory(prefix=".postings-", dir=folder) as spill:
        builder = PostingsBuilder(base, spill_dir=spill)
        builder.add(documents)
        postings = builder.finish(allocate)
    for array in maps.values():
        array.flush()
    words = list(postings.words)
    IdColumn.write(folder, f"{kind.prefix}_terms", [words], len(words), max((len(w.encode("utf-8")) for w in words), default=0))
    return {"documents": postings.num_documents, "terms": postings.num_terms, "postings": postings.num_postings}


def load_postings(folder: str, kind: PostingsKind = TAGS) -> Tuple[Postings, IdColumn]:
    """A version's ``kind`` postings, memory-mapped, and their vocabulary (``find(word)`` -> term id or -1)."""
    terms = IdColumn(folder, f"{kind.prefix}_terms")
    arrays = {name: load_array(folder, f"{kind.prefix}_{name}") for name in _ARRAYS}
    return Postings(words=terms, **arrays), terms
