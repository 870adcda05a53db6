"""``Taskflow("image_text_retrieval")``: one-line VinVL retrieval over a gallery.

    from paddlenlp import Taskflow
    import vinvl  # registers the task

    retrieval = Taskflow("image_text_retrieval", task_path="outputs/model", gallery_dir="coco_ir")
    retrieval("a dog catching a frisbee")            # caption -> top-k images
    retrieval({"image_id": "500012"})                 # gallery image -> top-k captions
    retrieval({"features": feats, "tags": ["dog"]})   # new image -> top-k captions
    retrieval("photo.jpg")                            # a photo (path, PIL image or array; needs detector_path)
    retrieval({"image_id": "500012", "caption": "a dog"})  # pair -> match score

    # over a gallery index (`vinvl index build`): opens in seconds, nothing re-read or re-embedded
    retrieval = Taskflow("image_text_retrieval", task_path="outputs/model", index_path="gallery_index")

Every call takes one query or a list of queries and returns a list with one result per query
(plain dicts, best first). ``score`` is the match probability; the order comes from the logit
``margin`` (also returned), which keeps confident pairs apart where probabilities saturate to
1.0; equal margins list in gallery order.

``first_stage`` picks which gallery items the match head re-ranks for a query: ``contrastive``
(top-``candidates`` by embedding similarity), ``tags`` (top-``candidates`` by BM25 of caption
words against detector tags; needs no trained heads), ``exhaustive`` (every item), or ``auto``
(the default: ``contrastive`` if the model records trained contrastive heads, else
``exhaustive``, said once as a warning). What a first stage needs of the gallery (embeddings, BM25
statistics) is computed once when the gallery is set. The option is not called ``mode``:
paddlenlp's ``Taskflow.__init__`` keeps ``mode`` for itself and never passes it to a task, so
``mode=`` is rejected with an error naming ``first_stage``.
Photos (``detector_path=``, ``gallery_images=``) are handled by :mod:`vinvl.query.photos`.
Nothing is downloaded: ``task_path`` must be a saved model directory.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import paddle
from paddlenlp.taskflow import taskflow as paddlenlp_taskflow
from paddlenlp.taskflow import utils as taskflow_utils
from paddlenlp.taskflow.task import Task

from ..oscar.model_dir import load_retrieval_model, weights_checksum
from ..retrieval import Gallery, RetrievalEngine, match_probability
from ..retrieval.first_stage import FIRST_STAGE_CHOICES, BM25Index, check_first_stage, resolve_first_stage, tag_words, words_of
from ..query.photos import ImageQueries, photo_gallery

__all__ = ["TASK_NAME", "ImageTextRetrievalTask", "register_task"]

TASK_NAME = "image_text_retrieval"


@dataclass
class _GalleryCache:
    """A gallery's images and captions with what the first stage needs of them, computed once."""

    images: Gallery  # images (+ their captions as free text)
    caption_image_ids: List[Optional[str]]  # the gallery image each caption came with, if any
    image_embeds: Optional[np.ndarray] = None  # [I, E] (contrastive)
    caption_embeds: Optional[np.ndarray] = None  # [C, E] (contrastive)
    image_index: Optional[BM25Index] = None  # images as documents of their tag words (tags)
    caption_index: Optional[BM25Index] = None  # captions as documents of their words (tags)


class _StaticMatchModel:
    """The model with its pair-scoring forward run by Paddle Inference from ``task_path/static``.

    Region projection and the caption-only / image-only embeddings stay eager (they run once per
    gallery); the per-pair match head, the hot path, runs the exported graph.
    """

    def __init__(self, model, predictor):
        self._model = model
        self._predictor = predictor
        self._inputs = [predictor.get_input_handle(n) for n in predictor.get_input_names()]
        self._output = predictor.get_output_handle(predictor.get_output_names()[0])

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, input_ids, token_type_ids, attention_mask, img_embeds):
        for handle, tensor in zip(self._inputs, (input_ids, token_type_ids, attention_mask, img_embeds)):
            handle.copy_from_cpu(tensor.numpy())
        self._predictor.run()
        return _Logits(paddle.to_tensor(self._output.copy_to_cpu()))


