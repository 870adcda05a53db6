"""The tags first stage's BM25 postings in an index version, written by build and add, memory-mapped by readers.

```
bm25_tags_terms.npy (+ _order)   the vocabulary: tag words by term id (an IdColumn: binary search by word)
bm25_tags_indptr.npy             int64 [V + 1]: term t's postings are [indptr[t], indptr[t + 1])
bm25_tags_docs.npy               int32 [P]: the images whose tags hold the term, ascending
bm25_tags_tf.npy                 int32 [P]: how often the term occurs in their tag words
bm25_tags_lengths.npy            int32 [N]: each image's number of tag words
```

The documents are the images' tag words (:func:`vinvl.retrieval.first_stage.tag_word_lists`
with the model's tokenizer), in gallery order; the manifest's ``tag_postings`` entry counts them.
Raw term frequencies and lengths are stored, not BM25 weights: weights depend on the number of
images and their mean length, which an add changes, so ``vinvl index add`` merges the new images'
postings into the old ones (copied term by term, no image re-tokenized) and the weights are
computed at search time (:class:`vinvl.retrieval.postings.PostingsBM25`).
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from ..retrieval.postings import Postings, PostingsBuilder
from .tables import IdColumn, load_array

__all__ = ["PREFIX", "MANIFEST_KEY", "write_postings", "load_postings"]

PREFIX = "bm25_tags"
MANIFEST_KEY = "tag_postings"
_ARRAYS = ("indptr", "docs", "tf", "lengths")


def write_postings(folder: str, documents: Iterable[Sequence[str]], base: Optional[Postings] = None) -> dict:
    """Write the postings of ``base``'s documents (if any) then ``documents`` (word lists) into
    ``folder``; returns the manifest entry. The arrays are filled as memory maps and the new
    documents' postings wait in a scratch folder inside ``folder``, so memory stays bounded
    whatever the number of images."""
    maps = {}

    def allocate(name: str, length: int, dtype: type) -> np.ndarray:
        maps[name] = np.lib.format.open_memmap(os.path.join(folder, f"{PREFIX}_{name}.npy"), mode="w+", dtype=dtype, shape=(length,))
        return maps[name]

    with tempfile.TemporaryDirectory(prefix=".postings-", dir=folder) as spill:
        builder = PostingsBuilder(base, spill_dir=spill)
        builder.add(documents)
        postings = builder.finish(allocate)
    for array in maps.values():
        array.flush()
    words = list(postings.words)
    IdColumn.write(folder, f"{PREFIX}_terms", [words], len(words), max((len(w.encode("utf-8")) for w in words), default=0))
    return {"documents": postings.num_documents, "terms": postings.num_terms, "postings": postings.num_postings}


def load_postings(folder: str) -> Tuple[Postings, IdColumn]:
    """A version's postings, memory-mapped, and its vocabulary (``find(word)`` -> term id or -1)."""
    terms = IdColumn(folder, f"{PREFIX}_terms")
    arrays = {name: load_array(folder, f"{PREFIX}_{name}") for name in _ARRAYS}
    return Postings(words=terms, **arrays), terms
