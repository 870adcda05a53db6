"""One socket write per HTTP answer: uvicorn's HTTP protocol with the writes of one event-loop step merged.

uvicorn writes an answer's status line and headers, then its body, as two ``transport.write``
calls, so two TCP segments on a TCP_NODELAY socket: the client wakes for the headers, blocks
again for the body, and the server sends again. On a busy machine each of those wake-ups can
wait for a CPU. :class:`CoalescingTransport` holds what is written during one step of the event
loop and sends it as one write at the end of the step (``loop.call_soon``); an ASGI app's
``http.response.start`` and a one-piece ``http.response.body`` are sent in the same step, so an
answer leaves in one write. Nothing is held longer than that step, and closing sends first.

``vinvl serve`` runs uvicorn with :class:`CoalescingHTTPProtocol`; ``paddlenlp server`` keeps
uvicorn's protocol (it answers the same, with the two writes).
"""
from __future__ import annotations

import asyncio
from typing import List

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["CoalescingTransport", "CoalescingHTTPProtocol"]


class CoalescingTransport:
    """A transport whose writes within one event-loop step leave as one ``write`` of the real one.

    Everything else (``close`` after sending what is held, ``is_closing``, ``get_extra_info``,
    reading and writing flow control) is the real transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: List[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data if isinstance(data, bytes) else bytes(data))

    def writelines(self, lines) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now (one write)."""
        if self._held:
            data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
            self._held.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class CoalescingHTTPProtocol(AutoHTTPProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools when installed, else h11) over a :class:`CoalescingTransport`.

    A module-level class: uvicorn pickles its config, this class included, to start each worker.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, asyncio.get_running_loop()))
