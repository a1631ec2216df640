"""/ws/chat over a real uvicorn and a real WebSocket client: protocol v1 end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, text_of

CALC = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[ProtocolClient]:
    async with connect(server.ws_url) as ws:
        yield ProtocolClient(ws)


def statuses(frames: list[dict[str, object]]) -> list[object]:
    return [f["status"] for f in frames]


async def test_a_chat_turn(client: ProtocolClient) -> None:
    frames = await client.chat("r1", "hello there world")
    # Text deltas that come while the journal commits share a frame: one chunk or more.
    assert statuses(frames)[0] == "processing"
    assert set(statuses(frames)[1:-1]) == {"chunk"}
    assert statuses(frames)[-1] == "complete"
    assert [f["seq"] for f in frames] == list(range(len(frames)))
    meta = frames[0]["chunk"]["metadata"]
    assert meta["model"] == "echo"
    assert meta["queue_position"] == 0
    assert text_of(frames) == "hello there world"
    done = frames[-1]["chunk"]["metadata"]
    assert done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == 3
    assert set(done["timings"]) == {"ttft_ms", "tokens_per_s", "total_ms"}


async def test_seed_003_alias(client: ProtocolClient) -> None:
    await client.send({"action": "chat", "payload": {"text": "legacy form"}, "request_id": "old"})
    frames = await client.until("old")
    assert text_of(frames) == "legacy form"


async def test_a_session_continues_and_is_listed(
    server: RunningServer, client: ProtocolClient
) -> None:
    first = await client.chat("r1", "one")
    session_id = first[0]["chunk"]["metadata"]["session_id"]
    second = await client.chat("r2", "two", session_id=session_id)
    assert second[0]["chunk"]["metadata"]["session_id"] == session_id
    assert not second[0]["chunk"]["metadata"]["created_session"]
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        messages = (await http.get(f"/sessions/{session_id}/messages")).json()
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "one"),
        ("assistant", "one"),
        ("user", "two"),
        ("assistant", "two"),
    ]
    assert messages[-1]["id"] == second[-1]["chunk"]["metadata"]["message_id"]


async def test_requests_interleave_without_mixing(client: ProtocolClient) -> None:
    texts = {f"r{i}": " ".join(f"w{i}-{j}" for j in range(8)) for i in range(4)}
    for request_id, text in texts.items():
        await client.send(
            {
                "type": "chat",
                "request_id": request_id,
                "text": text,
                "options": {"token_delay_ms": 5},
            }
        )
    for request_id in texts:
        await client.until(request_id)
    for request_id, text in texts.items():
        frames = client.frames[request_id]
        assert [f["seq"] for f in frames] == list(range(len(frames)))
        assert text_of(frames) == text
    # They really ran at once: some request's chunk came before another's processing ended it.
    order = [f["request_id"] for f in client.order if f["status"] == "chunk"]
    assert order != sorted(order, key=list(texts).index)


async def test_cancel_completes_as_cancelled(server: RunningServer, client: ProtocolClient) -> None:
    words = " ".join(f"w{i}" for i in range(200))
    await client.send(
        {"type": "chat", "request_id": "long", "text": words, "options": {"token_delay_ms": 20}}
    )
    await client.until("long", "chunk")
    await client.send({"type": "cancel", "request_id": "long"})
    frames = await client.until("long")
    final = frames[-1]
    assert final["status"] == "complete"
    assert final["chunk"]["metadata"]["finish_reason"] == "cancelled"
    partial = text_of(frames)
    assert 0 < len(partial) < len(words)
    session_id = frames[0]["chunk"]["metadata"]["session_id"]
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        messages = (await http.get(f"/sessions/{session_id}/messages")).json()
    assert messages[-1]["content"] == partial
    assert messages[-1]["status"] == "cancelled"
    # A cancel for a request that already ended is quietly accepted; an unknown one is not found.
    await client.send({"type": "cancel", "request_id": "long"})
    await client.send({"type": "cancel", "request_id": "never"})
    error = (await client.until("never"))[-1]
    assert error["error"]["code"] == "not_found"
    assert client.frames["long"] == frames


async def test_tool_call_through_the_socket(client: ProtocolClient) -> None:
    frames = await client.chat("t", CALC)
    tools = [f for f in frames if f["status"] == "tool"]
    assert [t["chunk"]["type"] for t in tools] == ["tool_call", "tool_result"]
    assert tools[0]["chunk"]["data"]["name"] == "calculator"
    assert tools[1]["chunk"]["data"]["result"] == "42"
    assert tools[1]["chunk"]["data"]["duration_ms"] >= 0
    assert "42" in text_of(frames)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "bad_request"),
        (json.dumps({"type": "dance", "request_id": "x"}), "bad_request"),
        (json.dumps({"type": "chat", "request_id": "x"}), "bad_request"),
        (json.dumps({"type": "chat", "request_id": "x", "text": ["a"]}), "bad_request"),
        (
            json.dumps({"type": "chat", "request_id": "x", "text": "hi", "session_id": "no"}),
            "not_found",
        ),
        (json.dumps({"type": "chat", "request_id": "x", "text": "x" * 100_001}), "too_large"),
        (json.dumps({"type": "resume", "request_id": "x", "after_seq": 0}), "not_found"),
        (json.dumps({"type": "resume", "request_id": "x", "after_seq": "0"}), "bad_request"),
        (json.dumps({"type": "resume", "after_seq": 0}), "bad_request"),
        (json.dumps({"type": "cancel"}), "bad_request"),
        (
            '{"type": "chat", "request_id": "x", "text": "hi", "options": {"seed": NaN}}',
            "bad_request",
        ),
    ],
)
async def test_bad_input_gets_an_error_and_the_socket_lives(
    client: ProtocolClient, frame: str, code: str
) -> None:
    await client.send(frame)
    error = await client.next_frame()
    assert error["status"] == "error"
    assert error["error"]["code"] == code
    assert error["error"]["message"]
    if '"request_id"' in frame:
        assert error["request_id"] == "x"
    frames = await client.chat("after", "still here")
    assert text_of(frames) == "still here"


async def test_ping_pong(client: ProtocolClient) -> None:
    await client.send({"type": "ping", "request_id": "p"})
    assert await client.next_frame() == {"request_id": "p", "seq": 0, "status": "pong"}
    await client.send({"type": "ping"})
    pong = await client.next_frame()
    assert pong["status"] == "pong"
    assert pong["request_id"]


async def test_a_running_request_id_cannot_be_reused(client: ProtocolClient) -> None:
    await client.send(
        {
            "type": "chat",
            "request_id": "dup",
            "text": "a b c d e f",
            "options": {"token_delay_ms": 20},
        }
    )
    await client.until("dup", "processing")
    await client.send({"type": "chat", "request_id": "dup", "text": "again"})
    frames = await client.until("dup", "error")
    # The refusal answers the frame just sent, outside the request's stream: no seq.
    assert frames[-1] == {
        "request_id": "dup",
        "status": "error",
        "error": {"code": "conflict", "message": "request 'dup' is already running"},
    }
    await client.send({"type": "ping", "request_id": "dup"})
    frames = await client.until("dup", "complete")
    own = [f for f in frames if "seq" in f]
    assert [f["status"] for f in frames if "seq" not in f] == ["error", "pong"]
    assert [f["seq"] for f in own] == list(range(len(own)))
    assert text_of(frames) == "a b c d e f"
    # Nor is it in the journal: a resume replays the request's own frames, and only those.
    await client.send({"type": "resume", "request_id": "dup"})
    client.frames.pop("dup")
    assert await client.until("dup") == own


async def test_a_refused_chats_id_is_free_once_its_error_arrives(client: ProtocolClient) -> None:
    """The TypeScript client sends a chat refused `not_found` again at once (a resume of a chat
    the server never got answers so). The error must come in the commit that ends the
    request's journal, or the resend finds it still running: `conflict` (once in two here,
    hidden by permessage-deflate's delay)."""
    for attempt in range(20):
        request_id = f"refused-{attempt}"
        chat = {"type": "chat", "request_id": request_id, "text": "hi", "session_id": "nope"}
        codes = []
        for _ in range(2):
            await client.send(chat)
            error = (await client.until(request_id, "error"))[-1]["error"]
            assert isinstance(error, dict)
            codes.append(error["code"])
            client.frames.pop(request_id)
        assert codes == ["not_found", "not_found"], attempt


