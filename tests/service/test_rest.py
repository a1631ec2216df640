"""The REST API over a real uvicorn: health, sessions, messages, agents, models, tools."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.servers import RunningServer


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url) as client:
        yield client


async def test_health(http: httpx.AsyncClient) -> None:
    body = (await http.get("/health")).json()
    assert body["status"] == "ok"
    assert body["engine"] == "echo"
    assert body["protocol"] == 1


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
        ("POST", "/sessions", {"content": b"{nope"}, 400, "bad_request"),
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
        }
    ]
    tools = {t["name"]: t for t in (await http.get("/tools")).json()}
    assert {"calculator", "current_time"} <= set(tools)
    assert tools["calculator"]["parameters"]["properties"]["expression"]["type"] == "string"
