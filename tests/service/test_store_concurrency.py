"""The SQLite store under concurrent turns: every turn reads back what it has just committed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tether.store.sqlite import SQLiteStore

TURNS = 40
ROUNDS = 10
READERS = 20


async def test_a_turn_reads_its_own_message_while_others_read(tmp_path: Path) -> None:
    # Reads from many tasks share one reader connection; one left open across awaits used to
    # pin a stale snapshot, and about one turn in eight then missed its own user message.
    store = SQLiteStore(tmp_path / "t.db", synchronous="NORMAL")
    await store.open()
    done = asyncio.Event()
    missed: list[str] = []

    async def reader() -> None:
        while not done.is_set():
            await store.list_sessions(limit=50)

    async def turns(index: int) -> None:
        for round_ in range(ROUNDS):
            start = await store.begin_turn(session_id=None, text=f"hello {index}.{round_}")
            chain = await store.branch(start.message.id)
            if [m.id for m in chain] != [start.message.id]:
                missed.append(start.message.id)
            if await store.get_session(start.session.id) is None:
                missed.append(start.session.id)

    readers = [asyncio.create_task(reader()) for _ in range(READERS)]
    try:
        await asyncio.gather(*(turns(i) for i in range(TURNS)))
    finally:
        done.set()
        await asyncio.gather(*readers)
        await store.close()
    assert missed == []
