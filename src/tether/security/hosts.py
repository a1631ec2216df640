"""The `Host` header check: DNS-rebinding protection for HTTP and WebSocket.

A web page on `http://evil.example:8000` whose name the attacker re-points at 127.0.0.1 talks to
a loopback server as "same origin"; only the `Host` header (`evil.example:8000`) gives it away.
So every request's `Host` must name this server: by default `localhost`, `127.0.0.1`, `::1` and
the bound host; `security.allowed_hosts` replaces that list (hostnames without ports,
`*.example.com` for any subdomain, `*` for any host).

A wildcard bind (`0.0.0.0`, `::`) has no name of its own to check against. `tether serve` refuses
it without a token, and with a token (which a rebinding page does not know) any `Host` is
accepted unless `security.allowed_hosts` says otherwise. Without a token (an app built directly,
not through `tether serve`) only the loopback names pass.

Refusals: HTTP 400 `invalid_host`; a WebSocket handshake is refused with HTTP 400 too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tether.security.responses import refuse_handshake, send_http_error

log = structlog.get_logger("tether.security")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})  # normalized

_HOST_RE = re.compile(
    r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


def normalize_hostname(name: str) -> str:
    """Lower case, no IPv6 brackets, no trailing root dot: the form hosts are compared in."""
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.endswith(".") and name != ".":
        name = name[:-1]
    return name


def parse_host_header(value: str) -> tuple[str, int | None] | None:
    """`example.com:8000` -> ("example.com", 8000); `[::1]` -> ("::1", None); junk -> None."""
    match = _HOST_RE.fullmatch(value.strip())
    if match is None:
        return None
    port = int(match["port"]) if match["port"] is not None else None
    if port is not None and port > 65535:
        return None
    return normalize_hostname(match["v6"] or match["name"]), port


def host_allowed(hostname: str, patterns: Iterable[str]) -> bool:
    """Is `hostname` (normalized) one of `patterns` (names, `*.suffix`, `*`)?"""
    for raw in patterns:
        pattern = normalize_hostname(raw)
        if pattern == "*" or pattern == hostname:
            return True
        if pattern.startswith("*.") and hostname.endswith(pattern[1:]):
            return True
    return False


def default_allowed_hosts(bind_host: str, *, has_token: bool) -> tuple[str, ...]:
    """The hosts allowed when `security.allowed_hosts` is not set (see the module docstring)."""
    bind = normalize_hostname(bind_host)
    if bind in WILDCARD_BINDS:
        return ("*",) if has_token else LOOPBACK_NAMES
    return LOOPBACK_NAMES if bind in LOOPBACK_NAMES else (*LOOPBACK_NAMES, bind)


class HostMiddleware:
    """Refuses HTTP requests and WebSocket handshakes whose `Host` is not an allowed host."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allowed_hosts = tuple(normalize_hostname(h) for h in allowed_hosts)
        self.allow_any = "*" in self.allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allow_any:
            await self.app(scope, receive, send)
            return
        values = Headers(scope=scope).getlist("host")
        parsed = parse_host_header(values[0]) if len(values) == 1 else None
        if parsed is not None and host_allowed(parsed[0], self.allowed_hosts):
            await self.app(scope, receive, send)
            return
        shown = values[0][:100] if values else "(none)"
        log.info("security.bad_host", host=shown, path=scope.get("path"), kind=scope["type"])
        message = (
            f"Host {shown!r} is not an allowed host of this server (see security.allowed_hosts)"
        )
        if scope["type"] == "http":
            await send_http_error(scope, send, "invalid_host", message)
        else:
            await refuse_handshake(scope, receive, send, "invalid_host", message)
