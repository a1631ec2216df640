"""The security middleware in front of a real uvicorn (websockets-sansio) in this event loop.

Token (401 / close 4401), Origin (403 handshake), Host (400), CORS, and the connection caps
(429 / 503 handshake), seen by the `websockets` client and httpx as a client would see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.timeouts import scaled

TIMEOUT = scaled(10)
TOKEN = "s3cret-token"


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, **overrides: Any) -> AsyncIterator[RunningServer]:
    """The production app and uvicorn configuration, with these settings overridden."""
    async with serve_app(make_settings(tmp_path, **overrides)) as server:
        yield server


def ws_connect(url: str, **kwargs: Any) -> connect:
    return connect(url, proxy=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT, **kwargs)


def http(server: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.http_url, trust_env=False, timeout=TIMEOUT)


async def chat_completes(ws: ClientConnection, text: str = "hello there") -> bool:
    await ws.send(json.dumps({"type": "chat", "request_id": "r1", "text": text}))
    async with asyncio.timeout(TIMEOUT):
        while True:
            frame = json.loads(await ws.recv())
            if frame["status"] in ("complete", "error"):
                return bool(frame["status"] == "complete")


async def refused_status(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body with which the server refuses a handshake."""
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(url, **kwargs):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def close_code_at_once(url: str, **kwargs: Any) -> int | None:
    """Connect, and return the close code of a server that closes right after accepting."""
    async with ws_connect(url, **kwargs) as ws:
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
    return closed.value.rcvd.code if closed.value.rcvd else None


