"""Talking to a retrieval server on this machine: start one in a subprocess, send requests, read its memory.

Used by the server tests and the load test; every wait here is bounded by a timeout.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import psutil

from .server import HEALTH_ROUTE, ROUTE

__all__ = [
    "LOCALHOST",
    "Reply",
    "Connection",
    "decode_reply",
    "ServerProcess",
    "free_port",
    "post_json",
    "get_json",
    "tree_rss_mb",
    "vinvl_serve_command",
]

LOCALHOST = "127.0.0.1"

Reply = Tuple[int, Any]  # (HTTP status, the JSON answer, or the raw text when it is not JSON)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def _reply(response: http.client.HTTPResponse) -> Reply:
    return decode_reply(response.status, response.read())


def _request(port: int, method: str, path: str, body: Optional[bytes], timeout: float, headers: Dict[str, str]) -> Reply:
    """One request on a connection of its own."""
    connection = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        return _reply(connection.getresponse())
    finally:
        connection.close()


class Connection:
    """A kept-alive HTTP/1.1 connection to the retrieval route, as lean as a client can be.

    The request (headers and body) goes out in one ``sendall``; the answer is read with ``recv``
    until its ``Content-Length`` is in, its status line and headers split by hand: no HTTP
    library between the caller's clock and the server, so a latency measured around
    :meth:`post_raw` is the server's and the network stack's. TCP_NODELAY is set, as
    urllib3 and requests do. A request on a connection the server closed while it was idle is
    sent again once on a new one (queries are idempotent; do not send adds through it).
    """

    def __init__(self, port: int, timeout: float = 60.0):
        self.port, self.timeout = port, timeout
        self._sock: Optional[socket.socket] = None
        self._buffer = b""

    def post(self, body: bytes, path: str = "/" + ROUTE) -> Reply:
        """(status, the JSON answer) of POSTing ``body``."""
        status, raw = self.post_raw(body, path)
        return decode_reply(status, raw)

    def post_raw(self, body: bytes, path: str = "/" + ROUTE) -> Tuple[int, bytes]:
        """(status, the answer's bytes) of POSTing ``body``."""
        reused = self._sock is not None
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {LOCALHOST}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii") + body
        try:
            return self._exchange(request)
        except (ConnectionResetError, BrokenPipeError, _ClosedByServer):
            self.close()
            if not reused:
                raise
            return self._exchange(request)

    def _exchange(self, request: bytes) -> Tuple[int, bytes]:
        if self._sock is None:
            self._sock = socket.create_connection((LOCALHOST, self.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = b""
        self._sock.sendall(request)
        end = self._buffer.find(b"\r\n\r\n")
        while end < 0:
            self._receive()
            end = self._buffer.find(b"\r\n\r\n")
        head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4 :]
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" not in headers:
            raise http.client.HTTPException(f"an answer without Content-Length (headers {headers}); this client reads only those")
        length = int(headers["content-length"])
        while len(self._buffer) < length:
            self._receive()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def _receive(self) -> None:
        chunk = self._sock.recv(1 << 20)
        if not chunk:
            raise _ClosedByServer("the server closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _ClosedByServer(ConnectionError):
    """The server closed a kept-alive connection before answering."""


def decode_reply(status: int, raw: bytes) -> Reply:
    """(status, the JSON answer, or the raw text when it is not JSON)."""
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def post_json(port: int, payload: Any, timeout: float = 60.0, path: str = "/" + ROUTE, raw: Optional[bytes] = None) -> Reply:
    """POST ``payload`` as JSON (or the bytes ``raw`` as they are) to the retrieval route."""
    body = raw if raw is not None else json.dumps(payload).encode("utf-8")
    return _request(port, "POST", path, body, timeout, {"Content-Type": "application/json"})


def get_json(port: int, path: str = HEALTH_ROUTE, timeout: float = 10.0) -> Reply:
    return _request(port, "GET", path, None, timeout, {})


def tree_rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` and all its descendants (uvicorn workers), in MB."""
    root = psutil.Process(pid)
    total = 0
    for process in [root] + root.children(recursive=True):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def vinvl_serve_command(index: str, port: int, workers: int = 1, extra: Sequence[str] = ()) -> List[str]:
    """The ``vinvl serve`` command line on 127.0.0.1 (run with this interpreter)."""
    return [
        sys.executable, "-m", "vinvl.commands.cli", "serve", "--index", index, "--host", LOCALHOST,
        "--port", str(port), "--workers", str(workers), *extra,
    ]


class ServerProcess:
    """A server started as a subprocess (its own process group), ready once ``GET /health`` answers.

    Use as a context manager: the server is stopped (SIGTERM, then SIGKILL after ``stop_timeout``)
    when the block ends, however it ends. Its output goes to ``log_path``.
    """

    def __init__(
        self,
        command: Sequence[str],
        port: int,
        log_path: str,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        ready_timeout: float = 300.0,
        stop_timeout: float = 30.0,
    ):
        self.command = list(command)
        self.port = port
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.process: Optional[subprocess.Popen] = None

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode} before it was ready:\n{self.log_tail()}")
            try:
                status, _ = get_json(self.port, timeout=5.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the server did not answer {HEALTH_ROUTE} within {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=self.stop_timeout)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 40) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
