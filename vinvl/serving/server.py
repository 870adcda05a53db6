"""The retrieval service: ``Taskflow("image_text_retrieval")`` over a gallery index on PaddleNLP's SimpleServer.

The recipe, PaddleNLP style (``server.py``, started with ``paddlenlp server server:app --host
127.0.0.1 --port 8189``)::

    from paddlenlp import Taskflow
    from paddlenlp.server import SimpleServer

    import vinvl  # registers the task
    from vinvl.serving.server import ROUTE, RetrievalHandler, RetrievalService, add_service_routes

    retrieval = Taskflow("image_text_retrieval", task_path="outputs/model", index_path="gallery_index")
    service = RetrievalService.from_taskflow(retrieval)  # answers through the Taskflow's query core
    app = SimpleServer()
    app.register_taskflow(ROUTE, retrieval, taskflow_handler=RetrievalHandler.configured(service))
    add_service_routes(app, service)  # GET /health, body-size limit, JSON 4xx / 5xx

This module is such a ``server.py`` too: its ``app`` is built, on first access, from the
``VINVL_SERVE_*`` environment variables (:data:`ENVIRONMENT`), which is what ``vinvl serve``
sets before it starts uvicorn (``vinvl.serving.server:app``, once per worker).

Requests (``POST /taskflow/image_text_retrieval``) are ``{"data": ..., "parameters": {...}}``;
answers are ``{"result": [one answer per query]}``. ``data`` is one query or a list of them, in
the Taskflow's forms (a caption; ``{"image_id"}``; ``{"features", "tags"}``; either image form
with ``"caption"`` for a pair score) plus ``{"photo": "<base64 JPEG/PNG>"}`` (with a detector), or
``{"add": {"gallery_dir", "split"}}`` to add a data directory's images to the index (only when
started with ``allow_add``: ``vinvl serve --allow_add``; otherwise 403). A string is
always a caption: a client never makes the server open a file (:mod:`vinvl.serving.queries`). ``parameters`` may set ``top_k``, ``first_stage``,
``candidates`` and ``nprobe`` for this request.

Errors: a request the service cannot answer as asked gets a 4xx whose JSON ``detail`` names what
is wrong (400 bad query or parameter, 409 index busy, 413 body too large, 422 malformed
request); anything else is an internal failure, logged with its traceback and answered 500.
Each worker loads the model once and answers one request at a time (the service's lock); a
request's parameters are arguments of :meth:`vinvl.query.Retriever.answer`, never shared state.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from typing import Any, Dict, Optional

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from paddlenlp.server.handlers.base_handler import BaseTaskflowHandler

from ..data import DataError
from ..index.store import GalleryIndex, GallerySource, add_to_index
from ..index.versions import IndexBusyError
from ..query import Retriever
from ..retrieval.first_stage import FIRST_STAGE_CHOICES, resolve_first_stage
from .endpoint import RetrievalEndpoint
from .queries import parse_http_queries

__all__ = [
    "ROUTE",
    "HEALTH_ROUTE",
    "ENVIRONMENT",
    "RetrievalHandler",
    "RetrievalService",
    "add_service_routes",
    "create_app",
    "settings_from_env",
]

logger = logging.getLogger(__name__)

ROUTE = "taskflow/image_text_retrieval"
HEALTH_ROUTE = "/health"
HEALTH_WAIT = 2.0  # seconds a health check waits for a running request before it answers "busy"
DEFAULT_MAX_BODY_BYTES = 16 << 20  # a 50-region 2054-d image as JSON text is about 2 MB
DEFAULT_MAX_QUERIES = 64
MAX_TOP_K = 1000
MAX_CANDIDATES = 100_000
MAX_NPROBE = 65536
PARAMETERS = ("top_k", "first_stage", "candidates", "nprobe")

# create_app argument -> the environment variable ``app`` reads it from (what `vinvl serve` sets)
ENVIRONMENT = {
    "index_path": "VINVL_SERVE_INDEX",
    "model_dir": "VINVL_SERVE_MODEL_DIR",
    "top_k": "VINVL_SERVE_TOP_K",
    "first_stage": "VINVL_SERVE_FIRST_STAGE",
    "candidates": "VINVL_SERVE_CANDIDATES",
    "batch_size": "VINVL_SERVE_BATCH_SIZE",
    "precision": "VINVL_SERVE_PRECISION",
    "max_body_bytes": "VINVL_SERVE_MAX_BODY_BYTES",
    "max_queries": "VINVL_SERVE_MAX_QUERIES",
    "detector_path": "VINVL_SERVE_DETECTOR",
    "detector_precision": "VINVL_SERVE_DETECTOR_PRECISION",
    "allow_add": "VINVL_SERVE_ALLOW_ADD",
}
_INTEGER_SETTINGS = ("top_k", "candidates", "batch_size", "max_body_bytes", "max_queries")
_BOOLEAN_SETTINGS = ("allow_add",)
_BOOLEANS = {"1": True, "true": True, "0": False, "false": False}


def _bad(message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


# ----- the service ------------------------------------------------------------------------------


class RetrievalService:
    """What one worker answers: HTTP requests (parsed, checked, answered by the query core) and health.

    Args:
        retriever: the query core, with its gallery (an index, for add requests and version pick-up).
        top_k / first_stage / candidates / nprobe: the defaults a request's ``parameters`` override.
        batch_size: pairs per forward pass when an add request embeds new images.
        max_queries: queries per request (more: 413).
        allow_add: answer ``{"add": ...}`` requests (they make the server read a directory a client
            names: an administrator's choice); otherwise 403.

    One request at a time (its own lock): a worker has one model, and a request that adds images
    or reopens the index must not interleave with queries.
    """

    def __init__(
        self,
        retriever: Retriever,
        *,
        top_k: int = 5,
        first_stage: Optional[str] = None,
        candidates: int = 16,
        nprobe: Optional[int] = None,
        batch_size: int = 32,
        max_queries: int = DEFAULT_MAX_QUERIES,
        allow_add: bool = False,
    ):
        self.retriever = retriever
        self.defaults = {"top_k": top_k, "first_stage": first_stage, "candidates": candidates, "nprobe": nprobe}
        self.batch_size = batch_size
        self.max_queries = max_queries
        self.allow_add = allow_add
        self.lock = threading.Lock()

    @classmethod
    def from_taskflow(cls, taskflow, **settings) -> "RetrievalService":
        """The service of a ``Taskflow("image_text_retrieval")``: its query core and its options as defaults."""
        task = taskflow.task_instance
        return cls(task.retriever, **{**task.options, **settings})

    def answer(self, data: Any, parameters: Optional[Dict[str, Any]]) -> Any:
        """The result of one request (``data``, ``parameters``); HTTPException for the client's faults."""
        with self.lock:
            self._pick_up_new_version()
            if isinstance(data, dict) and "add" in data:
                if not self.allow_add:
                    raise _bad(
                        "this server does not take add requests (they read directories on the server); "
                        "start it with `vinvl serve --allow_add` (or VINVL_SERVE_ALLOW_ADD=1) to allow them",
                        403,
                    )
                return self._add_images(data, parameters)
            options = self._options(parameters)
            queries = data if isinstance(data, list) else [data]
            if not queries:
                raise _bad("'data' is an empty list; give a caption, an image query, or a list of them")
            if len(queries) > self.max_queries:
                raise _bad(f"'data' holds {len(queries)} queries; at most {self.max_queries} per request", 413)
            try:
                parsed = parse_http_queries(self.retriever, queries)
            except (ValueError, TypeError, KeyError) as exc:
                raise _bad(str(exc).strip("'\"")) from None
            gallery = self.retriever.gallery
            if any(q.kind == "image" for q in parsed) and (gallery is None or not gallery.images.captions):
                raise _bad("image -> captions queries need captions, but the gallery holds none (rebuild the index from data with captions)")
            return self.retriever.answer(parsed, **options)

    def health(self) -> Dict[str, Any]:
        """The worker's state as the next query will see it: a newer live index version is picked up
        first, unless a request holds the service for longer than ``HEALTH_WAIT`` (then ``busy``)."""
        busy = not self.lock.acquire(timeout=HEALTH_WAIT)
        if not busy:
            try:
                self._pick_up_new_version()
            finally:
                self.lock.release()
        retriever = self.retriever
        gallery = retriever.gallery
        answer = {
            "status": "ok", "busy": busy, "pid": os.getpid(), "model_dir": retriever.model_dir,
            "first_stage": retriever.first_stage, "precision": retriever.precision,
        }
        if retriever.photos.detector_path is not None:
            answer["detector_precision"] = retriever.photos.precision
        if gallery is not None and gallery.index is not None:
            index = gallery.index
            answer["index"] = {"path": index.root, "version": index.version, "num_images": index.num_images, "num_captions": index.num_captions}
        elif gallery is not None:
            answer["gallery"] = {"num_images": gallery.images.num_images, "num_captions": gallery.images.num_captions}
        return answer

    def _pick_up_new_version(self) -> None:
        """Reopen the index when another version went live (an add by any worker or `vinvl index add`)."""
        gallery = self.retriever.gallery
        if gallery is not None and gallery.is_stale():
            logger.info("index %s: version %s is no longer live; reopening", gallery.index.root, gallery.index.version)
            self.retriever.refresh()

    def _options(self, parameters: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """The request's answer options: the defaults with its ``parameters`` (checked) over them."""
        parameters = parameters or {}
        unknown = sorted(set(parameters) - set(PARAMETERS))
        if unknown:
            raise _bad(f"unknown parameters {unknown}; use {', '.join(PARAMETERS)}")
        options = dict(self.defaults)
        if "top_k" in parameters:
            options["top_k"] = _positive("top_k", parameters["top_k"], MAX_TOP_K)
        if "candidates" in parameters:
            options["candidates"] = _positive("candidates", parameters["candidates"], MAX_CANDIDATES)
        if "nprobe" in parameters:
            options["nprobe"] = _positive("nprobe", parameters["nprobe"], MAX_NPROBE)
        if "first_stage" in parameters:
            requested = parameters["first_stage"]
            if requested not in FIRST_STAGE_CHOICES:
                raise _bad(f"parameter 'first_stage' must be one of {list(FIRST_STAGE_CHOICES)}, got {json.dumps(requested)}")
            try:
                stage = resolve_first_stage(requested, self.retriever.config)
            except ValueError as exc:
                raise _bad(str(exc)) from None
            gallery = self.retriever.gallery
            if gallery is not None and not gallery.supports(stage):
                raise _bad(
                    f"first_stage {stage!r} is not available on this gallery; it was prepared for "
                    f"{self.retriever.first_stage!r} (and 'exhaustive' always works)"
                )
            options["first_stage"] = stage
        return options

    def _add_images(self, data: Dict[str, Any], parameters: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """``{"add": {"gallery_dir", "split"?}}``: append a data directory's images to the index, atomically.

        The new version is live for every worker once this returns (each checks before a request).
        """
        gallery = self.retriever.gallery
        if gallery is None or gallery.index is None:
            raise _bad("this server's gallery is not an index; images can be added only to an index (index_path=)")
        if set(data) != {"add"}:
            raise _bad(f"an add request's 'data' holds only 'add'; unknown fields {sorted(set(data) - {'add'})}")
        if parameters:
            raise _bad(f"an add request takes no parameters; got {sorted(parameters)}")
        spec = data["add"]
        if not isinstance(spec, dict) or not isinstance(spec.get("gallery_dir"), str):
            raise _bad('\'add\' must be {"gallery_dir": "<data directory on the server>", "split": "test"}')
        unknown = sorted(set(spec) - {"gallery_dir", "split"})
        if unknown:
            raise _bad(f"unknown fields {unknown} in 'add'; use gallery_dir, split")
        split = spec.get("split", "test")
        if not isinstance(split, str) or not split:
            raise _bad(f"'add' field 'split' must be a split name, got {json.dumps(split)}")
        if not os.path.isdir(spec["gallery_dir"]):
            raise _bad(f"'add' gallery_dir {spec['gallery_dir']!r} is not a directory on the server")
        root, before = gallery.index.root, gallery.index.num_images
        try:
            add_to_index(root, self.retriever.model_dir, [GallerySource(spec["gallery_dir"], split)], batch_size=self.batch_size, progress=False)
        except IndexBusyError as exc:
            raise _bad(str(exc), 409) from None
        except (DataError, ValueError, FileNotFoundError) as exc:
            raise _bad(f"cannot add {spec['gallery_dir']} (split {split}): {exc}") from None
        self.retriever.use_index(root)
        index = self.retriever.gallery.index
        return {"added": index.num_images - before, "num_images": index.num_images, "version": index.version}


def _positive(name: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise _bad(f"parameter {name!r} must be an integer in 1..{limit}, got {json.dumps(value)}")
    return value


# ----- paddlenlp's taskflow handler -------------------------------------------------------------


class RetrievalHandler(BaseTaskflowHandler):
    """``taskflow_handler`` of ``SimpleServer.register_taskflow``: a request answered by a
    :class:`RetrievalService` (use :meth:`configured`; the plain class serves the Taskflow it is
    given with the default limits)."""

    service: Optional[RetrievalService] = None

    @classmethod
    def process(cls, predictor, data: Any, parameters: Optional[Dict[str, Any]]) -> Any:
        service = cls.service or _service_of(predictor)
        return service.answer(data, parameters)

    @classmethod
    def configured(cls, service: RetrievalService) -> type:
        """This handler answering through ``service``."""
        return type(cls.__name__, (cls,), {"service": service})


_services: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _service_of(taskflow) -> RetrievalService:
    """One service per Taskflow object served with the plain handler."""
    if taskflow not in _services:
        _services[taskflow] = RetrievalService.from_taskflow(taskflow)
    return _services[taskflow]


# ----- the app around it ------------------------------------------------------------------------


def add_service_routes(app, service: RetrievalService, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """What a service needs beyond ``register_taskflow``: the retrieval route answered by
    :class:`~vinvl.serving.endpoint.RetrievalEndpoint` through ``service`` (body-size limit 413,
    malformed requests 422 with the field named, internal failures logged and 500) and ``GET /health``."""
    app.add_middleware(RetrievalEndpoint, answer=service.answer, path="/" + ROUTE, max_bytes=max_body_bytes)

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error answering %s %s", request.method, request.url.path, exc_info=exc)
        detail = f"internal error ({type(exc).__name__}: {exc}); the server logged it"
        return JSONResponse({"detail": detail}, status_code=500)

    app.add_exception_handler(Exception, internal_error)
    app.add_api_route(HEALTH_ROUTE, service.health, methods=["GET"], summary="Health")


def recorded_model_dir(index_path: str) -> str:
    """The model directory an index records it was built with."""
    with GalleryIndex.open(index_path) as index:
        return index.manifest["model"]["model_dir"]


def create_app(
    index_path: str,
    model_dir: Optional[str] = None,
    top_k: int = 5,
    first_stage: str = "auto",
    candidates: int = 16,
    batch_size: int = 32,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_queries: int = DEFAULT_MAX_QUERIES,
    detector_path: Optional[str] = None,
    allow_add: bool = False,
    precision: str = "fp32",
    detector_precision: str = "fp32",
):
    """A SimpleServer answering retrieval requests over the index at ``index_path``.

    ``model_dir`` defaults to the one the index records; the index must match its weights.
    ``detector_path``: a detector directory, loaded here, so uploaded photos can be queries.
    ``allow_add``: answer ``{"add": ...}`` requests (otherwise 403).
    ``precision``: of the match head's pair forward (:mod:`vinvl.oscar.inference`).
    ``detector_precision``: of the detector, ``fp32``, ``bf16`` or ``int8`` (:mod:`vinvl.vision.inference`).
    """
    from paddlenlp import Taskflow
    from paddlenlp.server import SimpleServer

    from ..apps.taskflow import TASK_NAME

    model_dir = model_dir or recorded_model_dir(index_path)
    retrieval = Taskflow(
        TASK_NAME, task_path=model_dir, index_path=index_path, top_k=top_k, first_stage=first_stage,
        candidates=candidates, batch_size=batch_size, detector_path=detector_path, precision=precision,
        detector_precision=detector_precision,
    )
    service = RetrievalService.from_taskflow(retrieval, batch_size=batch_size, max_queries=max_queries, allow_add=allow_add)
    if detector_path is not None:
        _ = service.retriever.photos.detector  # loaded once per worker, before the first request
    app = SimpleServer(title="vinvl image-text retrieval")
    app.register_taskflow(ROUTE, retrieval, taskflow_handler=RetrievalHandler.configured(service))
    add_service_routes(app, service, max_body_bytes)
    return app


def settings_from_env(environ: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """:func:`create_app` arguments from the ``VINVL_SERVE_*`` variables (:data:`ENVIRONMENT`)."""
    environ = os.environ if environ is None else environ
    settings: Dict[str, Any] = {}
    for name, variable in ENVIRONMENT.items():
        if variable not in environ:
            continue
        value = environ[variable]
        if name in _INTEGER_SETTINGS:
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"{variable} must be an integer, got {value!r}") from None
        elif name in _BOOLEAN_SETTINGS:
            if value.lower() not in _BOOLEANS:
                raise ValueError(f"{variable} must be 1 or 0, got {value!r}")
            value = _BOOLEANS[value.lower()]
        settings[name] = value
    if "index_path" not in settings:
        raise ValueError(f"set {ENVIRONMENT['index_path']} to a gallery index directory (or use `vinvl serve --index`)")
    return settings


_app = None


def __getattr__(name: str):
    """``app``: built from the environment on first access (once per uvicorn worker)."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create_app(**settings_from_env())
    return _app