@dataclass
class _Logits:
    logits: paddle.Tensor


class _MatchHead(paddle.nn.Layer):
    """What is exported: pair inputs with already projected regions -> 2 match logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, token_type_ids, attention_mask, img_embeds):
        return self.model(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask, img_embeds=img_embeds
        ).logits


class ImageTextRetrievalTask(Task):
    """Caption -> images, image -> captions and pair scoring with a VinVL model.

    Args (keyword arguments of ``Taskflow``):
        task_path: a saved model directory (``save_pretrained`` output); required.
        batch_size: pairs per forward pass.
        top_k: results per query.
        first_stage: ``auto`` (default), ``contrastive``, ``tags`` or ``exhaustive`` (see the
            module docstring); ``contrastive`` on a model whose contrastive heads are not
            trained (``config.json`` ``trained_heads``) is an error.
        candidates: gallery items the first stage proposes per query for re-ranking.
        gallery_dir / gallery_split / gallery_keys_file: a data directory the ``coco_ir`` loading
            script reads (official or detector layout) to use as the gallery.
        gallery: an in-memory gallery, ``{"image_ids", "features", "tags", "captions"?}``
            (captions: per image, optional).
        index_path: a gallery index directory (``vinvl index build``) built with these weights;
            its live version is the gallery (see :mod:`vinvl.index.gallery`).
        _static_mode: score pairs with Paddle Inference from ``task_path/static`` (exported on
            first use and again whenever the weights change).
        detector_path: a detector directory (``config.json`` [+ ``model.safetensors``]); lets
            queries be photos: a file path, a PIL image, an ``HxWx3`` uint8 array, or
            ``{"image": photo, "caption"?: ...}``, each detected and then answered as the
            ``{"features", "tags"}`` query of its regions and class names.
        gallery_images / gallery_cache_dir: a folder of photos to use as the gallery (no captions),
            extracted with the detector once and cached (see :mod:`vinvl.query.photos`).
    """

    def __init__(
        self,
        task: str,
        model: str,
        batch_size: int = 32,
        top_k: int = 5,
        first_stage: str = "auto",
        candidates: int = 16,
        gallery_dir: Optional[str] = None,
        gallery_split: str = "test",
        gallery_keys_file: Optional[str] = None,
        gallery: Optional[Dict[str, Any]] = None,
        index_path: Optional[str] = None,
        _static_mode: bool = False,
        detector_path: Optional[str] = None,
        gallery_images: Optional[str] = None,
        gallery_cache_dir: Optional[str] = None,
        **kwargs,
    ):
        _reject_mode(kwargs.get("mode", _mode_given_to_taskflow()))
        # Task.__init__ would report usage over the network; this task never touches the network.
        taskflow_utils.DOWNLOAD_CHECK = True
        super().__init__(task=task, model=model, **kwargs)
        if not self._custom_model:
            raise ValueError("image_text_retrieval needs task_path=<a saved model directory>; it downloads nothing")
        for name, value in (("batch_size", batch_size), ("top_k", top_k), ("candidates", candidates)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_first_stage(first_stage, FIRST_STAGE_CHOICES)
        self._batch_size, self._top_k, self._candidates = batch_size, top_k, candidates
        if sum(g is not None for g in (gallery_dir, gallery, index_path, gallery_images)) > 1:
            raise ValueError("give one of gallery_dir=, gallery= and index_path= (or gallery_images=)")
        self._images = ImageQueries(detector_path)
        self._static_mode = _static_mode
        self._construct_model(model)
        self._first_stage = resolve_first_stage(first_stage, self._model.config)
        self._construct_tokenizer(model)
        scorer = self._model
        if _static_mode:
            self._get_inference_model()
            scorer = _StaticMatchModel(self._model, self.predictor)
        self._engine = RetrievalEngine(scorer, self._processor, batch_size=batch_size, progress=False)
        if gallery_images is not None:  # extracted once, then read from the cache, as an in-memory gallery
            photos = photo_gallery(gallery_images, self._images, gallery_cache_dir)
            gallery = {"image_ids": photos.image_ids, "features": photos.features, "tags": photos.tags}
        self._gallery: Optional[_GalleryCache] = None
        if index_path is not None:
            self.set_gallery_from_index(index_path)
        elif gallery_dir is not None:
            self.set_gallery_from_dir(gallery_dir, gallery_split, gallery_keys_file)
        elif gallery is not None:
            self.set_gallery(**gallery)

    # ----- paddlenlp Task hooks ------------------------------------------------------------

    def _construct_model(self, model: str) -> None:
        self._model, self._processor = load_retrieval_model(self._task_path)
        self._model.eval()

    def _construct_tokenizer(self, model: str) -> None:
        self._tokenizer = self._processor.tokenizer

    def _construct_input_spec(self) -> None:
        hidden = self._model.config.hidden_size
        self._input_spec = [
            paddle.static.InputSpec([None, None], "int64", "input_ids"),
            paddle.static.InputSpec([None, None], "int64", "token_type_ids"),
            paddle.static.InputSpec([None, None], "float32", "attention_mask"),
            paddle.static.InputSpec([None, None, hidden], "float32", "img_embeds"),
        ]

    def _convert_dygraph_to_static(self) -> None:
        static = paddle.jit.to_static(_MatchHead(self._model), input_spec=self._input_spec, full_graph=True)
        paddle.jit.save(static, self.inference_model_path)

    def _get_inference_model(self) -> None:
        """Export the match head under ``task_path/static`` unless it is there for these weights, then load it."""
        static_dir = os.path.join(self._task_path, "static")
        self.inference_model_path = os.path.join(static_dir, "inference")
        stamp_path = os.path.join(static_dir, "weights.md5")
        stamp = weights_checksum(self._task_path)
        current = open(stamp_path).read().strip() if os.path.isfile(stamp_path) else None
        if current != stamp:
            os.makedirs(static_dir, exist_ok=True)
            self._construct_input_spec()
            self._convert_dygraph_to_static()
            with open(stamp_path, "w") as f:
                f.write(stamp)
        model_file = next(
            self.inference_model_path + ext for ext in (".json", ".pdmodel") if os.path.isfile(self.inference_model_path + ext)
        )
        config = paddle.inference.Config(model_file, self.inference_model_path + ".pdiparams")
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(self._num_threads)
        config.switch_ir_optim(True)
        config.disable_glog_info()
        self.predictor = paddle.inference.create_predictor(config)

    def _preprocess(self, inputs):
        queries = inputs[0] if isinstance(inputs, tuple) and len(inputs) == 1 else inputs
        if not isinstance(queries, (list, tuple)):
            queries = [queries]
        if not queries:
            raise ValueError("give a caption string, an image dict, a pair dict, or a non-empty list of them")
        return [self._parse_query(q, i) for i, q in enumerate(self._images.resolve(queries))]

    def _run_model(self, inputs, **kwargs):
        return [self._answer(query) for query in inputs]

    def _postprocess(self, inputs):
        return inputs

    # ----- gallery --------------------------------------------------------------------------

    def set_gallery_from_dir(self, data_dir: str, split: str = "test", keys_file: Optional[str] = None) -> None:
        """Use a split of a data directory (read by the ``coco_ir`` loading script) as the gallery."""
        from ..data import load_corpus

        corpus = load_corpus(data_dir, split, eval_img_keys_file=keys_file)
        self.set_gallery(corpus.image_ids, corpus.features, corpus.tags, corpus.captions)

    def set_gallery_from_index(self, index_path: str) -> None:
        """Use the live version of a gallery index (built with this model's weights) as the gallery."""
        from ..index.gallery import IndexGallery

        gallery = IndexGallery.open(index_path, self._task_path, self._first_stage, self._processor.tokenizer)
        self._check_width(gallery.images)
        previous, self._gallery = self._gallery, gallery
        if isinstance(previous, IndexGallery):
            previous.close()

    def set_gallery(
        self,
        image_ids: Sequence[str],
        features: Any,
        tags: Sequence[Sequence[str]],
        captions: Optional[Sequence[Sequence[str]]] = None,
    ) -> None:
        """Set the images (and their captions) queries are answered against; embeds them once.

        ``features`` is a list of ``[R, img_feature_dim]`` arrays or a callable ``features(i)``.
        The previous gallery stays in place if anything here fails.
        """
        captions = [list(c) for c in captions] if captions is not None else [[] for _ in image_ids]
        if len(captions) != len(image_ids):
            raise ValueError(f"got {len(image_ids)} image ids but {len(captions)} caption lists")
        flat = [c for per_image in captions for c in per_image]
        owners = [str(image_ids[i]) for i, per_image in enumerate(captions) for _ in per_image]
        images = Gallery.for_queries(image_ids, tags, features, flat)
        self._check_width(images)
        cache = _GalleryCache(images, owners)
        if self._first_stage == "contrastive":
            cache.image_embeds = self._engine.embed_images(images)
            cache.caption_embeds = self._engine.embed_captions(images) if flat else None
        elif self._first_stage == "tags":
            tokenizer = self._processor.tokenizer
            cache.image_index = BM25Index([tag_words(tokenizer, t) for t in images.tags])
            cache.caption_index = BM25Index([words_of(tokenizer, c) for c in flat]) if flat else None
        self._gallery = cache

    def _check_width(self, gallery: Gallery) -> None:
        if gallery.feature_dim != self._processor.img_feature_dim:
            raise ValueError(
                f"region features are {gallery.feature_dim} wide; this model reads {self._processor.img_feature_dim}"
            )

    def _require_gallery(self, what: str) -> _GalleryCache:
        if self._gallery is None:
            raise ValueError(f"{what} needs a gallery: pass gallery_dir= or gallery= to Taskflow, or call set_gallery")
        return self._gallery

    # ----- queries --------------------------------------------------------------------------

    def _parse_query(self, query: Any, position: int) -> Dict[str, Any]:
        where = f"query {position}"
        if isinstance(query, str):
            if not query.strip():
                raise ValueError(f"{where}: the caption is empty")
            return {"kind": "text", "caption": query}
        if not isinstance(query, dict):
            raise ValueError(f"{where}: expected a caption string or a dict, got {type(query).__name__}")
        unknown = set(query) - {"image_id", "features", "tags", "caption"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (use image_id, features, tags, caption)")
        image = self._parse_image(query, where)
        if "caption" in query:
            caption = query["caption"]
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"{where}: 'caption' must be a non-empty string")
            return {"kind": "pair", "caption": caption, **image}
        return {"kind": "image", **image}

    def _parse_image(self, query: Dict[str, Any], where: str) -> Dict[str, Any]:
        if "image_id" in query:
            if "features" in query:
                raise ValueError(f"{where}: give either 'image_id' or 'features', not both")
            gallery = self._require_gallery("an image_id query")
            image_id = str(query["image_id"])
            try:
                index = int(gallery.images.index_of([image_id])[0])
            except KeyError:
                raise ValueError(f"{where}: image {image_id!r} is not in the gallery") from None
            return {"image_id": image_id, "index": index}
        if "features" not in query:
            raise ValueError(f"{where}: an image query needs 'image_id' or 'features' (+ 'tags')")
        feats = np.asarray(query["features"], dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != self._processor.img_feature_dim or len(feats) == 0:
            raise ValueError(
                f"{where}: features must have shape [num_regions, {self._processor.img_feature_dim}], got {list(feats.shape)}"
            )
        tags = query.get("tags", [])
        if isinstance(tags, str):
            tags = tags.split()
        if not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{where}: 'tags' must be a list of strings")
        return {"image_id": None, "features": feats, "tags": list(tags)}

    def _answer(self, query: Dict[str, Any]) -> Dict[str, Any]:
        if query["kind"] == "text":
            return self._text_to_images(query["caption"])
        image = self._query_image(query)
        if query["kind"] == "pair":
            pair = Gallery.for_queries(*image, [query["caption"]])
            margin = self._engine.score_pairs(pair, np.array([0]), np.array([0]))[0]
            return {"image_id": query["image_id"], "caption": query["caption"], **_scored(margin)}
        return self._image_to_captions(query, image)

    def _query_image(self, query: Dict[str, Any]):
        """(ids, tags, features) of the query's image, as a one-image gallery's parts."""
        if query.get("index") is not None:
            images = self._gallery.images
            index = query["index"]
            return [images.image_ids[index]], [images.tags[index]], [images.features(index)]
        return ["query"], [query["tags"]], [query["features"]]

    def _text_to_images(self, caption: str) -> Dict[str, Any]:
        gallery = self._require_gallery("a caption query")
        images = gallery.images
        scoring = Gallery.for_queries(images.image_ids, images.tags, images.features, [caption])
        candidates = np.arange(images.num_images)
        if self._candidates < images.num_images:
            if self._first_stage == "contrastive":
                query_embed = self._engine.embed_captions(
                    Gallery.for_queries(images.image_ids[:1], images.tags[:1], [images.features(0)], [caption])
                )
                candidates = _best(gallery.image_embeds @ query_embed[0], self._candidates)
            elif self._first_stage == "tags":
                words = words_of(self._processor.tokenizer, caption)
                candidates = np.sort(gallery.image_index.top_k([words], self._candidates)[0])
        margins = self._engine.score_pairs(scoring, candidates, np.zeros_like(candidates))
        ranked = _best_in_order(margins, candidates, self._top_k)
        return {"caption": caption, "images": [{"image_id": images.image_ids[i], **_scored(m)} for i, m in ranked]}

    def _image_to_captions(self, query: Dict[str, Any], image) -> Dict[str, Any]:
        gallery = self._require_gallery("an image query")
        captions = gallery.images.captions
        if not captions:
            raise ValueError("the gallery has no captions to retrieve; set captions with the gallery")
        scoring = Gallery.for_queries(*image, captions)
        candidates = np.arange(len(captions))
        if self._candidates < len(captions):
            if self._first_stage == "contrastive":
                if query.get("index") is not None:
                    image_embed = gallery.image_embeds[query["index"]]
                else:
                    image_embed = self._engine.embed_images(Gallery.for_queries(*image, []))[0]
                candidates = _best(gallery.caption_embeds @ image_embed, self._candidates)
            elif self._first_stage == "tags":
                words = tag_words(self._processor.tokenizer, image[1][0])
                candidates = np.sort(gallery.caption_index.top_k([words], self._candidates)[0])
        margins = self._engine.score_pairs(scoring, np.zeros_like(candidates), candidates)
        ranked = _best_in_order(margins, candidates, self._top_k)
        return {
            "image_id": query["image_id"],
            "captions": [
                {"caption": captions[c], "image_id": gallery.caption_image_ids[c], **_scored(m)} for c, m in ranked
            ],
        }


def _mode_given_to_taskflow() -> Optional[str]:
    """The ``mode=`` a user gave ``paddlenlp.Taskflow`` (which keeps it), read from its frame.

    ``Taskflow.__init__`` builds the task inside its own body, so its frame is on the stack.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is paddlenlp_taskflow.Taskflow.__init__.__code__:
            return frame.f_locals.get("mode")
        frame = frame.f_back
    return None


def _reject_mode(mode: Optional[str]) -> None:
    if mode is not None:
        raise ValueError(
            f"image_text_retrieval has no 'mode' option (paddlenlp's Taskflow keeps mode= for itself, so "
            f"mode={mode!r} would be ignored): use first_stage='exhaustive' to score every image / caption, "
            "or first_stage='contrastive', 'tags' or 'auto' (the default) with candidates=N"
        )


def _best(similarity: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest similarities, in index order (the re-ranker orders them)."""
    return np.sort(np.argpartition(-similarity, k - 1)[:k])


def _best_in_order(margins: np.ndarray, indices: np.ndarray, k: int):
    """(index, margin) of the k best, margins descending, ties by index."""
    order = np.lexsort((indices, -margins))[:k]
    return [(int(indices[o]), float(margins[o])) for o in order]


def _scored(margin: float) -> Dict[str, float]:
    """What a result reports of a pair: its match probability and the logit margin it is ranked by."""
    return {"score": float(match_probability(margin)), "margin": float(margin)}


def register_task() -> None:
    """Add ``image_text_retrieval`` to paddlenlp's task table (it has no registration API)."""
    paddlenlp_taskflow.TASKS[TASK_NAME] = {
        "models": {"vinvl": {"task_class": ImageTextRetrievalTask, "task_flag": f"{TASK_NAME}-vinvl"}},
        "default": {"model": "vinvl"},
    }
