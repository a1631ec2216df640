"""What HTTP routes accept, over a real uvicorn: JSON bodies only, bounded as they stream in,
ids without control characters, and one error body with the status of its code everywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient
from tether.errors import http_status

LIMIT = 4096


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server with small limits: 4 KiB bodies (also chat frames), 1000-character texts."""
    settings = make_settings(
        tmp_path,
        **{
            "limits.max_body_bytes": LIMIT,
            "limits.max_frame_bytes": LIMIT,
            "limits.max_text_chars": 1000,
        },
    )
    async with serve_app(settings) as running:
        yield running


@pytest.fixture
async def http(small: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=small.http_url) as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The response is the one error shape, with `code` and the status of that code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert http_status(code) == status
    message: str = body["error"]["message"]
    assert message
    return message


async def raw_exchange(server: RunningServer, head: str, *chunks: bytes) -> tuple[int, Any]:
    """Send a request head and `chunks` of body (never ending a chunked body), then read the
    response: its status and JSON body. A server that waits for the rest of the body times out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n")
        for chunk in chunks:
            writer.write(chunk)
        await writer.drain()
        async with asyncio.timeout(scaled(10)):
            response_head = await reader.readuntil(b"\r\n\r\n")
            lines = response_head.decode().split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
            body = await reader.readexactly(int(headers["content-length"]))
        return int(lines[0].split()[1]), json.loads(body)
    finally:
        writer.close()


# -- bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", [("POST", "/sessions"), ("PUT", "/agents/a")])
@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_body_that_is_not_sent_as_json_is_refused_with_415(
    http: httpx.AsyncClient, route: tuple[str, str], content_type: str | None
) -> None:
    # What a page of another site can POST without a CORS preflight is refused everywhere.
    headers = {} if content_type is None else {"content-type": content_type}
    response = await http.request(*route, content=b'{"name": "x"}', headers=headers)
    message = assert_error(response, 415, "unsupported_media_type")
    assert "application/json" in message
    assert (await http.get("/sessions")).json() == []
    assert (await http.get("/agents")).json() == []


async def test_chat_stream_needs_json_too(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/chat/stream", content=b'{"text": "hi"}', headers={"content-type": "text/plain"}
    )
    assert_error(response, 415, "unsupported_media_type")
    assert (await http.get("/sessions")).json() == []


async def test_json_with_a_charset_and_an_empty_body_are_fine(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/sessions",
        content=b'{"title": "t"}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201
    assert (await http.post("/sessions")).status_code == 201  # no body: no type needed


@pytest.mark.parametrize("route", [("POST", "/sessions"), ("PUT", "/agents/a")])
async def test_a_body_over_the_limit_is_refused_with_413(
    http: httpx.AsyncClient, route: tuple[str, str]
) -> None:
    body = {"name": "a", "title": "x" * LIMIT}
    message = assert_error(await http.request(*route, json=body), 413, "too_large")
    assert str(LIMIT) in message


async def test_a_declared_length_over_the_limit_is_refused_before_the_body(
    small: RunningServer,
) -> None:
    # 100 MB announced and not a byte sent: the answer comes at once, nothing is read.
    for method, path in (("POST", "/sessions"), ("PUT", "/agents/a"), ("POST", "/chat/stream")):
        status, body = await raw_exchange(
            small,
            f"{method} {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\n"
            f"Content-Length: {100 * 1024 * 1024}\n",
        )
        assert (status, body["error"]["code"]) == (413, "too_large")


async def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit(
    small: RunningServer,
) -> None:
    # Chunked, with no end in sight: the server answers once it holds more than the limit.
    chunk = b"x" * 1024
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (LIMIT // len(chunk) + 1)
    for method, path in (("POST", "/sessions"), ("PUT", "/agents/a"), ("POST", "/chat/stream")):
        status, body = await raw_exchange(
            small,
            f"{method} {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\n"
            "Transfer-Encoding: chunked\n",
            *chunks,
        )
        assert (status, body["error"]["code"]) == (413, "too_large")


async def test_json_errors_say_what_is_wrong(server: RunningServer) -> None:
    json_type = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        huge = b'{"title": "t", "agent_id": ' + b"9" * 5000 + b"}"
        response = await http.post("/sessions", content=huge, headers=json_type)
        assert "integer of more than 4300 digits" in assert_error(response, 400, "bad_request")
        response = await http.post("/sessions", content=b"{nope", headers=json_type)
        assert "not valid JSON" in assert_error(response, 400, "bad_request")


# -- ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/sessions/a%00b"),
        ("DELETE", "/sessions/a%00b"),
        ("GET", "/sessions/a%0Ab/messages"),
        ("GET", "/agents/a%00b"),
        ("PUT", "/agents/a%00b"),
        ("PUT", "/agents/a%1Bb"),
        ("DELETE", "/agents/a%7Fb"),
        ("PUT", "/agents/" + "a" * 201),
    ],
)
async def test_ids_in_paths_are_refused_with_control_characters(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await http.request(method, path, json={"name": "n"})
    assert_error(response, 400, "bad_request")
    assert (await http.get("/agents")).json() == []


async def test_ids_in_bodies_and_frames_are_refused_with_control_characters(
    small: RunningServer, http: httpx.AsyncClient
) -> None:
    response = await http.post("/sessions", json={"agent_id": "a\x00b"})
    assert "agent_id" in assert_error(response, 400, "bad_request")
    response = await http.post("/chat/stream", json={"text": "hi", "session_id": "s\x00"})
    assert "session_id" in assert_error(response, 400, "bad_request")
    async with connect(small.ws_url) as ws:
        client = ProtocolClient(ws)
        for field in ("session_id", "agent_id", "parent_id"):
            await client.send({"type": "chat", "request_id": field, "text": "hi", field: "x\x01"})
            (frame,) = await client.until(field)
            assert frame["error"]["code"] == "bad_request"
            assert field in frame["error"]["message"]
            assert "control characters" in frame["error"]["message"]
        await client.send({"type": "chat", "request_id": "r\x00", "text": "hi"})
        frame = await client.next_frame()
        assert frame["error"]["code"] == "bad_request"
        assert "request_id" in frame["error"]["message"]
    assert (await http.get("/sessions")).json() == []


# -- one error body ------------------------------------------------------------------------------


async def test_every_refusal_has_the_one_error_body(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"server.token": "t" * 32})
    async with serve_app(settings) as server, httpx.AsyncClient(base_url=server.http_url) as http:
        auth = {"authorization": "Bearer " + "t" * 32}
        assert_error(await http.get("/sessions"), 401, "unauthorized")
        assert_error(
            await http.post("/sessions", headers={**auth, "origin": "http://evil.example"}),
            403,
            "forbidden_origin",
        )
        assert_error(
            await http.get("/sessions", headers={**auth, "host": "evil.example"}),
            400,
            "invalid_host",
        )
        assert_error(await http.get("/no/such/route", headers=auth), 404, "not_found")
        response = await http.patch("/sessions", headers=auth)
        assert "PATCH" in assert_error(response, 405, "method_not_allowed")
        assert "GET" in response.headers["allow"]
        assert_error(await http.get("/sessions/nope", headers=auth), 404, "not_found")
        assert_error(await http.get("/sessions?limit=x", headers=auth), 400, "bad_request")
