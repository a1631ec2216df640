"""The `Origin` allowlist: which web pages may open `/ws/chat` and change things over REST.

Browsers send `Origin` with every WebSocket handshake and every cross-site request, and they let
any page open a WebSocket to any server: the server has to check. Allowed are the server's own
origin (the `Origin` names the same host and port as the request's `Host`, which the host check
has already vetted) and the patterns of `security.allowed_origins`:

- `scheme://host[:port]`, with `:*` for any port (`http://localhost:*`); no port means the
  scheme's default port (80 for http, 443 for https);
- `*`: any origin; `null`: the opaque origin of sandboxed frames and `file:` pages.

A request without `Origin` comes from a program, not a page (wscat, websockets, the CLI, curl,
the OpenAI SDKs): it is allowed, since the token, not the origin, is what guards against those.

Checked: WebSocket handshakes, refused with HTTP 403 `forbidden_origin` before accept; and HTTP
requests other than GET, HEAD and OPTIONS (a foreign page may send a "simple" POST without a CORS
preflight, so CORS alone does not stop it), refused with 403 `forbidden_origin`.
CORS response headers for the REST API come from the same patterns (`cors_origin_regex`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tether.security.hosts import normalize_hostname, parse_host_header
from tether.security.responses import refuse_handshake, send_http_error

log = structlog.get_logger("tether.security")

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_ORIGIN_RE = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9_.-]+)"
    r"(?::(?P<port>\*|[0-9]{1,5}))?/?",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str  # normalized: lower case, no brackets
    port: int | None  # explicit, else the scheme's default; None: the scheme has none

    def netloc(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


@dataclass(frozen=True, slots=True)
class OriginPattern:
    scheme: str
    host: str
    port: int | None  # as for Origin; ignored when any_port
    any_port: bool = False

    def matches(self, origin: Origin) -> bool:
        return (
            origin.scheme == self.scheme
            and origin.host == self.host
            and (self.any_port or origin.port == self.port)
        )


def _split(value: str, *, allow_any_port: bool) -> tuple[str, str, int | None, bool] | None:
    match = _ORIGIN_RE.fullmatch(value.strip())
    if match is None:
        return None
    scheme = match["scheme"].lower()
    raw_port = match["port"]
    if raw_port == "*":
        if not allow_any_port:
            return None
        return scheme, normalize_hostname(match["host"]), None, True
    port = int(raw_port) if raw_port is not None else DEFAULT_PORTS.get(scheme)
    if port is not None and not 0 < port <= 65535:
        return None
    return scheme, normalize_hostname(match["host"]), port, False


def parse_origin(value: str) -> Origin | None:
    """An `Origin` header value, or None if it is not a `scheme://host[:port]` origin."""
    parts = _split(value, allow_any_port=False)
    return None if parts is None else Origin(*parts[:3])


def parse_origin_pattern(value: str) -> OriginPattern | str:
    """One entry of `security.allowed_origins`: an OriginPattern, or "*" / "null" as such.

    Raises ValueError, naming the entry, if it is neither.
    """
    if value.strip() in ("*", "null"):
        return value.strip()
    parts = _split(value, allow_any_port=True)
    if parts is None:
        raise ValueError(
            f"{value!r} is not an origin pattern: use scheme://host[:port], "
            "port * for any port, or * for any origin"
        )
    return OriginPattern(*parts)


def same_origin(origin: Origin, host_header: str | None) -> bool:
    """Does `origin` name the host and port the request was sent to?"""
    parsed = parse_host_header(host_header) if host_header is not None else None
    if parsed is None:
        return False
    hostname, port = parsed
    return origin.host == hostname and origin.port == (
        port if port is not None else DEFAULT_PORTS.get(origin.scheme)
    )


class OriginPolicy:
    """`security.allowed_origins`, compiled."""

    def __init__(self, patterns: Iterable[str]) -> None:
        parsed = [parse_origin_pattern(p) for p in patterns]
        self.allow_any = "*" in parsed
        self.allow_null = "null" in parsed
        self.patterns = tuple(p for p in parsed if isinstance(p, OriginPattern))

    def allows(self, origin_value: str, host_header: str | None) -> bool:
        if self.allow_any:
            return True
        if origin_value.strip() == "null":
            return self.allow_null
        origin = parse_origin(origin_value)
        if origin is None:
            return False
        return same_origin(origin, host_header) or any(p.matches(origin) for p in self.patterns)

    def cors_allow_origins(self) -> list[str]:
        """The exact origins for starlette's CORSMiddleware (`*`, `null`); see cors_origin_regex."""
        return ["*"] if self.allow_any else (["null"] if self.allow_null else [])

    def cors_origin_regex(self) -> str | None:
        """One regular expression (for `re.fullmatch`) matching the allowed pattern origins."""
        alternatives = []
        for pattern in self.patterns:
            prefix = re.escape(
                f"{pattern.scheme}://{Origin(pattern.scheme, pattern.host, None).netloc()}"
            )
            if pattern.any_port:
                port = "(?::[0-9]{1,5})?"
            elif pattern.port is None:
                port = ""
            elif pattern.port == DEFAULT_PORTS.get(pattern.scheme):
                port = f"(?::{pattern.port})?"
            else:
                port = f":{pattern.port}"
            alternatives.append(prefix + port)
        return "|".join(f"(?:{a})" for a in alternatives) if alternatives else None


class OriginMiddleware:
    """Refuses WebSocket handshakes and unsafe HTTP requests from pages of foreign origins."""

    def __init__(self, app: ASGIApp, *, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" or (kind == "http" and scope["method"] not in SAFE_METHODS):
            headers = Headers(scope=scope)
            origins = headers.getlist("origin")
            if origins and not (
                len(origins) == 1 and self.policy.allows(origins[0], headers.get("host"))
            ):
                await self._refuse(scope, receive, send, origins[0])
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, origin: str) -> None:
        log.info(
            "security.bad_origin", origin=origin[:100], path=scope.get("path"), kind=scope["type"]
        )
        message = f"Origin {origin[:100]!r} may not use this server (see security.allowed_origins)"
        if scope["type"] == "http":
            await send_http_error(scope, send, "forbidden_origin", message)
        else:
            await refuse_handshake(scope, receive, send, "forbidden_origin", message)
