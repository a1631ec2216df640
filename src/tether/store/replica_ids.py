"""A replica's id on the shared store (PostgreSQL): stable across restarts, held while it runs.

The id: `server.replica_id` (`TETHER_SERVER__REPLICA_ID`, `tether serve --replica-id`), else
`<hostname>:<port>` (`default_replica_id`), which a replica restarted on the same machine and
port gets again; with port 0 (any free port) there is nothing stable to name it by, and the store
makes up a random one.

`claim` holds the id for as long as the replica's LISTEN connection lives: a session advisory
lock keyed by the id, which PostgreSQL releases when that connection ends, so when the process
dies (kill -9 included). A second living replica with the same id is refused at start-up
(`ReplicaIdInUse`), so two replicas never take each other's work for their own. Once the lock is
held, whatever open turns, journals and session holds carry the id were left by a dead process
under it: they are handed to a retired id (`<id>#<random>`) that no replica holds a lease for,
so recovery (the replica's own, at start-up) closes them at once instead of after the lease
expires.

Failures: `ReplicaIdInUse`; asyncpg's errors when the database refuses.
"""

from __future__ import annotations

import uuid

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tether.store.lock import DatabaseInUse

# The advisory lock namespace of replica ids (the second key is the id's hashtext).
REPLICA_ID_LOCK = 7_346_003


class ReplicaIdInUse(DatabaseInUse):
    """A living replica holds this replica id on the database."""


def default_replica_id(hostname: str, port: int) -> str | None:
    """`<hostname>:<port>`, or None for port 0 (a random id then)."""
    return f"{hostname}:{port}" if port else None


async def claim(
    holder: asyncpg.Connection[asyncpg.Record],
    conn: PoolConnectionProxy[asyncpg.Record],
    replica_id: str,
) -> int:
    """Hold `replica_id` on `holder` (the connection the replica keeps open), retire what a
    dead process left under it, and take its lease (`conn`: any other connection). Returns how
    many open turns were retired. Raises ReplicaIdInUse."""
    held = await holder.fetchval(
        "SELECT pg_try_advisory_lock($1, hashtext($2))", REPLICA_ID_LOCK, replica_id
    )
    if not held:
        raise ReplicaIdInUse(
            f"replica id {replica_id!r} is in use by a running replica on this database: "
            "give each replica its own server.replica_id"
        )
    retired = f"{replica_id}#{uuid.uuid4().hex}"
    async with conn.transaction():
        status = await conn.execute(
            "UPDATE turns SET replica_id = $2 WHERE replica_id = $1", replica_id, retired
        )
        await conn.execute(
            "UPDATE journals SET replica_id = $2 WHERE replica_id = $1 AND ended_at IS NULL",
            replica_id,
            retired,
        )
        await conn.execute(  # (tether.store.pg_session_holds)
            "UPDATE session_holds SET replica_id = $2 WHERE replica_id = $1", replica_id, retired
        )
        await conn.execute(
            "INSERT INTO replicas (id) VALUES ($1) ON CONFLICT (id) DO UPDATE "
            "SET started_at = now(), heartbeat = now()",
            replica_id,
        )
    return int(status.rsplit(" ", 1)[-1])
