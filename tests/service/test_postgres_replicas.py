"""Several PostgresStores on one real PostgreSQL database, as replicas: leases, recovery of the
dead by the living (never of the living), turns of one session from two replicas, migrations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tether.errors import Conflict
from tether.protocol import ChunkBody, ProcessingBody, RequestFrames
from tether.recovery import recover
from tether.store.base import JournalAppend, JournalStart, JournalTail, NewMessage
from tether.store.postgres import PostgresStore
from tether.store.sqlite import load_migrations

Replica = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def replica(postgres_url: str) -> AsyncIterator[Replica]:
    """`await replica(**options)`: another open store on the test's database."""
    opened: list[PostgresStore] = []

    async def start(**options: Any) -> PostgresStore:
        store = PostgresStore(postgres_url, **options)
        await store.open()
        opened.append(store)
        return store

    yield start
    for store in opened:
        await store.close()


async def rows(url: str, sql: str, *params: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *params)
    finally:
        await conn.close()


async def expire(url: str, store: PostgresStore) -> None:
    """As if `store`'s process had stopped heartbeating an hour ago (a kill -9, a partition)."""
    await rows(
        url,
        "UPDATE replicas SET heartbeat = now() - interval '1 hour' WHERE id = $1",
        store.replica_id,
    )


async def running_request(store: PostgresStore, request_id: str, text: str) -> str:
    """A turn with its journal (processing and one text chunk sent); its user message id."""
    start = await store.begin_turn(
        session_id=None, text="tell me", journal=JournalStart(request_id, "digest")
    )
    numbering = RequestFrames(request_id)
    frames = [
        numbering.next(ProcessingBody("s", start.message.id, "echo", 0, created_session=True)).text,
        numbering.next(ChunkBody("text", text)).text,
    ]
    await store.append_journals([JournalAppend(request_id, 0, frames)])
    return start.message.id


async def test_a_living_replicas_turns_are_never_recovered(
    replica: Replica, postgres_url: str
) -> None:
    a, b = await replica(), await replica()
    turn = await running_request(a, "ra", "Once")
    await recover(b)
    await recover(a)  # nor its own: it is running them
    assert [tuple(r) for r in await rows(postgres_url, "SELECT user_message_id FROM turns")] == [
        (turn,)
    ]
    assert await b.turn_answer(turn) is None
    journal = await b.read_journal("ra")
    assert journal is not None
    assert len(journal) == 2  # no final frame added
    async with b.orphans() as orphans:
        assert orphans.replicas == ()


async def test_a_replica_whose_lease_expired_is_recovered_by_a_living_one(
    replica: Replica, postgres_url: str
) -> None:
    a, b = await replica(), await replica()
    turn = await running_request(a, "ra", "Once upon")
    mine = await running_request(b, "rb", "mine")
    await expire(postgres_url, a)
    async with b.orphans() as orphans:
        assert orphans.replicas == (a.replica_id,)
    # (the block ended: a's row is gone; its work is still open, so it is still an orphan)
    await recover(b)
    answer = await b.turn_answer(turn)
    assert answer is not None
    assert (answer.status, answer.content) == ("interrupted", "Once upon")
    journal = await b.read_journal("ra")
    assert journal is not None
    assert '"finish_reason":"interrupted"' in journal[-1]
    assert await b.turn_answer(mine) is None  # b's own turn runs on
    remaining = await rows(postgres_url, "SELECT user_message_id, replica_id FROM turns")
    assert [tuple(r) for r in remaining] == [(mine, b.replica_id)]
    assert [r["id"] for r in await rows(postgres_url, "SELECT id FROM replicas")] == [b.replica_id]
    # The stalled replica wakes: its next heartbeat takes its lease again.
    await a.heartbeat()
    ids = {r["id"] for r in await rows(postgres_url, "SELECT id FROM replicas")}
    assert ids == {a.replica_id, b.replica_id}


