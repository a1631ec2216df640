"""Two turns sent at once on one session: the second waits for the first (no silent fork)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.wsclient import ProtocolClient

SLOW = {"token_delay_ms": 20}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with serve_app(make_settings(tmp_path)) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[ProtocolClient]:
    async with connect(server.ws_url) as ws:
        yield ProtocolClient(ws)


async def tree(server: RunningServer, session_id: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.get(f"/sessions/{session_id}/messages", params={"tree": "true"})
    messages: list[dict[str, object]] = response.json()
    return messages


async def new_session(server: RunningServer) -> str:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        session_id: str = (await http.post("/sessions")).json()["id"]
    return session_id


async def test_two_turns_at_once_make_one_chain(
    server: RunningServer, client: ProtocolClient
) -> None:
    session_id = await new_session(server)
    for request_id, text in (("a", "one two three four five"), ("b", "six seven")):
        await client.send(
            {
                "type": "chat",
                "request_id": request_id,
                "text": text,
                "session_id": session_id,
                "options": SLOW,
            }
        )
    first = await client.until("a")
    second = await client.until("b")
    assert first[0]["status"] == "processing"
    assert second[0]["status"] == "queued"
    assert second[0]["chunk"]["metadata"] == {"queue_position": 1, "waiting_for": "session"}
    assert second[1]["status"] == "processing"
    assert second[-1]["status"] == "complete"
    messages = await tree(server, session_id)
    # One chain: user, answer, user, answer, each the parent of the next.
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    for parent, child in itertools.pairwise(messages):
        assert child["parent_id"] == parent["id"]


async def test_a_turn_with_its_own_parent_does_not_wait(
    server: RunningServer, client: ProtocolClient
) -> None:
    session_id = await new_session(server)
    start = await client.chat("root", "root", session_id=session_id)
    root_id = start[0]["chunk"]["metadata"]["user_message_id"]
    await client.send(
        {
            "type": "chat",
            "request_id": "a",
            "text": "one two three four five six",
            "session_id": session_id,
            "options": SLOW,
        }
    )
    await client.until("a", "processing")
    await client.send(
        {
            "type": "chat",
            "request_id": "b",
            "text": "branch",
            "session_id": session_id,
            "parent_id": root_id,
        }
    )
    second = await client.until("b")
    assert second[0]["status"] == "processing"  # no wait: it said where it goes
    await client.until("a")


async def test_a_turn_cancelled_while_waiting_stores_nothing(
    server: RunningServer, client: ProtocolClient
) -> None:
    session_id = await new_session(server)
    await client.send(
        {
            "type": "chat",
            "request_id": "a",
            "text": "one two three four five six",
            "session_id": session_id,
            "options": SLOW,
        }
    )
    await client.until("a", "processing")
    await client.send(
        {"type": "chat", "request_id": "b", "text": "never", "session_id": session_id}
    )
    await client.until("b", "queued")
    await client.send({"type": "cancel", "request_id": "b"})
    second = await client.until("b")
    assert second[-1]["status"] == "error"
    assert second[-1]["error"]["code"] == "cancelled"
    await client.until("a")
    await client.chat("c", "after", session_id=session_id)  # the line is free again
    contents = [m["content"] for m in await tree(server, session_id) if m["role"] == "user"]
    assert contents == ["one two three four five six", "after"]


async def test_a_waiting_turn_is_told_its_place_again_as_it_moves_up(
    server: RunningServer, client: ProtocolClient
) -> None:
    session_id = await new_session(server)
    for request_id in ("a", "b", "c"):
        await client.send(
            {
                "type": "chat",
                "request_id": request_id,
                "text": "one two three four",
                "session_id": session_id,
                "options": SLOW,
            }
        )
    third = await client.until("c")
    places = [f["chunk"]["metadata"]["queue_position"] for f in third if f["status"] == "queued"]
    assert places == [2, 1]
    assert third[len(places)]["status"] == "processing"
    assert len(await tree(server, session_id)) == 6
