"""The pure decisions behind the security middleware: bind check, tokens, hosts, origins, caps."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from tether.cli import main
from tether.config import ConfigError, Settings, load_settings
from tether.security import check_bind, configured_token, is_loopback_host
from tether.security.auth import (
    BearerAuthMiddleware,
    bearer_from_header,
    path_is_public,
    split_token_param,
    token_matches,
)
from tether.security.hosts import default_allowed_hosts, host_allowed, parse_host_header
from tether.security.limits import ConnectionCounter, ConnectionLimitMiddleware
from tether.security.origins import (
    Origin,
    OriginPattern,
    OriginPolicy,
    parse_origin,
    parse_origin_pattern,
    same_origin,
)
from tether.security.responses import refuse_handshake


def settings(
    tmp_path: Path, environ: dict[str, str] | None = None, host: str | None = None
) -> Settings:
    return load_settings(overrides={"server.host": host}, environ=environ or {}, cwd=tmp_path)


# -- binding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]", "::ffff:127.0.0.1"],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "", "192.168.1.4", "10.0.0.1", "example.com", "::ffff:10.0.0.1"]
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


def test_loopback_bind_needs_no_token(tmp_path: Path) -> None:
    assert check_bind(settings(tmp_path)) is None
    assert check_bind(settings(tmp_path, host="::1")) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.4", "myhost"])
def test_other_bind_needs_a_token(tmp_path: Path, host: str) -> None:
    refusal = check_bind(settings(tmp_path, host=host))
    assert refusal is not None
    assert host in refusal
    assert "TETHER_TOKEN" in refusal
    assert "\n" not in refusal
    with_token = settings(tmp_path, {"TETHER_TOKEN": "s3cret-long-enough-1"}, host=host)
    assert check_bind(with_token) is None


@pytest.mark.parametrize("token", ["x", "s3cret", "fifteen-chars-x"])
def test_off_loopback_a_guessable_token_is_refused(tmp_path: Path, token: str) -> None:
    refusal = check_bind(settings(tmp_path, {"TETHER_TOKEN": token}, host="0.0.0.0"))
    assert refusal is not None
    assert f"{len(token)}-character token" in refusal
    assert "at least 16 characters" in refusal
    assert "secrets.token_urlsafe(32)" in refusal
    assert "\n" not in refusal
    # On loopback only this machine can try it: any token is accepted.
    assert check_bind(settings(tmp_path, {"TETHER_TOKEN": token})) is None


def test_an_empty_token_is_no_token(tmp_path: Path) -> None:
    empty = settings(tmp_path, {"TETHER_TOKEN": ""}, host="0.0.0.0")
    assert configured_token(empty) is None
    assert check_bind(empty) is not None


def test_serve_refuses_a_public_bind_without_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("TETHER_TOKEN", "TETHER_SERVER__TOKEN", "TETHER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--db", str(tmp_path / "t.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "refusing to listen on 0.0.0.0 without a token" in err


def test_serve_refuses_a_public_bind_with_a_short_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("TETHER_SERVER__TOKEN", "TETHER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TETHER_TOKEN", "a")
    assert main(["serve", "--host", "0.0.0.0", "--db", str(tmp_path / "t.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "with a 1-character token" in err


# -- tokens -----------------------------------------------------------------------------------


def test_token_matches_only_the_same_bytes() -> None:
    assert token_matches(b"s3cret", b"s3cret")
    assert not token_matches(b"s3cre", b"s3cret")
    assert not token_matches(b"s3cret!", b"s3cret")
    assert not token_matches(b"", b"s3cret")
    assert not token_matches(None, b"s3cret")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", b"abc"),
        ("bearer abc", b"abc"),
        ("Bearer   abc  ", b"abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        (None, None),
    ],
)
def test_bearer_from_header(header: str | None, token: bytes | None) -> None:
    assert bearer_from_header(header) == token


def test_token_param_is_read_and_removed() -> None:
    assert split_token_param(b"token=abc") == (b"abc", b"")
    assert split_token_param(b"a=1&token=a%2Bb%20c&b=2") == (b"a+b c", b"a=1&b=2")
    assert split_token_param(b"tok%65n=x&token=y") == (b"x", b"")
    assert split_token_param(b"a=1") == (None, b"a=1")
    assert split_token_param(b"") == (None, b"")
    assert split_token_param(b"token=") == (b"", b"")


def test_public_paths() -> None:
    public = ["/health", "/static/*"]
    assert path_is_public("GET", "/health", public)
    assert path_is_public("HEAD", "/health", public)
    assert not path_is_public("POST", "/health", public)
    assert not path_is_public("GET", "/health/x", public)
    assert not path_is_public("GET", "/sessions", public)
    assert path_is_public("GET", "/static/app.js", public)
    assert path_is_public("GET", "/static", public)
    assert not path_is_public("GET", "/staticky", public)
    assert not path_is_public(None, "/health", public)  # a WebSocket


# -- hosts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:8000", ("localhost", 8000)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:8000", ("::1", 8000)),
        ("[::1]", ("::1", None)),
        ("example.com.", ("example.com", None)),
        ("::1", None),
        ("a b", None),
        ("evil.com@localhost", None),
        ("localhost:99999", None),
        ("localhost:", None),
        ("", None),
    ],
)
def test_parse_host_header(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert parse_host_header(value) == parsed


def test_host_patterns() -> None:
    patterns = ["localhost", "::1", "*.example.com", "[fe80::2]"]
    assert host_allowed("localhost", patterns)
    assert host_allowed("::1", patterns)
    assert host_allowed("fe80::2", patterns)
    assert host_allowed("a.example.com", patterns)
    assert host_allowed("a.b.example.com", patterns)
    assert not host_allowed("example.com", patterns)
    assert not host_allowed("badexample.com", patterns)
    assert not host_allowed("127.0.0.1", patterns)
    assert host_allowed("anything", ["*"])


def test_default_allowed_hosts() -> None:
    loopback = ("localhost", "127.0.0.1", "::1")
    assert default_allowed_hosts("127.0.0.1", has_token=False) == loopback
    assert default_allowed_hosts("localhost", has_token=True) == loopback
    assert default_allowed_hosts("192.168.1.4", has_token=True) == (*loopback, "192.168.1.4")
    assert default_allowed_hosts("[fe80::1]", has_token=True) == (*loopback, "fe80::1")
    assert default_allowed_hosts("0.0.0.0", has_token=True) == ("*",)
    assert default_allowed_hosts("::", has_token=True) == ("*",)
    assert default_allowed_hosts("0.0.0.0", has_token=False) == loopback


# -- origins ----------------------------------------------------------------------------------


def test_parse_origin() -> None:
    assert parse_origin("http://localhost:5173") == Origin("http", "localhost", 5173)
    assert parse_origin("HTTPS://Example.COM") == Origin("https", "example.com", 443)
    assert parse_origin("http://[::1]:8000") == Origin("http", "::1", 8000)
    assert parse_origin("app://tether") == Origin("app", "tether", None)
    for bad in ("null", "localhost:8000", "http://", "http://a:*", "http://a/b", "http://u@a", ""):
        assert parse_origin(bad) is None, bad


def test_parse_origin_pattern() -> None:
    assert parse_origin_pattern("http://localhost:*") == OriginPattern(
        "http", "localhost", None, True
    )
    assert parse_origin_pattern("https://a.com/") == OriginPattern("https", "a.com", 443)
    assert parse_origin_pattern("*") == "*"
    assert parse_origin_pattern("null") == "null"
    with pytest.raises(ValueError, match="not an origin pattern"):
        parse_origin_pattern("localhost")


def test_same_origin() -> None:
    origin = Origin("http", "127.0.0.1", 8000)
    assert same_origin(origin, "127.0.0.1:8000")
    assert not same_origin(origin, "127.0.0.1:8001")
    assert not same_origin(origin, "localhost:8000")
    assert not same_origin(origin, None)
    # Behind a TLS proxy the Host has no port: the origin's default port is meant.
    assert same_origin(Origin("https", "chat.example.com", 443), "chat.example.com")
    assert not same_origin(Origin("https", "chat.example.com", 8443), "chat.example.com")


def test_default_policy(tmp_path: Path) -> None:
    policy = OriginPolicy(settings(tmp_path).security.allowed_origins)
    for allowed in ("http://localhost:5173", "https://127.0.0.1", "http://[::1]:3000"):
        assert policy.allows(allowed, "127.0.0.1:8000"), allowed
    assert policy.allows("http://myhost:8000", "myhost:8000")  # its own origin
    for refused in ("http://evil.example", "http://localhost.evil.example", "null", "garbage"):
        assert not policy.allows(refused, "127.0.0.1:8000"), refused
    # DNS rebinding looks same-origin: the host check, not this one, catches it.
    assert policy.allows("http://evil.example:8000", "evil.example:8000")


def test_explicit_policy() -> None:
    policy = OriginPolicy(["https://app.example.com", "null"])
    assert policy.allows("https://app.example.com", None)
    assert policy.allows("https://app.example.com:443", None)
    assert not policy.allows("http://app.example.com", None)
    assert not policy.allows("https://app.example.com:8443", None)
    assert not policy.allows("http://localhost:3000", None)
    assert policy.allows("null", None)
    assert OriginPolicy(["*"]).allows("http://anything", None)
    assert OriginPolicy(["*"]).cors_allow_origins() == ["*"]


ORIGIN_PARTS = st.tuples(
    st.sampled_from(["http", "https", "app"]),
    st.sampled_from(["localhost", "127.0.0.1", "[::1]", "example.com", "localhost.evil"]),
    st.one_of(st.none(), st.sampled_from([80, 443, 3000, 8000])),
)


@given(ORIGIN_PARTS)
def test_cors_regex_agrees_with_the_policy(parts: tuple[str, str, int | None]) -> None:
    scheme, host, port = parts
    origin = f"{scheme}://{host}" + (f":{port}" if port is not None else "")
    patterns = [
        "http://localhost:*",
        "https://[::1]:*",
        "https://example.com",
        "http://example.com:3000",
        "app://localhost",
    ]
    policy = OriginPolicy(patterns)
    regex = policy.cors_origin_regex()
    assert regex is not None
    assert (re.fullmatch(regex, origin) is not None) == policy.allows(origin, None)


# -- configuration ----------------------------------------------------------------------------


def test_security_defaults(tmp_path: Path) -> None:
    security = settings(tmp_path).security
    assert security.allowed_hosts is None
    assert security.public_paths == ["/health", "/", "/ui/*"]
    assert security.max_connections == 2000
    assert security.max_connections_per_client == 1000
    assert "http://localhost:*" in security.allowed_origins


def test_security_from_the_environment(tmp_path: Path) -> None:
    loaded = settings(
        tmp_path,
        {
            "TETHER_ALLOWED_ORIGINS": "https://a.example, http://localhost:*",
            "TETHER_ALLOWED_HOSTS": '["chat.example", "localhost"]',
            "TETHER_SECURITY__MAX_CONNECTIONS_PER_CLIENT": "7",
        },
    ).security
    assert loaded.allowed_origins == ["https://a.example", "http://localhost:*"]
    assert loaded.allowed_hosts == ["chat.example", "localhost"]
    assert loaded.max_connections_per_client == 7


def test_a_bad_origin_pattern_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"security\.allowed_origins.*not an origin pattern"):
        settings(tmp_path, {"TETHER_ALLOWED_ORIGINS": "example.com"})


# -- connection caps --------------------------------------------------------------------------


def test_connection_counter() -> None:
    counter = ConnectionCounter(max_total=3, max_per_client=2)
    assert counter.acquire("a") is None
    assert counter.acquire("a") is None
    assert counter.acquire("a") == "client_full"
    assert counter.acquire("b") is None
    assert counter.acquire("c") == "server_full"
    assert counter.total == 3
    counter.release("a")
    assert counter.acquire("c") is None
    counter.release("a")
    counter.release("b")
    counter.release("c")
    assert counter.total == 0
    assert not counter.per_client


# -- the middleware as plain ASGI -------------------------------------------------------------


class Recorder:
    """An inner app that records the scope it was called with, and a `send` that records."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.sent: list[Message] = []

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(dict(scope))

    async def send(self, message: Message) -> None:
        self.sent.append(message)


