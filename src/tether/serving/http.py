"""uvicorn's h11 protocol with a deadline on each request's headers (slowloris).

uvicorn (h11) has a keep-alive timeout between requests but none for the request itself: a client
that opens a connection and sends its headers one byte at a time, or nothing at all, holds a
connection and its memory forever. `header_timeout_protocol` adds that timeout: from the TCP
connect, or from the first byte of the next request on a keep-alive connection, the request line
and headers must be complete within `limits.handshake_timeout_sec`, or the client gets
`408 Request Timeout` and the connection is closed. Request bodies are not timed (the API's are
small JSON). A WebSocket upgrade completes the headers, so open sockets are never affected.

uvicorn internals used (checked by tests/unit/test_serving_fence.py): `H11Protocol` and its
`conn`, `transport`, `loop`, `client`, `connection_made`, `connection_lost`, `data_received`,
`handle_websocket_upgrade`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger("tether.server")

_TIMEOUT_BODY = b"request headers took too long"
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n"
    b"\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()  # a request has begun (or not) but its head is incomplete
        else:
            self._disarm_header_timer()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm_header_timer()
        super().handle_websocket_upgrade(event)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        log.debug("http.header_timeout", client=self.client, timeout_sec=self.header_timeout)
        self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """The h11 protocol class with `seconds` for each request's headers (0: plain h11)."""
    if seconds <= 0:
        return H11Protocol

    class Configured(HeaderTimeoutH11Protocol):
        header_timeout = seconds

    return Configured
