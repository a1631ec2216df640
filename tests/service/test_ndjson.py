"""`POST /chat/stream` against a real server: NDJSON lines, errors as HTTP statuses, resume."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer, make_settings, serve_app, stored_answer
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, resume_frame, text_of

CALC = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
Line = dict[str, Any]


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=scaled(30)) as client:
        yield client


async def stream(http: httpx.AsyncClient, body: dict[str, Any]) -> list[Line]:
    async with http.stream("POST", "/chat/stream", json=body) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) async for line in response.aiter_lines() if line]


def tokens(lines: list[Line]) -> str:
    return "".join(line["data"]["text"] for line in lines if line["type"] == "token")


async def test_a_turn_streams_as_ndjson_and_is_stored(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    lines = await stream(http, {"text": "hello over http"})
    assert [line["seq"] for line in lines] == list(range(len(lines)))
    types = [line["type"] for line in lines]
    assert (types[0], set(types[1:-1]), types[-1]) == ("start", {"token"}, "done")
    start, done = lines[0]["data"], lines[-1]["data"]
    assert start["model"] == "echo"
    assert start["created_session"] is True
    assert tokens(lines) == "hello over http"
    assert done["finish_reason"] == "stop"
    answer = await stored_answer(server, start["session_id"])
    assert (answer["id"], answer["content"]) == (done["message_id"], "hello over http")


async def test_seed_002_names_and_a_session_made_first(http: httpx.AsyncClient) -> None:
    session = (await http.post("/sessions", json={})).json()
    body = {"session_id": session["id"], "prompt": "first", "model_name": "echo"}
    first = await stream(http, body)
    second = await stream(http, {**body, "prompt": "second"})
    assert first[0]["data"]["session_id"] == second[0]["data"]["session_id"] == session["id"]
    messages = (await http.get(f"/sessions/{session['id']}/messages")).json()
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "first"),
        ("assistant", "first"),
        ("user", "second"),
        ("assistant", "second"),
    ]


async def test_tool_calls_and_results_are_lines_of_their_own(http: httpx.AsyncClient) -> None:
    lines = await stream(http, {"text": CALC})
    call = next(line["data"] for line in lines if line["type"] == "tool_call")
    result = next(line["data"] for line in lines if line["type"] == "tool_result")
    assert (call["name"], call["arguments"]) == ("calculator", {"expression": "6*7"})
    assert (result["id"], result["name"], result["result"]) == (call["id"], "calculator", "42")
    assert result["tool_name"] == "calculator"  # seed 002's name for it, beside the socket's
    assert tokens(lines) == "Tool calculator returned: 42"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (b'{"session_id": "s"}', 400, "bad_request"),
        (b'{"text": "a", "prompt": "b"}', 400, "bad_request"),
        (b'{"text": "a", "options": {"temprature": 1}}', 400, "bad_request"),
        (b'{"type": "cancel", "text": "a"}', 400, "bad_request"),
        (b'{"text": "a", "session_id": "no-such-session"}', 404, "not_found"),
        (b'{"text": "a", "options": {"model": "no-such-model"}}', 404, "not_found"),
        (b'{"text": "' + b"x" * 100_001 + b'"}', 413, "too_large"),
    ],
)
async def test_a_turn_refused_before_it_starts_is_an_http_error(
    http: httpx.AsyncClient, body: bytes, status: int, code: str
) -> None:
    response = await http.post(
        "/chat/stream", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_a_body_over_the_frame_limit_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"limits.max_frame_bytes": 1024})
    async with serve_app(settings) as server, httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post("/chat/stream", json={"text": "x" * 2000})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


async def test_a_client_that_goes_away_can_resume_on_the_socket(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    text = " ".join(f"w{i}" for i in range(30))
    body = {"text": text, "options": {"token_delay_ms": 20}}
    async with http.stream("POST", "/chat/stream", json=body) as response:
        lines = response.aiter_lines()
        start = json.loads(await anext(lines))
        assert start["type"] == "start"
        await anext(lines)  # a token; then the client hangs up
    request_id = start["data"]["request_id"]
    assert response.headers["x-request-id"] == request_id
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        # The start line carries the resume token another connection needs.
        await client.send(resume_frame(request_id, -1, start["data"]["resume_token"]))
        frames = await client.until(request_id)
    # The answer ran on under the disconnect policy; its journal has every frame.
    assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "stop"
    assert text_of(frames) == text


async def test_a_turn_sent_again_replays_instead_of_asking_twice(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    body = {"request_id": "once", "text": "only once"}
    first = await stream(http, body)
    # The client missed the outcome and sends the same turn again: the same lines, no new turn.
    assert await stream(http, body) == first
    session_id = first[0]["data"]["session_id"]
    messages = (await http.get(f"/sessions/{session_id}/messages")).json()
    assert [m["role"] for m in messages] == ["user", "assistant"]
    # Another question under a used id is a new request.
    other = await stream(http, {"request_id": "once", "text": "something else"})
    assert other[0]["data"]["user_message_id"] != first[0]["data"]["user_message_id"]
    assert tokens(other) == "something else"
