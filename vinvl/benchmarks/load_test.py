"""Load test of the retrieval service on this machine (127.0.0.1 only, bounded in time and count).

For each worker count: start ``vinvl serve`` over an index, then

1. paired: every query of a fixed mix, ``repeats`` times, through the Taskflow in-process and right
   after through HTTP (one client, one kept-alive connection), so both calls see the same machine
   load; the ratio of their medians is the service layer's overhead;

   An HTTP call is timed from the request's ``sendall`` to the answer's last byte on a raw socket
   (:class:`~vinvl.serving.client.Connection`, no HTTP library); decoding the answer's JSON
   happens after the clock stops, as the in-process call returns Python objects.
2. concurrent: ``clients`` threads, each on a kept-alive connection, send queries of the mix (and
   some bad requests) for ``seconds``;
   every answer is checked against the in-process answer for the same query (a good request) or its
   expected 4xx status (a bad one); throughput, p50/p95/p99 latency, replies by status, mismatches
   and the server's resident memory (all its processes) before and after are reported.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..index.store import GalleryIndex
from ..serving.client import Connection, ServerProcess, decode_reply, free_port, tree_rss_mb, vinvl_serve_command

__all__ = ["Query", "query_mix", "in_process_answers", "run_load", "load_test", "format_table"]

MAX_REQUESTS_PER_CLIENT = 100_000  # a bound on every client loop besides the time limit
REQUEST_TIMEOUT = 60.0


@dataclass
class Query:
    """One request body and what must come back: the in-process answer, or a 4xx status."""

    kind: str
    body: bytes
    data: Any = None
    expected: Any = None  # the in-process result (JSON), for a good query
    status: int = 200


def query_mix(index_path: str, size: int = 24, seed: int = 0) -> List[Query]:
    """``size`` good queries over the index (captions, image ids, features + tags, pairs) and four bad ones."""
    rng = random.Random(seed)
    queries: List[Query] = []
    with GalleryIndex.open(index_path) as index:
        n = index.num_images
        kinds = ["caption", "image_id", "features", "pair"]
        for q in range(size):
            i = rng.randrange(n)
            captions = index.captions(rng.randrange(n)) or ["a photo of something"]
            caption = captions[rng.randrange(len(captions))]
            kind = kinds[q % len(kinds)]
            if kind == "caption":
                data = caption
            elif kind == "image_id":
                data = {"image_id": index.image_id(i)}
            elif kind == "features":
                data = {"features": np.asarray(index.features(i)).tolist(), "tags": index.tags(i)}
            else:
                data = {"image_id": index.image_id(i), "caption": caption}
            queries.append(Query(kind, json.dumps({"data": data}).encode(), data))
        width = int(np.asarray(index.features(0)).shape[1])
    bad = [
        ("bad:empty caption", {"data": "  "}, 400),
        ("bad:unknown image", {"data": {"image_id": "no-such-image"}}, 400),
        ("bad:unknown field", {"data": "a dog", "colour": "red"}, 422),
        ("bad:feature width", {"data": {"features": [[0.0] * (width + 1)], "tags": []}}, 400),
    ]
    queries += [Query(kind, json.dumps(body).encode(), status=status) for kind, body, status in bad]
    return queries


def _as_taskflow_input(query: Query) -> Any:
    """The query as an in-process caller passes it (features as a float32 array)."""
    data = query.data
    if isinstance(data, dict) and "features" in data:
        data = {**data, "features": np.asarray(data["features"], dtype=np.float32)}
    return data


def in_process_answers(queries: Sequence[Query], taskflow) -> None:
    """Fill each good query's ``expected`` with the in-process Taskflow's answer (as JSON carries it)."""
    for query in queries:
        if query.status == 200:
            query.expected = json.loads(json.dumps(taskflow(_as_taskflow_input(query))))


@dataclass
class LoadResult:
    """What one concurrent run measured."""

    seconds: float
    latencies: List[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    mismatches: int = 0
    failures: Counter = field(default_factory=Counter)  # transport errors (timeouts, resets) by type


def _check(query: Query, status: int, answer: Any) -> bool:
    if status != query.status:
        return False
    if status == 200:
        return answer.get("result") == query.expected
    return isinstance(answer, dict) and bool(answer.get("detail"))


def run_load(port: int, queries: Sequence[Query], clients: int, seconds: float, bad_fraction: float, seed: int = 0) -> LoadResult:
    """``clients`` threads sending queries for ``seconds`` (each at most MAX_REQUESTS_PER_CLIENT)."""
    good = [q for q in queries if q.status == 200]
    bad = [q for q in queries if q.status != 200]
    result = LoadResult(seconds)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        connection = Connection(port, timeout=REQUEST_TIMEOUT)
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= deadline:
                break
            query = rng.choice(bad) if bad and rng.random() < bad_fraction else rng.choice(good)
            start = time.perf_counter()
            try:
                status, raw = connection.post_raw(query.body)
            except OSError as exc:
                connection.close()
                with lock:
                    result.failures[type(exc).__name__] += 1
                continue
            elapsed = time.perf_counter() - start
            status, answer = decode_reply(status, raw)
            with lock:
                result.latencies.append(elapsed)
                result.statuses[status] += 1
                result.mismatches += not _check(query, status, answer)
        connection.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + REQUEST_TIMEOUT + 10)
    return result


def _paired_latencies(port: int, queries: Sequence[Query], taskflow, repeats: int) -> List[Tuple[str, float, float]]:
    """(kind, in-process s, HTTP s) of every good query, ``repeats`` times: each in-process call is
    followed by the same query through one kept-alive connection, so both see the same machine load.
    Every HTTP answer is checked against the in-process one."""
    latencies = []
    connection = Connection(port, timeout=REQUEST_TIMEOUT)
    for query in [q for q in queries if q.status == 200]:
        data = _as_taskflow_input(query)
        for _ in range(repeats):
            start = time.perf_counter()
            taskflow(data)
            middle = time.perf_counter()
            status, raw = connection.post_raw(query.body)
            latencies.append((query.kind, middle - start, time.perf_counter() - middle))
            status, answer = decode_reply(status, raw)
            if not _check(query, status, answer):
                raise AssertionError(f"{query.kind} query: the server answered {status} {str(answer)[:300]}, not the in-process answer")
    connection.close()
    return latencies


def _by_kind(latencies: Sequence[Tuple[str, float]]) -> Dict[str, float]:
    """p50 (ms) of all the latencies and of each query kind's."""
    kinds = sorted({k for k, _ in latencies})
    p50 = {"all": _percentiles([t for _, t in latencies])["p50_ms"]}
    p50.update({k: _percentiles([t for kind, t in latencies if kind == k])["p50_ms"] for k in kinds})
    return p50


