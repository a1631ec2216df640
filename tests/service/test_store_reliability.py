"""The store's reliability parts against real files: open turns, the frame journal."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tether.engines.base import ToolCall
from tether.store.base import JournalAppend, NewMessage
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


async def test_a_journal_that_ended_long_ago_is_pruned_by_age(store: SQLiteStore) -> None:
    # (the Store contract prunes by rows and by an age of 0; only here can a journal be old)
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "INSERT INTO journals (request_id, started_at, ended_at) VALUES ('old', ?, ?)",
            ("2000-01-01T00:00:00.000000Z", "2000-01-01T00:00:01.000000Z"),
        )
        conn.executemany(
            "INSERT INTO events VALUES ('old', ?, 'f', '2000-01-01T00:00:00.000000Z')",
            [(0,), (1,)],
        )
    await store.append_journals([JournalAppend("recent", 0, ["1", "2"], ended=True)])
    assert await store.prune_journals(max_age_sec=3600, max_rows=100) == 2
    assert await store.read_journal("old") is None
    assert await store.read_journal("recent") == ["1", "2"]


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
