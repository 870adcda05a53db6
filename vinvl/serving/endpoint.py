"""The retrieval route of a SimpleServer answered at the ASGI level, with paddlenlp's request and answer shapes.

``SimpleServer.register_taskflow`` adds a synchronous FastAPI route: per request it parses the body
with the standard library's ``json`` (3-5 ms for a features query of 2054 floats per region),
validates it with pydantic, runs the endpoint in one worker thread and the answer's validation and
``jsonable_encoder`` pass in a second one, logs a line through paddlenlp's logger, and renders the
answer with ``json.dumps``. :class:`RetrievalEndpoint` answers the same path itself, in front of
that route: the body is read once (with the size limit), parsed and the answer written with
``orjson``, the request's shape checked by hand with the same rules (``data`` required,
``parameters`` an object, nothing else), and the request answered by the service
(:class:`vinvl.serving.server.RetrievalService`) in a worker thread of its own.

Why a thread and not the event loop: while a query runs on the loop, nothing else on that worker
moves: a health check, the bodies of the next requests still arriving, the answers already
computed waiting to be written. Under 16 clients and one worker, every request's I/O would wait
for every model call queued before it, and a long query (a big list, ``first_stage`` exhaustive
over a large index, an add) would hold ``GET /health`` for its whole length. One thread hop each
way costs tens of microseconds; the event loop stays free.

Everything else (``GET /health``, other routes) goes to the app behind it.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

import orjson
from fastapi import HTTPException

__all__ = ["REQUEST_FORM", "RetrievalEndpoint", "read_body", "json_response", "parse_request"]

logger = logging.getLogger(__name__)

REQUEST_FORM = '{"data": <query or list of queries>, "parameters": {"top_k", "first_stage", "candidates", "nprobe"}}'
JSON_HEADERS = [(b"content-type", b"application/json")]

Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    """A request body over the limit: ``size`` bytes (at least, when ``more`` is still coming)."""

    def __init__(self, size: int, more: bool):
        super().__init__(size)
        self.size, self.more = size, more


async def read_body(scope: Dict[str, Any], receive: Receive, max_bytes: int) -> Optional[bytes]:
    """The whole request body, or None when the client went away; :class:`BodyTooLarge` past ``max_bytes``.

    A declared ``Content-Length`` is checked before anything is read; a chunked body is counted as
    it arrives and cut off once over the limit.
    """
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise BodyTooLarge(int(value), False)
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
        if size > max_bytes:
            raise BodyTooLarge(size, more)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large_detail(exc: BodyTooLarge, max_bytes: int) -> str:
    return f"request body is {'more than ' if exc.more else ''}{exc.size} bytes; the limit is {max_bytes} bytes"


async def json_response(send: Send, status: int, content: Any) -> None:
    """``content`` as a JSON answer (orjson; ``Content-Length`` set)."""
    body = orjson.dumps(content)
    headers = JSON_HEADERS + [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def parse_request(body: bytes) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """(data, parameters) of a request body; 422 naming the fault when it is not paddlenlp's form
    (a JSON object with ``data`` and optionally ``parameters``, an object or null, and nothing else)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _malformed(f"the body is not valid JSON ({exc})") from None
    if not isinstance(request, dict):
        raise _malformed(f"the body must be a JSON object, got {type(request).__name__}")
    unknown = [name for name in request if name not in ("data", "parameters")]
    if unknown:
        raise _malformed("; ".join(f"unknown field {name!r} in the request" for name in unknown))
    if "data" not in request:
        raise _malformed("the request has no 'data' field")
    parameters = request.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _malformed(f"'parameters' must be an object, got {orjson.dumps(parameters).decode()[:100]}")
    return request["data"], parameters


def _malformed(message: str) -> HTTPException:
    return HTTPException(status_code=422, detail=f"{message}; a request is {REQUEST_FORM}")


class RetrievalEndpoint:
    """ASGI middleware answering ``POST path`` with ``answer(data, parameters)``.

    Answers: ``{"result": ...}``; an ``HTTPException`` of ``answer`` is its status with
    ``{"detail"}``; anything else is logged with its traceback and answered 500.
    """

    def __init__(self, app, answer: Callable[[Any, Optional[Dict[str, Any]]], Any], path: str, max_bytes: int):
        self.app = app
        self.answer = answer
        self.path = path
        self.max_bytes = max_bytes
        self._executor: Optional[ThreadPoolExecutor] = None

    async def __call__(self, scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.max_bytes)
        except BodyTooLarge as exc:
            await json_response(send, 413, {"detail": too_large_detail(exc, self.max_bytes)})
            return
        if body is None:  # the client went away
            return
        try:
            data, parameters = parse_request(body)
            result = await asyncio.get_running_loop().run_in_executor(self._pool(), self.answer, data, parameters)
        except HTTPException as exc:
            await json_response(send, exc.status_code, {"detail": exc.detail})
            return
        except Exception as exc:
            logger.error("internal error answering %s %s", scope["method"], scope["path"], exc_info=exc)
            await json_response(send, 500, {"detail": f"internal error ({type(exc).__name__}: {exc}); the server logged it"})
            return
        await json_response(send, 200, {"result": result})

    def _pool(self) -> ThreadPoolExecutor:
        """The thread requests are answered in, made in the worker process on its first request."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vinvl-retrieval")
        return self._executor
