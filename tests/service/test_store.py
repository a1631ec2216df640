"""The SQLite store against real files: schema, turns, branches, agents, restarts."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tether.store.base import NewMessage
from tether.store.sqlite import CHECKPOINT_EVERY, SQLiteStore, load_migrations


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


async def test_the_loop_runs_on_while_another_process_holds_the_write_lock(
    store: SQLiteStore,
) -> None:
    # The writes run on the loop's thread: waiting for the lock must be an await, or nothing
    # else (other sockets, this test) would run until it is free.
    with sqlite3.connect(store.path, timeout=10) as other:
        other.execute("BEGIN IMMEDIATE")
        pending = asyncio.create_task(store.create_session("waits"))
        ticks = 0
        while ticks < 20:  # the loop goes round while the write waits
            await asyncio.sleep(0.005)
            ticks += 1
        assert not pending.done()
        other.rollback()
    assert (await pending).title == "waits"


async def test_the_wal_is_checkpointed_as_commits_go(store: SQLiteStore) -> None:
    # The writers' commits do not checkpoint (that would be an fsync on the loop's thread); the
    # store does, every CHECKPOINT_EVERY commits, so the WAL file is reused instead of growing.
    wal = store.path.with_name(store.path.name + "-wal")
    start = await store.begin_turn(session_id=None, text="first")
    parent = start.message.id
    sizes = []
    for _ in range(6):
        for _ in range(CHECKPOINT_EVERY):
            answer = NewMessage("assistant", "x" * 8000)
            parent = (await store.append_message(start.session.id, parent, answer)).id
        sizes.append(wal.stat().st_size)
    assert sizes[-1] <= sizes[1] * 1.2  # without checkpoints: three times as large
