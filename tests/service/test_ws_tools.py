"""Tool calls and thoughts through a real socket, with the echo engine playing the model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.wsclient import Frame, ProtocolClient, text_of


def call(name: str, **arguments: object) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def tool_frames(frames: list[Frame]) -> list[tuple[str, dict[str, object]]]:
    return [(f["chunk"]["type"], f["chunk"]["data"]) for f in frames if f["status"] == "tool"]


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[ProtocolClient]:
    async with connect(server.ws_url) as ws:
        yield ProtocolClient(ws)


async def test_two_calls_in_one_answer_both_run(client: ProtocolClient) -> None:
    first, second = call("calculator", expression="2+3"), call("calculator", expression="4*5")
    text = f"Let me check. {first} and {second}"
    frames = await client.chat("two", text)
    tools = tool_frames(frames)
    assert [kind for kind, _ in tools] == ["tool_call", "tool_call", "tool_result", "tool_result"]
    assert [data.get("result") for kind, data in tools if kind == "tool_result"] == ["5", "20"]
    # The visible text is the prose around the calls, never their markup.
    visible = text_of(frames)
    assert "<tool_call>" not in visible
    assert visible.startswith("Let me check.")


async def test_tool_failures_go_back_to_the_model(client: ProtocolClient) -> None:
    cases = {
        "unknown": (call("teleport", where="moon"), "unknown tool"),
        "bad-args": (call("calculator", expr="1"), "invalid arguments"),
        "raises": (call("calculator", expression="1/0"), "zero"),
        "malformed": ("<tool_call>{not json}</tool_call>", "could not parse"),
    }
    for request_id, (text, says) in cases.items():
        frames = await client.chat(request_id, text)
        results = [data for kind, data in tool_frames(frames) if kind == "tool_result"]
        assert len(results) == 1, request_id
        assert says in str(results[0]["error"]).lower(), results[0]
        assert frames[-1]["status"] == "complete"
        # The echo "model" saw the error as the tool's result and answered it.
        assert "returned: Error:" in text_of(frames)


async def test_think_blocks_are_hidden_unless_asked_for(client: ProtocolClient) -> None:
    text = "<think>The user wants a greeting.</think>Hello!"
    hidden = await client.chat("hidden", text)
    assert text_of(hidden) == "Hello!"
    assert not [f for f in hidden if f["status"] == "chunk" and f["chunk"]["type"] == "thinking"]
    shown = await client.chat("shown", text, options={"show_thoughts": True})
    thoughts = "".join(
        f["chunk"]["data"]
        for f in shown
        if f["status"] == "chunk" and f["chunk"]["type"] == "thinking"
    )
    assert thoughts == "The user wants a greeting."
    assert text_of(shown) == "Hello!"


async def test_stored_answers_keep_only_visible_text(
    server: RunningServer, client: ProtocolClient
) -> None:
    frames = await client.chat("t", "<think>secret plan</think>Visible answer.")
    session_id = frames[0]["chunk"]["metadata"]["session_id"]
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        messages = (await http.get(f"/sessions/{session_id}/messages")).json()
    assert messages[-1]["content"] == "Visible answer."


async def test_tools_can_be_turned_off_per_turn(client: ProtocolClient) -> None:
    text = call("calculator", expression="6*7")
    frames = await client.chat("off", text, options={"tools": False})
    assert tool_frames(frames) == []
    assert text_of(frames) == text


async def test_loop_limit_over_the_socket(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"limits.max_tool_loops": 0})
    async with serve_app(settings) as server, connect(server.ws_url) as ws:
        frames = await ProtocolClient(ws).chat("loop", call("calculator", expression="1+1"))
    assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "tool_loop_limit"


async def test_history_replays_tool_turns(server: RunningServer, client: ProtocolClient) -> None:
    first = await client.chat("a", call("current_time", timezone="UTC"))
    session_id = first[0]["chunk"]["metadata"]["session_id"]
    second = await client.chat("b", "thanks", session_id=session_id)
    assert text_of(second) == "thanks"
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        messages = (await http.get(f"/sessions/{session_id}/messages")).json()
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert messages[1]["tool_calls"][0]["name"] == "current_time"
    assert messages[2]["tool_call_id"] == messages[1]["tool_calls"][0]["id"]