async def test_requests_per_socket_are_bounded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"limits.max_requests_per_socket": 2})
    async with serve_app(settings) as server, connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        for request_id in ("a", "b", "c"):
            await client.send(
                {
                    "type": "chat",
                    "request_id": request_id,
                    "text": "x y z",
                    "options": {"token_delay_ms": 50},
                }
            )
        assert (await client.until("c"))[-1]["error"]["code"] == "busy"
        await client.until("a")
        await client.until("b")
        assert text_of(await client.chat("d", "room again")) == "room again"


async def test_oversized_frames_close_with_1009(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"limits.max_frame_bytes": 4096})
    async with serve_app(settings) as server, connect(server.ws_url) as ws:
        await ws.send(json.dumps({"type": "chat", "request_id": "big", "text": "x" * 8000}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_closing_the_socket_mid_answer_stores_the_partial(tmp_path: Path) -> None:
    # With `on_disconnect: cancel` the answer stops at once; the default ("continue", then a
    # resume from another socket) is in test_ws_resume.py.
    settings = make_settings(tmp_path, **{"reliability.on_disconnect": "cancel"})
    words = " ".join(f"w{i}" for i in range(100))
    async with serve_app(settings) as server:
        async with connect(server.ws_url) as ws:
            client = ProtocolClient(ws)
            await client.send(
                {
                    "type": "chat",
                    "request_id": "gone",
                    "text": words,
                    "options": {"token_delay_ms": 50},
                }
            )
            frames = await client.until("gone", "chunk")
            session_id = frames[0]["chunk"]["metadata"]["session_id"]
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            async with asyncio.timeout(scaled(10)):
                while True:
                    messages = (await http.get(f"/sessions/{session_id}/messages")).json()
                    if len(messages) == 2:
                        break
                    await asyncio.sleep(0.05)  # polling for the server to store it; bounded
    assert messages[-1]["role"] == "assistant"
    assert messages[-1]["status"] == "cancelled"
    assert 0 < len(messages[-1]["content"]) < len(words)
    assert words.startswith(messages[-1]["content"])
