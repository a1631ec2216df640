"""Limits that guard a server from its clients: message rate, idle sockets, slow handshakes.

Each test runs a real uvicorn with the limit turned down so it is met in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, text_of


@contextlib.asynccontextmanager
async def limited(tmp_path: Path, **limits: Any) -> AsyncIterator[RunningServer]:
    settings = make_settings(tmp_path, **{f"limits.{k}": v for k, v in limits.items()})
    async with serve_app(settings) as server:
        yield server


async def close_code(ws: ClientConnection) -> int:
    """Read (and drop) frames until the server closes the socket; its close code."""

    async def drain() -> None:
        async with asyncio.timeout(scaled(10)):
            while True:
                await ws.recv()

    with pytest.raises(websockets.ConnectionClosed) as closed:
        await drain()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


# -- message rate -----------------------------------------------------------------------------


async def test_frames_over_the_rate_are_refused_and_the_socket_lives(tmp_path: Path) -> None:
    async with (
        limited(tmp_path, messages_per_sec=5, message_burst=5, rate_limit_close_after=0) as srv,
        connect(srv.ws_url) as ws,
    ):
        client = ProtocolClient(ws)
        for i in range(12):
            await client.send({"type": "ping", "request_id": f"p{i}"})
        await client.send({"type": "ping"})  # no request_id: refused under ""
        replies = [await client.next_frame() for _ in range(13)]
        pongs = [f for f in replies if f["status"] == "pong"]
        refused = [f for f in replies if f["status"] == "error"]
        assert 5 <= len(pongs) <= 6  # the burst (and what trickled in meanwhile)
        assert {f["error"]["code"] for f in refused} == {"rate_limited"}
        assert "limits.messages_per_sec" in refused[0]["error"]["message"]
        assert {f["request_id"] for f in refused} == {f"p{i}" for i in range(len(pongs), 12)} | {""}
        # Back under the rate, the socket works as before.
        deadline = time.monotonic() + scaled(10)
        for attempt in range(1000):
            frames = await client.chat(f"c{attempt}", "still here")
            if frames[-1]["status"] == "complete":
                break
            assert frames[-1]["error"]["code"] == "rate_limited"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)  # the bucket refills at 5/s; bounded by the deadline
        assert text_of(frames) == "still here"


async def test_sustained_abuse_closes_with_1008(tmp_path: Path) -> None:
    async with (
        limited(tmp_path, messages_per_sec=5, message_burst=5, rate_limit_close_after=20) as srv,
        connect(srv.ws_url) as ws,
    ):
        with contextlib.suppress(websockets.ConnectionClosed):
            for i in range(200):
                await ws.send(f'{{"type": "ping", "request_id": "p{i}"}}')
        assert await close_code(ws) == 1008


async def test_the_default_rate_is_far_above_a_busy_client(server: RunningServer) -> None:
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        for i in range(60):  # a burst well over anything a UI sends
            await client.send({"type": "ping", "request_id": f"p{i}"})
        replies = [await client.next_frame() for _ in range(60)]
        assert {f["status"] for f in replies} == {"pong"}


# -- idle sockets -----------------------------------------------------------------------------


async def test_an_idle_socket_is_closed_with_1001(tmp_path: Path) -> None:
    async with limited(tmp_path, idle_timeout_sec=0.3) as srv, connect(srv.ws_url) as ws:
        started = time.monotonic()
        assert await close_code(ws) == 1001
        assert time.monotonic() - started >= 0.25


async def test_a_running_request_keeps_a_quiet_socket_open(tmp_path: Path) -> None:
    async with limited(tmp_path, idle_timeout_sec=0.3) as srv, connect(srv.ws_url) as ws:
        client = ProtocolClient(ws)
        # Its words come 0.5 s apart: longer than the idle timeout, but a request is running.
        frames = await client.chat("slow", "a b c", options={"token_delay_ms": 500})
        assert text_of(frames) == "a b c"
        assert frames[-1]["status"] == "complete"
        assert await close_code(ws) == 1001  # and once it is done, idleness counts again


async def test_ping_frames_keep_an_idle_socket_open(tmp_path: Path) -> None:
    async with limited(tmp_path, idle_timeout_sec=0.5) as srv, connect(srv.ws_url) as ws:
        client = ProtocolClient(ws)
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 1.5:  # three idle timeouts
            await client.send({"type": "ping", "request_id": f"k{i}"})
            assert (await client.next_frame())["status"] == "pong"
            i += 1
            await asyncio.sleep(0.2)  # a client's keep-alive period, shorter than the timeout
        assert text_of(await client.chat("c", "alive")) == "alive"


# -- slow handshakes (slowloris) --------------------------------------------------------------

HANDSHAKE = 0.5


async def dropped_after(server: RunningServer, *chunks: bytes, every: float = 0.0) -> bytes:
    """Send `chunks` (one every `every` seconds, forever if `every`); return all the server said
    before closing the connection, asserting it waited about the handshake timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def dribble() -> None:
        with contextlib.suppress(ConnectionError):
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
            while every:
                await asyncio.sleep(every)  # the attack: one header line now and then
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()

    started = time.monotonic()
    sender = asyncio.create_task(dribble())
    try:
        said = await asyncio.wait_for(reader.read(), scaled(10))
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
    elapsed = time.monotonic() - started
    assert HANDSHAKE * 0.8 <= elapsed <= HANDSHAKE + scaled(5)
    return said


@pytest.fixture
async def slow_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with limited(tmp_path, handshake_timeout_sec=HANDSHAKE) as server:
        yield server


async def test_a_silent_connection_is_dropped(slow_server: RunningServer) -> None:
    said = await dropped_after(slow_server)
    assert said.startswith(b"HTTP/1.1 408 ")


async def test_a_partial_request_line_is_dropped(slow_server: RunningServer) -> None:
    said = await dropped_after(slow_server, b"GET /health HT")
    assert said.startswith(b"HTTP/1.1 408 ")


async def test_dribbled_headers_are_dropped(slow_server: RunningServer) -> None:
    said = await dropped_after(
        slow_server, b"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n", every=0.05
    )
    assert said.startswith(b"HTTP/1.1 408 ")


async def test_the_next_request_on_a_keep_alive_connection_is_timed_too(
    slow_server: RunningServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", slow_server.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(10))
        assert head.startswith(b"HTTP/1.1 200 ")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        started = time.monotonic()
        writer.write(b"GET /health HTTP/1.1\r\nHo")  # and never the rest
        said = await asyncio.wait_for(reader.read(), scaled(10))
        assert said.startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started >= HANDSHAKE * 0.8
    finally:
        writer.close()


async def test_open_sockets_outlive_the_handshake_timeout(slow_server: RunningServer) -> None:
    async with connect(slow_server.ws_url) as ws:
        client = ProtocolClient(ws)
        # Prove a negative: stay quiet for twice the handshake timeout, then use the socket.
        await asyncio.sleep(HANDSHAKE * 2)
        await client.send({"type": "ping", "request_id": "p"})
        assert (await client.next_frame())["status"] == "pong"
        assert text_of(await client.chat("c", "fine")) == "fine"
