"""Caps on open WebSocket connections: per server and per client address.

A connection counts from its handshake until the socket ends, however it ends (close, network
loss, an error in the app). Plain HTTP requests are not counted. Over a cap the handshake is
refused before accept: HTTP 429 `too_many_connections` when this client address has
`security.max_connections_per_client` open, HTTP 503 `server_busy` when the server has
`security.max_connections`. Behind a reverse proxy every client shares the proxy's address, so
raise the per-client cap there.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from tether.security.responses import refuse_handshake

log = structlog.get_logger("tether.security")

Refusal = Literal["server_full", "client_full"]


class ConnectionCounter:
    """Open connections, in total and per client address. Not thread-safe: one event loop."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self.per_client: Counter[str] = Counter()

    def acquire(self, client: str) -> Refusal | None:
        """Count one more connection from `client`, or say why not (then nothing is counted)."""
        if self.per_client[client] >= self.max_per_client:
            return "client_full"
        if self.total >= self.max_total:
            return "server_full"
        self.total += 1
        self.per_client[client] += 1
        return None

    def release(self, client: str) -> None:
        self.total -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


class ConnectionLimitMiddleware:
    """Refuses WebSocket handshakes over the caps; its counter lives as long as the app."""

    def __init__(self, app: ASGIApp, *, max_total: int, max_per_client: int) -> None:
        self.app = app
        self.counter = ConnectionCounter(max_total, max_per_client)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        client_addr = scope.get("client")
        client = str(client_addr[0]) if client_addr else ""
        refusal = self.counter.acquire(client)
        if refusal is not None:
            await self._refuse(scope, receive, send, refusal, client)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.counter.release(client)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, refusal: Refusal, client: str
    ) -> None:
        counter = self.counter
        log.warning("security.connection_refused", reason=refusal, client=client)
        if refusal == "client_full":
            await refuse_handshake(
                scope,
                receive,
                send,
                "too_many_connections",
                f"{client or 'this client'} already has {counter.max_per_client} open "
                "connections (security.max_connections_per_client)",
            )
        else:
            await refuse_handshake(
                scope,
                receive,
                send,
                "server_busy",
                f"the server already has {counter.max_total} open connections "
                "(security.max_connections)",
            )