async def test_replicas_recovering_at_once_close_each_turn_once(
    replica: Replica, postgres_url: str
) -> None:
    dead = await replica()
    turns = [await running_request(dead, f"r{i}", f"text {i}") for i in range(5)]
    await expire(postgres_url, dead)
    living = [await replica() for _ in range(3)]
    await asyncio.gather(*(recover(store) for store in living))
    answers = await rows(
        postgres_url,
        "SELECT parent_id, content FROM messages WHERE status = 'interrupted' ORDER BY content",
    )
    assert [(r["parent_id"], r["content"]) for r in answers] == [
        (turn, f"text {i}") for i, turn in enumerate(turns)
    ]
    for i in range(5):
        journal = await living[0].read_journal(f"r{i}")
        assert journal is not None
        assert len(journal) == 3  # one final frame each


async def test_a_replica_that_stopped_cleanly_leaves_its_turns_to_the_next_recovery(
    replica: Replica,
) -> None:
    a, b = await replica(), await replica()
    turn = await running_request(a, "ra", "half")
    await a.close()  # (its runs did not drain: the turn is left open)
    await recover(b)  # at once: a's lease went with it
    answer = await b.turn_answer(turn)
    assert answer is not None
    assert answer.content == "half"


async def test_turns_of_one_session_from_two_replicas_take_turns(replica: Replica) -> None:
    a, b = await replica(), await replica()
    session = await a.create_session("shared")

    async def turn(store: PostgresStore, i: int) -> None:
        start = await store.begin_turn(session_id=session.id, text=f"q{i}")
        question = start.message.id
        await store.end_turn(
            session.id, question, NewMessage("assistant", f"a{i}"), turn_id=question
        )

    await asyncio.gather(*(turn(a if i % 2 else b, i) for i in range(40)))
    messages = await b.list_messages(session.id)
    assert len(messages) == 80
    parents = [m.parent_id for m in messages if m.role == "user"]
    assert len(set(parents)) == len(parents)
    assert [s.id for s in await a.list_sessions()] == [session.id]


async def test_replicas_starting_together_migrate_once(replica: Replica, postgres_url: str) -> None:
    await asyncio.gather(*(replica() for _ in range(4)))
    versions = await rows(postgres_url, "SELECT version FROM schema_version ORDER BY version")
    assert [r["version"] for r in versions] == [
        version for version, _ in load_migrations("tether.store.migrations_pg")
    ]
    again = await replica()  # a restart applies nothing
    assert len(await rows(postgres_url, "SELECT version FROM schema_version")) == len(versions)
    assert await again.list_sessions() == []


async def test_a_replicas_journal_commits_wake_the_others_followers(replica: Replica) -> None:
    a, b = await replica(), await replica()
    async with b.journal_changes("shared") as changed:
        await a.append_journals([JournalAppend("shared", 0, ["p"])])
        async with asyncio.timeout(10):
            await changed.wait()
        tail = await b.journal_tail("shared", -1)
        assert tail is not None
        assert tail.frames == ["p"]
        changed.clear()
        await a.append_journals([JournalAppend("other", 0, ["x"])])  # another request's
        await a.append_journals([JournalAppend("shared", 1, [], ended=True)])
        async with asyncio.timeout(10):
            await changed.wait()
        assert await b.journal_tail("shared", 0) == JournalTail([], True)


async def test_a_cancel_asked_on_one_replica_reaches_the_others(replica: Replica) -> None:
    a, b = await replica(), await replica()
    reached = asyncio.Event()
    b.on_cancel_request(lambda request_id: reached.set() if request_id == "r" else None)
    await a.request_cancel("r")
    async with asyncio.timeout(10):
        await reached.wait()


async def test_a_request_open_on_one_replica_is_a_conflict_on_another(replica: Replica) -> None:
    a, b = await replica(), await replica()
    # a's registry journals a `queued` frame before the question is stored: its own row.
    await a.append_journals([JournalAppend("x", 0, ["queued"])])
    start = await a.begin_turn(session_id=None, text="q", journal=JournalStart("x", "d"))
    with pytest.raises(Conflict, match="already running"):
        await b.begin_turn(session_id=start.session.id, text="q", journal=JournalStart("x", "d"))
    assert len(await b.list_messages(start.session.id)) == 1  # nothing of b's was stored
    await a.append_journals([JournalAppend("x", 0, ["processing"], ended=True)])
    again = await b.begin_turn(
        session_id=start.session.id, text="again", journal=JournalStart("x", "d2")
    )  # ended: the id may be used again
    assert again.message.parent_id == start.message.id
