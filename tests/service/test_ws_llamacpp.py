"""The llamacpp engine behind a real server and socket: queueing, busy, cancel, long sessions.

The model is the tiny random-weight GGUF (SmolLM2's tokenizer and template), so answers are
noise but every path is llama.cpp's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.wsclient import ProtocolClient
from tether.config import Settings

LONG = {"max_tokens": 400, "temperature": 1.0, "seed": 1}


def llama_settings(
    tmp_path: Path, tiny_gguf: Path, max_queue: int, parallel: int = 1, n_ctx: int = 512
) -> Settings:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "tiny.gguf").symlink_to(tiny_gguf)
    return make_settings(
        tmp_path,
        **{
            "engine.name": "llamacpp",
            "engine.dist_path": str(dist),
            "engine.llamacpp.n_threads": 1,
            "engine.llamacpp.n_ctx": n_ctx,
            "engine.llamacpp.max_queue": max_queue,
            "engine.llamacpp.parallel": parallel,
        },
    )


@pytest.fixture
async def llama_server(tmp_path: Path, tiny_gguf: Path) -> AsyncIterator[RunningServer]:
    async with serve_app(llama_settings(tmp_path, tiny_gguf, max_queue=1)) as server:
        yield server


async def test_arrivals_together_get_distinct_places(tmp_path: Path, tiny_gguf: Path) -> None:
    async with (
        serve_app(llama_settings(tmp_path, tiny_gguf, max_queue=8)) as server,
        connect(server.ws_url) as ws,
    ):
        client = ProtocolClient(ws)
        await client.send(
            {"type": "chat", "request_id": "a", "text": "Tell a story.", "options": LONG}
        )
        await client.until("a", "chunk")  # a holds the model
        for request_id in ("b", "c", "d"):  # sent back to back, no waiting in between
            await client.send(
                {"type": "chat", "request_id": request_id, "text": "Hi", "options": LONG}
            )
        places = []
        for request_id in ("b", "c", "d"):
            (processing,) = await client.until(request_id, "processing")
            places.append(processing["chunk"]["metadata"]["queue_position"])
        for request_id in ("a", "b", "c", "d"):
            await client.send({"type": "cancel", "request_id": request_id})
            await client.until(request_id)
    assert sorted(places) == [1, 2, 3]


async def test_a_waiting_turn_hears_its_place_go_down_as_others_finish(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    async with (
        serve_app(llama_settings(tmp_path, tiny_gguf, max_queue=8)) as server,
        connect(server.ws_url) as ws,
    ):
        client = ProtocolClient(ws)
        await client.send(
            {"type": "chat", "request_id": "a", "text": "Tell a story.", "options": LONG}
        )
        await client.until("a", "chunk")  # a holds the model
        short = {"max_tokens": 8}
        for request_id in ("b", "c", "d"):  # each its own session: served in turn
            await client.send(
                {"type": "chat", "request_id": request_id, "text": "Hi", "options": short}
            )
            await client.until(request_id, "processing")
        await client.send({"type": "cancel", "request_id": "a"})
        d_frames = await client.until("d")
    statuses = [frame["status"] for frame in d_frames]
    places = [frame["chunk"]["metadata"]["queue_position"] for frame in d_frames[:3]]
    assert statuses[:3] == ["processing", "queued", "queued"]
    assert places == [3, 2, 1]  # b and c finished before it: it moved up each time
    assert {frame["chunk"]["metadata"]["waiting_for"] for frame in d_frames[1:3]} == {"model"}
    assert statuses[3] == "chunk"
    assert statuses[-1] == "complete"


async def test_with_two_slots_two_turns_stream_at_once(tmp_path: Path, tiny_gguf: Path) -> None:
    async with (
        serve_app(llama_settings(tmp_path, tiny_gguf, max_queue=8, parallel=2)) as server,
        connect(server.ws_url) as ws,
    ):
        client = ProtocolClient(ws)
        await client.send(
            {"type": "chat", "request_id": "a", "text": "Tell a story.", "options": LONG}
        )
        await client.until("a", "chunk")  # a is generating
        await client.send({"type": "chat", "request_id": "b", "text": "Hi", "options": LONG})
        (processing,) = await client.until("b", "processing")
        await client.until("b", "chunk")
        a_running = not any(f["status"] == "complete" for f in client.frames["a"])
        for request_id in ("a", "b"):
            await client.send({"type": "cancel", "request_id": request_id})
            await client.until(request_id)
    assert processing["chunk"]["metadata"]["queue_position"] == 0  # a free slot: no wait
    assert a_running  # b's text came while a was still answering


async def test_a_turn_reports_model_usage_and_timings(llama_server: RunningServer) -> None:
    async with connect(llama_server.ws_url) as ws:
        frames = await ProtocolClient(ws).chat("r1", "Hello!", options={"max_tokens": 5})
    assert frames[0]["chunk"]["metadata"]["model"] == "tiny"
    done = frames[-1]["chunk"]["metadata"]
    assert done["usage"]["prompt_tokens"] > 0
    assert 0 < done["usage"]["completion_tokens"] <= 5
    if done["usage"]["completion_tokens"] == 5:
        assert done["finish_reason"] == "length"
    assert done["timings"]["ttft_ms"] > 0


async def test_requests_queue_for_the_model_and_overflow_is_busy(
    llama_server: RunningServer,
) -> None:
    async with connect(llama_server.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send(
            {"type": "chat", "request_id": "a", "text": "Tell a story.", "options": LONG}
        )
        await client.until("a", "chunk")  # a holds the model
        await client.send({"type": "chat", "request_id": "b", "text": "Hi", "options": LONG})
        (processing,) = await client.until("b", "processing")
        assert processing["chunk"]["metadata"]["queue_position"] == 1
        # a runs, b waits (max_queue 1): c finds the line full.
        await client.send({"type": "chat", "request_id": "c", "text": "Hi", "options": LONG})
        c_frames = await client.until("c")
        for request_id in ("a", "b"):
            await client.send({"type": "cancel", "request_id": request_id})
        a_frames, b_frames = await client.until("a"), await client.until("b")
    # Refused before anything was stored: no `processing`, just the error.
    assert [f["status"] for f in c_frames] == ["error"]
    assert c_frames[-1]["error"]["code"] == "busy"
    assert a_frames[-1]["chunk"]["metadata"]["finish_reason"] == "cancelled"
    assert b_frames[-1]["chunk"]["metadata"]["finish_reason"] == "cancelled"


async def test_a_long_session_never_overflows_the_context(llama_server: RunningServer) -> None:
    """n_ctx is 512: eight turns of ~150 tokens each overflow it, so old turns are trimmed."""
    paragraph = " ".join(["The quick brown fox jumps over the lazy dog."] * 15)
    async with connect(llama_server.ws_url) as ws:
        client = ProtocolClient(ws)
        first = await client.chat("t0", paragraph, options={"max_tokens": 8})
        session_id = first[0]["chunk"]["metadata"]["session_id"]
        trimmed = []
        for turn in range(1, 8):
            frames = await client.chat(
                f"t{turn}", paragraph, session_id=session_id, options={"max_tokens": 8}
            )
            assert frames[-1]["status"] == "complete", frames[-1]
            trimmed.append(frames[-1]["chunk"]["metadata"].get("trimmed_messages", 0))
    assert max(trimmed) > 0
