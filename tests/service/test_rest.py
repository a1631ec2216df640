"""The REST API over a real uvicorn: health, sessions, messages, agents, models, tools."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.wsclient import ProtocolClient, text_of
from tether.engines.echo import HISTORY_BYTES


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url) as client:
        yield client


async def test_health(http: httpx.AsyncClient) -> None:
    body = (await http.get("/health")).json()
    assert body["status"] == "ok"
    assert body["engine"] == "echo"
    assert body["protocol"] == 1
    assert body["engines"]["echo"] == {"state": "ready", "models": 1}


async def test_session_lifecycle(http: httpx.AsyncClient) -> None:
    created = await http.post("/sessions", json={"title": "Plans"})
    assert created.status_code == 201
    session = created.json()
    assert set(session) >= {"id", "title", "created_at", "updated_at"}
    assert (await http.get(f"/sessions/{session['id']}")).json() == session
    assert [s["id"] for s in (await http.get("/sessions")).json()] == [session["id"]]
    assert (await http.get(f"/sessions/{session['id']}/messages")).json() == []
    assert (await http.delete(f"/sessions/{session['id']}")).status_code == 204
    gone = await http.get(f"/sessions/{session['id']}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"


async def test_post_without_a_body_and_delete_all(http: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await http.post("/sessions")).status_code == 201
    assert (await http.delete("/sessions")).json() == {"deleted": 3}
    assert (await http.get("/sessions")).json() == []


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "code"),
    [
        (
            "POST",
            "/sessions",
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        ("POST", "/sessions", {"json": {"title": 5}}, 400, "bad_request"),
        ("POST", "/sessions", {"json": {"agent_id": "ghost"}}, 404, "not_found"),
        ("GET", "/sessions?limit=abc", {}, 400, "bad_request"),
        ("GET", "/sessions?limit=0", {}, 400, "bad_request"),
        ("GET", "/sessions/missing/messages", {}, 404, "not_found"),
        ("DELETE", "/sessions/missing", {}, 404, "not_found"),
        ("GET", "/no/such/route", {}, 404, "not_found"),
        ("PUT", "/agents/a", {"json": {"name": ""}}, 400, "bad_request"),
    ],
)
async def test_errors_are_json_with_a_code(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    kwargs: dict[str, object],
    status: int,
    code: str,
) -> None:
    response = await http.request(method, url, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


async def test_agents(http: httpx.AsyncClient) -> None:
    body = {"name": "Reviewer", "system_prompt": "Be precise.", "markdown_context": "- focus"}
    saved = (await http.put("/agents/reviewer", json=body)).json()
    assert saved["id"] == "reviewer"
    assert (await http.get("/agents/reviewer")).json() == saved
    assert [a["id"] for a in (await http.get("/agents")).json()] == ["reviewer"]
    session = (await http.post("/sessions", json={"agent_id": "reviewer"})).json()
    assert session["agent_id"] == "reviewer"
    assert (await http.delete("/agents/reviewer")).status_code == 204
    assert (await http.get("/agents/reviewer")).status_code == 404


async def test_models_and_tools(http: httpx.AsyncClient) -> None:
    assert (await http.get("/models")).json() == [
        {
            "id": "echo",
            "engine": "echo",
            "loaded": True,
            "path": None,
            "tools": True,
            "structured_output": False,  # no `response_format` on echo
            "forced_calls": False,  # nor a forcing `tool_choice`
            "history_bytes": HISTORY_BYTES,  # the newest messages a turn on it reads
        }
    ]
    tools = {t["name"]: t for t in (await http.get("/tools")).json()}
    assert {"calculator", "current_time"} <= set(tools)
    assert tools["calculator"]["parameters"]["properties"]["expression"]["type"] == "string"


async def test_put_agent_answers_201_when_it_creates_and_200_when_it_updates(
    http: httpx.AsyncClient,
) -> None:
    created = await http.put("/agents/a", json={"name": "A"})
    assert created.status_code == 201
    updated = await http.put("/agents/a", json={"name": "B"})
    assert updated.status_code == 200
    assert updated.json()["created_at"] == created.json()["created_at"]
    assert updated.json()["name"] == "B"


async def test_agent_texts_are_bounded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"limits.max_text_chars": 1000})
    async with serve_app(settings) as server, httpx.AsyncClient(base_url=server.http_url) as http:
        for field in ("system_prompt", "markdown_context"):
            response = await http.put("/agents/a", json={"name": "A", field: "x" * 1001})
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "too_large"
            assert field in response.json()["error"]["message"]
        response = await http.put("/agents/a", json={"name": "x" * 201})
        assert response.status_code == 400
        assert (await http.get("/agents")).json() == []
        fits = {"name": "A", "system_prompt": "x" * 1000, "markdown_context": "y" * 1000}
        assert (await http.put("/agents/a", json=fits)).status_code == 201


@pytest.mark.parametrize(
    ("defaults", "says"),
    [
        ({"evil": 1}, "default_options.evil: Extra inputs are not permitted"),
        ({"temperature": "hot"}, "default_options.temperature: Input should be a valid number"),
        ({"temperature": 99}, "default_options.temperature: Input should be less than or equal"),
        ({"model": "nope"}, "default_options.model: model 'nope' is not available"),
        ({"seed": 2**200}, "default_options.seed"),
        ({"stop": ["x"] * 50_000}, "default_options.stop: Value error, at most 16"),
    ],
)
async def test_agent_default_options_are_checked_as_chat_options(
    http: httpx.AsyncClient, defaults: dict[str, object], says: str
) -> None:
    response = await http.put("/agents/a", json={"name": "A", "default_options": defaults})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"
    assert says in response.json()["error"]["message"]
    assert (await http.get("/agents")).json() == []


async def test_agent_default_options_apply_to_its_chats(
    server: RunningServer, http: httpx.AsyncClient
) -> None:
    defaults = {"model": "echo", "max_tokens": 2}
    saved = await http.put("/agents/short", json={"name": "S", "default_options": defaults})
    assert saved.json()["default_options"] == defaults
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        frames = await client.chat("r1", "one two three four", agent_id="short")
        assert text_of(frames) == "one two "
        assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "length"
        session_id = frames[0]["chunk"]["metadata"]["session_id"]
        # The request's own options win, key by key; the session keeps its agent.
        frames = await client.chat(
            "r2", "one two three four", session_id=session_id, options={"max_tokens": 3}
        )
        assert text_of(frames) == "one two three "
    # NDJSON turns run through the same chat core.
    lines = [
        json.loads(line)
        for line in (
            await http.post("/chat/stream", json={"text": "a b c", "agent_id": "short"})
        ).text.splitlines()
    ]
    assert lines[-1]["data"]["finish_reason"] == "length"
    assert "".join(line["data"]["text"] for line in lines if line["type"] == "token") == "a b "
