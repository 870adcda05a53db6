"""First stages of two-stage retrieval: which pairs the match head re-ranks.

A first stage proposes, for every image, ``k`` candidate captions (``i2t``) and, for every
caption, ``k`` candidate images (``t2i``); :meth:`RetrievalEngine.two_stage` scores the union
(:meth:`Candidates.pairs`) with the match head and ranks every scored pair in both directions.
The choices (``first_stage=`` of the engine, ``vinvl eval``, ``vinvl retrieve`` and
``Taskflow("image_text_retrieval")``):

- ``contrastive``: nearest neighbours of the model's caption-only / image-only embeddings
  (:func:`contrastive_candidates`). Only as good as the contrastive heads' training.
- ``tags``: BM25 of caption words against each image's detector tags, plurals folded
  (:func:`tag_candidates`). Needs no training at all, so it serves any checkpoint (e.g. an
  official VinVL one, whose contrastive heads are freshly initialised).
- ``exhaustive``: no first stage; every pair is scored.
- ``auto`` (entry points only, :func:`resolve_first_stage`): ``contrastive`` when the model
  records trained contrastive heads (``OscarConfig.trained_heads``), else ``exhaustive``.

Candidate order and ties: each query's candidates are listed best first; equal first-stage
scores go to the lower gallery index (so a caption sharing no word with any image's tags gets
the first ``k`` images): the one rule of :mod:`vinvl.retrieval.topk`, for both stages.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Sequence

import numpy as np
from scipy import sparse

from ..errors import UsageError
from .search import ExactSearch
from .topk import TopK, top_k_of_block

__all__ = [
    "FIRST_STAGES",
    "FIRST_STAGE_CHOICES",
    "BM25_K1",
    "BM25_B",
    "Candidates",
    "BM25Index",
    "fold_plural",
    "words_of",
    "tag_words",
    "tag_word_lists",
    "tag_candidates",
    "contrastive_candidates",
    "check_first_stage",
    "contrastive_heads_trained",
    "resolve_first_stage",
]

logger = logging.getLogger(__name__)

FIRST_STAGES = ("exhaustive", "contrastive", "tags")  # what a scoring call is told to do
FIRST_STAGE_CHOICES = ("auto",) + FIRST_STAGES  # what a user may ask an entry point for
BM25_K1 = 1.2  # term-frequency saturation (the common Lucene / Robertson default)
BM25_B = 0.75  # document-length normalisation
_CHUNK_CELLS = 1 << 22  # query x document cells scored at once


@dataclass
class Candidates:
    """A first stage's proposals: ``i2t [I, k]`` caption indices per image and ``t2i [C, k]``
    image indices per caption (``k`` capped at the number of captions / images)."""

    i2t: np.ndarray
    t2i: np.ndarray

    def pairs(self, num_captions: int) -> np.ndarray:
        """The pairs two-stage scores: the union of both directions' candidates, as sorted unique
        codes ``image * num_captions + caption``."""
        i2t_codes = (np.arange(len(self.i2t))[:, None] * num_captions + self.i2t).ravel()
        t2i_codes = (self.t2i * num_captions + np.arange(len(self.t2i))[:, None]).ravel()
        return np.union1d(i2t_codes, t2i_codes)

    def scored(self, num_captions: int) -> np.ndarray:
        """A boolean ``[I, C]`` mask of :meth:`pairs`."""
        mask = np.zeros((len(self.i2t), num_captions), dtype=bool)
        mask.ravel()[self.pairs(num_captions)] = True
        return mask


# ----- words -------------------------------------------------------------------------------


# Plurals whose regular folding would not meet the singular (``knives`` -> ``knife``, not ``knive``).
_IRREGULAR_PLURALS = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "geese": "goose", "knives": "knife", "leaves": "leaf",
    "shelves": "shelf", "wolves": "wolf", "halves": "half", "loaves": "loaf", "scarves": "scarf",
    "calves": "calf", "hooves": "hoof", "buses": "bus", "tomatoes": "tomato", "potatoes": "potato",
    "cookies": "cookie", "movies": "movie", "brownies": "brownie", "goalies": "goalie",
}


def fold_plural(word: str) -> str:
    """``word`` with an English plural ending removed, so that a caption's ``dogs`` meets the
    detector's tag ``dog`` (VinVL labels are singular).

    Applied alike to caption and tag words, the rule only has to map a plural and its singular
    to the same string: ``-ies`` -> ``-y`` (berries), ``-ches/-shes/-xes/-sses/-zzes`` lose
    ``es`` (benches, glasses), words ending in ``ss`` or ``us`` and words of up to 3 letters stay
    (grass, cactus, bus), any other final ``s`` goes (dogs, houses, shoes, skis), plus a table of
    irregular plurals. Verbs fold too (``sits`` -> ``sit``), which no tag matches either way.
    """
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses", "zzes")):
        return word[:-2]
    return word[:-1]


def words_of(tokenizer: Any, text: str) -> List[str]:
    """The words of ``text`` as the model's tokenizer splits them before WordPiece (lower-cased,
    accents stripped, punctuation split off), without the punctuation tokens themselves, each
    passed through :func:`fold_plural`."""
    return [fold_plural(w) for w in tokenizer.basic_tokens(text) if any(ch.isalnum() for ch in w)]


def tag_words(tokenizer: Any, tags: Any) -> List[str]:
    """The words of an image's tags, joined as the model reads them (multi-word tags and
    ``attribute class`` labels give one word each)."""
    return words_of(tokenizer, tokenizer.tags_to_text(tags))


def tag_word_lists(tokenizer: Any, tag_lists: Iterable[Any]) -> Iterator[List[str]]:
    """:func:`tag_words` of each image's tags, each distinct tag tokenized once.

    The tags are joined with spaces, and each step of the tokenizer's basic tokenization works
    within one character (cleaning, CJK spacing) or one whitespace-separated token (lower-casing,
    accents, punctuation), so the words of a tag list are the words of its tags one by one: a
    gallery of a million images needs the tokenizer only for its few thousand distinct tags. (A
    tag list given as one string is tokenized whole.)
    """
    cache: Dict[str, List[str]] = {}
    for tags in tag_lists:
        if tags is None or isinstance(tags, str):
            yield tag_words(tokenizer, tags)
            continue
        words: List[str] = []
        for tag in tags:
            known = cache.get(tag)
            if known is None:
                known = cache[tag] = words_of(tokenizer, tag)
            words.extend(known)
        yield words


# ----- BM25 --------------------------------------------------------------------------------


class BM25Index:
    """Okapi BM25 over a fixed set of documents (word lists).

    ``score(q, d) = sum over the distinct words t of q of
    idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))`` with
    ``idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))`` (never negative), ``tf`` the count of
    ``t`` in ``d``, ``|d|`` its length in words, ``avgdl`` the mean length and ``N`` the number
    of documents. A query word repeated counts once; words no document holds score nothing.
    """

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = BM25_K1, b: float = BM25_B):
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.num_documents = len(documents)
        if self.num_documents == 0:
            raise ValueError("BM25 needs at least one document")
        self.vocabulary: Dict[str, int] = {}
        rows, cols = [], []
        for d, words in enumerate(documents):
            for word in words:
                rows.append(d)
                cols.append(self.vocabulary.setdefault(word, len(self.vocabulary)))
        shape = (self.num_documents, max(len(self.vocabulary), 1))
        tf = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)  # duplicates summed
        tf.sum_duplicates()
        lengths = np.asarray(tf.sum(axis=1)).ravel()
        mean_length = lengths.mean()
        norm = k1 * (1 - b + b * lengths / mean_length) if mean_length > 0 else np.full(len(lengths), k1)
        df = np.bincount(tf.indices, minlength=shape[1])
        idf = np.log1p((self.num_documents - df + 0.5) / (df + 0.5))
        doc_of_entry = np.repeat(np.arange(self.num_documents), np.diff(tf.indptr))
        weights = idf[tf.indices] * tf.data * (k1 + 1) / (tf.data + norm[doc_of_entry])
        self._weights_t = sparse.csr_matrix((weights, tf.indices, tf.indptr), shape=shape).T.tocsr()  # [V, N]

    @property
    def nbytes(self) -> int:
        """Memory of its ``[vocabulary, documents]`` weight matrix (CSR)."""
        matrix = self._weights_t
        return int(matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes)

    def _query_matrix(self, queries: Sequence[Sequence[str]]) -> sparse.csr_matrix:
        rows, cols = [], []
        for q, words in enumerate(queries):
            known = {self.vocabulary[w] for w in words if w in self.vocabulary}
            rows.extend([q] * len(known))
            cols.extend(sorted(known))
        return sparse.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(len(queries), self._weights_t.shape[0])
        )

    def scores(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
        """BM25 of every query against every document, float64 ``[Q, N]``."""
        return np.asarray((self._query_matrix(queries) @ self._weights_t).todense())

    def search(self, queries: Sequence[Sequence[str]], k: int) -> TopK:
        """Each query's ``min(k, N)`` best documents: (BM25 scores, documents) ``[Q, k]``, best first,
        ties to the lower index (:func:`vinvl.retrieval.topk.top_k`)."""
        k = _check_k(k, self.num_documents)
        query_matrix = self._query_matrix(queries)
        scores = np.empty((len(queries), k), dtype=np.float64)
        out = np.empty((len(queries), k), dtype=np.int64)
        step = max(1, _CHUNK_CELLS // self.num_documents)
        for start in range(0, len(queries), step):
            block = np.asarray((query_matrix[start : start + step] @ self._weights_t).todense())
            scores[start : start + step], out[start : start + step] = top_k_of_block(block, k)
        return scores, out

    def top_k(self, queries: Sequence[Sequence[str]], k: int) -> np.ndarray:
        """The documents of :meth:`search` alone ``[Q, min(k, N)]``."""
        return self.search(queries, k)[1]


def tag_candidates(gallery: Any, tokenizer: Any, k: int, k1: float = BM25_K1, b: float = BM25_B) -> Candidates:
    """The ``tags`` first stage over a :class:`Gallery`: BM25 both ways between caption words and tag words.

    Caption -> images: the caption's words query the images, each image a document of its tag
    words. Image -> captions: the image's tag words query the captions, each caption a
    document of its words. Words come from :func:`words_of` (the tokenizer's basic
    tokenization), so ``Dog,`` in a caption meets the tag ``dog``.
    """
    image_words = list(tag_word_lists(tokenizer, gallery.tags))
    caption_words = [words_of(tokenizer, caption) for caption in gallery.captions]
    i2t = BM25Index(caption_words, k1, b).top_k(image_words, k)
    t2i = BM25Index(image_words, k1, b).top_k(caption_words, k)
    return Candidates(i2t, t2i)


# ----- contrastive embeddings --------------------------------------------------------------


def contrastive_candidates(image_embeds: np.ndarray, caption_embeds: np.ndarray, k: int) -> Candidates:
    """The ``contrastive`` first stage from L2-normalised embeddings ``[I, E]`` and ``[C, E]``."""
    return Candidates(ExactSearch(caption_embeds).search(image_embeds, k)[1], ExactSearch(image_embeds).search(caption_embeds, k)[1])


# ----- shared helpers ----------------------------------------------------------------------


def _check_k(k: int, available: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(min(k, available))


def check_first_stage(first_stage: str, allowed: Sequence[str] = FIRST_STAGES) -> str:
    """``first_stage`` if it is one of ``allowed``, else a ValueError that lists them."""
    if first_stage not in allowed:
        raise UsageError(f"first_stage must be one of {tuple(allowed)}, got {first_stage!r}")
    return first_stage


def contrastive_heads_trained(config: Any) -> bool:
    """Whether the model has contrastive heads and its directory records them as trained."""
    return config.contrastive_dim > 0 and "contrastive" in config.heads_trained()


def resolve_first_stage(requested: str, config: Any) -> str:
    """The first stage an entry point runs for a user's ``requested`` choice on a model with ``config``.

    ``auto`` becomes ``contrastive`` when the contrastive heads are trained, else ``exhaustive``
    (logged once, here, as a warning: the answer is exact but every pair is scored). An explicit
    ``contrastive`` on untrained heads is a ValueError: their candidates would be random.
    """
    check_first_stage(requested, FIRST_STAGE_CHOICES)
    if requested in ("auto", "contrastive") and not contrastive_heads_trained(config):
        why = (
            "the model has no contrastive heads (contrastive_dim is 0)"
            if config.contrastive_dim <= 0
            else f"the model's contrastive heads are not trained (config.json trained_heads: {config.trained_heads})"
        )
        if requested == "contrastive":
            raise UsageError(
                f"first_stage 'contrastive' needs trained contrastive heads, but {why}; use first_stage "
                "'tags' (BM25 over detector tags, needs no training) or 'exhaustive', or fit the heads first"
            )
        logger.warning(
            "first_stage 'auto': %s, so every pair is scored exhaustively (exact, but slow on large "
            "galleries); pass first_stage 'tags' for a first stage that needs no training", why
        )
        return "exhaustive"
    return "contrastive" if requested == "auto" else requested
