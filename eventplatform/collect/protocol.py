"""uvicorn's httptools protocol with a response written in one system call.

uvicorn writes a response's status line and headers, then its body, as two writes. On a
socket each write is a TCP segment, and on loopback (or any fast link) the kernel delivers
it to the client, and wakes it, inside the ``write`` call: in the collector's profile under
load the response writes were a quarter of the event loop's time. Here the writes made during
one turn of the event loop are joined and written once, at the end of that turn: the same
bytes in the same order, one segment instead of two, never later than the loop's next turn
(so ``100 Continue`` still goes out before the body is awaited).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _JoinedWrites:
    """A transport whose writes of one loop turn go out as one write; the rest is the
    transport's own. A write after the connection closed is dropped (as uvicorn does)."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending or self._transport.is_closing():
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class JoinedWritesProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` writing through ``_JoinedWrites`` (uvicorn's ``http=``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _JoinedWrites(transport, self.loop)  # type: ignore[assignment]