def _percentiles(latencies: Sequence[float]) -> Dict[str, float]:
    if not latencies:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    values = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return {"p50_ms": float(values[0]), "p95_ms": float(values[1]), "p99_ms": float(values[2])}


def load_test(
    index_path: str,
    model_dir: str,
    workers: Sequence[int] = (1, 2),
    clients: int = 16,
    seconds: float = 60.0,
    bad_fraction: float = 0.1,
    repeats: int = 3,
    options: Optional[Dict[str, Any]] = None,
    warmup_seconds: float = 10.0,
    env: Optional[Dict[str, str]] = None,
    log_dir: Optional[str] = None,
) -> Dict[str, Any]:
    """The whole measurement (see the module docstring); returns every figure as a dict.

    ``options`` (``top_k``, ``first_stage``, ``candidates``, ``batch_size``) go to both the
    in-process Taskflow and ``vinvl serve``, so both answer the same way. ``warmup_seconds`` of
    the same concurrent load run before the measured one: a worker's memory for ``clients``
    queued requests is reached there, so the measured growth is what the steady state adds.
    ``env``: the server's environment (default: this process').
    """
    from paddlenlp import Taskflow

    from ..apps.taskflow import TASK_NAME

    queries = query_mix(index_path)
    options = dict(options or {})
    serve_flags = [t for name, value in options.items() for t in (f"--{name}", str(value))]
    taskflow = Taskflow(TASK_NAME, task_path=model_dir, index_path=index_path, **options)
    in_process_answers(queries, taskflow)
    report: Dict[str, Any] = {
        "queries": Counter(q.kind for q in queries),
        "clients": clients,
        "seconds": seconds,
        "runs": [],
    }
    log_dir = log_dir or tempfile.mkdtemp(prefix="vinvl-load-")
    for count in workers:
        port = free_port()
        command = vinvl_serve_command(index_path, port, workers=count, extra=["--model_dir", model_dir, *serve_flags])
        with ServerProcess(command, port, f"{log_dir}/server-{count}-workers.log", env=env) as server:
            _paired_latencies(port, queries, taskflow, 1)  # warm-up: first calls of each worker
            paired = _paired_latencies(port, queries, taskflow, repeats)
            paired_load = os.getloadavg()[0]
            rss_started = tree_rss_mb(server.pid)
            warmup = run_load(port, queries, clients, warmup_seconds, bad_fraction, seed=1) if warmup_seconds > 0 else None
            rss_before = tree_rss_mb(server.pid)
            loaded = run_load(port, queries, clients, seconds, bad_fraction)
            rss_after = tree_rss_mb(server.pid)
            machine_load = os.getloadavg()[0]
        in_process = _by_kind([(kind, t) for kind, t, _ in paired])
        http = _by_kind([(kind, t) for kind, _, t in paired])
        report["runs"].append({
            "workers": count,
            "in_process_p50_ms": in_process,
            "http_p50_ms": http,
            "overhead": {k: http[k] / in_process[k] for k in http},
            "requests": len(loaded.latencies),
            "throughput": len(loaded.latencies) / seconds,
            "under_load": _percentiles(loaded.latencies),
            "statuses": dict(sorted(loaded.statuses.items())),
            "server_errors": sum(n for s, n in loaded.statuses.items() if s >= 500),
            "mismatches": loaded.mismatches,
            "transport_failures": dict(loaded.failures),
            "warmup": {"seconds": warmup_seconds, "requests": len(warmup.latencies) if warmup else 0,
                       "server_errors": sum(n for st, n in warmup.statuses.items() if st >= 500) if warmup else 0,
                       "mismatches": warmup.mismatches if warmup else 0},
            "rss_started_mb": rss_started,
            "rss_before_mb": rss_before,
            "rss_after_mb": rss_after,
            "rss_growth_mb": rss_after - rss_before,
            "machine_load": {"after_paired": paired_load, "after_load": machine_load},  # 1-minute load averages
        })
    report["queries"] = dict(report["queries"])
    return report


