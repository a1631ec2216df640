"""Two `tether serve` replicas on one real PostgreSQL database: what one stores the other
serves, and a replica killed mid-answer is recovered by the other once its lease expires."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.postgres import PostgresServer
from tests.support.servers import (
    ServerProcess,
    free_port,
    stored_answer,
    tether_bin,
    tether_serve,
)
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, resume_frame, resume_token, text_of

pytestmark = pytest.mark.e2e

LEASE_SEC = 1.0


def replica_env(url: str) -> dict[str, str]:
    return {
        "TETHER_STORAGE__URL": url,
        "TETHER_STORAGE__LEASE_SEC": str(LEASE_SEC),
        "TETHER_ENGINE__NAME": "echo",
    }


@contextmanager
def two_replicas(folder: Path, url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with ExitStack() as stack:
        a = stack.enter_context(tether_serve(folder, env=replica_env(url)))
        b = stack.enter_context(tether_serve(folder, env=replica_env(url)))
        yield a, b


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two replicas on one database, shared by this module's tests (starting a pair takes
    seconds); each test uses request ids and sessions of its own."""
    url = asyncio.run(postgres.create_database())
    with two_replicas(tmp_path_factory.mktemp("replicas"), url) as pair:
        yield pair


async def test_what_one_replica_stores_the_other_serves(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    async with connect(a.ws_url) as ws:
        frames = await ProtocolClient(ws).chat("r1", "hello from a")
    session_id = frames[0]["chunk"]["metadata"]["session_id"]
    async with httpx.AsyncClient(base_url=b.http_url) as http:
        listed = (await http.get("/sessions")).json()
        assert listed[0]["id"] == session_id  # the newest
        messages = (await http.get(f"/sessions/{session_id}/messages")).json()
        assert [(m["role"], m["content"]) for m in messages] == [
            ("user", "hello from a"),
            ("assistant", "hello from a"),
        ]
        found = (await http.get("/search", params={"q": "hello from"})).json()["results"]
        assert {hit["session_id"] for hit in found} == {session_id}
    # The session goes on on b, after a's answer.
    async with connect(b.ws_url) as ws:
        more = await ProtocolClient(ws).chat("r2", "and from b", session_id=session_id)
    assert more[-1]["status"] == "complete"
    async with httpx.AsyncClient(base_url=a.http_url) as http:
        messages = (await http.get(f"/sessions/{session_id}/messages")).json()
    assert [m["content"] for m in messages] == [
        "hello from a",
        "hello from a",
        "and from b",
        "and from b",
    ]
    # A finished request resumes on either replica, its journal being shared.
    async with connect(b.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send(resume_frame("r1", -1, resume_token(frames)))
        assert await client.until("r1") == frames


async def test_a_replica_killed_mid_answer_is_recovered_by_the_other(
    tmp_path: Path, postgres_url: str
) -> None:
    with two_replicas(tmp_path, postgres_url) as (a, b):
        await kill_one_and_resume_on_the_other(a, b)


async def kill_one_and_resume_on_the_other(a: ServerProcess, b: ServerProcess) -> None:
    text = " ".join(f"w{i}" for i in range(400))
    async with connect(a.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send(
            {
                "type": "chat",
                "request_id": "long",
                "text": text,
                "options": {"token_delay_ms": 20},
            }
        )
        while len(client.frames["long"]) < 5:  # processing and a few chunks
            await client.next_frame()
        a.process.kill()
        a.process.wait()
    seen = list(client.frames["long"])
    session_id = seen[0]["chunk"]["metadata"]["session_id"]
    # b recovers a's turn once a's lease expires (within a lease and a recovery interval).
    async with asyncio.timeout(scaled(10 * LEASE_SEC)):
        answer = await stored_answer(b, session_id)
    assert answer["status"] == "interrupted"
    async with connect(b.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send(resume_frame("long", seen[-1]["seq"], resume_token(seen)))
        rest = await client.until("long")
    journal = seen + rest
    assert [frame["seq"] for frame in journal] == list(range(len(journal)))
    final = journal[-1]
    assert (final["status"], final["chunk"]["metadata"]["finish_reason"]) == (
        "complete",
        "interrupted",
    )
    assert final["chunk"]["metadata"]["message_id"] == answer["id"]
    assert answer["content"] == text_of(journal)
    assert text.startswith(answer["content"])
    assert "turn.interrupted" in b.log()


def long_chat(request_id: str, words: int, delay_ms: int) -> dict[str, object]:
    return {
        "type": "chat",
        "request_id": request_id,
        "text": " ".join(f"w{i}" for i in range(words)),
        "options": {"token_delay_ms": delay_ms},
    }


async def test_a_request_resumed_on_the_other_replica_follows_it_live(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    chat = long_chat("live", 150, 20)
    async with connect(a.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send(chat)
        while len(client.frames["live"]) < 4:
            await client.next_frame()
    seen = list(client.frames["live"])  # the socket to a is gone; the answer goes on there
    async with connect(b.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send(resume_frame("live", seen[-1]["seq"], resume_token(seen)))
        rest = await client.until("live")
        # Before its end b had frames of it to send: it followed a's answer as it came.
        assert len(rest) > 2
    frames = seen + rest
    assert [frame["seq"] for frame in frames] == list(range(len(frames)))  # each once
    final = frames[-1]
    assert (final["status"], final["chunk"]["metadata"]["finish_reason"]) == ("complete", "stop")
    assert text_of(frames) == chat["text"]
    session_id = frames[0]["chunk"]["metadata"]["session_id"]
    answer = await stored_answer(b, session_id)
    assert (answer["id"], answer["content"]) == (
        final["chunk"]["metadata"]["message_id"],
        chat["text"],
    )


async def test_a_running_requests_id_is_a_conflict_on_the_other_replica(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    async with connect(a.ws_url) as on_a, connect(b.ws_url) as on_b:
        first, second = ProtocolClient(on_a), ProtocolClient(on_b)
        await first.send(long_chat("twice", 100, 20))
        await first.until("twice", "processing")
        await second.send(long_chat("twice", 100, 20))
        [refusal] = await second.until("twice", "error")
        assert refusal["error"]["code"] == "conflict"
        assert (await first.until("twice"))[-1]["status"] == "complete"


async def test_cancel_on_the_other_replica_reaches_the_one_running_it(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    async with connect(a.ws_url) as on_a, connect(b.ws_url) as on_b:
        starter, other = ProtocolClient(on_a), ProtocolClient(on_b)
        await starter.send(long_chat("stop", 400, 20))
        processing = await starter.until("stop", "chunk")
        token = resume_token(processing)
        await other.send(resume_frame("stop", -1, token))
        await other.until("stop", "chunk")  # b follows it
        await other.send({"type": "cancel", "request_id": "stop", "token": token})
        ended_on_b = await other.until("stop")
        ended_on_a = await starter.until("stop")
    for frames in (ended_on_a, ended_on_b):
        assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "cancelled"
    assert [f["seq"] for f in ended_on_b] == list(range(len(ended_on_b)))
    assert ended_on_b == ended_on_a
    session_id = ended_on_a[0]["chunk"]["metadata"]["session_id"]
    answer = await stored_answer(a, session_id)
    assert answer["status"] == "cancelled"


async def test_two_hundred_turns_spread_over_both_replicas_lose_nothing(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    """20 sessions, 10 turns each, the turns of every session alternating between the replicas
    (a socket on each per session) and all sent at once: each is answered once, with no error,
    and stored once."""
    async with httpx.AsyncClient(base_url=replicas[0].http_url) as http:
        sessions = [(await http.post("/sessions", json={})).json()["id"] for _ in range(20)]
    async with AsyncExitStack() as stack:
        sockets = [
            [ProtocolClient(await stack.enter_async_context(connect(r.ws_url))) for r in replicas]
            for _ in sessions
        ]
        asked: dict[str, tuple[str, ProtocolClient]] = {}
        for index, session_id in enumerate(sessions):
            for turn in range(10):
                request_id = f"many-{index}-{turn}"
                asked[request_id] = (session_id, sockets[index][turn % 2])
        for request_id, (session_id, client) in asked.items():
            await client.send(
                {
                    "type": "chat",
                    "request_id": request_id,
                    "text": request_id,
                    "session_id": session_id,
                }
            )
        for request_id, (_, client) in asked.items():
            await client.until(request_id)
    for request_id, (_, client) in asked.items():
        frames = client.frames[request_id]
        assert [f["seq"] for f in frames] == list(range(len(frames))), request_id
        assert frames[-1]["status"] == "complete", frames[-1]
        assert text_of(frames) == request_id
    async with httpx.AsyncClient(base_url=replicas[1].http_url) as http:
        for session_id in sessions:
            # Turns of one session go one at a time across the replicas: the whole tree is one
            # chain, each question after the answer before it, each answer under its question.
            tree = (await http.get(f"/sessions/{session_id}/messages?tree=true")).json()
            asked_here = sorted(rid for rid, (sid, _) in asked.items() if sid == session_id)
            assert sorted(m["content"] for m in tree if m["role"] == "user") == asked_here
            assert [m["role"] for m in tree] == ["user", "assistant"] * 10
            for parent, child in itertools.pairwise(tree):
                assert child["parent_id"] == parent["id"]
            answers = [m for m in tree if m["role"] == "assistant"]
            by_id = {m["id"]: m for m in tree}
            assert all(m["content"] == by_id[m["parent_id"]]["content"] for m in answers)


async def new_session(server: ServerProcess) -> str:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        session_id: str = (await http.post("/sessions", json={})).json()["id"]
    return session_id


async def test_a_second_turn_of_a_session_on_the_other_replica_waits_for_the_first(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    session_id = await new_session(a)
    async with connect(a.ws_url) as on_a, connect(b.ws_url) as on_b:
        first, second = ProtocolClient(on_a), ProtocolClient(on_b)
        await first.send({**long_chat("first", 30, 20), "session_id": session_id})
        await first.until("first", "processing")  # a holds the session
        await second.send(
            {"type": "chat", "request_id": "then", "text": "then", "session_id": session_id}
        )
        [queued] = await second.until("then", "queued")
        assert queued["chunk"]["metadata"] == {"queue_position": 1, "waiting_for": "session"}
        ended_first = await first.until("first")
        ended_second = await second.until("then")
    assert ended_first[-1]["status"] == ended_second[-1]["status"] == "complete"
    assert [f["status"] for f in ended_second[:2]] == ["queued", "processing"]
    async with httpx.AsyncClient(base_url=b.http_url) as http:
        tree = (await http.get(f"/sessions/{session_id}/messages?tree=true")).json()
    assert [(m["role"], m["content"]) for m in tree] == [
        ("user", long_chat("first", 30, 20)["text"]),
        ("assistant", long_chat("first", 30, 20)["text"]),
        ("user", "then"),
        ("assistant", "then"),
    ]
    for parent, child in itertools.pairwise(tree):
        assert child["parent_id"] == parent["id"]


async def test_a_turn_waiting_for_the_other_replica_can_be_cancelled(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    session_id = await new_session(a)
    async with connect(a.ws_url) as on_a, connect(b.ws_url) as on_b:
        first, second = ProtocolClient(on_a), ProtocolClient(on_b)
        await first.send({**long_chat("busy", 30, 20), "session_id": session_id})
        await first.until("busy", "processing")
        await second.send(
            {"type": "chat", "request_id": "no", "text": "never", "session_id": session_id}
        )
        await second.until("no", "queued")
        await second.send({"type": "cancel", "request_id": "no"})
        refused = (await second.until("no", "error"))[-1]
        assert refused["error"]["code"] == "cancelled"
        await first.until("busy")
        # The hold went with the first answer: the session goes on, on b.
        assert (await second.chat("after", "after", session_id=session_id))[-1]["status"] == (
            "complete"
        )
    async with httpx.AsyncClient(base_url=a.http_url) as http:
        tree = (await http.get(f"/sessions/{session_id}/messages?tree=true")).json()
    assert [m["content"] for m in tree if m["role"] == "user"] == [
        long_chat("busy", 30, 20)["text"],
        "after",
    ]


def test_a_database_that_cannot_be_reached_stops_start_up_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://tether:hunter2@127.0.0.1:{free_port()}/tether"  # nobody listens
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "MLC_"))}
    result = subprocess.run(
        [*tether_bin(), "serve", "--engine", "echo", "--port", str(free_port())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "TETHER_STORAGE__URL": url},
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tether serve: start-up failed: storage postgresql (storage.url):")
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


async def test_a_turn_waiting_for_a_replica_that_dies_goes_after_its_recovered_answer(
    tmp_path: Path, postgres_url: str
) -> None:
    with two_replicas(tmp_path, postgres_url) as (a, b):
        session_id = await new_session(a)
        async with connect(a.ws_url) as on_a, connect(b.ws_url) as on_b:
            first, second = ProtocolClient(on_a), ProtocolClient(on_b)
            await first.send({**long_chat("dies", 400, 20), "session_id": session_id})
            await first.until("dies", "chunk")
            await second.send(
                {"type": "chat", "request_id": "next", "text": "next", "session_id": session_id}
            )
            await second.until("next", "queued")
            a.process.kill()
            a.process.wait()
            async with asyncio.timeout(scaled(10 * LEASE_SEC)):
                ended = await second.until("next")
        assert ended[-1]["status"] == "complete"
        async with httpx.AsyncClient(base_url=b.http_url) as http:
            tree = (await http.get(f"/sessions/{session_id}/messages?tree=true")).json()
    assert [(m["role"], m["status"]) for m in tree] == [
        ("user", "complete"),
        ("assistant", "interrupted"),
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    for parent, child in itertools.pairwise(tree):
        assert child["parent_id"] == parent["id"]
