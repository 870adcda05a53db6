"""The retrieval service: ``Taskflow("image_text_retrieval")`` over a gallery index on PaddleNLP's SimpleServer.

The recipe, PaddleNLP style (``server.py``, started with ``paddlenlp server server:app --host
127.0.0.1 --port 8189``)::

    from paddlenlp import Taskflow
    from paddlenlp.server import SimpleServer

    import vinvl  # registers the task
    from .server import ROUTE, RetrievalHandler, add_service_routes

    retrieval = Taskflow("image_text_retrieval", task_path="outputs/model", index_path="gallery_index")
    app = SimpleServer()
    app.register_taskflow(ROUTE, retrieval, taskflow_handler=RetrievalHandler)
    add_service_routes(app)  # the route answered with orjson, GET /health, body-size limit, JSON 4xx / 5xx

This module is such a ``server.py`` too: its ``app`` is built, on first access, from the
``VINVL_SERVE_*`` environment variables (:data:`ENVIRONMENT`), which is what ``vinvl serve``
sets before it starts uvicorn (``vinvl.serving.server:app``, once per worker).

Requests (``POST /taskflow/image_text_retrieval``) are ``{"data": ..., "parameters": {...}}``;
answers are ``{"result": [one answer per query]}``. ``data`` is one query or a list of them, in
the Taskflow's forms (a caption; ``{"image_id"}``; ``{"features", "tags"}``; either image form
with ``"caption"`` for a pair score) plus ``{"photo": "<base64 JPEG/PNG>"}`` (with a detector), or
``{"add": {"gallery_dir", "split"}}`` to add a data directory's images to the index (only when
started with ``allow_add``: ``vinvl serve --allow_add``; otherwise 403). A string is
always a caption: a client never makes the server open a file (:mod:`vinvl.serving.queries`). ``parameters`` may set ``top_k``, ``first_stage`` and
``candidates`` for this request.

Errors: a request the service cannot answer as asked gets a 4xx whose JSON ``detail`` names what
is wrong (400 bad query or parameter, 409 index busy, 413 body too large, 422 malformed
request); anything else is an internal failure, logged with its traceback and answered 500.
Each worker loads the model once and answers one request at a time (the Taskflow's lock).
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from paddlenlp.server.handlers.base_handler import BaseTaskflowHandler

from ..data import DataError
from ..retrieval.first_stage import FIRST_STAGE_CHOICES, resolve_first_stage
from ..index.store import GalleryIndex, GallerySource, add_to_index
from .endpoint import RetrievalEndpoint
from ..index.gallery import IndexGallery
from .queries import parse_http_queries
from ..index.versions import IndexBusyError

__all__ = [
    "ROUTE",
    "HEALTH_ROUTE",
    "ENVIRONMENT",
    "RetrievalHandler",
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
PARAMETERS = ("top_k", "first_stage", "candidates")

# create_app argument -> the environment variable ``app`` reads it from (what `vinvl serve` sets)
ENVIRONMENT = {
    "index_path": "VINVL_SERVE_INDEX",
    "model_dir": "VINVL_SERVE_MODEL_DIR",
    "top_k": "VINVL_SERVE_TOP_K",
    "first_stage": "VINVL_SERVE_FIRST_STAGE",
    "candidates": "VINVL_SERVE_CANDIDATES",
    "batch_size": "VINVL_SERVE_BATCH_SIZE",
    "max_body_bytes": "VINVL_SERVE_MAX_BODY_BYTES",
    "max_queries": "VINVL_SERVE_MAX_QUERIES",
    "detector_path": "VINVL_SERVE_DETECTOR",
    "allow_add": "VINVL_SERVE_ALLOW_ADD",
}
_INTEGER_SETTINGS = ("top_k", "candidates", "batch_size", "max_body_bytes", "max_queries")
_BOOLEAN_SETTINGS = ("allow_add",)
_BOOLEANS = {"1": True, "true": True, "0": False, "false": False}


def _bad(message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


# ----- the handler ------------------------------------------------------------------------------


class RetrievalHandler(BaseTaskflowHandler):
    """``taskflow_handler`` of ``SimpleServer.register_taskflow`` for image-text retrieval requests.

    Runs under the Taskflow's lock, so a request's parameters apply to it alone. Queries are parsed
    as HTTP carries them (:mod:`vinvl.serving.queries`: a string is always a caption, a photo is
    uploaded, never a server path); what parsing rejects is the client's error (400), what fails
    after is the server's (500).
    """

    max_queries = DEFAULT_MAX_QUERIES
    allow_add = False

    @classmethod
    def process(cls, predictor, data: Any, parameters: Optional[Dict[str, Any]]) -> Any:
        task = predictor.task_instance
        _pick_up_new_version(task)
        if isinstance(data, dict) and "add" in data:
            if not cls.allow_add:
                raise _bad(
                    "this server does not take add requests (they read directories on the server); "
                    "start it with `vinvl serve --allow_add` (or VINVL_SERVE_ALLOW_ADD=1) to allow them",
                    403,
                )
            return _add_images(task, data, parameters)
        options = _parse_parameters(task, parameters)
        queries = data if isinstance(data, list) else [data]
        if not queries:
            raise _bad("'data' is an empty list; give a caption, an image query, or a list of them")
        if len(queries) > cls.max_queries:
            raise _bad(f"'data' holds {len(queries)} queries; at most {cls.max_queries} per request", 413)
        try:
            parsed = parse_http_queries(task, queries)
        except (ValueError, TypeError, KeyError) as exc:
            raise _bad(str(exc).strip("'\"")) from None
        if any(q["kind"] == "image" for q in parsed) and (task._gallery is None or not task._gallery.images.captions):
            raise _bad("image -> captions queries need captions, but the gallery holds none (rebuild the index from data with captions)")
        with _options(task, options):
            return task._postprocess(task._run_model(parsed))

    @classmethod
    def configured(cls, max_queries: int = DEFAULT_MAX_QUERIES, allow_add: bool = False) -> type:
        """This handler with another per-request query limit, and add requests allowed or not
        (they make the server read a directory a client names: an administrator's choice)."""
        return type(cls.__name__, (cls,), {"max_queries": max_queries, "allow_add": allow_add})


def _pick_up_new_version(task) -> None:
    """Reopen the index when another version went live (an add by any worker or `vinvl index add`)."""
    gallery = task._gallery
    if isinstance(gallery, IndexGallery) and gallery.is_stale():
        logger.info("index %s: version %s is no longer live; reopening", gallery.root, gallery.version)
        task.set_gallery_from_index(gallery.root)


def _positive(name: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise _bad(f"parameter {name!r} must be an integer in 1..{limit}, got {json.dumps(value)}")
    return value


def _parse_parameters(task, parameters: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The request's task options (``_top_k``, ``_candidates``, ``_first_stage``), checked."""
    parameters = parameters or {}
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise _bad(f"unknown parameters {unknown}; use {', '.join(PARAMETERS)}")
    options = {}
    if "top_k" in parameters:
        options["_top_k"] = _positive("top_k", parameters["top_k"], MAX_TOP_K)
    if "candidates" in parameters:
        options["_candidates"] = _positive("candidates", parameters["candidates"], MAX_CANDIDATES)
    if "first_stage" in parameters:
        requested = parameters["first_stage"]
        if requested not in FIRST_STAGE_CHOICES:
            raise _bad(f"parameter 'first_stage' must be one of {list(FIRST_STAGE_CHOICES)}, got {json.dumps(requested)}")
        try:
            stage = resolve_first_stage(requested, task._model.config)
        except ValueError as exc:
            raise _bad(str(exc)) from None
        if not _gallery_supports(task, stage):
            raise _bad(
                f"first_stage {stage!r} is not available on this gallery; it was prepared for "
                f"{task._first_stage!r} (and 'exhaustive' always works)"
            )
        options["_first_stage"] = stage
    return options


def _gallery_supports(task, stage: str) -> bool:
    """An index gallery serves every first stage it has data for; an in-memory one only its own."""
    if isinstance(task._gallery, IndexGallery):
        return task._gallery.supports(stage)
    return stage in ("exhaustive", task._first_stage)


@contextmanager
def _options(task, options: Dict[str, Any]) -> Iterator[None]:
    """The task with ``options`` set for one request (the caller holds the Taskflow's lock)."""
    saved = {name: getattr(task, name) for name in options}
    for name, value in options.items():
        setattr(task, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(task, name, value)


def _add_images(task, data: Dict[str, Any], parameters: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """``{"add": {"gallery_dir", "split"?}}``: append a data directory's images to the index, atomically.

    The new version is live for every worker once this returns (each checks before a request).
    """
    gallery = task._gallery
    if not isinstance(gallery, IndexGallery):
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
    before = gallery.index.num_images
    try:
        add_to_index(gallery.root, task._task_path, [GallerySource(spec["gallery_dir"], split)], batch_size=task._batch_size, progress=False)
    except IndexBusyError as exc:
        raise _bad(str(exc), 409) from None
    except (DataError, ValueError, FileNotFoundError) as exc:
        raise _bad(f"cannot add {spec['gallery_dir']} (split {split}): {exc}") from None
    task.set_gallery_from_index(gallery.root)
    index = task._gallery.index
    return {"added": index.num_images - before, "num_images": index.num_images, "version": index.version}


# ----- the app around it ------------------------------------------------------------------------


def _health(app) -> Dict[str, Any]:
    """The worker's state as the next query will see it: a newer live index version is picked up
    first, unless a request holds the Taskflow for longer than ``HEALTH_WAIT`` (then ``busy``)."""
    flow = app._taskflow_manager._task[0]
    task = flow.task_instance
    busy = not flow._lock.acquire(timeout=HEALTH_WAIT)
    if not busy:
        try:
            _pick_up_new_version(task)
        finally:
            flow._lock.release()
    gallery = task._gallery
    answer = {"status": "ok", "busy": busy, "pid": os.getpid(), "model_dir": task._task_path, "first_stage": task._first_stage}
    if isinstance(gallery, IndexGallery):
        answer["index"] = {
            "path": gallery.root,
            "version": gallery.version,
            "num_images": gallery.index.num_images,
            "num_captions": gallery.index.num_captions,
        }
    elif gallery is not None:
        answer["gallery"] = {"num_images": gallery.images.num_images, "num_captions": gallery.images.num_captions}
    return answer


def add_service_routes(app, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """What a service needs beyond ``register_taskflow``: the retrieval route answered by
    :class:`~vinvl.serving.endpoint.RetrievalEndpoint` (body-size limit 413, malformed requests 422
    with the field named, internal failures logged and 500) and ``GET /health``."""
    app.add_middleware(RetrievalEndpoint, server=app, path="/" + ROUTE, max_bytes=max_body_bytes)

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error answering %s %s", request.method, request.url.path, exc_info=exc)
        detail = f"internal error ({type(exc).__name__}: {exc}); the server logged it"
        return JSONResponse({"detail": detail}, status_code=500)

    app.add_exception_handler(Exception, internal_error)
    app.add_api_route(HEALTH_ROUTE, lambda: _health(app), methods=["GET"], summary="Health")


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
):
    """A SimpleServer answering retrieval requests over the index at ``index_path``.

    ``model_dir`` defaults to the one the index records; the index must match its weights.
    ``detector_path``: a detector directory, loaded here, so uploaded photos can be queries.
    ``allow_add``: answer ``{"add": ...}`` requests (otherwise 403).
    """
    from paddlenlp import Taskflow
    from paddlenlp.server import SimpleServer

    from ..apps.taskflow import TASK_NAME

    model_dir = model_dir or recorded_model_dir(index_path)
    retrieval = Taskflow(
        TASK_NAME, task_path=model_dir, index_path=index_path, top_k=top_k, first_stage=first_stage,
        candidates=candidates, batch_size=batch_size, detector_path=detector_path,
    )
    if detector_path is not None:
        _ = retrieval.task_instance._images.detector  # loaded once per worker, before the first request
    app = SimpleServer(title="vinvl image-text retrieval")
    app.register_taskflow(ROUTE, retrieval, taskflow_handler=RetrievalHandler.configured(max_queries, allow_add))
    add_service_routes(app, max_body_bytes)
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
