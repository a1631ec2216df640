"""How the security middleware says no, in raw ASGI: an HTTP error, a refused WebSocket handshake,
or a WebSocket accepted only to be closed with a code the client can read.

Every refusal carries the error body and status of its `code` as every HTTP route does
(`tether.http_errors`), and is counted in `tether_errors_total` by that code.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import Receive, Scope, Send

from tether.http_errors import error_bytes
from tether.metrics import count_refusal

HTTP_RESPONSE_EXTENSION = "websocket.http.response"


def _response_start(
    kind: str, status: int, body: bytes, headers: Sequence[tuple[str, str]]
) -> dict[str, object]:
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers),
    ]
    return {"type": kind, "status": status, "headers": raw_headers}


async def send_http_error(
    scope: Scope,
    send: Send,
    code: str,
    message: str,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    """Answer an HTTP request with the status and error body of `code`."""
    count_refusal(scope, code)
    status, body = error_bytes(scope["path"], code, message)
    await send(_response_start("http.response.start", status, body, headers))
    await send({"type": "http.response.body", "body": body})


async def refuse_handshake(
    scope: Scope,
    receive: Receive,
    send: Send,
    code: str,
    message: str,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    """Refuse a WebSocket handshake before accepting it.

    With the ASGI `websocket.http.response` extension (uvicorn has it) the client gets the
    status and error body of `code`; without it, `websocket.close` before accept, which servers
    send as 403.
    """
    if (await receive())["type"] != "websocket.connect":
        return  # the client left before we answered
    count_refusal(scope, code)
    if HTTP_RESPONSE_EXTENSION in scope.get("extensions", {}):
        status, body = error_bytes(scope["path"], code, message)
        await send(_response_start("websocket.http.response.start", status, body, headers))
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


async def accept_and_close(
    scope: Scope, receive: Receive, send: Send, code: str, close_code: int, reason: str
) -> None:
    """Accept a WebSocket handshake and close at once with `close_code` (the refusal `code`).

    Browsers never show a refused handshake's status to the page, but they do show a close code:
    this is how a page learns why (4401: unauthorized).
    """
    if (await receive())["type"] != "websocket.connect":
        return
    count_refusal(scope, code)
    await send({"type": "websocket.accept"})
    # A close reason is at most 123 bytes of UTF-8.
    await send(
        {
            "type": "websocket.close",
            "code": close_code,
            "reason": reason.encode()[:123].decode(errors="ignore"),
        }
    )
