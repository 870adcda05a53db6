"""Benchmark of the service layer alone: what HTTP costs per request around a handler that costs nothing.

On a shared machine the paired in-process / HTTP latencies of the load test move with the load
(each HTTP call wakes two processes, each wake-up waits for a CPU), and the tiny model's answer
takes 3-30 ms, so a fraction of a millisecond of service overhead hides in the noise. Here the
Taskflow handler is replaced by one that returns a fixed answer of the real shape (5 results),
so everything measured is the service layer: reading and parsing the request, the route, the
thread hop, encoding and writing the answer, and the client's exchange. Two servers are run:

- ``paddlenlp``: PaddleNLP's own route (``register_taskflow`` alone) under uvicorn's protocol,
  which is what a SimpleServer does without :func:`~vinvl.serving.server.add_service_routes`;
- ``vinvl``: ``register_taskflow`` + ``add_service_routes`` under ``vinvl serve``'s protocol
  (:class:`~vinvl.serving.transport.CoalescingHTTPProtocol`).

For a caption request and a features request (``--regions`` x 2054 floats as JSON) it reports
the median wall time per request (one kept-alive raw-socket client) and the server's CPU time per
request (user + system over all requests). Localhost only; ``--requests`` per kind bounds it.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict

import numpy as np
import psutil

from ..serving.client import LOCALHOST, Connection, ServerProcess, free_port

__all__ = ["CANNED_ANSWER", "request_bodies", "measure", "run_benchmark", "format_table"]

MODES = ("paddlenlp", "vinvl")
CANNED_ANSWER = [
    {"caption": "a dog on a couch", "images": [{"image_id": f"5000{i:02d}", "score": 0.5 + i / 97, "margin": 1.0 + i / 7} for i in range(5)]}
]
_MODE_VARIABLE = "VINVL_LAYER_BENCHMARK_MODE"
_MODEL_VARIABLE = "VINVL_LAYER_BENCHMARK_MODEL_DIR"


class _CannedService:
    """Answers every request with :data:`CANNED_ANSWER`: the benchmark times the layers around the query core."""

    def answer(self, data, parameters):
        return CANNED_ANSWER

    def health(self):
        return {"status": "ok"}


def _build_app():
    """The app a benchmark server runs (uvicorn imports ``app`` from this module in its process)."""
    from paddlenlp import Taskflow
    from paddlenlp.server import SimpleServer

    from ..apps.taskflow import TASK_NAME
    from ..serving.server import HEALTH_ROUTE, ROUTE, RetrievalHandler, add_service_routes

    service = _CannedService()
    app = SimpleServer()
    retrieval = Taskflow(TASK_NAME, task_path=os.environ[_MODEL_VARIABLE])
    app.register_taskflow(ROUTE, retrieval, taskflow_handler=RetrievalHandler.configured(service))
    if os.environ[_MODE_VARIABLE] == "vinvl":
        add_service_routes(app, service)
    else:  # only for ServerProcess to see it is up; requests to the route are untouched
        app.add_api_route(HEALTH_ROUTE, service.health, methods=["GET"])
    return app


def __getattr__(name: str):
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global app
    app = _build_app()
    return app


def request_bodies(regions: int, seed: int = 0) -> Dict[str, bytes]:
    """A caption request and a features request of ``regions`` x 2054 floats, as JSON bytes."""
    rng = np.random.default_rng(seed)
    features = rng.random((regions, 2054), dtype=np.float32).tolist()
    return {
        "caption": json.dumps({"data": "a dog sitting on a red couch"}).encode(),
        "features": json.dumps({"data": {"features": features, "tags": ["dog", "couch"]}}).encode(),
    }


def measure(mode: str, model_dir: str, bodies: Dict[str, bytes], requests: int, log_dir: str) -> Dict[str, Dict[str, float]]:
    """{kind: {"wall_ms" (median), "server_cpu_ms" (mean)}} of ``requests`` sequential requests per kind."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", f"{__name__}:app", "--host", LOCALHOST, "--port", str(port), "--log-level", "warning"]
    if mode == "vinvl":
        command += ["--http", "vinvl.serving.transport:CoalescingHTTPProtocol"]
    env = {**os.environ, _MODE_VARIABLE: mode, _MODEL_VARIABLE: model_dir}
    results = {}
    with ServerProcess(command, port, os.path.join(log_dir, f"{mode}.log"), env=env) as server:
        process, connection = psutil.Process(server.pid), Connection(port)
        for kind, body in bodies.items():
            for _ in range(min(50, requests)):  # warm-up
                status, _ = connection.post_raw(body)
                if status != 200:
                    raise RuntimeError(f"{mode} server answered {status} to the {kind} request")
            before, walls = process.cpu_times(), []
            for _ in range(requests):
                start = time.perf_counter()
                connection.post_raw(body)
                walls.append(time.perf_counter() - start)
            after = process.cpu_times()
            cpu = (after.user - before.user) + (after.system - before.system)
            results[kind] = {"wall_ms": 1000 * statistics.median(walls), "server_cpu_ms": 1000 * cpu / requests}
        connection.close()
    return results


def format_table(report: Dict[str, Any]) -> str:
    kinds = list(report["runs"][MODES[0]])
    lines = [
        f"Service layer per request (handler answers at once; {report['requests']} requests per kind; "
        f"features: {report['regions']} x 2054 floats, {report['body_bytes']['features']:,} bytes; "
        f"machine load {report['load_before']:.1f} -> {report['load_after']:.1f})",
        "",
        "| server | " + " | ".join(f"{k}: wall p50 ms | {k}: server CPU ms" for k in kinds) + " |",
        "|---|" + "---|---|" * len(kinds),
    ]
    for mode, run in report["runs"].items():
        cells = [f"{run[k]['wall_ms']:.2f} | {run[k]['server_cpu_ms']:.2f}" for k in kinds]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_benchmark(model_dir: str, requests: int, regions: int) -> Dict[str, Any]:
    """Both servers (see the module docstring), ``requests`` of each kind on each; returns the report
    (:func:`format_table` lays it out)."""
    bodies = request_bodies(regions)
    report: Dict[str, Any] = {"requests": requests, "regions": regions, "load_before": os.getloadavg()[0]}
    report["body_bytes"] = {kind: len(body) for kind, body in bodies.items()}
    with tempfile.TemporaryDirectory(prefix="vinvl-layer-") as log_dir:
        report["runs"] = {mode: measure(mode, model_dir, bodies, requests, log_dir) for mode in MODES}
    report["load_after"] = os.getloadavg()[0]
    return report
