"""A client that stops reading holds nothing: not its answer, not the other sockets, not memory.

The stalled client (`tests.support.rawws`) does the handshake, sends its frame and never reads,
so the server's buffers fill as with a client that hangs. Answers are long echo answers of wide
words, so that they overflow the kernel's and uvicorn's buffers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from tests.support.rawws import StalledClient
from tests.support.servers import RunningServer, make_settings, serve_app, stored_answer
from tests.support.timeouts import scaled
from tests.support.wsclient import Frame, ProtocolClient, resume_frame, resume_token, text_of

SEND_TIMEOUT_SEC = 0.5
WORD_CHARS = 5000


def buffered_bytes() -> int:
    """The most the kernel buffers for a loopback peer that does not read: about the ceiling
    of the send buffer's autotuning (Linux), far more than uvicorn's own 64 KiB."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


# An answer of wide words, a megabyte more than the buffers hold.
TEXT = " ".join(
    f"{i:05d}".ljust(WORD_CHARS - 1, "x")
    for i in range((buffered_bytes() + (1 << 20)) // WORD_CHARS)
)


def limits(**overrides: Any) -> dict[str, Any]:
    return {
        "limits.max_text_chars": 2 * len(TEXT),
        "limits.max_frame_bytes": 4 * len(TEXT),
        **overrides,
    }


def chat(request_id: str, delay_ms: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "type": "chat",
        "request_id": request_id,
        "text": TEXT,
        "options": {"token_delay_ms": delay_ms},
        **fields,
    }


def seqs(frames: list[Frame]) -> list[int]:
    return [f["seq"] for f in frames]


async def new_session(server: RunningServer) -> str:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        session_id: str = (await http.post("/sessions", json={})).json()["id"]
        return session_id


async def until_sockets(server: RunningServer, count: int) -> None:
    """Wait until the server holds no more than `count` chat sockets (it let the others go)."""
    assert server.app is not None
    sockets = server.app.state.services.sockets
    async with asyncio.timeout(scaled(10)):
        while True:
            if len(sockets) <= count:
                return
            await asyncio.sleep(0.01)  # polling the server's own count; bounded


async def resume(server: RunningServer, request_id: str, after_seq: int, token: str) -> list[Frame]:
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send(resume_frame(request_id, after_seq, token))
        return await client.until(request_id)


async def test_a_client_that_stops_reading_does_not_hold_its_answer(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **limits(**{"limits.send_timeout_sec": SEND_TIMEOUT_SEC}))
    async with serve_app(settings) as server:
        session_id = await new_session(server)
        stalled = await StalledClient.connect(server.ws_url)
        try:
            await stalled.send(chat("stuck", session_id=session_id))
            # Other sockets are served as usual...
            async with connect(server.ws_url) as ws:
                assert text_of(await ProtocolClient(ws).chat("fine", "still here")) == "still here"
            # ...the answer is stored in full although its client takes none of it...
            answer = await stored_answer(server, session_id)
            assert (answer["status"], answer["content"]) == ("complete", TEXT)
            # ...and once a frame has waited SEND_TIMEOUT_SEC, the server lets the socket go.
            await until_sockets(server, 0)
            async with asyncio.timeout(scaled(10)):
                drained = await stalled.drain()  # what the kernel still held, then the end
        finally:
            stalled.close()
        got = drained.frames
        assert seqs(got) == list(range(len(got)))  # what it did get: in order, none twice
        assert got[-1]["status"] != "complete"
        # Like any dropped client, it resumes where it stopped reading.
        rest = await resume(server, "stuck", got[-1]["seq"], resume_token(got))
    assert text_of(got + rest) == TEXT


async def test_a_watcher_that_stops_reading_does_not_slow_the_others(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **limits(**{"limits.send_timeout_sec": SEND_TIMEOUT_SEC}))
    async with serve_app(settings) as server, connect(server.ws_url) as ws:
        owner = ProtocolClient(ws)
        await owner.send(chat("shared", delay_ms=1))
        await owner.until("shared", "processing")
        stalled = await StalledClient.connect(server.ws_url)
        try:
            # A second watcher of the same answer that takes none of it.
            await stalled.send(resume_frame("shared", -1, resume_token(owner.frames["shared"])))
            async with asyncio.timeout(scaled(20)):
                frames = await owner.until("shared")
            await until_sockets(server, 1)  # the stalled one is let go, the owner stays
            async with asyncio.timeout(scaled(10)):
                drained = await stalled.drain()
        finally:
            stalled.close()
    assert seqs(frames) == list(range(len(frames)))
    assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "stop"
    assert text_of(frames) == TEXT
    assert seqs(drained.frames) == list(range(len(drained.frames)))
    assert len(drained.frames) < len(frames)


async def test_a_client_too_far_behind_is_closed_with_1008_and_can_resume(
    tmp_path: Path,
) -> None:
    # The send timeout is long here: the buffer bound drops the client, and the close frame
    # waits behind the frames it has not read, for it to find when it reads again.
    settings = make_settings(tmp_path, **limits(**{"limits.send_buffer_frames": 50}))
    async with serve_app(settings) as server:
        session_id = await new_session(server)
        stalled = await StalledClient.connect(server.ws_url)
        try:
            await stalled.send(chat("behind", session_id=session_id))
            answer = await stored_answer(server, session_id)
            async with asyncio.timeout(scaled(10)):
                drained = await stalled.drain()
        finally:
            stalled.close()
        assert answer["status"] == "complete"
        assert drained.close_code == 1008
        seen = drained.frames
        assert seqs(seen) == list(range(len(seen)))
        # Like any dropped client, it resumes where it stopped reading.
        rest = await resume(server, "behind", seen[-1]["seq"], resume_token(seen))
    frames = seen + rest
    assert seqs(frames) == list(range(len(frames)))
    assert text_of(frames) == TEXT
    assert frames[-1]["status"] == "complete"
