"""Every HTTP request has a request id: in each of its log lines (the access line too) and in
its `X-Request-ID` response header.

The id is the client's `X-Request-ID` when it is a sane one (1-64 of `A-Z a-z 0-9 . _ : -`, so
a proxy's trace id carries through), else a fresh one. It is bound with `structlog.contextvars`
for the request's task; uvicorn writes the access line while the response starts, inside that
task, so the line carries it. A route that answers with its own `X-Request-ID` (`POST
/chat/stream`: the chat request's id, when it is ASCII) keeps it, and the access line then
names that id.
WebSocket connections are left alone: their chat frames carry their own `request_id`s.
"""

from __future__ import annotations

import re
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is a sane one, else a new id."""
    for name, value in headers:
        if name.lower() == HEADER.encode():
            text = value.decode("latin-1")
            if _SANE.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope["headers"])

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if HEADER in headers:  # the route's own id (a chat request's) names it
                    structlog.contextvars.bind_contextvars(request_id=headers[HEADER])
                else:
                    headers[HEADER] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)
