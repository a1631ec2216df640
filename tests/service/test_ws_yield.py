"""An unwatched answer yields the model to a waiting request (see `tether.runs`).

A local model serves one request at a time, so an answer whose client left would make the next
user wait out `reliability.disconnect_grace_sec` (30 s). The llamacpp tests run the tiny GGUF;
its long answers take a second or two, plenty to queue behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer, make_settings, serve_app, stored_answer
from tests.support.timeouts import scaled
from tests.support.wsclient import Frame, ProtocolClient, resume_frame, resume_token, text_of

LONG = {"max_tokens": 2000, "temperature": 1.0, "seed": 1}
SHORT = {"max_tokens": 5}
WORDS = " ".join(f"w{i}" for i in range(40))


@pytest.fixture
async def llama_server(tmp_path: Path, tiny_gguf: Path) -> AsyncIterator[RunningServer]:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "tiny.gguf").symlink_to(tiny_gguf)
    settings = make_settings(
        tmp_path,
        **{
            "engine.name": "llamacpp",
            "engine.dist_path": str(dist),
            "engine.llamacpp.n_threads": 1,
            "engine.llamacpp.n_ctx": 4096,
        },
    )
    async with serve_app(settings) as server:
        yield server


def chat(request_id: str, options: dict[str, Any], text: str = "Tell a story.") -> Frame:
    return {"type": "chat", "request_id": request_id, "text": text, "options": options}


async def until_unwatched(server: RunningServer, request_id: str) -> None:
    """Wait until the server has seen the last socket watching `request_id` go."""
    assert server.app is not None
    runs = server.app.state.services.runs
    async with asyncio.timeout(scaled(10)):
        while True:
            run = runs.get(request_id)
            if run is None or not run.watchers:
                return
            await asyncio.sleep(0.01)  # polling the server's own state; bounded


async def assert_yielded(server: RunningServer, first: list[Frame], second: list[Frame]) -> None:
    """`first` was cancelled for `second`, which queued behind it and then got the model."""
    assert second[0]["chunk"]["metadata"]["queue_position"] == 1
    assert second[-1]["status"] == "complete"
    answer = await stored_answer(server, first[0]["chunk"]["metadata"]["session_id"])
    assert answer["status"] == "cancelled"
    assert answer["usage"]["completion_tokens"] < LONG["max_tokens"]


async def test_a_request_that_queues_behind_an_unwatched_answer_gets_the_model(
    llama_server: RunningServer,
) -> None:
    async with connect(llama_server.ws_url) as ws:
        first = ProtocolClient(ws)
        await first.send(chat("a", LONG))
        a_frames = await first.until("a", "chunk")  # a holds the model
    await until_unwatched(llama_server, "a")
    async with connect(llama_server.ws_url) as ws:
        b_frames = await ProtocolClient(ws).chat("b", "Hi", options=SHORT)
    await assert_yielded(llama_server, a_frames, b_frames)
    # The cancelled answer resumes to its end like any other.
    async with connect(llama_server.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send(resume_frame("a", -1, resume_token(a_frames)))
        frames = await client.until("a")
    assert frames[: len(a_frames)] == a_frames
    assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "cancelled"


async def test_an_answer_left_while_a_request_waits_yields_at_once(
    llama_server: RunningServer,
) -> None:
    async with connect(llama_server.ws_url) as b_ws:
        second = ProtocolClient(b_ws)
        async with connect(llama_server.ws_url) as a_ws:
            first = ProtocolClient(a_ws)
            await first.send(chat("a", LONG))
            a_frames = await first.until("a", "chunk")
            await second.send(chat("b", SHORT))
            await second.until("b", "processing")  # b waits for a, which is watched: no change
            assert not any(f["status"] == "complete" for f in first.frames["a"])
        # a's client leaves while b waits: a yields now, not after the 30 s grace.
        b_frames = await second.until("b")
    await assert_yielded(llama_server, a_frames, b_frames)


async def test_an_unwatched_answer_nobody_waits_for_runs_on_for_the_grace(
    server: RunningServer,
) -> None:
    # The echo engine has no queue (queue_position 0): other requests never cancel an answer.
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send(chat("alone", {"token_delay_ms": 50}, text=WORDS))
        seen = await client.until("alone", "chunk")
    await until_unwatched(server, "alone")
    async with connect(server.ws_url) as ws:
        other = await ProtocolClient(ws).chat("other", "meanwhile")
        assert other[0]["chunk"]["metadata"]["queue_position"] == 0
        client = ProtocolClient(ws)
        await client.send(resume_frame("alone", seen[-1]["seq"], resume_token(seen)))
        rest = await client.until("alone")
    assert rest[-1]["chunk"]["metadata"]["finish_reason"] == "stop"
    assert text_of(seen + rest) == WORDS
