"""``vinvl serve``: the retrieval service over a gallery index in one command
(:mod:`vinvl.serving.server` under uvicorn).

    vinvl serve --index OUT [--model_dir M] [--host 127.0.0.1] [--port 8189] [--workers N] [--detector DIR [--detector_precision bf16|int8]]

Does what ``paddlenlp server vinvl.serving.server:app`` does (uvicorn, one model per worker),
with the app's settings given as flags instead of ``VINVL_SERVE_*`` variables. The port is taken
first, then the index and the model are checked, all before any worker starts: a port in use, a
missing index or one built with other weights is one line here (status 2), not an error in every
worker.
"""
from __future__ import annotations

import argparse
import os
import socket
from typing import Optional, Sequence

from ..errors import UsageError
from .options import (
    DETECTOR_PRECISIONS,
    FIRST_STAGE_CHOICES,
    add_detector_precision_argument,
    add_precision_argument,
    check_precision,
    detector_directory,
    new_parser,
    random_detector_notice,
    require_directory,
    require_positive,
)

__all__ = ["build_parser", "main"]

APP = "vinvl.serving.server:app"
MAX_BODY_BYTES = 16 << 20  # vinvl.serving.server.DEFAULT_MAX_BODY_BYTES
MAX_QUERIES = 64  # vinvl.serving.server.DEFAULT_MAX_QUERIES

DESCRIPTION = """\
Serve retrieval over a gallery index through HTTP: PaddleNLP's SimpleServer route
(POST /taskflow/image_text_retrieval) plus vinvl's, under uvicorn with one model per worker. The port
is taken and the index and model are checked before any worker starts."""


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("vinvl serve", DESCRIPTION)
    parser.add_argument("--index", required=True, help="the gallery index directory (vinvl index build)")
    parser.add_argument("--model_dir", help="the saved model (default: the one the index records)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8189, help="port to bind")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes, each with its own model")
    parser.add_argument("--top_k", type=int, default=5, help="results per query unless a request sets top_k")
    parser.add_argument("--first_stage", choices=FIRST_STAGE_CHOICES, default="auto",
                        help="default first stage (see vinvl retrieve --help)")
    parser.add_argument("--candidates", type=int, default=16, help="first-stage candidates per query unless a request sets them")
    parser.add_argument("--batch_size", type=int, default=32, help="pairs per forward pass")
    add_precision_argument(parser)
    parser.add_argument("--max_body_bytes", type=int, default=MAX_BODY_BYTES, help="larger request bodies get 413")
    parser.add_argument("--max_queries", type=int, default=MAX_QUERIES, help="queries per request (more get 413)")
    parser.add_argument("--detector", help="a detector directory, or a shipped detector config's name: lets requests upload photos ({\"photo\": base64})")
    add_detector_precision_argument(parser)
    parser.add_argument(
        "--allow_add", action="store_true",
        help="answer {\"add\": {\"gallery_dir\": ...}} requests, which make the server read a directory a client names "
             "(default: refused with 403)",
    )
    parser.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level")
    parser.add_argument(
        "--worker_healthcheck_timeout", type=float, default=60.0,
        help="seconds a worker may take to answer uvicorn's supervisor (with --workers > 1) before it is restarted; "
             "uvicorn's 5 s default kills workers still loading paddle and the model on a busy machine",
    )
    return parser


def _tcp_socket(host: str, port: int) -> socket.socket:
    """The service's listening socket, bound now (a port in use is a user error before anything loads).

    Created as TCP explicitly: a socket made as ``socket.socket(family)`` (uvicorn's own) records
    protocol 0, so asyncio does not set TCP_NODELAY on the connections the workers accept, and a
    response written as headers then body waits for the client's delayed ACK: about 40 ms more per
    request on a kept-alive connection.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise UsageError(f"--host {host} --port {port}: cannot listen there: {reason[:1].lower() + reason[1:]} "
                         "(another server on that port? choose another --port)") from None
    sock.set_inheritable(True)
    return sock


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Take the port, check the index and model, then serve until stopped."""
    args = build_parser().parse_args(argv)
    require_positive(args, ("port", "workers", "top_k", "candidates", "batch_size", "max_body_bytes", "max_queries",
                            "worker_healthcheck_timeout"))
    if args.model_dir is not None:
        require_directory(args.model_dir, "--model_dir", "model directory")
    if args.detector is not None:
        args.detector = detector_directory(args.detector)
    check_precision(args.precision)
    if args.detector_precision != "fp32" and args.detector is None:
        raise UsageError(f"--detector_precision {args.detector_precision} is the precision of --detector, and none is given")
    check_precision(args.detector_precision, "--detector_precision", DETECTOR_PRECISIONS)
    sock = _tcp_socket(args.host, args.port)
    try:
        os.environ.update(_settings(args))
        _run(args, sock)
    finally:
        sock.close()


def _settings(args: argparse.Namespace) -> dict:
    """The app's ``VINVL_SERVE_*`` variables, after checking the index, its weights and the detector."""
    from ..index.store import GalleryIndex
    from ..oscar.model_dir import weights_checksum
    from ..query.photos import check_detector_dir
    from ..serving.server import ENVIRONMENT

    try:
        with GalleryIndex.open(args.index) as index:
            model_dir = args.model_dir or index.manifest["model"]["model_dir"]
            index.check_weights(weights_checksum(model_dir), model_dir)
            if index.store is not None and index.store.uri.lite and args.workers > 1:
                raise UsageError(
                    f"--workers {args.workers}: the index keeps its embeddings in {index.store.uri}, and Milvus Lite "
                    "serves one process per file; serve it with --workers 1, or build the index with "
                    "--store milvus://HOST:PORT/COLLECTION for several workers"
                )
        if args.detector is not None:
            check_detector_dir(args.detector, args.detector_precision)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if args.detector is not None:
        random_detector_notice(args.detector)
    if args.precision != "fp32":
        _export(model_dir, args.precision)
    settings = {
        "index_path": os.path.abspath(args.index),
        "model_dir": os.path.abspath(model_dir),
        "top_k": args.top_k,
        "first_stage": args.first_stage,
        "candidates": args.candidates,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "max_body_bytes": args.max_body_bytes,
        "max_queries": args.max_queries,
        "allow_add": int(args.allow_add),
    }
    if args.detector is not None:
        settings["detector_path"] = os.path.abspath(args.detector)
        settings["detector_precision"] = args.detector_precision
    return {ENVIRONMENT[name]: str(value) for name, value in settings.items()}


def _export(model_dir: str, precision: str) -> None:
    """The match head exported for ``precision`` once, here, so the workers only load it (several
    workers exporting into one directory at once would replace each other's files). int8 with a
    calibration for these weights has nothing to export; a stale calibration is refused here,
    before any worker starts."""
    from ..oscar.calibration import calibrated_graph
    from ..oscar.inference import export_match_head
    from ..oscar.model_dir import load_retrieval_model

    if precision == "int8" and calibrated_graph(model_dir) is not None:
        return
    model, _ = load_retrieval_model(model_dir)
    export_match_head(model, model_dir, precision)


def _run(args: argparse.Namespace, sock: socket.socket) -> None:
    """uvicorn on ``sock``, each answer sent in one write
    (:class:`~vinvl.serving.transport.CoalescingHTTPProtocol`)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from ..serving.transport import CoalescingHTTPProtocol

    config = uvicorn.Config(
        APP, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level,
        timeout_worker_healthcheck=args.worker_healthcheck_timeout, http=CoalescingHTTPProtocol,
    )
    if config.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        return
    if not server.started:
        raise SystemExit("vinvl serve: the server did not start (see the log above)")
