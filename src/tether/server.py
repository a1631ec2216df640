"""How Tether runs under uvicorn: one `uvicorn.Config` for `tether serve` and the test servers.

uvicorn (h11) has a keep-alive timeout between requests but none for the request itself: a client
that opens a connection and sends its headers one byte at a time, or nothing at all, holds a
connection and its memory forever (slowloris). `header_timeout_protocol` adds that timeout:
from the TCP connect, or from the first byte of the next request on a keep-alive connection, the
request line and headers must be complete within `limits.handshake_timeout_sec`, or the client
gets `408 Request Timeout` and the connection is closed. Request bodies are not timed (the API's
are small JSON). A WebSocket upgrade completes the headers, so open sockets are never affected;
their own limits are in `tether.transports.ws_limits`, and `tether.server_ws` lets the app close
a socket whose client stopped reading.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import h11
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tether.config import Settings
from tether.server_ws import close_now_protocol

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


def uvicorn_config(
    app: Any, settings: Settings, *, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    """The uvicorn configuration for `app` (default host and port: `settings.server`)."""
    return uvicorn.Config(
        app,
        host=settings.server.host if host is None else host,
        port=settings.server.port if port is None else port,
        http=header_timeout_protocol(settings.limits.handshake_timeout_sec),
        ws=close_now_protocol(settings.limits.send_timeout_sec),
        ws_max_size=settings.limits.max_frame_bytes,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def listen_socket(host: str, port: int) -> socket.socket:
    """The listening socket of `tether serve`, bound before anything starts (as uvicorn would
    bind it), so that a port in use is one OSError the command can say in a line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


# File descriptors a process needs besides its sockets: SQLite, logs, models, MCP pipes.
RESERVED_FILES = 64


def raise_open_file_limit(connections: int) -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE towards the hard limit so `connections` sockets fit.

    Many systems start processes at a soft limit of 1024 files, below the default connection
    cap; past the limit, accept() fails and clients hang instead of getting a clean 503.
    Returns (the limit now, the number needed).
    """
    import resource

    needed = connections + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft, needed
