"""Security defaults, put together: who may bind, and the middleware in front of every route.

Each idea has its own module, all pure ASGI middleware whose state lives in the instance that
`create_app` builds:

- `security.hosts`: `Host` must name this server (DNS rebinding) -> 400 `invalid_host`.
- CORS for the REST API (starlette's CORSMiddleware), from the `Origin` allowlist.
- `security.origins`: WebSocket handshakes and unsafe HTTP methods from foreign pages
  -> 403 `forbidden_origin`.
- `security.auth`: the bearer token, when one is set -> 401 `unauthorized`, WebSocket close 4401.
- `security.limits`: open WebSocket connections per server and per client address
  -> 503 `server_busy`, 429 `too_many_connections`.

They run in that order, outermost first: a request from a wrong host learns nothing else; CORS
preflights (which never carry a token) are answered before the token check, and a 401 carries
CORS headers so a page can read it; the token is checked before a connection slot is taken.
"""

from __future__ import annotations

import ipaddress

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from tether.config import Settings
from tether.security.auth import BearerAuthMiddleware
from tether.security.hosts import HostMiddleware, default_allowed_hosts, normalize_hostname
from tether.security.limits import ConnectionLimitMiddleware
from tether.security.origins import OriginMiddleware, OriginPolicy

CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CORS_HEADERS = ("Authorization", "Content-Type")


def configured_token(settings: Settings) -> str | None:
    """The bearer token, or None when none is set (an empty token counts as none)."""
    token = settings.server.token
    value = token.get_secret_value() if token is not None else ""
    return value or None


def is_loopback_host(host: str) -> bool:
    """Only this machine can reach it: `localhost`, 127.0.0.0/8 or ::1 (also IPv4-mapped)."""
    name = normalize_hostname(host)
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # another name, which may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


# Off loopback the token is all that stands between the network and the server: it must be too
# long to guess (`secrets.token_urlsafe(32)` gives 43 characters).
MIN_PUBLIC_TOKEN_CHARS = 16
GENERATE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def check_bind(settings: Settings) -> str | None:
    """Why `tether serve` must not listen on the configured host, or None if it may."""
    host = settings.server.host
    if is_loopback_host(host):
        return None
    where = host or "(all addresses)"
    token = configured_token(settings)
    if token is None:
        return (
            f"tether: refusing to listen on {where} without a token; "
            "set one with TETHER_TOKEN=<secret> (or server.token in config.yaml), "
            f"generated with {GENERATE_TOKEN}, or listen on 127.0.0.1 only"
        )
    if len(token) < MIN_PUBLIC_TOKEN_CHARS:
        return (
            f"tether: refusing to listen on {where} with a {len(token)}-character token: "
            "anyone who can reach the port could guess it; use at least "
            f"{MIN_PUBLIC_TOKEN_CHARS} characters, e.g. TETHER_TOKEN=$({GENERATE_TOKEN})"
        )
    return None


def security_middleware(settings: Settings) -> list[Middleware]:
    """The security middleware for `create_app`, outermost first."""
    security = settings.security
    token = configured_token(settings)
    allowed_hosts = security.allowed_hosts
    if allowed_hosts is None:
        allowed_hosts = list(
            default_allowed_hosts(settings.server.host, has_token=token is not None)
        )
    origins = OriginPolicy(security.allowed_origins)
    stack = [
        Middleware(HostMiddleware, allowed_hosts=allowed_hosts),
        Middleware(
            CORSMiddleware,
            allow_origins=origins.cors_allow_origins(),
            allow_origin_regex=origins.cors_origin_regex(),
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=("WWW-Authenticate",),
        ),
        Middleware(OriginMiddleware, policy=origins),
    ]
    if token is not None:
        stack.append(
            Middleware(BearerAuthMiddleware, token=token, public_paths=security.public_paths)
        )
    stack.append(
        Middleware(
            ConnectionLimitMiddleware,
            max_total=security.max_connections,
            max_per_client=security.max_connections_per_client,
        )
    )
    return stack
