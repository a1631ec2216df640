"""Reliability with real `tether serve` processes: SIGTERM drains, kill -9 loses nothing acked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.support.servers import ServerProcess, tether_serve
from tests.support.timeouts import scaled
from tests.support.wsclient import Frame, ProtocolClient, resume_frame, resume_token, text_of

pytestmark = pytest.mark.e2e

CALC = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


def chat_frame(request_id: str, text: str, delay_ms: int) -> dict[str, Any]:
    return {
        "type": "chat",
        "request_id": request_id,
        "text": text,
        "options": {"token_delay_ms": delay_ms},
    }


def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


async def close_code(ws: ClientConnection) -> int:
    """Wait for the server to close the socket (no frame may come first); its close code."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), scaled(30))
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def wait_refused(server: ServerProcess) -> None:
    """Wait until the server stops accepting connections (its shutdown has begun)."""
    async with asyncio.timeout(scaled(10)):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            except (ConnectionRefusedError, ConnectionResetError):
                return  # (reset: the listener closed with this connection in its backlog)
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.02)  # polling another process; bounded by the timeout


def wait_exit(server: ServerProcess) -> int:
    return server.process.wait(timeout=scaled(30))


# -- SIGTERM --------------------------------------------------------------------------------


async def test_sigterm_lets_the_answer_finish_then_closes_with_1001(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    text = words(30)  # 30 words at 50 ms: 1.5 s, well inside the 10 s drain
    with tether_serve(tmp_path, "--db", str(db), "--engine", "echo") as server:
        async with connect(server.ws_url) as ws, connect(server.ws_url) as idle:
            client = ProtocolClient(ws)
            await client.send(chat_frame("slow", text, 50))
            await client.until("slow", "chunk")
            server.process.send_signal(signal.SIGTERM)
            await wait_refused(server)
            # Draining: no new work, but the running answer goes on to its end.
            await client.send(chat_frame("late", "too late", 0))
            frames = await client.until("slow")
            assert (await client.until("late"))[-1]["error"]["code"] == "busy"
            assert await close_code(ws) == 1001
            assert await close_code(idle) == 1001
        assert wait_exit(server) == 0
        log = server.log()
    assert frames[-1]["status"] == "complete"
    assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "stop"
    assert text_of(frames) == text
    message_id = frames[-1]["chunk"]["metadata"]["message_id"]
    assert query(db, "SELECT status, content FROM messages WHERE id = ?", message_id) == [
        ("complete", text)
    ]
    journal = query(db, "SELECT frame FROM events WHERE request_id = 'slow' ORDER BY seq")
    assert [json.loads(row[0]) for row in journal] == frames
    assert "server.draining" in log


async def test_sigterm_cancels_what_outlasts_the_drain(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    text = words(400)  # 400 words at 50 ms: 20 s, far past a 0.5 s drain
    env = {"TETHER_RELIABILITY__DRAIN_TIMEOUT_SEC": "0.5"}
    with tether_serve(tmp_path, "--db", str(db), "--engine", "echo", env=env) as server:
        async with connect(server.ws_url) as ws:
            client = ProtocolClient(ws)
            await client.send(chat_frame("long", text, 50))
            await client.until("long", "chunk")
            server.process.send_signal(signal.SIGTERM)
            frames = await client.until("long")
            assert await close_code(ws) == 1001
        assert wait_exit(server) == 0
    final = frames[-1]
    assert final["status"] == "complete"
    assert final["chunk"]["metadata"]["finish_reason"] == "cancelled"
    partial = text_of(frames)
    assert 0 < len(partial) < len(text)
    assert query(
        db,
        "SELECT status, content FROM messages WHERE id = ?",
        final["chunk"]["metadata"]["message_id"],
    ) == [("cancelled", partial)]


# -- kill -9 --------------------------------------------------------------------------------


def check_consistent(db: Path, acked: dict[str, str], completed: dict[str, str]) -> None:
    """Every acknowledged question is stored, every turn closed, every `complete` stored."""
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert query(db, "SELECT count(*) FROM turns") == [(0,)]
    rows = query(db, "SELECT id, parent_id, role, status, tool_calls FROM messages")
    by_id = {row[0]: row for row in rows}
    children: dict[str, list[str]] = {}
    for message_id, parent_id, *_ in rows:
        if parent_id is not None:
            children.setdefault(parent_id, []).append(message_id)
    for user_id in acked:
        assert user_id in by_id, f"acknowledged user message {user_id} is gone"
    for message_id, _, role, _, _ in rows:
        if role != "user":
            continue
        # Walk the turn: assistant (tool calls) -> tool results -> ... -> a final answer.
        ends = []
        pending = list(children.get(message_id, []))
        while pending:
            child = by_id[pending.pop()]
            if child[2] == "assistant" and child[4] is None:
                ends.append(child[3])
            elif child[2] != "user":
                pending.extend(children.get(child[0], []))
        assert ends, f"the turn of {message_id} was never closed"
        assert set(ends) <= {"complete", "cancelled", "interrupted", "error"}
    for answer_id, status in completed.items():
        assert by_id[answer_id][3] == status


async def test_kill_9_at_any_moment_loses_no_acknowledged_message(tmp_path: Path) -> None:
    db = tmp_path / "kill.db"
    acked: dict[str, str] = {}  # user_message_id -> request_id
    completed: dict[str, str] = {}  # answers a client saw `complete` for -> status
    running: dict[str, list[Frame]] = {}  # requests running when the process died: seen frames
    recovered = 0
    for iteration in range(12):
        with tether_serve(tmp_path, "--db", str(db), "--engine", "echo") as server:
            # The previous process was killed: this one closed its open turns at start-up.
            check_consistent(db, acked, completed)
            async with connect(server.ws_url) as ws:
                client = ProtocolClient(ws)
                for request_id, seen in running.items():
                    # The client reconnects and asks for the rest, then for everything again.
                    token = resume_token(seen)
                    rest = await resume(client, request_id, seen[-1]["seq"], token)
                    journal = await resume(client, request_id, -1, token)
                    check_recovered(db, seen, rest, journal)
                    record(journal, acked, completed)
                    recovered += 1
                background = f"b{iteration}"
                await client.send(chat_frame(background, words(200), 20))
                await client.until(background, "processing")
                target = f"a{iteration}"
                if iteration >= 8:
                    # Three requests at once (one calling a tool), killed after a number of
                    # frames picked at random (seeded: a failure replays).
                    await client.send(chat_frame(target, CALC, 0))
                    await client.send(chat_frame(f"c{iteration}", words(30), 5))
                    stop_after = len(client.order) + random.Random(iteration).randint(0, 60)
                    while len(client.order) < stop_after:
                        await client.next_frame()
                else:
                    kind = iteration % 4
                    if kind == 3:
                        await client.send(chat_frame(target, CALC, 0))
                    else:
                        await client.send(chat_frame(target, words(20), 10))
                    wanted = {0: "processing", 1: "chunk", 2: "complete", 3: "tool"}[kind]
                    await client.until(target, wanted)
                    if kind == 1:
                        while len(client.frames[target]) < 2 + iteration:  # more chunks each time
                            await client.next_frame()
                server.process.kill()
                assert wait_exit(server) == -signal.SIGKILL
            for request_frames in client.frames.values():
                record(request_frames, acked, completed)
            running = {
                request_id: list(request_frames)
                for request_id, request_frames in client.frames.items()
                if request_frames and request_frames[-1]["status"] not in ("complete", "error")
            }
    with tether_serve(tmp_path, "--db", str(db), "--engine", "echo"):
        check_consistent(db, acked, completed)
    assert len(acked) >= 16
    assert recovered >= 12  # every round killed at least its background request mid-answer
    kept = query(db, "SELECT content FROM messages WHERE status = 'interrupted'")
    assert any(content for (content,) in kept), "no interrupted answer kept its text"


async def resume(
    client: ProtocolClient, request_id: str, after_seq: int, token: str
) -> list[Frame]:
    client.frames.pop(request_id, None)
    await client.send(resume_frame(request_id, after_seq, token))
    return list(await client.until(request_id))


def answer_text(frames: list[Frame]) -> str:
    """The text chunks after the last tool frame: what the interrupted answer says."""
    tools = [i for i, frame in enumerate(frames) if frame["status"] == "tool"]
    return text_of(frames[tools[-1] + 1 :] if tools else frames)


def check_recovered(db: Path, seen: list[Frame], rest: list[Frame], journal: list[Frame]) -> None:
    """A request the process died in: every frame its client was sent is in its journal, a
    resume sends the rest once, and the journal ends in a `complete` naming the stored answer."""
    assert [frame["seq"] for frame in journal] == list(range(len(journal)))
    assert journal[: len(seen)] == seen
    assert rest == journal[len(seen) :]
    final = journal[-1]
    assert final["status"] == "complete"
    meta = final["chunk"]["metadata"]
    stored = query(db, "SELECT status, content FROM messages WHERE id = ?", meta["message_id"])
    if not meta.get("recovered"):
        # Its own `complete` was journaled, then the kill came before it reached the socket
        # (journal before send): the answer is stored as that frame says.
        assert meta["finish_reason"] != "interrupted"
        assert stored[0][0] in ("complete", "cancelled")
    elif meta["finish_reason"] == "interrupted":
        assert stored == [("interrupted", answer_text(journal))]
        assert answer_text(journal).startswith(answer_text(seen))
    else:  # answered just before the kill, `complete` not yet journaled
        assert stored[0][0] in ("complete", "cancelled")


def record(frames: list[Frame], acked: dict[str, str], completed: dict[str, str]) -> None:
    for frame in frames:
        if frame["status"] == "processing":
            acked[frame["chunk"]["metadata"]["user_message_id"]] = frame["request_id"]
        elif frame["status"] == "complete":
            meta = frame["chunk"]["metadata"]
            reason = meta["finish_reason"]
            status = reason if reason in ("cancelled", "interrupted") else "complete"
            completed[meta["message_id"]] = status


async def read_until_closed(client: ProtocolClient) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await client.next_frame()


def question(request_id: str) -> str:
    return f"question {request_id} " + words(10)


async def retry(client: ProtocolClient, request_id: str) -> list[Frame]:
    """What a client does that never learned the outcome: send the same chat again."""
    client.frames.pop(request_id, None)
    await client.send(chat_frame(request_id, question(request_id), 1))
    return list(await client.until(request_id))


def check_retried(db: Path, request_id: str, seen: list[Frame], frames: list[Frame]) -> str:
    """The chat of a request killed as it was asked, sent again after the restart: if its
    question was stored, it replays that request's outcome (what the client saw first);
    else it runs now. Returns which."""
    assert [frame["seq"] for frame in frames] == list(range(len(frames)))
    assert frames[: len(seen)] == seen
    stored = query(
        db, "SELECT id FROM messages WHERE role = 'user' AND content = ?", question(request_id)
    )
    final = frames[-1]
    if not stored:  # the kill came first: nothing of it was left
        meta = final["chunk"]["metadata"]
        assert (meta["finish_reason"], text_of(frames)) == ("stop", question(request_id))
        return "never stored"
    if final["status"] == "error":  # stored, but not even `processing` was journaled
        error = final["error"]
        assert (error["code"], len(frames)) == ("interrupted", 1), final
        assert [(error["user_message_id"],)] == stored
        answer = query(db, "SELECT status FROM messages WHERE id = ?", error["message_id"])
        assert answer[0][0] in ("interrupted", "complete")
        return "stored, never accepted"
    assert [(frames[0]["chunk"]["metadata"]["user_message_id"],)] == stored
    if final["chunk"]["metadata"].get("recovered"):
        return "cut off"
    return "answered before the kill"


async def test_a_question_killed_as_it_was_asked_is_answered_once(tmp_path: Path) -> None:
    # Killed 0-30 ms after the chat frames: before the question is stored, after it is stored
    # but before its first frame is journaled, or after `processing`. Whichever, after the
    # restart the client gets the request's outcome (by `resume` with its token if it saw
    # `processing`, else by sending the same chat again) and the question is stored once.
    db = tmp_path / "ask.db"
    rng = random.Random(6)
    asked: dict[str, list[Frame]] = {}  # the last round's requests: the frames their client saw
    outcomes: dict[str, int] = {}
    for iteration in range(10):
        with tether_serve(tmp_path, "--db", str(db), "--engine", "echo") as server:
            assert query(db, "SELECT count(*) FROM turns") == [(0,)]
            async with connect(server.ws_url) as ws:
                client = ProtocolClient(ws)
                for request_id, seen in asked.items():
                    if seen:  # it saw `processing`: resume with the token, from the start
                        journal = await resume(client, request_id, -1, resume_token(seen))
                        assert journal[: len(seen)] == seen
                    frames = await retry(client, request_id)
                    if seen:  # the retry is idempotent: the same journal again
                        assert frames == journal
                    kind = check_retried(db, request_id, seen, frames)
                    outcomes[kind] = outcomes.get(kind, 0) + 1
                    assert await retry(client, request_id) == frames  # and again: the same
            if iteration == 9:
                break
            async with connect(server.ws_url) as ws:
                client = ProtocolClient(ws)
                ids = [f"q{iteration}.{i}" for i in range(4)]
                for request_id in ids:
                    await client.send(chat_frame(request_id, question(request_id), 2))
                reader = asyncio.create_task(read_until_closed(client))
                await asyncio.sleep(rng.uniform(0, 0.030))  # the kill's moment, not a wait
                server.process.kill()
                assert wait_exit(server) == -signal.SIGKILL
                await reader
            asked = {request_id: list(client.frames.get(request_id, [])) for request_id in ids}
    counts = query(
        db, "SELECT content, count(*) FROM messages WHERE role = 'user' GROUP BY content"
    )
    assert len(counts) == 36
    assert {count for _, count in counts} == {1}, "a question was stored twice"
    assert sum(outcomes.values()) == 36
    print("outcomes of the killed requests:", outcomes)


# -- one server per database ------------------------------------------------------------------


async def test_a_second_server_on_the_same_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with tether_serve(tmp_path, "--db", str(db), "--engine", "echo") as first:
        async with connect(first.ws_url) as ws:
            client = ProtocolClient(ws)
            await client.send(chat_frame("long", words(40), 20))
            await client.until("long", "chunk")
            # Its start-up recovery would close the first server's running turn: refused.
            with (
                pytest.raises(RuntimeError) as refused,
                tether_serve(tmp_path, "--db", str(db), "--engine", "echo"),
            ):
                pass
            message = str(refused.value)
            assert "exited with 3" in message
            assert f"{db} is in use by another Tether server (pid {first.process.pid})" in message
            frames = await client.until("long")
    assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "stop"
    assert text_of(frames) == words(40)
