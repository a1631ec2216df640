"""What a turn costs the store, over real sockets: its start and its answer are its only
fsynced commits, each carrying its frames; concurrent turns share commits; a retried chat
is told what became of it also while its session is busy."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, text_of
from tether.serving.config import listen_socket
from tether.store.sqlite import SQLiteStore


def chat_frame(request_id: str, text: str, **fields: Any) -> dict[str, Any]:
    return {"type": "chat", "request_id": request_id, "text": text, **fields}


def store_of(server: RunningServer) -> SQLiteStore:
    assert server.app is not None
    store = server.app.state.services.store
    assert isinstance(store, SQLiteStore)
    return store


def journal(server: RunningServer, request_id: str) -> tuple[list[str], bool]:
    """The request's frames as committed, and whether its journal is ended."""
    with contextlib.closing(sqlite3.connect(server.settings.storage.path)) as db:
        frames = db.execute(
            "SELECT frame FROM events WHERE request_id = ? ORDER BY seq", (request_id,)
        ).fetchall()
        (ended,) = db.execute(
            "SELECT ended_at IS NOT NULL FROM journals WHERE request_id = ?", (request_id,)
        ).fetchone()
    return [frame for (frame,) in frames], bool(ended)


async def test_a_turn_is_two_fsynced_commits_that_carry_its_frames(server: RunningServer) -> None:
    store = store_of(server)
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.chat("warm", "warm up")  # (the first turn reads the agents, the models)
        before = store.stats.transactions, store.stats.durable
        frames = await client.chat("r", "two words")
    assert [f["status"] for f in frames][0 :: len(frames) - 1] == ["processing", "complete"]
    # Its start (with `processing`) and its answer (with its last frames and the journal's
    # end) are fsynced; chunks between them go in journal batches at most, unsynced.
    assert store.stats.durable - before[1] == 2
    assert store.stats.transactions - before[0] <= 3
    texts, ended = journal(server, "r")
    assert ended
    assert len(texts) == len(frames)  # every frame journaled, each once


async def test_concurrent_turns_share_their_commits(server: RunningServer) -> None:
    store = store_of(server)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            ProtocolClient(await stack.enter_async_context(connect(server.ws_url)))
            for _ in range(20)
        ]
        before = store.stats.transactions, store.stats.jobs
        for i, client in enumerate(clients):
            await client.send(chat_frame(f"c{i}", f"question {i}"))
        answers = await asyncio.gather(*(c.until(f"c{i}") for i, c in enumerate(clients)))
    assert all(frames[-1]["status"] == "complete" for frames in answers)
    jobs, transactions = store.stats.jobs - before[1], store.stats.transactions - before[0]
    assert jobs >= 40  # each turn's start and answer, besides journal batches
    assert transactions < jobs  # some commits held several turns' writes


async def test_a_slow_stream_is_committed_at_the_journals_pace(tmp_path: Path) -> None:
    # 30 words, one every 20 ms: unpaced, ~30 journal commits (each token slower than a
    # commit). At a pace of 200 ms they share a few; the first word is not held (time to first
    # token), nor is the end (the last frames ride with the answer, at once).
    settings = make_settings(tmp_path, **{"reliability.journal_interval_ms": 200})
    words = [f"w{i}" for i in range(30)]
    async with serve_app(settings) as server, connect(server.ws_url) as ws:
        store = store_of(server)
        client = ProtocolClient(ws)
        await client.chat("warm", "warm up")
        before = store.stats.transactions - store.stats.durable
        started = asyncio.get_running_loop().time()
        frames = await client.chat("r", " ".join(words), options={"token_delay_ms": 20})
        took = asyncio.get_running_loop().time() - started
        batches = store.stats.transactions - store.stats.durable - before
    chunks = [f["chunk"]["data"] for f in frames if f["status"] == "chunk"]
    assert "".join(chunks).split() == words
    assert chunks[0].split() == ["w0"]  # urgent: committed and sent without waiting the pace
    assert batches <= took / 0.2 + 2  # at most one unsynced journal commit per 200 ms
    texts, ended = journal(server, "r")
    assert ended
    assert len(texts) == len(frames)


async def test_a_chat_sent_again_while_its_session_is_busy_replays_its_outcome(
    server: RunningServer,
) -> None:
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        first = await client.chat("ask", "asked once")
        session_id = first[0]["chunk"]["metadata"]["session_id"]
        await client.send(
            chat_frame(
                "slow", " ".join(["w"] * 40), session_id=session_id, options={"token_delay_ms": 20}
            )
        )
        await client.until("slow", "processing")
        # The same chat again, now naming the session (busy with "slow"): it would wait in the
        # session's line; it is told the first outcome instead, without waiting.
        client.frames.pop("ask")
        await client.send(chat_frame("ask", "asked once", session_id=session_id))
        again = await client.until("ask")
        assert not client.frames["slow"] or client.frames["slow"][-1]["status"] != "complete"
        await client.until("slow")
    assert again == first
    assert text_of(again) == "asked once"
    with contextlib.closing(sqlite3.connect(server.settings.storage.path)) as db:
        asked = db.execute("SELECT count(*) FROM messages WHERE content = 'asked once'").fetchone()
    assert asked == (2,)  # the question and its (echoed) answer, once each


async def test_connections_to_the_listening_socket_send_small_frames_at_once() -> None:
    # Without TCP_NODELAY, Nagle's algorithm holds each small frame after the first until the
    # client's delayed ACK: ~40 ms a turn. asyncio sets it on connections whose listening
    # socket names IPPROTO_TCP, as `listen_socket` does (uvicorn serves on that socket).
    sock = listen_socket("127.0.0.1", 0)
    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = writer.get_extra_info("socket")
        nodelay.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        assert await asyncio.wait_for(nodelay, scaled(10)) == 1
        writer.close()


@pytest.mark.parametrize("compression", [False, True])
async def test_permessage_deflate_follows_the_setting(tmp_path: Path, compression: bool) -> None:
    async with (
        serve_app(make_settings(tmp_path, **{"server.ws_compression": compression})) as server,
        connect(server.ws_url, compression="deflate") as ws,  # the client offers it
    ):
        negotiated = [extension.name for extension in ws.protocol.extensions]
        frames = await ProtocolClient(ws).chat("r", "still works")
    assert negotiated == (["permessage-deflate"] if compression else [])
    assert text_of(frames) == "still works"
