"""History in the SQLite store, on real files: edits and regenerations as branches, the active
leaf, titles, full-text search (and its migration's backfill)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.service.test_chat_service import make_service
from tether.chat import Edit, Regenerate, Turn
from tether.engines.echo import EchoEngine
from tether.errors import BadRequest
from tether.events import ChatEvent, Completed, Failed
from tether.store.base import NewMessage, Session
from tether.store.sqlite import SQLiteStore, load_migrations


async def session_of(store: SQLiteStore, session_id: str) -> Session:
    session = await store.get_session(session_id)
    assert session is not None
    return session


async def answered(store: SQLiteStore, text: str, session_id: str | None = None) -> list[str]:
    """A plain turn and its answer; returns [session_id, user message id, answer id]."""
    start = await store.begin_turn(session_id=session_id, text=text)
    answer = await store.end_turn(
        start.session.id,
        start.message.id,
        NewMessage("assistant", f"re: {text}"),
        turn_id=start.message.id,
    )
    return [start.session.id, start.message.id, answer.id]


async def test_the_chat_service_titles_edits_and_regenerates(store: SQLiteStore) -> None:
    service = make_service(store, EchoEngine())
    events: list[ChatEvent] = []

    async def emit(event: ChatEvent) -> None:
        events.append(event)

    session = await store.create_session()
    await service.run_turn(Turn("r1", "Hello there\nsecond line", session_id=session.id), emit)
    assert (await session_of(store, session.id)).title == "Hello there"
    [user] = [m for m in await store.list_messages(session.id) if m.role == "user"]
    await service.run_turn(Turn("r2", "Hi", session_id=session.id, redo=Edit(user.id)), emit)
    await service.run_turn(Turn("r3", "", session_id=session.id, redo=Regenerate(user.id)), emit)
    await service.run_turn(Turn("r4", "", redo=Regenerate(user.id)), emit)
    messages = await store.list_messages(session.id)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "Hello there\nsecond line"),
        ("assistant", "Hello there\nsecond line"),
        ("user", "Hi"),
        ("assistant", "Hi"),
        ("assistant", "Hello there\nsecond line"),
    ]
    assert messages[4].parent_id == user.id
    assert [type(e) for e in events if isinstance(e, Completed | Failed)] == [
        Completed,
        Completed,
        Completed,
        Failed,  # a regeneration names its session
    ]


async def test_fts5_queries_are_checked_and_words_are_folded(store: SQLiteStore) -> None:
    # (the Store contract has the rest of search; these are FTS5's own)
    await answered(store, "say Fóx and* that")
    assert await store.search("- and*"), "a word's * is no prefix operator"
    assert len(await store.search("and*", syntax="fts5")) == 2
    for bad in ['"unterminated', "OR", "fox AND", "nosuchcolumn:fox"]:
        with pytest.raises(BadRequest, match="not an FTS5 query"):
            await store.search(bad, syntax="fts5")
    assert len(await store.search("say\x00that")) == 2  # NUL would end an FTS5 string
    assert await store.search("fox SAY") == await store.search("Fóx say")  # diacritics folded
    assert len(await store.search("fox")) == 2


async def test_the_migration_indexes_messages_stored_before_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for version, sql in load_migrations():
            if version <= 4:
                conn.executescript(sql)
        conn.execute("PRAGMA user_version = 4")
        conn.execute("INSERT INTO sessions VALUES ('s', '', NULL, 't', 't')")
        for index, text in enumerate(["an old needle", "an older haystack"]):
            conn.execute(
                "INSERT INTO messages (id, session_id, parent_id, role, content, created_at) "
                "VALUES (?, 's', ?, 'user', ?, 't')",
                (f"m{index}", f"m{index - 1}" if index else None, text),
            )
    store = SQLiteStore(path)
    await store.open()
    try:
        [hit] = await store.search("needle")
        assert (hit.message_id, hit.session_id) == ("m0", "s")
        assert (await session_of(store, "s")).active_leaf_id == "m1"
    finally:
        await store.close()