async def eventually_connect(url: str) -> ClientConnection:
    """Connect as soon as the server has counted a closed connection out (it does so after the
    close handshake, when the app's handler returns): retry refusals until the deadline."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                return await ws_connect(url)
            except InvalidStatus as exc:
                if exc.response.status_code not in (429, 503):
                    raise
            await asyncio.sleep(0.01)


# -- token ------------------------------------------------------------------------------------


async def test_no_token_configured_means_no_auth(tmp_path: Path) -> None:
    async with serve(tmp_path) as server, http(server) as client:
        assert (await client.get("/sessions")).status_code == 200
        async with ws_connect(server.ws_url) as ws:
            assert await chat_completes(ws)


async def test_http_needs_the_token(tmp_path: Path) -> None:
    async with serve(tmp_path, **{"server.token": TOKEN}) as server, http(server) as client:
        missing = await client.get("/sessions")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthorized"
        assert missing.headers["www-authenticate"].startswith("Bearer")

        wrong = await client.get("/sessions", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]

        good = await client.get("/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200
        assert (await client.get("/sessions", params={"token": TOKEN})).status_code == 200
        assert (await client.get("/sessions", params={"token": "nope"})).status_code == 401
        # Public: liveness probes carry no token.
        assert (await client.get("/health")).status_code == 200


async def test_websocket_needs_the_token(tmp_path: Path) -> None:
    async with serve(tmp_path, **{"server.token": TOKEN}) as server:
        assert await close_code_at_once(server.ws_url) == 4401
        assert await close_code_at_once(f"{server.ws_url}?token=nope") == 4401
        bad_header = {"Authorization": "Bearer nope"}
        assert await close_code_at_once(server.ws_url, additional_headers=bad_header) == 4401

        header = {"Authorization": f"Bearer {TOKEN}"}
        async with ws_connect(server.ws_url, additional_headers=header) as ws:
            assert await chat_completes(ws)
        async with ws_connect(f"{server.ws_url}?token={TOKEN}") as ws:
            assert await chat_completes(ws)


async def test_the_query_token_stays_out_of_the_access_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve(tmp_path, **{"server.token": TOKEN}) as server, http(server) as client:
        assert (await client.get("/sessions", params={"token": TOKEN, "x": "1"})).is_success
        async with ws_connect(f"{server.ws_url}?token={TOKEN}") as ws:
            assert await chat_completes(ws)
    server_log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("uvicorn"))
    assert "/sessions?x=1" in server_log
    assert "/ws/chat" in server_log
    assert TOKEN not in server_log


# -- origin and host --------------------------------------------------------------------------


async def test_websocket_origin_allowlist(tmp_path: Path) -> None:
    async with serve(tmp_path) as server:
        status, body = await refused_status(server.ws_url, origin="http://evil.example")
        assert status == 403
        assert body["error"]["code"] == "forbidden_origin"
        assert (await refused_status(server.ws_url, origin="null"))[0] == 403

        for allowed in (
            None,  # wscat, the CLI: no Origin at all
            "http://localhost:5173",
            f"http://127.0.0.1:{server.port}",  # the server's own page
        ):
            async with ws_connect(server.ws_url, origin=allowed) as ws:
                assert await chat_completes(ws)


async def test_configured_origins_replace_the_defaults(tmp_path: Path) -> None:
    origins = ["https://app.example.com"]
    async with serve(tmp_path, **{"security.allowed_origins": origins}) as server:
        async with ws_connect(server.ws_url, origin="https://app.example.com") as ws:
            assert await chat_completes(ws)
        assert (await refused_status(server.ws_url, origin="http://localhost:5173"))[0] == 403


async def test_origin_is_checked_before_the_token(tmp_path: Path) -> None:
    async with serve(tmp_path, **{"server.token": TOKEN}) as server:
        assert (await refused_status(server.ws_url, origin="http://evil.example"))[0] == 403


async def test_foreign_pages_cannot_change_things_over_http(tmp_path: Path) -> None:
    async with serve(tmp_path) as server, http(server) as client:
        foreign = await client.post(
            "/sessions", content="{}", headers={"Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        assert foreign.json()["error"]["code"] == "forbidden_origin"
        # Reading is left to CORS: the browser hides the answer from the foreign page.
        assert (await client.get("/health", headers={"Origin": "http://evil.example"})).is_success
        local = await client.post("/sessions", json={}, headers={"Origin": "http://localhost:3000"})
        assert local.status_code == 201
        assert (await client.post("/sessions", json={})).status_code == 201


async def test_bad_host_is_refused(tmp_path: Path) -> None:
    async with serve(tmp_path) as server, http(server) as client:
        rebound = await client.get("/health", headers={"Host": f"evil.example:{server.port}"})
        assert rebound.status_code == 400
        assert rebound.json()["error"]["code"] == "invalid_host"
        for good in (f"localhost:{server.port}", f"[::1]:{server.port}", "127.0.0.1"):
            assert (await client.get("/health", headers={"Host": good})).status_code == 200

        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            status, body = await refused_status(
                f"ws://evil.example:{server.port}/ws/chat", sock=sock
            )
        assert status == 400
        assert body["error"]["code"] == "invalid_host"


async def test_configured_hosts(tmp_path: Path) -> None:
    hosts = ["chat.example", "127.0.0.1"]
    async with (
        serve(tmp_path, **{"security.allowed_hosts": hosts}) as server,
        http(server) as client,
    ):
        assert (await client.get("/health", headers={"Host": "chat.example"})).status_code == 200
        assert (await client.get("/health", headers={"Host": "localhost"})).status_code == 400


# -- CORS -------------------------------------------------------------------------------------


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


async def test_cors_follows_the_origin_allowlist(tmp_path: Path) -> None:
    async with serve(tmp_path, **{"server.token": TOKEN}) as server, http(server) as client:
        allowed = await client.options("/sessions", headers=preflight("http://localhost:3000"))
        assert allowed.status_code == 200  # answered before the token check
        assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert "POST" in allowed.headers["access-control-allow-methods"]

        foreign = await client.options("/sessions", headers=preflight("http://evil.example"))
        assert "access-control-allow-origin" not in foreign.headers

        # A page may read the 401, so it can ask its user for the token.
        refused = await client.get("/sessions", headers={"Origin": "http://localhost:3000"})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == "http://localhost:3000"


# -- connection caps --------------------------------------------------------------------------


async def test_connections_per_client_are_capped(tmp_path: Path) -> None:
    async with serve(tmp_path, **{"security.max_connections_per_client": 2}) as server:
        first = await ws_connect(server.ws_url)
        second = await ws_connect(server.ws_url)
        status, body = await refused_status(server.ws_url)
        assert status == 429
        assert body["error"]["code"] == "too_many_connections"
        # HTTP is not counted.
        async with http(server) as client:
            assert (await client.get("/health")).status_code == 200

        await first.close()
        third = await eventually_connect(server.ws_url)
        assert await chat_completes(third)

        # A connection that dies without a close handshake is counted out too.
        assert second.transport is not None
        second.transport.abort()
        await second.wait_closed()
        fourth = await eventually_connect(server.ws_url)
        assert await chat_completes(fourth)
        await third.close()
        await fourth.close()


async def test_connections_per_server_are_capped(tmp_path: Path) -> None:
    async with serve(tmp_path, **{"security.max_connections": 1}) as server:
        async with ws_connect(server.ws_url) as ws:
            status, body = await refused_status(server.ws_url)
            assert status == 503
            assert body["error"]["code"] == "server_busy"
            assert await chat_completes(ws)
        async with await eventually_connect(server.ws_url) as ws:
            assert await chat_completes(ws)


async def test_refused_tokens_take_no_connection_slot(tmp_path: Path) -> None:
    overrides = {"server.token": TOKEN, "security.max_connections_per_client": 1}
    async with serve(tmp_path, **overrides) as server:
        ws = await ws_connect(f"{server.ws_url}?token={TOKEN}")
        assert await close_code_at_once(server.ws_url) == 4401
        assert await chat_completes(ws)
        await ws.close()