async def connect_message() -> Message:
    return {"type": "websocket.connect"}


def ws_scope(query: bytes = b"", extensions: dict[str, Any] | None = None) -> Scope:
    return {
        "type": "websocket",
        "path": "/ws/chat",
        "query_string": query,
        "headers": [(b"host", b"127.0.0.1:8000")],
        "client": ("127.0.0.1", 5000),
        "extensions": extensions or {},
    }


async def test_the_token_parameter_never_reaches_the_app() -> None:
    rec = Recorder()
    auth = BearerAuthMiddleware(rec.app, token="tok", public_paths=["/health"])
    scope = ws_scope(b"a=1&token=tok")
    await auth(scope, connect_message, rec.send)
    assert rec.scopes[0]["query_string"] == b"a=1"
    assert scope["query_string"] == b"a=1"  # in place, so the server's access log lacks it too


async def test_a_websocket_without_token_is_accepted_then_closed_4401() -> None:
    rec = Recorder()
    auth = BearerAuthMiddleware(rec.app, token="tok", public_paths=["/health"])
    await auth(ws_scope(b"token=nope"), connect_message, rec.send)
    assert not rec.scopes
    assert [m["type"] for m in rec.sent] == ["websocket.accept", "websocket.close"]
    assert rec.sent[1]["code"] == 4401


async def test_a_handshake_refusal_without_the_http_response_extension_is_a_close() -> None:
    rec = Recorder()
    await refuse_handshake(ws_scope(), connect_message, rec.send, "too_many_connections", "no")
    assert [m["type"] for m in rec.sent] == ["websocket.close"]  # servers answer 403

    rec = Recorder()
    scope = ws_scope(extensions={"websocket.http.response": {}})
    await refuse_handshake(scope, connect_message, rec.send, "too_many_connections", "no")
    assert [m["type"] for m in rec.sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    assert rec.sent[0]["status"] == 429
    assert json.loads(rec.sent[1]["body"]) == {
        "error": {"code": "too_many_connections", "message": "no"}
    }


async def test_a_failing_app_still_frees_its_connection_slot() -> None:
    async def crash(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    limit = ConnectionLimitMiddleware(crash, max_total=1, max_per_client=1)
    with pytest.raises(RuntimeError, match="boom"):
        await limit(ws_scope(), connect_message, Recorder().send)
    assert limit.counter.total == 0
    assert not limit.counter.per_client
