"""RetrievalEngine: score image-caption pairs with Oscar's match head, exhaustively or in two stages.

Work that depends on one side only is done once: every caption is tokenized once, every
image's tags are tokenized once and its regions are projected once with
``model.bert.embed_regions`` (deterministic, so reusing the projection through the model's
``img_embeds`` argument gives the scores a per-pair forward gives). Pairs are then assembled
in numpy (:meth:`OscarProcessor.assemble_pairs`), padded to the longest pair of their
batch, and scored in a fixed canonical order: images in gallery order, in blocks of
``IMAGE_BLOCK``; within an image, captions from shortest to longest so that a batch holds
pairs of similar length (length bucketing at no cost). Because the order depends only on the
set of pairs, scoring the same pairs through any path (exhaustive, two-stage with k covering
everything, several ranks) runs the same batches and gives bit-identical scores. (A static
graph, ``paddle.jit.to_static``, was measured and left out: once warm it is no faster than
eager here and it compiles anew, for seconds, for every padded shape.)

Under ``paddle.distributed.launch`` (after ``paddle.distributed.init_parallel_env()``) the
batches (of pair scoring and of the first-stage embeddings) are split into contiguous ranges,
one per rank, and the results are summed across ranks (each value is written by exactly one
rank), so every rank returns the full result. With equal thread counts it is bit-identical to
one process. A script of one's own run this way ends with
:func:`vinvl.parallel.leave_after_rank_zero` (the ``vinvl`` commands do).

Scores and the tie rule. Every score this engine returns is the match head's logit margin
``logit[1] - logit[0]``; the match probability ``softmax[:, 1]`` is ``sigmoid(margin)``
(:func:`match_probability`), the same order, but in float32 it saturates to exactly 1.0 for
margins above ~17, turning distinct confident pairs into ties. Ranking by the margin keeps them
apart. Per query, pairs rank by margin, higher first; pairs with equal margins are tied:
:mod:`vinvl.retrieval.metrics` counts a tie against the ground truth (pessimistic) and listings
(ranked results, Taskflow) put tied pairs in gallery order (lower index first).

First stages (``two_stage(first_stage=...)``) are in :mod:`vinvl.retrieval.first_stage`:
contrastive embeddings or BM25 over detector tags.

Re-scoring the top at fp32. A low-precision scorer (bf16, int8: :mod:`vinvl.oscar.inference`)
ranks nearly as fp32 does, but where two answers are nearly tied its error can swap them. With
``rescore_model`` (an fp32 scorer: the model, or its fp32 Paddle Inference scorer) and
``rescore_top = k``, a ranking's k best pairs per query, both directions, are scored again at
fp32 and take those scores: low precision decides which pairs are near the top, fp32 their order.
Scores of the two precisions then share one matrix, which is sound because the low precisions'
errors are small and unbiased next to the gap between a query's k-th answer and its later ones.
At k = 20 that costs about ``20 * (I + C)`` fp32 pairs against the ranking's ``I * C`` (2.4% at
COCO 1K) and restores fp32's top answers (docs/benchmarks.md, the precisions' gate).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from tqdm.auto import tqdm

from ..oscar.modeling import OscarForImageTextRetrieval
from ..oscar.processor import OscarProcessor
from .distributed import all_reduce_sum, rank, shard
from .first_stage import Candidates, check_first_stage, contrastive_candidates, tag_candidates
from .gallery import Gallery
from .metrics import DEFAULT_KS, retrieval_metrics
from .topk import top_k

__all__ = ["RetrievalEngine", "RetrievalScores", "IMAGE_BLOCK", "match_probability", "check_rescore_top"]

IMAGE_BLOCK = 128  # images whose projected regions are held at once
_RESCORE_CHUNK = 1024  # queries whose top pairs are found at once (at most 100 MB of a 5K x 25K matrix)


def match_probability(margins: np.ndarray) -> np.ndarray:
    """The match probability ``softmax(logits)[:, 1]`` of logit margins: ``sigmoid(margin)``, float32."""
    margins = np.asarray(margins, dtype=np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * margins))).astype(np.float32)


@dataclass
class RetrievalScores:
    """Image x caption score matrices (float32 ``[I, C]``, match logit margins ``logit[1] - logit[0]``).

    ``i2t`` ranks captions for each image and ``t2i`` images for each caption; they are the
    same array for exhaustive scoring. Pairs a two-stage search did not re-rank hold ``-inf``.
    ``pairs_scored`` counts the cross-encoder passes; ``pairs_rescored`` those of them scored
    again by the engine's ``rescore_model``; ``seconds`` is the wall time.
    """

    i2t: np.ndarray
    t2i: np.ndarray
    pairs_scored: int
    seconds: float
    pairs_rescored: int = 0

    def metrics(self, caption_to_image: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> Dict[str, float]:
        """R@K of both directions and rsum (see :func:`vinvl.retrieval.metrics.retrieval_metrics`)."""
        return retrieval_metrics(self.i2t, caption_to_image, self.t2i, ks)


@dataclass
class _Tokens:
    """A gallery's text, tokenized once: padded id matrices and true lengths."""

    caption_ids: np.ndarray  # [C, Lc]
    caption_lens: np.ndarray  # [C]
    tag_ids: np.ndarray  # [I, Lt]
    tag_lens: np.ndarray  # [I]
    caption_rank: np.ndarray  # [C] position of each caption in shortest-first order