def format_table(report: Dict[str, Any]) -> str:
    """The report as Markdown: the overhead per query kind, then one row per worker count under load."""
    kinds = list(report["runs"][0]["http_p50_ms"])
    lines = [
        "Single calls, one client, p50 ms: in-process Taskflow / through HTTP (ratio); machine load: 1-minute average after the calls",
        "",
        "| workers | " + " | ".join(kinds) + " | machine load |",
        "|---|" + "---|" * (len(kinds) + 1),
    ]
    for run in report["runs"]:
        cells = [f"{run['in_process_p50_ms'][k]:.1f} / {run['http_p50_ms'][k]:.1f} ({run['overhead'][k]:.2f}x)" for k in kinds]
        lines.append(f"| {run['workers']} | " + " | ".join(cells) + f" | {run['machine_load']['after_paired']:.1f} |")
    lines += [
        "",
        f"Under load: {report['clients']} clients for {report['seconds']:.0f} s per run (after {report['runs'][0]['warmup']['seconds']:.0f} s "
        f"of warm-up under the same load); query mix {report['queries']}",
        "",
        "| workers | requests | req/s | p50 / p95 / p99 (ms) | replies by status | 5xx | mismatches "
        "| RSS idle / before / after (MB) | machine load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        load = run["under_load"]
        statuses = ", ".join(f"{s}: {n}" for s, n in run["statuses"].items())
        if run["transport_failures"]:
            statuses += "; transport: " + ", ".join(f"{k}: {v}" for k, v in run["transport_failures"].items())
        lines.append(
            f"| {run['workers']} | {run['requests']} | {run['throughput']:.1f} "
            f"| {load['p50_ms']:.0f} / {load['p95_ms']:.0f} / {load['p99_ms']:.0f} | {statuses} "
            f"| {run['server_errors']} | {run['mismatches']} | {run['rss_started_mb']:.0f} / {run['rss_before_mb']:.0f} / "
            f"{run['rss_after_mb']:.0f} ({run['rss_growth_mb']:+.1f}) | {run['machine_load']['after_load']:.1f} |"
        )
    return "\n".join(lines)
