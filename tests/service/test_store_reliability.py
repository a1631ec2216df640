"""The store's reliability parts against real files: open turns, the frame journal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.service.test_chat_service import make_service
from tether.chat import Turn
from tether.engines.base import ToolCall
from tether.engines.echo import EchoEngine
from tether.events import ChatEvent
from tether.store.base import JournalAppend, NewMessage, OpenJournal, Orphans
from tether.store.lock import DatabaseInUse
from tether.store.sqlite import SQLiteStore

CALC = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'


def open_turns(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT user_message_id, head_id FROM turns").fetchall()


async def test_a_turn_is_open_from_its_question_to_its_answer(store: SQLiteStore) -> None:
    start = await store.begin_turn(session_id=None, text="6*7?")
    sid, turn = start.session.id, start.message.id
    assert open_turns(store.path) == [(turn, turn)]
    said = await store.append_to_turn(
        sid,
        turn,
        NewMessage("assistant", "", tool_calls=(ToolCall("c1", "calculator", {}),)),
        turn_id=turn,
    )
    assert open_turns(store.path) == [(turn, said.id)]
    result = await store.append_to_turn(
        sid, said.id, NewMessage("tool", "42", tool_call_id="c1"), turn_id=turn
    )
    assert open_turns(store.path) == [(turn, result.id)]
    await store.end_turn(sid, result.id, NewMessage("assistant", "42"), turn_id=turn)
    assert open_turns(store.path) == []


async def test_open_turns_are_closed_as_interrupted_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    store = SQLiteStore(path)
    await store.open()
    plain = await store.begin_turn(session_id=None, text="never answered")
    tooled = await store.begin_turn(session_id=None, text="6*7?")
    call = await store.append_to_turn(
        tooled.session.id,
        tooled.message.id,
        NewMessage("assistant", "Let me", tool_calls=(ToolCall("c1", "calculator", {}),)),
        turn_id=tooled.message.id,
    )
    await store.close()  # as if the process died: nothing else was written
    reopened = SQLiteStore(path)
    await reopened.open()
    try:
        # What the clients were sent: the plain turn's text is kept; the tooled turn's text
        # after its unanswered call can only be the calling message's own, so it is not.
        closed = await reopened.close_open_turns(
            Orphans(), {plain.message.id: "half an ans", tooled.message.id: "Let me"}
        )
        assert set(closed) == {plain.message.id, tooled.message.id}
        assert closed[plain.message.id].parent_id == plain.message.id
        assert [(m.role, m.status, m.content) for m in closed.values()] == [
            ("assistant", "interrupted", "half an ans"),
            ("assistant", "interrupted", ""),
        ]
        # The call the dead process never answered gets an error result before the answer.
        tooled_branch = await reopened.branch(closed[tooled.message.id].id)
        assert [(m.role, m.tool_call_id, m.status) for m in tooled_branch] == [
            ("user", None, "complete"),
            ("assistant", None, "complete"),
            ("tool", "c1", "error"),
            ("assistant", None, "interrupted"),
        ]
        assert tooled_branch[1].id == call.id
        assert "interrupted" in tooled_branch[2].content
        assert open_turns(path) == []
        assert await reopened.close_open_turns(Orphans()) == {}
        assert await reopened.turn_answer(tooled.message.id) == closed[tooled.message.id]
    finally:
        await reopened.close()


async def test_a_turns_answer_is_found_down_its_chain_not_a_later_branch(
    store: SQLiteStore,
) -> None:
    start = await store.begin_turn(session_id=None, text="6*7?")
    sid, turn = start.session.id, start.message.id
    assert await store.turn_answer(turn) is None
    said = await store.append_message(
        sid, turn, NewMessage("assistant", "", tool_calls=(ToolCall("c1", "calculator", {}),))
    )
    result = await store.append_message(sid, said.id, NewMessage("tool", "42", tool_call_id="c1"))
    assert await store.turn_answer(turn) is None
    answer = await store.append_message(sid, result.id, NewMessage("assistant", "42"))
    # Later branches from inside the turn, and a user message under the question, are others'.
    await store.append_message(sid, result.id, NewMessage("assistant", "branch"))
    await store.begin_turn(session_id=sid, text="a branch", parent_id=turn)
    assert await store.turn_answer(turn) == answer


async def test_a_regenerated_turns_answer_is_the_newest_under_its_question(
    store: SQLiteStore,
) -> None:
    start = await store.begin_turn(session_id=None, text="again?")
    sid, turn = start.session.id, start.message.id
    await store.end_turn(sid, turn, NewMessage("assistant", "once"), turn_id=turn)
    await store.begin_regeneration(turn, session_id=sid)
    again = await store.end_turn(sid, turn, NewMessage("assistant", "twice"), turn_id=turn)
    assert await store.turn_answer(turn) == again


async def test_the_chat_service_closes_every_turn_it_opens(store: SQLiteStore) -> None:
    service = make_service(store, EchoEngine())

    async def ignore(_event: ChatEvent) -> None:
        pass

    await service.run_turn(Turn(request_id="a", text="plain"), ignore)
    await service.run_turn(Turn(request_id="b", text=CALC), ignore)
    assert open_turns(store.path) == []


async def test_journals_grow_by_appends_and_are_replaced_when_an_id_is_reused(
    store: SQLiteStore,
) -> None:
    assert await store.read_journal("r1") is None
    await store.append_journals([JournalAppend("r1", 0, ["a", "b"]), JournalAppend("r2", 0, ["x"])])
    await store.append_journals([JournalAppend("r1", 2, ["c"], ended=True)])
    assert await store.read_journal("r1") == ["a", "b", "c"]
    assert await store.read_journal("r2") == ["x"]
    assert await store.open_journals(Orphans()) == [OpenJournal("r2", ["x"])]
    await store.append_journals([JournalAppend("r1", 0, ["new"])])  # the id was reused
    assert await store.read_journal("r1") == ["new"]
    assert await store.open_journals(Orphans()) == [
        OpenJournal("r2", ["x"]),
        OpenJournal("r1", ["new"]),
    ]
    await store.append_journals([JournalAppend("r1", 1, [], ended=True)])  # only the end
    assert await store.open_journals(Orphans()) == [OpenJournal("r2", ["x"])]


async def test_journals_are_pruned_whole_by_age_and_by_rows(store: SQLiteStore) -> None:
    with sqlite3.connect(store.path) as conn:  # a journal that ended long ago
        conn.execute(
            "INSERT INTO journals (request_id, started_at, ended_at) VALUES ('old', ?, ?)",
            ("2000-01-01T00:00:00.000000Z", "2000-01-01T00:00:01.000000Z"),
        )
        conn.executemany(
            "INSERT INTO events VALUES ('old', ?, 'f', '2000-01-01T00:00:00.000000Z')",
            [(0,), (1,)],
        )
    await store.append_journals([JournalAppend("running", 0, ["1", "2", "3", "4"])])
    await store.append_journals([JournalAppend("first", 0, ["1", "2", "3"], ended=True)])
    await store.append_journals([JournalAppend("second", 0, ["1", "2"], ended=True)])
    await store.append_journals([JournalAppend("third", 0, ["1", "2"], ended=True)])
    assert await store.prune_journals(max_age_sec=3600, max_rows=100) == 2
    assert await store.read_journal("old") is None
    # At most 5 frames of ended journals: "first" goes whole, although dropping one of its
    # frames would do; the running journal is never pruned.
    assert await store.prune_journals(max_age_sec=3600, max_rows=5) == 3
    assert await store.read_journal("first") is None
    assert await store.read_journal("second") == ["1", "2"]
    assert await store.read_journal("third") == ["1", "2"]
    assert await store.prune_journals(max_age_sec=3600, max_rows=5) == 0
    assert await store.prune_journals(max_age_sec=0, max_rows=0) == 4
    assert await store.read_journal("running") == ["1", "2", "3", "4"]


async def test_one_store_per_database_file(store: SQLiteStore) -> None:
    second = SQLiteStore(store.path)
    with pytest.raises(DatabaseInUse, match=f"{store.path} is in use by another Tether server"):
        await second.open()
    await store.close()
    await second.open()  # the lock went with the first store
    try:
        assert await second.list_sessions() == []
    finally:
        await second.close()
    await store.open()  # (the fixture closes it)
