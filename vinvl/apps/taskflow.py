"""``Taskflow("image_text_retrieval")``: one-line VinVL retrieval over a gallery, a thin adapter over
:class:`vinvl.query.Retriever`.

    from paddlenlp import Taskflow
    import vinvl  # registers the task

    retrieval = Taskflow("image_text_retrieval", task_path="outputs/model", gallery_dir="coco_ir")
    retrieval("a dog catching a frisbee")            # caption -> top-k images
    retrieval({"image_id": "500012"})                 # gallery image -> top-k captions
    retrieval({"features": feats, "tags": ["dog"]})   # new image ([R, 2054] regions) -> top-k captions
    retrieval("photo.jpg")                            # a photo (path, PIL image or array; needs detector_path)
    retrieval({"image_id": "500012", "caption": "a dog"})  # pair -> match score

    # over a gallery index (`vinvl index build`): opens in seconds, nothing re-read or re-embedded
    retrieval = Taskflow("image_text_retrieval", task_path="outputs/model", index_path="gallery_index")

Every call takes one query or a list of queries and returns a list with one result per query;
the forms, the answers and the options (``top_k``, ``first_stage``, ``candidates``, ``nprobe``)
are the query core's (:mod:`vinvl.query.core`). The Taskflow's options are fixed when it is built;
the core takes them per call, so other adapters (the HTTP service) can vary them per request.

``mode=``: paddlenlp's ``Taskflow.__init__`` keeps ``mode`` for itself and, for this task, never
passes it on, so a task cannot see it: ``Taskflow("image_text_retrieval", mode="exhaustive")``
runs the default first stage. The option is ``first_stage=``.
Nothing is downloaded: ``task_path`` must be a saved model directory.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

from paddlenlp.taskflow import taskflow as paddlenlp_taskflow
from paddlenlp.taskflow.task import Task

from ..oscar.inference import export_match_head, input_spec, match_scorer
from ..oscar.model_dir import load_retrieval_model
from ..precision import check_precision
from ..query import Retriever
from ..query.photos import resolve_detector

__all__ = ["TASK_NAME", "ImageTextRetrievalTask", "register_task"]

TASK_NAME = "image_text_retrieval"
MODEL_NAME = "vinvl"


class ImageTextRetrievalTask(Task):
    """Caption -> images, image -> captions and pair scoring with a VinVL model (PaddleNLP's task shape:
    ``_preprocess`` parses, ``_run_model`` answers, both through :attr:`retriever`).

    Args (keyword arguments of ``Taskflow``):
        task_path: a saved model directory (``save_pretrained`` output); required.
        batch_size: pairs per forward pass.
        top_k: results per query.
        first_stage: ``auto`` (default), ``contrastive``, ``tags`` or ``exhaustive``
            (:mod:`vinvl.query.core`); ``contrastive`` on a model whose contrastive heads are not
            trained (``config.json`` ``trained_heads``) is an error.
        candidates: gallery items the first stage proposes per query for re-ranking.
        nprobe: lists a gallery index's faiss IVF index probes (default 32; index galleries only).
        gallery_dir / gallery_split / gallery_keys_file: a data directory the ``coco_ir`` loading
            script reads (official or detector layout) to use as the gallery.
        gallery: an in-memory gallery, ``{"image_ids", "features", "tags", "captions"?}``
            (captions: per image, optional).
        index_path: a gallery index directory (``vinvl index build``) built with these weights.
        precision: of the match head's pair forward: ``fp32`` (default), ``bf16`` or ``int8`` (CPU),
            ``fp16`` (GPU); anything but fp32 runs on an inference runtime from ``task_path/inference``
            (:mod:`vinvl.oscar.inference`). A precision the machine lacks is refused before the model loads.
        _static_mode: score pairs in fp32 with Paddle Inference from ``task_path/inference`` (the one
            export of :mod:`vinvl.oscar.inference`, made on first use and again whenever the weights change).
        detector_path: a detector directory (``config.json`` [+ ``model.safetensors``]); lets
            queries be photos.
        detector_precision: the detector's, ``fp32`` (dygraph, default), ``bf16`` (Paddle Inference
            with oneDNN) or ``int8`` (ONNX Runtime, from the detector's calibration, ``vinvl
            calibrate-detector``; :mod:`vinvl.vision.inference`); a CPU without the instructions is
            refused before the model loads.
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
        nprobe: Optional[int] = None,
        gallery_dir: Optional[str] = None,
        gallery_split: str = "test",
        gallery_keys_file: Optional[str] = None,
        gallery: Optional[Dict[str, Any]] = None,
        index_path: Optional[str] = None,
        precision: str = "fp32",
        _static_mode: bool = False,
        detector_path: Optional[str] = None,
        detector_precision: str = "fp32",
        gallery_images: Optional[str] = None,
        gallery_cache_dir: Optional[str] = None,
        **kwargs,
    ):
        if "mode" in kwargs:  # a direct caller, or a paddlenlp that passes mode= on
            raise ValueError(
                f"image_text_retrieval has no 'mode' option (got mode={kwargs['mode']!r}): use first_stage='exhaustive' "
                "to score every image / caption, or first_stage='contrastive', 'tags' or 'auto' (the default) with candidates=N"
            )
        check_precision(precision)
        resolve_detector(detector_path, detector_precision)  # before the model loads
        # Task.__init__ reports usage over the network unless from_hf_hub is set, which is the only
        # thing from_hf_hub does there; this task never touches the network, and says so for itself
        # (not through paddlenlp's process-wide DOWNLOAD_CHECK). The model is read from task_path.
        kwargs["from_hf_hub"] = True
        super().__init__(task=task, model=model, **kwargs)
        self.from_hf_hub = False
        if not self._custom_model:
            raise ValueError("image_text_retrieval needs task_path=<a saved model directory>; it downloads nothing")
        options = {"batch_size": batch_size, "top_k": top_k, "candidates": candidates, "nprobe": nprobe}
        for name, value in options.items():
            if (value is not None or name != "nprobe") and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if sum(g is not None for g in (gallery_dir, gallery, index_path, gallery_images)) > 1:
            raise ValueError("give one of gallery_dir=, gallery=, index_path= and gallery_images=")
        self.options = {"top_k": top_k, "first_stage": None, "candidates": candidates, "nprobe": nprobe}
        self._static_mode = _static_mode
        self._construct_model(model)
        self._construct_tokenizer(model)
        scorer = self._model
        if precision != "fp32":
            scorer = match_scorer(self._model, self._task_path, precision, self.kwargs.get("num_threads"))
        elif _static_mode:
            self._get_inference_model()
            scorer = self._scorer
        self.retriever = Retriever(
            self._task_path, batch_size=batch_size, first_stage=first_stage, detector_path=detector_path,
            detector_precision=detector_precision, model=scorer, processor=self._processor,
        )
        if index_path is not None:
            self.retriever.use_index(index_path)
        elif gallery_dir is not None:
            self.retriever.use_data_dir(gallery_dir, gallery_split, gallery_keys_file)
        elif gallery is not None:
            self.retriever.use_arrays(**gallery)
        elif gallery_images is not None:
            self.retriever.use_photos(gallery_images, gallery_cache_dir)

    # ----- paddlenlp Task hooks ------------------------------------------------------------

    def _construct_model(self, model: str) -> None:
        self._model, self._processor = load_retrieval_model(self._task_path)
        self._model.eval()

    def _construct_tokenizer(self, model: str) -> None:
        self._tokenizer = self._processor.tokenizer

    def _construct_input_spec(self) -> None:
        self._input_spec = input_spec(self._model.config.hidden_size)

    def _convert_dygraph_to_static(self) -> None:
        """The match head exported by :func:`vinvl.oscar.inference.export_match_head` (the one export)."""
        self.inference_model_path = os.path.join(export_match_head(self._model, self._task_path, "fp32"), "match_head")

    def _get_inference_model(self) -> None:
        """The fp32 match head on Paddle Inference (:func:`vinvl.oscar.inference.match_scorer`:
        exported under ``task_path/inference`` unless it is there for these weights, then loaded).

        The math library's thread count is process-wide: setting paddlenlp's default (half the
        cores) here would change every later dygraph forward's float rounding too, so the
        predictor takes the count the process runs with unless ``num_threads=`` was given."""
        self._convert_dygraph_to_static()
        self._scorer = match_scorer(self._model, self._task_path, "fp32", self.kwargs.get("num_threads"))
        self.predictor = self._scorer.predictor

    def _preprocess(self, inputs):
        queries = inputs[0] if isinstance(inputs, tuple) and len(inputs) == 1 else inputs
        return self.retriever.parse(queries)

    def _run_model(self, inputs, **kwargs):
        return self.retriever.answer(inputs, **self.options)

    def _postprocess(self, inputs):
        return inputs

    # ----- gallery (kept for callers of the earlier Task API) -------------------------------

    def set_gallery_from_dir(self, data_dir: str, split: str = "test", keys_file: Optional[str] = None) -> None:
        """Use a split of a data directory (read by the ``coco_ir`` loading script) as the gallery."""
        self.retriever.use_data_dir(data_dir, split, keys_file)

    def set_gallery_from_index(self, index_path: str) -> None:
        """Use the live version of a gallery index (built with this model's weights) as the gallery."""
        self.retriever.use_index(index_path)

    def set_gallery(
        self,
        image_ids: Sequence[str],
        features: Any,
        tags: Sequence[Sequence[str]],
        captions: Optional[Sequence[Sequence[str]]] = None,
    ) -> None:
        """Set the images (and their captions) queries are answered against; embeds them once if needed."""
        self.retriever.use_arrays(image_ids, features, tags, captions)


def register_task() -> None:
    """Add this package's model to paddlenlp's ``image_text_retrieval`` task (creating the task entry
    if paddlenlp has none), without touching other models of the task."""
    entry = paddlenlp_taskflow.TASKS.setdefault(TASK_NAME, {"models": {}, "default": {"model": MODEL_NAME}})
    entry.setdefault("models", {})[MODEL_NAME] = {"task_class": ImageTextRetrievalTask, "task_flag": f"{TASK_NAME}-{MODEL_NAME}"}
