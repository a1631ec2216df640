"""The SQLite store against real files: schema, turns, branches, agents, restarts."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

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
