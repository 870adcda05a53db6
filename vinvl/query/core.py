"""The query core: one object that answers caption, image and pair queries over a gallery.

``Taskflow("image_text_retrieval")``, ``vinvl retrieve`` and the HTTP service are thin adapters
over :class:`Retriever`; for the same gallery and options they give the same answers, because
they run this code.

    from vinvl.query import Retriever

    retriever = Retriever("outputs/model")
    retriever.use_index("gallery_index")                  # or use_data_dir / use_arrays / use_photos
    retriever.answer(["a dog catching a frisbee", {"image_id": "500012"}], top_k=5, candidates=16)

Queries (one or a list): a caption string; ``{"image_id"}`` (a gallery image); ``{"features",
"tags"}`` (a new image's regions and tags); either image form with ``"caption"`` (a pair score);
a photo (file path, PIL image, ``HxWx3`` uint8 array, or ``{"image": photo}``) when the
retriever has a detector. Answers are plain dicts, best first: ``score`` is the match
probability, ``margin`` the logit margin results are ranked by; equal margins list in gallery
order (:mod:`vinvl.retrieval.topk`).

The match head's pair forward runs at the retriever's ``precision`` (``fp32``, the model itself;
``bf16`` / ``int8`` on a CPU inference runtime, ``fp16`` on a GPU: :mod:`vinvl.oscar.inference`).
Caption and image embeddings stay fp32 whatever the precision, so they stay comparable with a
gallery index's stored ones.

Options are arguments of :meth:`Retriever.answer`, never state: ``top_k`` (results per query),
``first_stage`` (``auto`` / ``contrastive`` / ``tags`` / ``exhaustive``: which gallery items the
match head re-ranks), ``candidates`` (how many a first stage proposes per query) and ``nprobe``
(lists a faiss IVF index probes). A list of queries is answered together: one embedding pass and
one search call (or one BM25 posting-list search) per direction for all its queries, and one batched
scoring call for all their candidate pairs.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..data.formats import check_feature_values
from ..oscar.inference import MatchScorer, match_scorer
from ..oscar.model_dir import load_retrieval_model
from ..precision import check_precision
from ..retrieval import Gallery, RetrievalEngine, match_probability
from ..retrieval.first_stage import FIRST_STAGE_CHOICES, check_first_stage, resolve_first_stage, tag_words, words_of
from ..retrieval.topk import merge_top_k
from .gallery import QueryGallery
from .photos import ImageQueries, photo_gallery
from .proposals import EveryRow, FirstStage, NearestRows, TagRows

__all__ = ["Retriever", "Query", "QUERY_KEYS", "TIMED_STAGES"]

QUERY_KEYS = ("image_id", "features", "tags", "caption")
# What Retriever.answer_timed reports, in seconds: the first stage's proposal (embedding the
# queries and searching, or BM25), reading region features from their files, and scoring the
# candidate pairs with the match head (feature reads done inside it not counted).
TIMED_STAGES = ("first_stage", "feature_reads", "scoring")


@dataclass(frozen=True, eq=False)
class Query:
    """One parsed query. ``kind``: ``text`` (caption -> images), ``image`` (image -> captions) or
    ``pair`` (a match score). An image is a gallery row (``index``) or ``features`` + ``tags``."""

    kind: str
    position: int
    caption: Optional[str] = None
    image_id: Optional[str] = None
    index: Optional[int] = None
    features: Optional[np.ndarray] = None
    tags: Optional[List[str]] = None


class Retriever:
    """A model, an optional detector and a gallery, answering queries (see the module docstring).

    Args:
        model_dir: a saved model directory (``save_pretrained`` output).
        batch_size: pairs per forward pass.
        first_stage: the default first stage (``auto``: ``contrastive`` when the model records
            trained contrastive heads, else ``exhaustive``); what an in-memory gallery is
            prepared for.
        detector_path: a detector directory or a shipped detector config's name; lets queries and galleries be photos.
        detector_precision: the detector's precision, ``fp32``, ``bf16`` or ``int8`` (see :class:`~vinvl.query.photos.ImageQueries`).
        model / processor: an already loaded model (or a :class:`~vinvl.oscar.inference.MatchScorer`
            standing in for its pair forward) and processor; default: loaded from ``model_dir``.
        precision: of the pair forward: ``fp32`` (default: the model itself), ``bf16``, ``int8`` or
            ``fp16``: the model's match head exported into ``model_dir/inference`` and run by an
            inference runtime. Checked against the machine before the model loads.

    Thread safety: :meth:`answer` may be called from several threads at once; options are
    arguments, so callers never see each other's. Model forwards and detector runs are
    serialised by one lock (Paddle's eager mode runs one forward at a time well, not several).
    Setting a gallery (``use_*``, :meth:`refresh`) swaps it atomically: a call already running
    finishes on the gallery it started with.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        batch_size: int = 32,
        first_stage: str = "auto",
        detector_path: Optional[str] = None,
        detector_precision: str = "fp32",
        model: Any = None,
        processor: Any = None,
        precision: str = "fp32",
    ):
        _check_positive("batch_size", batch_size)
        check_first_stage(first_stage, FIRST_STAGE_CHOICES)
        check_precision(precision)
        self.model_dir = model_dir
        self.photos = ImageQueries(detector_path, detector_precision)
        if model is None or processor is None:
            model, processor = load_retrieval_model(model_dir)
            model.eval()
        if isinstance(model, MatchScorer):
            if precision not in ("fp32", model.precision):
                raise ValueError(f"precision {precision!r}, but the model given runs at {model.precision!r}")
            precision = model.precision
        elif precision != "fp32":
            model = match_scorer(model, model_dir, precision)
        self.precision = precision
        self.model, self.processor = model, processor
        self.config = getattr(model, "config")
        self.engine = RetrievalEngine(model, processor, batch_size=batch_size, progress=False)
        self.first_stage = resolve_first_stage(first_stage, self.config)
        self.gallery: Optional[QueryGallery] = None
        self._compute = threading.RLock()  # model forwards and detector runs
        self._swap = threading.Lock()  # gallery replacement

    # ----- galleries ----------------------------------------------------------------------

    def use_arrays(
        self,
        image_ids: Sequence[str],
        features: Any,
        tags: Sequence[Sequence[str]],
        captions: Optional[Sequence[Sequence[str]]] = None,
    ) -> None:
        """Answer against these images (and their captions); embeds them once if the default
        first stage is ``contrastive``. The previous gallery stays if anything here fails."""
        with self._compute:
            gallery = QueryGallery.from_arrays(
                self.engine, image_ids, features, tags, captions, embed=self.first_stage == "contrastive"
            )
        self._check_width(gallery.images)
        self._replace(gallery)

    def use_data_dir(self, data_dir: str, split: str = "test", keys_file: Optional[str] = None) -> None:
        """Answer against a split of a data directory the ``coco_ir`` loading script reads."""
        from ..data import load_corpus

        corpus = load_corpus(data_dir, split, eval_img_keys_file=keys_file)
        self.use_arrays(corpus.image_ids, corpus.features, corpus.tags, corpus.captions)

    def use_photos(self, folder: str, cache_dir: Optional[str] = None) -> None:
        """Answer against a folder of photos (no captions), extracted with the detector once and cached."""
        with self._compute:
            photos = photo_gallery(folder, self.photos, cache_dir)
        self.use_arrays(photos.image_ids, photos.features, photos.tags)

    def use_index(self, index_path: str) -> None:
        """Answer against the live version of a gallery index built with this model's weights."""
        gallery = QueryGallery.from_index(index_path, self.model_dir, self.processor.tokenizer)
        try:
            self._check_width(gallery.images)
            if not gallery.supports(self.first_stage):
                gallery.require(self.first_stage)
        except BaseException:
            gallery.close()
            raise
        self._replace(gallery)

    def refresh(self) -> bool:
        """Reopen the index when another version went live (an add by any process); True if it did."""
        gallery = self.gallery
        if gallery is None or not gallery.is_stale():
            return False
        self.use_index(gallery.index.root)
        return True

    def _replace(self, gallery: QueryGallery) -> None:
        with self._swap:
            previous, self.gallery = self.gallery, gallery
        if previous is not None:
            previous.close()

    def _check_width(self, images: Gallery) -> None:
        if images.feature_dim != self.processor.img_feature_dim:
            raise ValueError(
                f"region features are {images.feature_dim} wide; this model reads {self.processor.img_feature_dim}"
            )

    def _require_gallery(self, what: str) -> QueryGallery:
        gallery = self.gallery
        if gallery is None:
            raise ValueError(f"{what} needs a gallery: pass gallery_dir=, gallery=, index_path= or gallery_images=")
        return gallery

    # ----- queries ------------------------------------------------------------------------

    def parse(self, queries: Any) -> List[Query]:
        """``queries`` (one or a list, in any accepted form) as :class:`Query` objects, each checked;
        photos are detected. ValueError naming the query at fault."""
        if not isinstance(queries, (list, tuple)):
            queries = [queries]
        if not queries:
            raise ValueError("give a caption string, an image dict, a pair dict, or a non-empty list of them")
        if not all(isinstance(q, Query) for q in queries):
            with self._compute:
                queries = self.photos.resolve(list(queries))
        return [q if isinstance(q, Query) else self.parse_one(q, i) for i, q in enumerate(queries)]

    def detect(self, image: Any):
        """The detector's detections of one decoded photo (under the compute lock)."""
        with self._compute:
            return self.photos.detector.detect([image])[0]

    def parse_one(self, query: Any, position: int) -> Query:
        """One caption / image / pair query (no photo: see :meth:`parse`) as a :class:`Query`."""
        where = f"query {position}"
        if isinstance(query, Query):
            return query
        if isinstance(query, str):
            if not query.strip():
                raise ValueError(f"{where}: the caption is empty")
            return Query("text", position, caption=query)
        if not isinstance(query, dict):
            raise ValueError(f"{where}: expected a caption string or a dict, got {type(query).__name__}")
        unknown = set(query) - set(QUERY_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (use {', '.join(QUERY_KEYS)})")
        image = self._parse_image(query, where)
        if "caption" in query:
            caption = query["caption"]
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"{where}: 'caption' must be a non-empty string")
            return Query("pair", position, caption=caption, **image)
        return Query("image", position, **image)

    def _parse_image(self, query: Dict[str, Any], where: str) -> Dict[str, Any]:
        if "image_id" in query:
            if "features" in query:
                raise ValueError(f"{where}: give either 'image_id' or 'features', not both")
            images = self._require_gallery("an image_id query").images
            image_id = str(query["image_id"])
            try:
                index = int(images.index_of([image_id])[0])
            except KeyError:
                raise ValueError(f"{where}: image {image_id!r} is not in the gallery") from None
            return {"image_id": image_id, "index": index}
        if "features" not in query:
            raise ValueError(f"{where}: an image query needs 'image_id' or 'features' (+ 'tags')")
        width = self.processor.img_feature_dim
        feats = np.asarray(query["features"], dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != width or len(feats) == 0:
            raise ValueError(f"{where}: features must have shape [num_regions, {width}], got {list(feats.shape)}")
        check_feature_values(feats, where)
        tags = query.get("tags", [])
        if isinstance(tags, str):
            tags = tags.split()
        if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{where}: 'tags' must be a list of strings")
        return {"features": feats, "tags": list(tags)}

    # ----- answering ----------------------------------------------------------------------

    def answer(
        self,
        queries: Any,
        *,
        top_k: int = 5,
        first_stage: Optional[str] = None,
        candidates: int = 16,
        nprobe: Optional[int] = None,
    ) -> List[Dict[str, Any]]:
        """One answer per query, in the queries' order (see the module docstring for forms and options).

        ``first_stage`` defaults to the retriever's; ``nprobe`` to the index's default
        (:data:`vinvl.index.ivf.DEFAULT_NPROBE`) and only matters over an index with a faiss file.
        """
        return self._answer(queries, _Clock(None), top_k=top_k, first_stage=first_stage, candidates=candidates, nprobe=nprobe)

    def answer_timed(self, queries: Any, **options: Any) -> Tuple[List[Dict[str, Any]], Dict[str, float]]:
        """:meth:`answer`'s answers and where the call's time went: seconds per stage of
        :data:`TIMED_STAGES` plus ``total`` (parsing, ranking and waiting for the compute lock are
        the rest). For benchmarks (:mod:`vinvl.benchmarks.scale`); the answers are the same."""
        timings = dict.fromkeys(TIMED_STAGES, 0.0)
        start = time.perf_counter()
        answers = self._answer(queries, _Clock(timings), **options)
        timings["total"] = time.perf_counter() - start
        return answers, timings

    def _answer(
        self, queries: Any, clock: "_Clock", *, top_k: int = 5, first_stage: Optional[str] = None, candidates: int = 16,
        nprobe: Optional[int] = None,
    ) -> List[Dict[str, Any]]:
        _check_positive("top_k", top_k)
        _check_positive("candidates", candidates)
        if nprobe is not None:
            _check_positive("nprobe", nprobe)
        stage = self.first_stage if first_stage is None else resolve_first_stage(first_stage, self.config)
        parsed = self.parse(queries)
        gallery = self.gallery
        if gallery is not None and stage != "exhaustive" and any(q.kind != "pair" for q in parsed):
            gallery.require(stage)
        answers: List[Optional[Dict[str, Any]]] = [None] * len(parsed)
        plan = _Plan(stage, candidates, top_k, nprobe, clock)
        groups = {kind: [i for i, q in enumerate(parsed) if q.kind == kind] for kind in ("text", "image", "pair")}
        with self._compute:
            for kind, slots in groups.items():
                if not slots:
                    continue
                group = [parsed[i] for i in slots]
                if kind == "text":
                    results = self._captions_to_images(self._require_gallery("a caption query"), group, plan)
                elif kind == "image":
                    results = self._images_to_captions(self._require_gallery("an image query"), group, plan)
                else:
                    results = self._score_pairs(gallery, group, plan.clock)
                for slot, result in zip(slots, results):
                    answers[slot] = result
        return answers  # type: ignore[return-value]

    def _captions_to_images(self, gallery: QueryGallery, queries: List[Query], plan: "_Plan") -> List[Dict[str, Any]]:
        images = gallery.images
        captions = [q.caption for q in queries]
        clock = plan.clock
        with clock.stage("first_stage"):
            proposed = self._caption_first_stage(gallery, plan).propose(queries, plan.candidates)
        rows = np.unique(proposed[proposed >= 0])
        scoring = Gallery.for_queries(
            [images.image_ids[r] for r in rows], [images.tags[r] for r in rows],
            clock.reads(lambda j: images.features(int(rows[j]))), captions,
        )
        with clock.scoring():
            margins = self._margins(scoring, proposed, rows, by_query="caption")
        return [
            {
                "caption": q.caption,
                **self.truncation(q.caption),
                "images": [{"image_id": images.image_ids[i], **_scored(m)} for i, m in ranked],
            }
            for q, ranked in zip(queries, _rank(margins, proposed, plan.top_k))
        ]

    def _images_to_captions(self, gallery: QueryGallery, queries: List[Query], plan: "_Plan") -> List[Dict[str, Any]]:
        captions = gallery.images.captions
        if not captions:
            raise ValueError(
                "image -> captions needs a gallery with captions, and this one has none (a photo folder, or "
                "images set without captions): use a data directory with captions (gallery_dir= / --data_dir), "
                "an index built from one, or captions= with the gallery"
            )
        clock = plan.clock
        query_images = self._query_images(gallery, queries, clock)
        with clock.stage("first_stage"):
            proposed = self._image_first_stage(gallery, plan, query_images).propose(queries, plan.candidates)
        rows = np.unique(proposed[proposed >= 0])
        scoring = Gallery.for_queries(query_images.image_ids, query_images.tags, query_images.features, [captions[r] for r in rows])
        with clock.scoring():
            margins = self._margins(scoring, proposed, rows, by_query="image")
        owners = gallery.caption_image_ids
        return [
            {
                "image_id": q.image_id,
                "captions": [{"caption": captions[c], "image_id": owners[c], **_scored(m)} for c, m in ranked],
            }
            for q, ranked in zip(queries, _rank(margins, proposed, plan.top_k))
        ]

    def _caption_first_stage(self, gallery: QueryGallery, plan: "_Plan") -> FirstStage:
        """What proposes gallery images for caption queries under ``plan``."""
        images = gallery.images
        if plan.stage == "exhaustive" or plan.candidates >= images.num_images:
            return EveryRow(images.num_images)
        if plan.stage == "contrastive":
            any_region = images.features(0)  # caption embeddings read no image; the gallery needs one
            return NearestRows(
                gallery.image_searcher(plan.nprobe),
                lambda qs: self.engine.embed_captions(Gallery.for_queries(["_"], [[]], [any_region], [q.caption for q in qs])),
            )
        return TagRows(gallery.image_bm25(), lambda qs: [words_of(self.processor.tokenizer, q.caption) for q in qs])

    def _image_first_stage(self, gallery: QueryGallery, plan: "_Plan", query_images: Gallery) -> FirstStage:
        """What proposes gallery captions for image queries (``query_images``: their rows) under ``plan``."""
        num_captions = len(gallery.images.captions)
        if plan.stage == "exhaustive" or plan.candidates >= num_captions:
            return EveryRow(num_captions)
        if plan.stage == "contrastive":
            return NearestRows(gallery.caption_searcher(), lambda qs: self._image_embeddings(gallery, qs, query_images))
        return TagRows(gallery.caption_bm25(), lambda qs: [tag_words(self.processor.tokenizer, t) for t in query_images.tags])

    def _score_pairs(self, gallery: Optional[QueryGallery], queries: List[Query], clock: "_Clock") -> List[Dict[str, Any]]:
        query_images = self._query_images(gallery, queries, clock)
        scoring = Gallery.for_queries(query_images.image_ids, query_images.tags, query_images.features, [q.caption for q in queries])
        pairs = np.arange(len(queries))
        with clock.scoring():
            margins = self.engine.score_pairs(scoring, pairs, pairs)
        return [
            {"image_id": q.image_id, "caption": q.caption, **self.truncation(q.caption), **_scored(m)}
            for q, m in zip(queries, margins)
        ]

    def truncation(self, caption: str) -> Dict[str, Dict[str, int]]:
        """``{"truncated": {"tokens", "kept"}}`` when the model reads only the first ``kept`` of the
        caption's ``tokens`` WordPiece tokens (its text length is ``max_seq_len``, two of which are
        ``[CLS]`` and ``[SEP]``), else ``{}``: words past the limit have no effect on the answer."""
        kept = self.processor.max_seq_len - 2
        tokens = len(self.processor.tokenizer.tokenize(caption))
        return {"truncated": {"tokens": tokens, "kept": kept}} if tokens > kept else {}

    def _query_images(self, gallery: Optional[QueryGallery], queries: List[Query], clock: "_Clock") -> Gallery:
        """The queries' images as a gallery of their own (row j = query j), ids made distinct."""
        features, tags = [], []
        for q in queries:
            if q.index is not None:
                with clock.stage("feature_reads"):
                    features.append(gallery.images.features(q.index))
                tags.append(gallery.images.tags[q.index])
            else:
                features.append(q.features)
                tags.append(q.tags)
        return Gallery.for_queries([f"query {q.position}" for q in queries], tags, features, [])

    def _image_embeddings(self, gallery: QueryGallery, queries: List[Query], query_images: Gallery) -> np.ndarray:
        """Contrastive embeddings of the query images: stored for gallery rows, computed for new ones."""
        new = [j for j, q in enumerate(queries) if q.index is None]
        embeds = np.zeros((len(queries), self.config.contrastive_dim), dtype=np.float32)
        stored = [j for j, q in enumerate(queries) if q.index is not None]
        if stored:
            embeds[stored] = gallery.image_embeddings(np.array([queries[j].index for j in stored]))
        if new:
            embeds[new] = self.engine.embed_images(
                Gallery.for_queries(
                    [query_images.image_ids[j] for j in new], [query_images.tags[j] for j in new],
                    [query_images.features(j) for j in new], [],
                )
            )
        return embeds

    def _margins(self, scoring: Gallery, proposed: np.ndarray, rows: np.ndarray, by_query: str) -> np.ndarray:
        """Margins ``[Q, k]`` of each query with its proposed gallery items (-inf for padding), in one scoring call."""
        valid = proposed >= 0
        query_of = np.nonzero(valid)[0]
        item_of = np.searchsorted(rows, proposed[valid])
        if by_query == "caption":  # the scoring gallery's images are the proposed rows, its captions the queries
            values = self.engine.score_pairs(scoring, item_of, query_of)
        else:  # its images are the queries, its captions the proposed rows
            values = self.engine.score_pairs(scoring, query_of, item_of)
        margins = np.full(proposed.shape, -np.inf, dtype=np.float32)
        margins[valid] = values
        return margins


class _Clock:
    """Adds the seconds a call spends per stage into ``timings`` (:meth:`Retriever.answer_timed`);
    with ``timings`` None it measures nothing and costs nothing."""

    def __init__(self, timings: Optional[Dict[str, float]]):
        self.timings = timings

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.timings is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] += time.perf_counter() - start

    @contextmanager
    def scoring(self) -> Iterator[None]:
        """The ``scoring`` stage, less the feature reads that happen inside it (counted as reads)."""
        if self.timings is None:
            yield
            return
        reads_before = self.timings["feature_reads"]
        with self.stage("scoring"):
            yield
        self.timings["scoring"] -= self.timings["feature_reads"] - reads_before

    def reads(self, read: Callable[[int], np.ndarray]) -> Callable[[int], np.ndarray]:
        """``read`` (a gallery's feature reader), timed as ``feature_reads``."""
        if self.timings is None:
            return read

        def timed(j: int) -> np.ndarray:
            with self.stage("feature_reads"):
                return read(j)

        return timed


@dataclass(frozen=True)
class _Plan:
    """One call's options, and the clock its stages report to."""

    stage: str
    candidates: int
    top_k: int
    nprobe: Optional[int]
    clock: _Clock


def _rank(margins: np.ndarray, proposed: np.ndarray, top_k: int):
    """Per query, its (gallery position, margin) pairs best first: margins descending, ties to the lower position."""
    proposed = np.where(proposed >= 0, proposed, -1)
    scores, positions = merge_top_k([(margins, np.ascontiguousarray(proposed))], top_k)
    return [[(int(p), float(s)) for p, s in zip(row_p, row_s) if p >= 0] for row_p, row_s in zip(positions, scores)]


def _scored(margin: float) -> Dict[str, float]:
    """What a result reports of a pair: its match probability and the logit margin it is ranked by."""
    return {"score": float(match_probability(margin)), "margin": float(margin)}


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