@dataclass
class _Block:
    """Images ``start:stop`` and their pairs to score; ``pairs()`` gives (image, caption) index
    arrays in canonical order, built only when the block is scored."""

    start: int
    stop: int
    num_pairs: int
    pairs: Callable[[], Tuple[np.ndarray, np.ndarray]]


class RetrievalEngine:
    """Scores a :class:`Gallery` with an :class:`OscarForImageTextRetrieval` model.

    Args:
        model: the model; it is put in eval mode (dropout off) when scoring.
        processor: gives the text and region limits (``max_seq_len``, ``max_img_seq_len``) and
            region checks, so pairs are cut exactly as the processor cuts them for training.
        batch_size: pairs per forward pass.
        progress: show a tqdm bar with pairs/s (on rank 0 only).
        rescore_model: an fp32 scorer of the same weights as a low-precision ``model``; with
            ``rescore_top``, re-scores the top of every ranking :meth:`exhaustive` and
            :meth:`two_stage` make (module docstring).
        rescore_top: pairs re-scored per query and direction (0: none).
    """

    def __init__(
        self,
        model: OscarForImageTextRetrieval,
        processor: OscarProcessor,
        batch_size: int = 32,
        progress: bool = True,
        rescore_model: Optional[OscarForImageTextRetrieval] = None,
        rescore_top: int = 0,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        check_rescore_top(rescore_top)
        if rescore_top and rescore_model is None:
            raise ValueError("rescore_top needs a rescore_model (the fp32 scorer that re-scores the top pairs)")
        if processor.img_feature_dim != model.config.img_feature_dim:
            raise ValueError(
                f"processor img_feature_dim {processor.img_feature_dim} differs from the model's "
                f"{model.config.img_feature_dim}"
            )
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.progress = progress
        self.rescore_top = int(rescore_top)
        self._rescorer = (
            RetrievalEngine(rescore_model, processor, batch_size, progress) if self.rescore_top else None
        )

    # ----- public scoring API -------------------------------------------------------------

    def exhaustive(self, gallery: Gallery) -> RetrievalScores:
        """Every image x every caption through the match head (the paper protocol)."""
        start = time.perf_counter()
        tokens = self._prepare(gallery)
        scores = np.zeros((gallery.num_images, gallery.num_captions), dtype=np.float32)
        caption_order = np.argsort(tokens.caption_rank, kind="stable")
        blocks = list(self._exhaustive_blocks(gallery, caption_order))
        for images, captions, values in self._score_blocks(gallery, tokens, blocks, "exhaustive"):
            scores[images, captions] = values
        scores = all_reduce_sum(scores)
        pairs = gallery.num_images * gallery.num_captions
        rescored = self._rescore(gallery, scores, tokens) if self.rescore_top else 0
        return RetrievalScores(scores, scores, pairs, time.perf_counter() - start, rescored)

    def two_stage(self, gallery: Gallery, k: int = 128, first_stage: str = "contrastive") -> RetrievalScores:
        """A first stage's top-k candidates per query in both directions, re-ranked by the match head.

        ``first_stage``: ``contrastive`` (embedding similarity) or ``tags`` (BM25 of caption
        words against detector tags), see :meth:`first_stage_candidates`. The union of each
        image's k candidate captions and each caption's k candidate images is scored once, and
        every scored pair ranks in both directions: an image also ranks the captions whose
        candidate lists hold it (``k * C / I`` of them on average, ``5k`` with COCO's five
        captions per image), at no extra pair. ``i2t`` and ``t2i`` are that one matrix;
        unscored pairs hold ``-inf``. When k covers every caption or every image, all pairs are
        scored and the result equals :meth:`exhaustive` exactly.
        """
        check_first_stage(first_stage, ("contrastive", "tags"))
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        start = time.perf_counter()
        tokens = self._prepare(gallery)
        union = self._candidates(gallery, tokens, first_stage, k).pairs(gallery.num_captions)
        scores = np.full((gallery.num_images, gallery.num_captions), -np.inf, dtype=np.float32)
        scores.ravel()[union] = self._score_codes(gallery, tokens, union)
        rescored = self._rescore(gallery, scores, tokens) if self.rescore_top else 0
        return RetrievalScores(scores, scores, int(len(union)), time.perf_counter() - start, rescored)

    def score_pairs(self, gallery: Gallery, images: np.ndarray, captions: np.ndarray) -> np.ndarray:
        """Match scores (logit margins) ``[P]`` of the given (image index, caption index) pairs, in the given order."""
        images = np.asarray(images, dtype=np.int64).ravel()
        captions = np.asarray(captions, dtype=np.int64).ravel()
        if images.shape != captions.shape:
            raise ValueError(f"got {len(images)} image indices and {len(captions)} caption indices")
        if len(images) == 0:
            return np.zeros(0, dtype=np.float32)
        if images.min() < 0 or images.max() >= gallery.num_images:
            raise ValueError(f"image indices must be in 0..{gallery.num_images - 1}")
        if captions.min() < 0 or captions.max() >= gallery.num_captions:
            raise ValueError(f"caption indices must be in 0..{gallery.num_captions - 1}")
        tokens = self._prepare(gallery, images, captions)
        codes = images * gallery.num_captions + captions
        unique, inverse = np.unique(codes, return_inverse=True)
        return self._score_codes(gallery, tokens, unique)[inverse]

    def rescore(
        self, gallery: Gallery, scores: np.ndarray, images: Optional[np.ndarray] = None, captions: Optional[np.ndarray] = None
    ) -> int:
        """Re-score the top of the rankings in ``scores [I, C]`` (in place) with ``rescore_model``;
        returns how many pairs it scored.

        The queries are the rows ``images`` (each ranks captions; default every image) and the
        columns ``captions`` (each ranks images; default every caption). Each query's
        ``rescore_top`` best scored pairs (``-inf`` marks an unscored pair) are scored again,
        once each however many queries share them.
        """
        if not self.rescore_top:
            raise ValueError("this engine has no rescore_top (nothing to re-score with)")
        if scores.shape != (gallery.num_images, gallery.num_captions):
            raise ValueError(f"scores must be [{gallery.num_images}, {gallery.num_captions}], got {list(scores.shape)}")
        return self._rescore(gallery, scores, None, images, captions)

    def _rescore(
        self,
        gallery: Gallery,
        scores: np.ndarray,
        tokens: Optional[_Tokens],
        images: Optional[np.ndarray] = None,
        captions: Optional[np.ndarray] = None,
    ) -> int:
        """:meth:`rescore` with the gallery's ``tokens`` when the caller has them (None: tokenize the pairs')."""
        codes = _top_codes(scores, self.rescore_top, images, captions)
        if len(codes):
            pair_images, pair_captions = np.divmod(codes, gallery.num_captions)
            if tokens is None:
                tokens = self._prepare(gallery, pair_images, pair_captions)
            scores[pair_images, pair_captions] = self._rescorer._score_codes(gallery, tokens, codes)
        return int(len(codes))

    def rerank(self, gallery: Gallery, candidates: Optional[np.ndarray] = None) -> np.ndarray:
        """Scores (logit margins) ``[I, K]`` of each image with its listed candidate captions (minival re-ranking).

        ``candidates`` defaults to the gallery's own (from the corpus' ``caption_index``); rank
        them with :func:`vinvl.retrieval.metrics.rerank_metrics`.
        """
        candidates = gallery.candidates if candidates is None else np.asarray(candidates, dtype=np.int64)
        if candidates is None:
            raise ValueError("the gallery has no re-rank candidates; pass candidates=[images, K] caption indices")
        if candidates.ndim != 2 or len(candidates) != gallery.num_images:
            raise ValueError(f"candidates must be [{gallery.num_images}, K], got {list(candidates.shape)}")
        images = np.repeat(np.arange(gallery.num_images), candidates.shape[1])
        return self.score_pairs(gallery, images, candidates.ravel()).reshape(candidates.shape)

    def first_stage_candidates(self, gallery: Gallery, first_stage: str, k: int) -> Candidates:
        """The candidates ``first_stage`` (``contrastive`` or ``tags``) proposes for every query, k each.

        ``contrastive``: each image's k captions of highest embedding similarity and each
        caption's k images. ``tags``: :func:`vinvl.retrieval.first_stage.tag_candidates` with
        this engine's tokenizer. Does not look at ``config.trained_heads``: entry points decide
        whether contrastive heads may be used (:func:`vinvl.retrieval.first_stage.resolve_first_stage`).
        """
        check_first_stage(first_stage, ("contrastive", "tags"))
        tokens = self._prepare(gallery) if first_stage == "contrastive" else None
        return self._candidates(gallery, tokens, first_stage, k)

    def _candidates(self, gallery: Gallery, tokens: Optional["_Tokens"], first_stage: str, k: int) -> Candidates:
        if first_stage == "tags":
            return tag_candidates(gallery, self.processor.tokenizer, k)
        return contrastive_candidates(self._embed_images(gallery, tokens), self._embed_captions(tokens), k)

    def embed_captions(self, gallery: Gallery) -> np.ndarray:
        """Caption-only embeddings ``[C, contrastive_dim]`` (``[CLS] caption [SEP]``), L2-normalised."""
        return self._embed_captions(self._prepare(gallery, images=np.zeros(0, dtype=np.int64)))

    def embed_images(self, gallery: Gallery) -> np.ndarray:
        """Image-only embeddings ``[I, contrastive_dim]`` (``[CLS] [SEP] tags [SEP]`` + regions), L2-normalised."""
        return self._embed_images(gallery, self._prepare(gallery, captions=np.zeros(0, dtype=np.int64)))

    def pool_captions(self, gallery: Gallery) -> np.ndarray:
        """Caption-only encoder states ``[C, hidden_size]`` before the text head (``pool_text``)."""
        return self._embed_captions(self._prepare(gallery, images=np.zeros(0, dtype=np.int64)), pooled=True)

    def pool_images(self, gallery: Gallery) -> np.ndarray:
        """Image-only encoder states ``[I, hidden_size]`` before the image head (``pool_image``)."""
        return self._embed_images(gallery, self._prepare(gallery, captions=np.zeros(0, dtype=np.int64)), pooled=True)

    # ----- preparation --------------------------------------------------------------------

    def _prepare(
        self, gallery: Gallery, images: Optional[np.ndarray] = None, captions: Optional[np.ndarray] = None
    ) -> _Tokens:
        """Token pieces of the gallery's captions and tags, indexed like the gallery.

        ``images`` / ``captions`` (indices) limit the tokenizing to what will be used; the other
        rows stay empty. A query against a large gallery then costs its candidates, not the gallery.
        """
        if gallery.feature_dim != self.processor.img_feature_dim:
            raise ValueError(
                f"gallery region features are {gallery.feature_dim} wide but the model expects "
                f"{self.processor.img_feature_dim}"
            )
        caption_ids, caption_lens = _pieces_of(self.processor.caption_pieces, gallery.captions, captions)
        tag_ids, tag_lens = _pieces_of(self.processor.tag_pieces, gallery.tags, images)
        caption_rank = np.empty(len(caption_lens), dtype=np.int64)
        caption_rank[np.argsort(caption_lens, kind="stable")] = np.arange(len(caption_lens))
        return _Tokens(caption_ids, caption_lens, tag_ids, tag_lens, caption_rank)

    def _project_regions(self, gallery: Gallery, start: int, stop: int) -> Tuple[paddle.Tensor, np.ndarray]:
        """Regions of images ``start:stop`` through ``embed_regions``: ``[n, R_max, H]`` and lengths ``[n]``."""
        feats = [self.processor.prepare_regions(gallery.features(i)) for i in range(start, stop)]
        lens = np.array([len(f) for f in feats], dtype=np.int64)
        padded = np.zeros((len(feats), int(lens.max(initial=0)), self.processor.img_feature_dim), dtype=np.float32)
        for row, f in enumerate(feats):
            padded[row, : len(f)] = f
        return self.model.bert.embed_regions(paddle.to_tensor(padded)), lens

    # ----- the pair-scoring loop ----------------------------------------------------------

    def _exhaustive_blocks(self, gallery: Gallery, caption_order: np.ndarray) -> Iterator[_Block]:
        num_captions = gallery.num_captions
        for start in range(0, gallery.num_images, IMAGE_BLOCK):
            stop = min(start + IMAGE_BLOCK, gallery.num_images)
            yield _Block(
                start,
                stop,
                (stop - start) * num_captions,
                lambda start=start, stop=stop: (
                    np.repeat(np.arange(start, stop), num_captions),
                    np.tile(caption_order, stop - start),
                ),
            )

    def _sparse_blocks(self, gallery: Gallery, tokens: _Tokens, codes: np.ndarray) -> List[_Block]:
        """Blocks of the pairs ``codes`` (image * C + caption), sorted into the canonical order."""
        images, captions = np.divmod(codes, gallery.num_captions)
        order = np.lexsort((tokens.caption_rank[captions], images))
        images, captions = images[order], captions[order]
        blocks = []
        for start in range(0, gallery.num_images, IMAGE_BLOCK):
            stop = min(start + IMAGE_BLOCK, gallery.num_images)
            lo, hi = np.searchsorted(images, [start, stop])
            if hi > lo:
                pairs = (images[lo:hi], captions[lo:hi])
                blocks.append(_Block(start, stop, int(hi - lo), lambda pairs=pairs: pairs))
        return blocks

    def _score_codes(self, gallery: Gallery, tokens: _Tokens, codes: np.ndarray) -> np.ndarray:
        """Scores of the distinct pairs ``codes`` (image * C + caption), returned in ``codes`` order."""
        blocks = self._sparse_blocks(gallery, tokens, codes)
        values = np.zeros(len(codes), dtype=np.float32)
        for images, captions, scores in self._score_blocks(gallery, tokens, blocks, "re-rank"):
            values[np.searchsorted(codes, images * gallery.num_captions + captions)] = scores
        return all_reduce_sum(values)

    def _score_blocks(
        self, gallery: Gallery, tokens: _Tokens, blocks: List[_Block], label: str
    ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yields ``(images, captions, scores)`` per batch for this rank's share of the batches."""
        batch_starts = [(b, s) for b, block in enumerate(blocks) for s in range(0, block.num_pairs, self.batch_size)]
        mine = shard(batch_starts)
        total = sum(min(self.batch_size, blocks[b].num_pairs - s) for b, s in mine)
        bar = tqdm(total=total, unit="pair", unit_scale=True, desc=label, disable=not self.progress or rank() != 0)
        self.model.eval()
        current = None
        with paddle.no_grad():
            for b, s in mine:
                block = blocks[b]
                if current != b:
                    current = b
                    embeds, block_region_lens = self._project_regions(gallery, block.start, block.stop)
                    block_images, block_captions = block.pairs()
                images = block_images[s : s + self.batch_size]
                captions = block_captions[s : s + self.batch_size]
                scores = self._score_batch(tokens, images, captions, images - block.start, embeds, block_region_lens)
                bar.update(len(images))
                yield images, captions, scores
        bar.close()

    def _score_batch(
        self,
        tokens: _Tokens,
        images: np.ndarray,
        captions: np.ndarray,
        local_images: np.ndarray,
        block_embeds: paddle.Tensor,
        block_region_lens: np.ndarray,
    ) -> np.ndarray:
        img_embeds, region_lens = _batch_regions(block_embeds, block_region_lens, local_images)
        inputs = self.processor.assemble_pairs(
            tokens.caption_ids[captions],
            tokens.caption_lens[captions],
            tokens.tag_ids[images],
            tokens.tag_lens[images],
            region_lens,
            img_embeds.shape[1],
        )
        logits = self.model(**_to_tensors(inputs), img_embeds=img_embeds).logits.numpy().astype(np.float32)
        return logits[:, 1] - logits[:, 0]

    # ----- first stage --------------------------------------------------------------------

    def _embed_captions(self, tokens: _Tokens, pooled: bool = False) -> np.ndarray:
        """``embed_text`` (or ``pool_text``) of ``[CLS] caption [SEP]`` for every caption, batched shortest first."""
        order = np.argsort(tokens.caption_rank)
        config = self.model.config
        embed = self.model.pool_text if pooled else self.model.embed_text
        out = np.zeros((len(order), config.hidden_size if pooled else config.contrastive_dim), dtype=np.float32)
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        self.model.eval()
        with paddle.no_grad():
            for rows in shard(batches):
                no_tags = np.zeros(len(rows), dtype=np.int64)
                inputs = self.processor.assemble_pairs(
                    tokens.caption_ids[rows], tokens.caption_lens[rows], no_tags[:, None], no_tags, no_tags, 0
                )
                out[rows] = embed(**_to_tensors(inputs)).numpy()
        return all_reduce_sum(out)

    def _embed_images(self, gallery: Gallery, tokens: _Tokens, pooled: bool = False) -> np.ndarray:
        """``embed_image`` (or ``pool_image``) of ``[CLS] [SEP] tags [SEP]`` + regions for every image,
        regions projected once."""
        config = self.model.config
        embed = self.model.pool_image if pooled else self.model.embed_image
        out = np.zeros((gallery.num_images, config.hidden_size if pooled else config.contrastive_dim), dtype=np.float32)
        batches = [
            (start, np.arange(s, min(s + self.batch_size, start + IMAGE_BLOCK, gallery.num_images)))
            for start in range(0, gallery.num_images, IMAGE_BLOCK)
            for s in range(start, min(start + IMAGE_BLOCK, gallery.num_images), self.batch_size)
        ]
        self.model.eval()
        current = None
        with paddle.no_grad():
            for start, rows in shard(batches):
                if current != start:
                    current = start
                    block = self._project_regions(gallery, start, min(start + IMAGE_BLOCK, gallery.num_images))
                img_embeds, region_lens = _batch_regions(*block, rows - start)
                no_caption = np.zeros(len(rows), dtype=np.int64)
                inputs = self.processor.assemble_pairs(
                    no_caption[:, None], no_caption, tokens.tag_ids[rows], tokens.tag_lens[rows],
                    region_lens, img_embeds.shape[1],
                )
                out[rows] = embed(**_to_tensors(inputs), img_embeds=img_embeds).numpy()
        return all_reduce_sum(out)


def _pieces_of(
    make: Callable[[Sequence], Tuple[np.ndarray, np.ndarray]], items: Sequence, rows: Optional[np.ndarray]
) -> Tuple[np.ndarray, np.ndarray]:
    """``make(items)``, or only ``items[rows]`` made and placed at their rows (others empty)."""
    if rows is None:
        return make(items)
    rows = np.unique(rows)
    ids, lens = make([items[i] for i in rows])
    all_ids = np.zeros((len(items), ids.shape[1]), dtype=np.int64)
    all_lens = np.zeros(len(items), dtype=np.int64)
    all_ids[rows], all_lens[rows] = ids, lens
    return all_ids, all_lens


def check_rescore_top(rescore_top: Any) -> None:
    """Refuse a ``rescore_top`` that is not a non-negative integer (a ValueError naming it): the
    engine's check, which ``vinvl eval`` makes before the model loads."""
    if isinstance(rescore_top, bool) or not isinstance(rescore_top, (int, np.integer)) or rescore_top < 0:
        raise ValueError(f"rescore_top must be a non-negative integer, got {rescore_top!r}")


def _top_codes(
    scores: np.ndarray, k: int, images: Optional[np.ndarray], captions: Optional[np.ndarray]
) -> np.ndarray:
    """Sorted distinct codes (image * C + caption) of the ``k`` best finite scores of each row
    ``images`` and each column ``captions`` of ``scores [I, C]`` (None: all of them)."""
    num_images, num_captions = scores.shape
    images = np.arange(num_images) if images is None else np.asarray(images, dtype=np.int64)
    captions = np.arange(num_captions) if captions is None else np.asarray(captions, dtype=np.int64)
    found = []
    for start in range(0, len(images), _RESCORE_CHUNK):  # each image's best captions
        rows = images[start : start + _RESCORE_CHUNK]
        best, columns = top_k(scores[rows], k)
        keep = np.isfinite(best)
        found.append((np.broadcast_to(rows[:, None], columns.shape)[keep] * num_captions + columns[keep]))
    for start in range(0, len(captions), _RESCORE_CHUNK):  # each caption's best images
        columns = captions[start : start + _RESCORE_CHUNK]
        best, rows = top_k(np.ascontiguousarray(scores[:, columns].T), k)
        keep = np.isfinite(best)
        found.append(rows[keep] * num_captions + np.broadcast_to(columns[:, None], rows.shape)[keep])
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def _to_tensors(arrays: Dict[str, np.ndarray]) -> Dict[str, paddle.Tensor]:
    return {name: paddle.to_tensor(value) for name, value in arrays.items()}


def _batch_regions(
    block_embeds: paddle.Tensor, block_region_lens: np.ndarray, local_images: np.ndarray
) -> Tuple[paddle.Tensor, np.ndarray]:
    """Projected regions ``[B, R_batch, H]`` of the batch's images (padded to the batch's longest) and their lengths."""
    region_lens = block_region_lens[local_images]
    embeds = paddle.gather(block_embeds, paddle.to_tensor(local_images))[:, : int(region_lens.max())]
    return embeds, region_lens
