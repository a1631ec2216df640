"""The SQLite store against real files: schema, turns, branches, agents, restarts."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tether.engines.base import ToolCall
from tether.errors import NotFound
from tether.store.base import Agent, NewMessage
from tether.store.sqlite import SQLiteStore, load_migrations


def raw(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_schema_wal_and_version(store: SQLiteStore) -> None:
    latest = max(version for version, _ in load_migrations())
    assert raw(store.path, "PRAGMA user_version") == [(latest,)]
    assert raw(store.path, "PRAGMA journal_mode") == [("wal",)]
    tables = {
        row[0] for row in raw(store.path, "SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {"sessions", "messages", "agents"} <= tables


async def test_reopening_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "again.db"
    for _ in range(2):
        store = SQLiteStore(path)
        await store.open()
        await store.create_session("x")
        await store.close()
    assert len(raw(path, "SELECT id FROM sessions")) == 2


async def test_begin_turn_creates_a_session_when_none_given(store: SQLiteStore) -> None:
    start = await store.begin_turn(session_id=None, text="hello", title="hello")
    assert start.created_session
    assert start.session.title == "hello"
    assert start.message.role == "user"
    assert start.message.parent_id is None
    # Committed: another connection sees it at once.
    assert raw(store.path, "SELECT content FROM messages") == [("hello",)]


async def test_begin_turn_with_an_unknown_session_invents_nothing(store: SQLiteStore) -> None:
    with pytest.raises(NotFound, match="nope"):
        await store.begin_turn(session_id="nope", text="hello")
    assert raw(store.path, "SELECT count(*) FROM sessions") == [(0,)]
    assert raw(store.path, "SELECT count(*) FROM messages") == [(0,)]


async def test_turns_chain_and_parent_ids_branch(store: SQLiteStore) -> None:
    first = await store.begin_turn(session_id=None, text="one")
    sid = first.session.id
    answer = await store.append_message(sid, first.message.id, NewMessage("assistant", "1"))
    second = await store.begin_turn(session_id=sid, text="two")
    assert second.message.parent_id == answer.id
    branch = await store.begin_turn(session_id=sid, text="edited two", parent_id=answer.id)
    assert [m.content for m in await store.branch(second.message.id)] == ["one", "1", "two"]
    assert [m.content for m in await store.branch(branch.message.id)] == ["one", "1", "edited two"]
    assert len(await store.list_messages(sid)) == 4


async def test_a_parent_from_another_session_is_refused(store: SQLiteStore) -> None:
    one = await store.begin_turn(session_id=None, text="a")
    two = await store.begin_turn(session_id=None, text="b")
    with pytest.raises(NotFound):
        await store.begin_turn(session_id=two.session.id, text="c", parent_id=one.message.id)


async def test_tool_calls_round_trip(store: SQLiteStore) -> None:
    start = await store.begin_turn(session_id=None, text="6*7?")
    calls = (ToolCall("c1", "calculator", {"expression": "6*7"}),)
    said = await store.append_message(
        start.session.id, start.message.id, NewMessage("assistant", "", tool_calls=calls)
    )
    result = await store.append_message(
        start.session.id, said.id, NewMessage("tool", "42", name="calculator", tool_call_id="c1")
    )
    history = await store.branch(result.id)
    assert history[1].tool_calls == calls
    assert (history[2].name, history[2].tool_call_id) == ("calculator", "c1")


async def test_sessions_list_newest_first_and_delete_cascades(store: SQLiteStore) -> None:
    old = await store.begin_turn(session_id=None, text="old")
    new = await store.begin_turn(session_id=None, text="new")
    await store.begin_turn(session_id=old.session.id, text="old again")
    assert [s.id for s in await store.list_sessions()] == [old.session.id, new.session.id]
    assert [s.id for s in await store.list_sessions(limit=1, offset=1)] == [new.session.id]
    assert await store.delete_session(old.session.id)
    assert not await store.delete_session(old.session.id)
    assert await store.list_messages(old.session.id) == []
    assert await store.delete_all_sessions() == 1
    assert raw(store.path, "SELECT count(*) FROM messages") == [(0,)]


async def test_agents_upsert_and_sessions_keep_them(store: SQLiteStore) -> None:
    saved = await store.put_agent(Agent("rev", "Reviewer", system_prompt="Be precise."))
    assert saved.created_at
    updated = await store.put_agent(Agent("rev", "Reviewer 2", default_options={"t": 1}))
    assert (updated.name, updated.default_options, updated.created_at) == (
        "Reviewer 2",
        {"t": 1},
        saved.created_at,
    )
    session = await store.create_session("s", agent_id="rev")
    assert session.agent_id == "rev"
    with pytest.raises(NotFound):
        await store.create_session("s", agent_id="ghost")
    assert [a.id for a in await store.list_agents()] == ["rev"]
    assert await store.delete_agent("rev")
    refreshed = await store.get_session(session.id)
    assert refreshed is not None
    assert refreshed.agent_id is None


async def test_everything_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "restart.db"
    store = SQLiteStore(path)
    await store.open()
    start = await store.begin_turn(session_id=None, text="remember me")
    await store.append_message(start.session.id, start.message.id, NewMessage("assistant", "ok"))
    await store.close()
    reopened = SQLiteStore(path)
    await reopened.open()
    try:
        messages = await reopened.list_messages(start.session.id)
        assert [(m.role, m.content) for m in messages] == [
            ("user", "remember me"),
            ("assistant", "ok"),
        ]
    finally:
        await reopened.close()


async def test_concurrent_turns_never_lock(store: SQLiteStore) -> None:
    session = await store.create_session("busy")

    async def turn(i: int) -> None:
        start = await store.begin_turn(session_id=session.id, text=f"q{i}")
        await store.append_message(session.id, start.message.id, NewMessage("assistant", f"a{i}"))

    await asyncio.gather(*(turn(i) for i in range(100)))
    assert len(await store.list_messages(session.id)) == 200


async def test_a_second_process_writing_meanwhile_does_not_break_us(store: SQLiteStore) -> None:
    # Another writer (e.g. a backup script) holds the database briefly; busy_timeout waits it out.
    with sqlite3.connect(store.path, timeout=10) as other:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO agents VALUES ('x', 'X', '', '', '{}', 'now', 'now')")
        pending = asyncio.create_task(store.create_session("waits"))
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        assert not done  # blocked by the other writer, not failed
        other.commit()
    session = await pending
    assert session.title == "waits"
