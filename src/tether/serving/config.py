"""How Tether runs under uvicorn: one `uvicorn.Config` for `tether serve` and the test servers.

The HTTP protocol bounds each request's headers (`tether.serving.http`); the WebSocket protocol
lets the app close a socket whose client stopped reading (`tether.serving.websocket`); the limits
of open sockets themselves are in `tether.transports.ws_limits`.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn

from tether.config import Settings
from tether.serving.http import header_timeout_protocol
from tether.serving.websocket import close_now_protocol


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
        ws_per_message_deflate=settings.server.ws_compression,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def listen_socket(host: str, port: int) -> socket.socket:
    """The listening socket of `tether serve`, bound before anything starts (as uvicorn would
    bind it), so that a port in use is one OSError the command can say in a line.

    Made with `IPPROTO_TCP` named, as getaddrinfo names it for uvicorn: asyncio sets
    TCP_NODELAY only on connections whose socket says so, and without it Nagle's algorithm holds
    each small frame after the first until the client's delayed ACK (~40 ms a turn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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
