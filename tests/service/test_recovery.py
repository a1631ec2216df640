"""Start-up recovery against real SQLite files: open journals and turns a dead process left."""

from __future__ import annotations

import json
from typing import Any

from tether.engines.base import ToolCall, Usage
from tether.events import Timings
from tether.protocol import (
    ChunkBody,
    CompleteBody,
    FrameBody,
    PongBody,
    ProcessingBody,
    RequestFrames,
    ToolResultBody,
)
from tether.recovery import journal_facts, recover
from tether.store.base import JournalAppend, JournalStart, NewMessage, OpenJournal, Orphans
from tether.store.sqlite import SQLiteStore


def frames_of(request_id: str, *bodies: FrameBody) -> list[str]:
    numbering = RequestFrames(request_id)
    return [numbering.next(body).text for body in bodies]


def processing(user_message_id: str) -> ProcessingBody:
    return ProcessingBody("s", user_message_id, "echo", 0, created_session=False)


def complete(message_id: str) -> CompleteBody:
    return CompleteBody(message_id, "stop", Usage(), Timings(None, None, 0.0))


def text(data: str) -> ChunkBody:
    return ChunkBody("text", data)


def thought(data: str) -> ChunkBody:
    return ChunkBody("thinking", data)


TOOL = ToolResultBody("c1", "x", "ok", None, 1.0)


def test_the_answer_text_is_the_text_after_the_last_tool_frame() -> None:
    frames = frames_of(
        "r", processing("u1"), text("I will "), TOOL, text("It is "), thought("hm"), text("42")
    )
    facts = journal_facts(OpenJournal("r", frames))
    assert (facts.user_message_id, facts.answer_text, facts.ended) == ("u1", "It is 42", False)
    assert facts.accepted
    unaccepted = journal_facts(OpenJournal("r", frames_of("r", text("no processing"))))
    assert (unaccepted.user_message_id, unaccepted.accepted) == (None, False)
    done = complete("a1")
    assert journal_facts(OpenJournal("r", frames_of("r", processing("u1"), done))).ended


async def decoded(store: SQLiteStore, request_id: str) -> list[dict[str, Any]]:
    return [json.loads(frame) for frame in await store.read_journal(request_id) or []]


async def test_a_running_request_ends_interrupted_with_the_text_it_sent(
    store: SQLiteStore,
) -> None:
    start = await store.begin_turn(session_id=None, text="tell me")
    sent = frames_of("r", processing(start.message.id), text("Once "), text("upon"))
    await store.append_journals([JournalAppend("r", 0, sent)])
    await recover(store)
    journal = await decoded(store, "r")
    assert [frame["seq"] for frame in journal] == [0, 1, 2, 3]
    final = journal[-1]
    assert (final["status"], final["request_id"]) == ("complete", "r")
    meta = final["chunk"]["metadata"]
    assert (meta["finish_reason"], meta["recovered"]) == ("interrupted", True)
    [answer] = [m for m in await store.list_messages(start.session.id) if m.role == "assistant"]
    assert (answer.id, answer.status) == (meta["message_id"], "interrupted")
    assert answer.content == "Once upon"
    assert await store.open_journals(Orphans()) == []
    await recover(store)  # nothing left to do: nothing changes
    assert len(await decoded(store, "r")) == 4


async def test_an_answer_stored_before_its_complete_was_journaled(store: SQLiteStore) -> None:
    start = await store.begin_turn(session_id=None, text="6*7?")
    sid, turn = start.session.id, start.message.id
    said = await store.append_to_turn(
        sid,
        turn,
        NewMessage("assistant", "", tool_calls=(ToolCall("c1", "calc", {}),)),
        turn_id=turn,
    )
    result = await store.append_to_turn(
        sid, said.id, NewMessage("tool", "42", tool_call_id="c1"), turn_id=turn
    )
    answer = await store.end_turn(
        sid,
        result.id,
        NewMessage("assistant", "42", finish_reason="length", completion_tokens=3),
        turn_id=turn,
    )
    await store.append_journals([JournalAppend("r", 0, frames_of("r", processing(turn), TOOL))])
    await recover(store)
    final = (await decoded(store, "r"))[-1]
    meta = final["chunk"]["metadata"]
    assert (final["seq"], final["status"]) == (2, "complete")
    assert (meta["message_id"], meta["finish_reason"]) == (answer.id, "length")
    assert meta["usage"]["completion_tokens"] == 3


async def test_a_request_never_accepted_ends_with_an_error(store: SQLiteStore) -> None:
    await store.append_journals([JournalAppend("r", 0, frames_of("r", PongBody()))])
    await recover(store)
    final = (await decoded(store, "r"))[-1]
    assert (final["seq"], final["status"], final["error"]["code"]) == (1, "error", "interrupted")


async def test_a_journal_whose_final_frame_was_written_only_gets_its_end(
    store: SQLiteStore,
) -> None:
    start = await store.begin_turn(session_id=None, text="hi")
    answer = await store.end_turn(
        start.session.id,
        start.message.id,
        NewMessage("assistant", "hi"),
        turn_id=start.message.id,
    )
    done = complete(answer.id)
    sent = frames_of("r", processing(start.message.id), text("hi"), done)
    await store.append_journals([JournalAppend("r", 0, sent)])
    await recover(store)
    assert await store.read_journal("r") == sent
    assert await store.open_journals(Orphans()) == []


async def test_a_regenerated_answer_stored_before_its_complete_was_journaled(
    store: SQLiteStore,
) -> None:
    first = await store.begin_turn(session_id=None, text="again?")
    sid, user = first.session.id, first.message.id
    await store.end_turn(sid, user, NewMessage("assistant", "once"), turn_id=user)
    await store.begin_regeneration(user, session_id=sid)
    again = await store.end_turn(sid, user, NewMessage("assistant", "twice"), turn_id=user)
    await store.append_journals([JournalAppend("r", 0, frames_of("r", processing(user)))])
    await recover(store)
    final = (await decoded(store, "r"))[-1]
    assert final["status"] == "complete"
    assert final["chunk"]["metadata"]["message_id"] == again.id


async def test_a_request_killed_before_its_first_frame_is_found_by_its_row(
    store: SQLiteStore,
) -> None:
    # begin_turn opened the journal with the question; the process died before any frame.
    start = await store.begin_turn(
        session_id=None, text="lost?", journal=JournalStart("r", "digest")
    )
    assert await store.open_journals(Orphans()) == [OpenJournal("r", [], start.message.id)]
    await recover(store)
    (final,) = await decoded(store, "r")
    assert (final["seq"], final["status"], final["error"]["code"]) == (0, "error", "interrupted")
    answer = (await store.list_messages(start.session.id))[-1]
    assert (answer.role, answer.status, answer.parent_id) == (
        "assistant",
        "interrupted",
        start.message.id,
    )
    assert final["error"] | {"message": ""} == {
        "code": "interrupted",
        "message": "",
        "session_id": start.session.id,
        "user_message_id": start.message.id,
        "message_id": answer.id,
    }
    record = await store.journal_record("r")
    assert record is not None
    assert record.token_digest == "digest"
