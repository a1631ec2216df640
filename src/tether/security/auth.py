"""Bearer-token authentication for every route but the public ones.

With `server.token` set (`TETHER_TOKEN`), a request must carry `Authorization: Bearer <token>`
or, for browsers, which cannot set headers on a WebSocket, `?token=<token>` in the URL. The
`token` query parameter is then removed from the request, so neither the app nor uvicorn's access
log sees it. Tokens are compared in constant time.

Public (no token needed): GET and HEAD of `security.public_paths` (default `/health`, so load
balancers and `tether` itself can probe liveness; it tells only the version and engine name).
A path ending in `/*` covers everything below it.

Refusals: HTTP 401 `unauthorized` with `WWW-Authenticate: Bearer` (in OpenAI's error shape,
type `authentication_error`, under `/v1/`); a WebSocket is accepted and
closed at once with code 4401, because a page can read a close code but never a refused
handshake's status.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from urllib.parse import unquote_plus

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tether.security.responses import accept_and_close, send_http_error

log = structlog.get_logger("tether.security")

TOKEN_PARAM = "token"
UNAUTHORIZED_CLOSE_CODE = 4401
PUBLIC_METHODS = frozenset({"GET", "HEAD"})


def token_matches(presented: bytes | None, expected: bytes) -> bool:
    """Constant-time comparison; hashing first hides the expected token's length too."""
    if presented is None:
        return False
    return hmac.compare_digest(
        hashlib.sha256(presented).digest(), hashlib.sha256(expected).digest()
    )


def bearer_from_header(value: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header (latin-1 as sent), else None."""
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials.encode("latin-1")


def split_token_param(query_string: bytes) -> tuple[bytes | None, bytes]:
    """(the first `token` parameter's value, the query string without any `token` parameter)."""
    token: bytes | None = None
    kept: list[str] = []
    for part in query_string.decode("latin-1").split("&"):
        name, _, value = part.partition("=")
        if unquote_plus(name) == TOKEN_PARAM:
            if token is None:
                token = unquote_plus(value).encode("utf-8")
        elif part:
            kept.append(part)
    return token, "&".join(kept).encode("latin-1")


def path_is_public(method: str | None, path: str, public_paths: Sequence[str]) -> bool:
    """`method` None: a WebSocket, never public."""
    if method not in PUBLIC_METHODS:
        return False
    for public in public_paths:
        if public.endswith("/*"):
            if path == public[:-2] or path.startswith(public[:-1]):
                return True
        elif path == public:
            return True
    return False


class BearerAuthMiddleware:
    """Lets through only requests that present the token, and public paths."""

    def __init__(self, app: ASGIApp, *, token: str, public_paths: Sequence[str]) -> None:
        if not token:
            raise ValueError("BearerAuthMiddleware needs a non-empty token")
        self.app = app
        self.token = token.encode("utf-8")
        self.public_paths = tuple(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        query_token, rest = split_token_param(scope.get("query_string", b""))
        if query_token is not None:
            # In place, on purpose: the server logs the request line from this same scope.
            scope["query_string"] = rest
        presented = bearer_from_header(Headers(scope=scope).get("authorization")) or query_token
        if token_matches(presented, self.token) or path_is_public(
            scope.get("method"), scope["path"], self.public_paths
        ):
            await self.app(scope, receive, send)
            return
        log.info(
            "security.unauthorized",
            path=scope["path"],
            kind=scope["type"],
            token_given=presented is not None,
        )
        if scope["type"] == "websocket":
            await accept_and_close(
                scope, receive, send, "unauthorized", UNAUTHORIZED_CLOSE_CODE, "unauthorized"
            )
            return
        if presented is None:
            message = "this server needs a token: send 'Authorization: Bearer <token>'"
            challenge = 'Bearer realm="tether"'
        else:
            message = "the token is not valid"
            challenge = 'Bearer realm="tether", error="invalid_token"'
        await send_http_error(
            scope, send, "unauthorized", message, headers=[("WWW-Authenticate", challenge)]
        )
