"""The SQLite store's group commit and the frames it commits with a turn's own writes, on real
files: concurrent turns share transactions, a bad job fails alone, a retried chat is refused
in begin_turn's own transaction, a journal opened by waiting frames keeps them."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from tether.errors import NotFound
from tether.store.base import (
    JournalAnswered,
    JournalAppend,
    JournalEnd,
    JournalStart,
    NewMessage,
    Orphans,
    TurnStart,
)
from tether.store.sqlite import SQLiteStore
from tether.tokens import digest


def opening(start: TurnStart) -> str:
    return f"processing {start.message.id}"


async def test_concurrent_turns_share_one_transaction(store: SQLiteStore) -> None:
    session = await store.create_session()
    before = store.stats.transactions, store.stats.durable, store.stats.jobs
    starts = await asyncio.gather(
        *(store.begin_turn(session_id=session.id, text=f"q{i}", parent_id=None) for i in range(20))
    )
    assert len({start.message.id for start in starts}) == 20
    transactions = store.stats.transactions - before[0]
    assert store.stats.jobs - before[2] == 20
    assert transactions < 5  # what waited together was committed together (today: 1)
    assert store.stats.durable - before[1] == transactions  # messages: fsynced
    stored = await store.list_messages(session.id)
    assert sorted(m.content for m in stored) == sorted(f"q{i}" for i in range(20))


async def test_a_job_that_breaks_its_batch_fails_alone(store: SQLiteStore) -> None:
    first = await store.begin_turn(session_id=None, text="q")
    sid = first.session.id
    good = [
        store.append_message(sid, first.message.id, NewMessage("assistant", f"a{i}"))
        for i in range(3)
    ]
    bad = store.append_message(sid, "no-such-parent", NewMessage("assistant", "orphan"))
    results = await asyncio.gather(*good[:2], bad, good[2], return_exceptions=True)
    assert isinstance(results[2], sqlite3.IntegrityError)  # the parent's foreign key
    assert [r.content for r in results if not isinstance(r, BaseException)] == ["a0", "a1", "a2"]
    assert store.stats.rollbacks == 1
    contents = [m.content for m in await store.list_messages(sid)]
    assert contents == ["q", "a0", "a1", "a2"]


async def test_a_refused_job_leaves_its_batch_alone(store: SQLiteStore) -> None:
    results = await asyncio.gather(
        store.begin_turn(session_id=None, text="one"),
        store.begin_turn(session_id="missing", text="refused"),
        store.begin_turn(session_id=None, text="two"),
        return_exceptions=True,
    )
    assert isinstance(results[1], NotFound)
    assert store.stats.rollbacks == 0
    assert [
        len(await store.list_messages(r.session.id)) for r in results if isinstance(r, TurnStart)
    ] == [1, 1]


async def test_a_caller_cancelled_before_its_commit_stores_nothing(store: SQLiteStore) -> None:
    task = asyncio.create_task(store.begin_turn(session_id=None, text="never"))
    await asyncio.sleep(0)  # its job waits in the line; the writer has not taken it
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.begin_turn(session_id=None, text="kept")  # (the writer went on)
    contents = [
        m.content for s in await store.list_sessions() for m in await store.list_messages(s.id)
    ]
    assert contents == ["kept"]


async def test_processing_is_committed_with_the_question(store: SQLiteStore) -> None:
    # (what is committed: the Store contract; here, that it costs no transaction of its own)
    journal = JournalStart("r", digest("token"), opening, 0)
    start = await store.begin_turn(session_id=None, text="hello", journal=journal)
    assert await store.read_journal("r") == [opening(start)]
    assert store.stats.transactions == 1


async def test_the_answer_ends_its_journal_in_its_own_commit(store: SQLiteStore) -> None:
    start = await store.begin_turn(
        session_id=None, text="hi", journal=JournalStart("r", "d", opening, 0)
    )
    before = store.stats.transactions
    # The journal writer's frame 1 and the answer (repeating it: it was on its way) go to the
    # line together: one transaction, frame 1 in once.
    await asyncio.gather(
        store.append_journals([JournalAppend("r", 1, ["chunk 1"])]),
        store.end_turn(
            start.session.id,
            start.message.id,
            NewMessage("assistant", "hi"),
            turn_id=start.message.id,
            journal=JournalEnd("r", 1, ["chunk 1", "complete"]),
        ),
    )
    assert store.stats.transactions == before + 1
    assert store.stats.rollbacks == 0
    assert await store.read_journal("r") == [opening(start), "chunk 1", "complete"]
    assert await store.open_journals(Orphans(None)) == []  # ended


async def test_a_retried_question_is_refused_in_begin_turns_own_transaction(
    store: SQLiteStore,
) -> None:
    first = await store.begin_turn(
        session_id=None, text="same", journal=JournalStart("r", "d1", opening, 0)
    )
    await store.append_journals([JournalAppend("r", 1, ["complete"], ended=True)])
    before = store.stats.statements
    with pytest.raises(JournalAnswered):
        await store.begin_turn(
            session_id=first.session.id, text="same", journal=JournalStart("r", "d2", opening, 0)
        )
    # BEGIN, begin_turn's one read, ROLLBACK (its job was alone in the line: nothing to keep)
    assert store.stats.statements - before <= 3
    assert await store.open_journals(Orphans(None)) == []


async def test_one_writer_commits_messages_at_full_and_journal_frames_at_normal(
    store: SQLiteStore,
) -> None:
    """One connection writes both kinds (a second writer would drop this one's page cache at
    every commit), each batch at its own `synchronous`: 2 is FULL, 1 NORMAL."""
    levels: list[int] = []

    def level() -> None:
        assert store._writer is not None  # (the writer's own setting: no other way to see it)
        levels.append(store._writer.execute("PRAGMA synchronous").fetchone()[0])

    start = await store.begin_turn(session_id=None, text="q")
    level()
    await store.append_journals([JournalAppend("r1", 0, ["frame 0"])])
    level()
    await store.append_message(start.session.id, start.message.id, NewMessage("assistant", "a"))
    level()
    assert levels == [2, 1, 2]
