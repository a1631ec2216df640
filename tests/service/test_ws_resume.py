"""`resume` and the disconnect policy over real sockets: no frame lost, none doubled."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from tests.support.servers import RunningServer, make_settings, serve_app, stored_answer
from tests.support.wsclient import Frame, ProtocolClient, resume_frame, resume_token, text_of

WORDS = " ".join(f"w{i}" for i in range(40))


def chat_frame(request_id: str, text: str = WORDS, delay_ms: int = 20) -> dict[str, Any]:
    return {
        "type": "chat",
        "request_id": request_id,
        "text": text,
        "options": {"token_delay_ms": delay_ms},
    }


def seqs(frames: list[Frame]) -> list[int]:
    return [f["seq"] for f in frames]


async def test_resume_on_another_socket_after_a_disconnect(server: RunningServer) -> None:
    async with connect(server.ws_url) as ws:
        first = ProtocolClient(ws)
        await first.send(chat_frame("r"))
        while len(first.frames["r"]) < 5:  # processing and a few chunks, then the client drops
            await first.next_frame()
        seen = list(first.frames["r"])
    # The default policy ("continue"): the answer goes on without a socket, and a resume on a
    # new socket picks it up where the client stopped reading.
    async with connect(server.ws_url) as ws:
        second = ProtocolClient(ws)
        await second.send(resume_frame("r", seen[-1]["seq"], resume_token(seen)))
        rest = await second.until("r")
    frames = seen + rest
    assert seqs(frames) == list(range(len(frames)))
    assert frames[-1]["status"] == "complete"
    assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "stop"
    assert text_of(frames) == WORDS
    answer = await stored_answer(server, frames[0]["chunk"]["metadata"]["session_id"])
    assert (answer["status"], answer["content"]) == ("complete", WORDS)


async def test_resume_races_the_live_frames(server: RunningServer) -> None:
    # Watchers join at different points of a running answer, some from the start, some from
    # the middle: each must get every frame after its after_seq once, in order, to the end.
    async with contextlib.AsyncExitStack() as stack:
        owner = ProtocolClient(await stack.enter_async_context(connect(server.ws_url)))
        await owner.send(chat_frame("race", delay_ms=5))
        token = resume_token(await owner.until("race", "processing"))
        watchers = []
        for after_seq in (-1, 0, 3, 7, -1, 12, 500):
            client = ProtocolClient(await stack.enter_async_context(connect(server.ws_url)))
            await client.send(resume_frame("race", after_seq, token))
            watchers.append((after_seq, client))
        everything = await owner.until("race")
        for after_seq, client in watchers:
            got = await client.until("race")
            # (one that skipped past the end, the answer's chunks being joined, gets the final
            # frame again: every resume ends in one)
            assert got == (everything[after_seq + 1 :] or everything[-1:])
        assert seqs(everything) == list(range(len(everything)))


async def test_an_ended_request_replays_from_the_journal_even_after_a_restart(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    async with serve_app(settings) as server, connect(server.ws_url) as ws:
        frames = await ProtocolClient(ws).chat("done", "one two three")
        token = resume_token(frames)
        # At once after `complete` (the journal may still be on its way to SQLite) and later.
        for after_seq in (-1, len(frames) - 2):
            async with connect(server.ws_url) as other:
                replay = ProtocolClient(other)
                await replay.send(resume_frame("done", after_seq, token))
                assert await replay.until("done") == frames[after_seq + 1 :]
    stored = sqlite3.connect(settings.storage.path).execute(
        "SELECT seq, frame FROM events WHERE request_id = 'done' ORDER BY seq"
    )
    assert [json.loads(frame) for _, frame in stored] == frames
    async with serve_app(settings) as server, connect(server.ws_url) as ws:
        replay = ProtocolClient(ws)
        # The token survives the restart; without it the request is not there.
        await replay.send(resume_frame("done", 0, None))
        await replay.next_frame()
        assert replay.frames.pop("done")[-1]["error"]["code"] == "not_found"
        await replay.send(resume_frame("done", 0, token))
        assert await replay.until("done") == frames[1:]
        # Nothing after the end (or past it): the final frame again, so the client learns the
        # request is over; then the socket goes on as usual (the token once was enough).
        for after_seq in (len(frames) - 1, len(frames) + 5):
            await replay.send(resume_frame("done", after_seq, None))
            assert await replay.next_frame() == frames[-1]
        await replay.send({"type": "ping", "request_id": "p"})
        assert (await replay.next_frame())["status"] == "pong"


async def test_resume_of_an_unknown_request_is_not_found(server: RunningServer) -> None:
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send({"type": "resume", "request_id": "never", "after_seq": -1})
        error = await client.next_frame()
        assert (error["request_id"], error["status"]) == ("never", "error")
        assert error["error"]["code"] == "not_found"


async def test_an_orphaned_answer_is_cancelled_after_the_grace(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"reliability.disconnect_grace_sec": 0.3})
    async with serve_app(settings) as server:
        async with connect(server.ws_url) as ws:
            client = ProtocolClient(ws)
            await client.send(chat_frame("orphan", delay_ms=50))
            seen = await client.until("orphan", "chunk")
        answer = await stored_answer(server, seen[0]["chunk"]["metadata"]["session_id"])
        assert answer["status"] == "cancelled"
        assert 0 < len(answer["content"]) < len(WORDS)
        # The cancelled request resumes to its end, the part nobody saw included.
        async with connect(server.ws_url) as ws:
            client = ProtocolClient(ws)
            await client.send(resume_frame("orphan", -1, resume_token(seen)))
            frames = await client.until("orphan")
    assert frames[: len(seen)] == seen
    assert seqs(frames) == list(range(len(frames)))
    assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "cancelled"
    assert text_of(frames) == answer["content"]


async def test_a_resume_within_the_grace_keeps_the_answer_going(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"reliability.disconnect_grace_sec": 0.5})
    async with serve_app(settings) as server:
        async with connect(server.ws_url) as ws:
            client = ProtocolClient(ws)
            await client.send(chat_frame("back", delay_ms=50))  # 40 words: about 2 s
            seen = await client.until("back", "chunk")
        async with connect(server.ws_url) as ws:
            client = ProtocolClient(ws)
            await client.send(resume_frame("back", -1, resume_token(seen)))
            frames = await client.until("back")
    assert frames[: len(seen)] == seen
    assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "stop"
    assert text_of(frames) == WORDS


async def test_a_request_belongs_to_whoever_holds_its_token(server: RunningServer) -> None:
    async with connect(server.ws_url) as a, connect(server.ws_url) as b:
        owner, other = ProtocolClient(a), ProtocolClient(b)
        await owner.send(chat_frame("shared"))
        token = resume_token(await owner.until("shared", "chunk"))
        # Another socket cannot start a request with a running id...
        await other.send(chat_frame("shared", text="mine"))
        refused = await other.until("shared", "error")
        assert [(f["seq"], f["error"]["code"]) for f in refused] == [(0, "conflict")]
        # ...nor read or stop it without its token: to it, the request is not there.
        for frame in (
            {"type": "resume", "request_id": "shared"},
            {
                "type": "resume",
                "request_id": "shared",
                "token": token[:-1] + ("y" if token.endswith("x") else "x"),
            },
            {"type": "cancel", "request_id": "shared"},
            {"type": "cancel", "request_id": "shared", "token": "guess"},
            {"type": "resume", "request_id": "never", "token": token},
        ):
            await other.send(frame)
            refusal = await other.next_frame()
            assert (refusal["request_id"], refusal["error"]["code"]) == (
                frame["request_id"],
                "not_found",
            )
        assert not any(f["status"] == "complete" for f in owner.frames["shared"])
        # With the token it may (ids are not secrets; the token is).
        await other.send({"type": "cancel", "request_id": "shared", "token": token})
        frames = await owner.until("shared", "complete")
    # The stranger's refusal is not part of the request's stream.
    assert seqs(frames) == list(range(len(frames)))
    assert [f["status"] for f in frames if f["status"] not in ("chunk",)] == [
        "processing",
        "complete",
    ]
    assert frames[-1]["chunk"]["metadata"]["finish_reason"] == "cancelled"


async def test_a_resume_on_the_watching_socket_replays_again(server: RunningServer) -> None:
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        await client.send(chat_frame("again", delay_ms=10))
        await client.until("again", "chunk")
        await client.send({"type": "resume", "request_id": "again", "after_seq": 0})
        frames = await client.until("again")
    # Some frames come twice (they were asked for), but from the resume on, in order, to the end.
    last = frames[-1]["seq"]
    assert sorted({f["seq"] for f in frames}) == list(range(last + 1))
    tail = frames[[i for i, f in enumerate(frames) if f["seq"] == 1][-1] :]
    assert seqs(tail) == list(range(1, last + 1))


async def test_old_journals_are_pruned(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"reliability.journal_max_rows": 5})
    tokens = {}
    async with serve_app(settings) as server, connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        for request_id in ("j0", "j1", "j2"):
            frames = await client.chat(request_id, "two words")
            assert 3 <= len(frames) <= 4  # processing, the text in one chunk or two, complete
            tokens[request_id] = resume_token(frames)
    async with serve_app(settings) as server, connect(server.ws_url) as ws:  # prunes at start
        client = ProtocolClient(ws)
        for request_id in ("j0", "j1"):
            await client.send(resume_frame(request_id, -1, tokens[request_id]))
            assert (await client.until(request_id))[-1]["error"]["code"] == "not_found"
        await client.send(resume_frame("j2", -1, tokens["j2"]))
        assert text_of(await client.until("j2")) == "two words"


async def test_every_frame_is_in_sqlite_before_a_socket_gets_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    calc = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
    with contextlib.closing(sqlite3.connect(settings.storage.path)) as db:

        def journaled(frame: Frame) -> Frame | None:
            row = db.execute(
                "SELECT frame FROM events WHERE request_id = ? AND seq = ?",
                (frame["request_id"], frame["seq"]),
            ).fetchone()
            return None if row is None else dict(json.loads(row[0]))

        async with serve_app(settings) as server, connect(server.ws_url) as ws:
            client = ProtocolClient(ws)
            # Two answers streaming at once, one with a tool call, and a pong inside one: the
            # pong is no frame of the request (no seq, not journaled).
            await client.send(chat_frame("words", delay_ms=0))
            await client.send(chat_frame("tool", calc, delay_ms=0))
            await client.send({"type": "ping", "request_id": "words"})
            checked = 0
            while not all(
                client.frames[r] and client.frames[r][-1]["status"] == "complete"
                for r in ("words", "tool")
            ):
                frame = await client.next_frame()
                if frame["status"] == "pong":
                    assert frame == {"request_id": "words", "status": "pong"}
                    continue
                assert journaled(frame) == frame, f"sent before it was journaled: {frame}"
                checked += 1
    assert {f["status"] for f in client.order} >= {"processing", "chunk", "tool", "pong"}
    # words: processing, chunks, complete; tool: processing, call, result, chunks, complete
    assert checked == len(client.order) - 1 >= 8


async def test_a_chat_sent_again_gets_the_outcome_not_a_second_turn(server: RunningServer) -> None:
    async with connect(server.ws_url) as ws:
        frames = await ProtocolClient(ws).chat("retry", "ask me once")
    # A client that never learned the outcome sends the same chat again, on a new socket: it
    # gets the request's frames (and so its token), and the question is not stored again.
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        assert await client.chat("retry", "ask me once") == frames
        client.frames.pop("retry")
        await client.send({"type": "resume", "request_id": "retry"})
        assert await client.until("retry") == frames
        client.frames.pop("retry")
        new = await client.chat("retry", "a new question")  # the id reused: a new request
    session_id = frames[0]["chunk"]["metadata"]["session_id"]
    answer = await stored_answer(server, session_id)
    assert answer["content"] == "ask me once"
    assert new[0]["chunk"]["metadata"]["session_id"] != session_id
    assert text_of(new) == "a new question"
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        messages = (await http.get(f"/sessions/{session_id}/messages")).json()
    assert [m["role"] for m in messages] == ["user", "assistant"]
