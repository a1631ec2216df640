"""Benchmark the stores: what a chat turn costs the store, on SQLite and on PostgreSQL.

A turn here is what the run registry and the chat core ask of the store for one answered chat:
`begin_turn` (the question, its turn and journal rows), `append_journals` of `processing` and two
chunks, `end_turn` (the answer), `append_journals` of `complete` with the end. `--tasks` tasks do
turns at once (each on its own session) for `--seconds`; the figure is turns/s, median of the
rounds, the three setups interleaved (sqlite, pg x1, pg x2, sqlite, ...) so machine noise hits
them alike:

- sqlite: `SQLiteStore` on a file, `synchronous` FULL (Tether's default: an fsync per commit);
- pg x1: one `PostgresStore` on a PostgreSQL server this script starts (fsync and synchronous
  commit on, as in production), in this process;
- pg x2: two `PostgresStore`s (two replicas' stores) on that database, the tasks split between
  them, in this process (so the replicas share this process's CPU as well as the machine's).

For PostgreSQL it also reports the statements per turn, from pg_stat_statements: each is a
round trip to the database (asyncpg pipelines none of these). The database runs on the same
machine: on 2 cores it shares the CPU with the client, so the x2 figure says how far the
store is the limit, not how a second machine would scale.

    .venv/bin/python bench/bench_store.py [--rounds 3] [--tasks 20] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.postgres import PostgresServer, postgres_server

from tether.store.base import JournalAppend, JournalStart, NewMessage, Store
from tether.store.postgres import PostgresStore
from tether.store.sqlite import SQLiteStore


async def one_turn(store: Store) -> None:
    request_id = uuid.uuid4().hex
    start = await store.begin_turn(
        session_id=None, text="hello there", journal=JournalStart(request_id, "digest")
    )
    await store.append_journals([JournalAppend(request_id, 0, ["processing", "chunk", "chunk"])])
    await store.end_turn(
        start.session.id,
        start.message.id,
        NewMessage("assistant", "general kenobi"),
        turn_id=start.message.id,
    )
    await store.append_journals([JournalAppend(request_id, 3, ["complete"], ended=True)])


async def drive(stores: list[Store], tasks: int, seconds: float) -> int:
    """Turns done by `tasks` tasks (spread over `stores`) in `seconds`."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(store: Store) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await one_turn(store)
            done += 1

    await asyncio.gather(*(worker(stores[i % len(stores)]) for i in range(tasks)))
    return done


# What asyncpg's pool sends when a connection goes back to it: four statements in one message.
POOL_RESET = ("SELECT pg_advisory_unlock_all()", "CLOSE ALL", "UNLISTEN *", "RESET ALL")


async def statements(url: str) -> tuple[int, int, int]:
    """(statements, of which transactions begun, of which pool resets) run so far on `url`'s
    database, as pg_stat_statements counts them (statements of a reset counted once)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT query, calls FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()"
        )
    finally:
        await conn.close()
    calls = {row["query"]: int(row["calls"]) for row in rows}
    resets = calls.get("RESET ALL", 0)
    total = sum(n for query, n in calls.items() if query not in POOL_RESET) + resets
    return total, calls.get("BEGIN", 0), resets


async def new_database(server: PostgresServer) -> str:
    url = await server.create_database()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()
    return url


Setup = Callable[[], Awaitable[list[Store]]]


async def measure(setup: Setup, tasks: int, seconds: float) -> float:
    stores = await setup()
    try:
        await drive(stores, tasks, 0.3)  # warm up: connections, caches
        started = time.perf_counter()
        turns = await drive(stores, tasks, seconds)
        return turns / (time.perf_counter() - started)
    finally:
        for store in stores:
            await store.close()


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-store-"))
    with postgres_server(durable=True, preload="pg_stat_statements") as server:

        async def sqlite() -> list[Store]:
            store = SQLiteStore(folder / f"{uuid.uuid4().hex}.db")
            await store.open()
            return [store]

        async def postgres(replicas: int) -> list[Store]:
            url = await new_database(server)
            stores: list[Store] = []
            for _ in range(replicas):
                store = PostgresStore(url, pool_size=max(2, args.tasks // replicas))
                await store.open()
                stores.append(store)
            return stores

        setups: dict[str, Setup] = {
            "sqlite": sqlite,
            "pg x1": lambda: postgres(1),
            "pg x2": lambda: postgres(2),
        }
        results: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(args.rounds):
            for name, setup in setups.items():
                results[name].append(await measure(setup, args.tasks, args.seconds))
        # Round trips of one turn, alone (no concurrency), on a fresh database.
        url = await new_database(server)
        store = PostgresStore(url)
        await store.open()
        try:
            await one_turn(store)  # warm up
            before = await statements(url)
            for _ in range(20):
                await one_turn(store)
            after = await statements(url)
            # (minus the counting query itself)
            trips, begun, resets = ((a - b) / 20 for a, b in zip(after, before, strict=True))
            trips -= 1 / 20
        finally:
            await store.close()
    base = statistics.median(results["sqlite"])
    print(f"turns/s, median of {args.rounds} rounds, {args.tasks} tasks, {args.seconds}s each")
    for name, figures in results.items():
        median = statistics.median(figures)
        print(f"  {name:7} {median:8.1f}  x{median / base:.2f} of sqlite  {figures}")
    x1, x2 = statistics.median(results["pg x1"]), statistics.median(results["pg x2"])
    print(f"  two replicas / one: x{x2 / x1:.2f}")
    print(
        f"PostgreSQL round trips per turn: {trips:.1f} ({begun:.0f} transactions, each BEGIN, "
        f"statements, COMMIT; {resets:.0f} pool resets)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(main(parser.parse_args()))
