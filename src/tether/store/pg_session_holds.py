"""A session's hold across replicas on PostgreSQL (tether.session_turns.SessionHolds).

The turn continuing a session's active branch, once first in its own replica's line, takes the
session's row in `session_holds` (migration 0003) before its user message is stored and deletes
it once its answer is (`NOTIFY tether_session` with the session id, at commit). A turn of the
same session on another replica finds the row taken and waits: woken by the NOTIFY (on a LISTEN
connection of its own), and in any case re-trying every `lease_sec / 2`, since the table, not
the notification, is the truth. So two turns sent at once to one session on two replicas chain
(the second goes after the first's answer), as they do on one.

A hold is taken over (one statement, so two waiters never both win) once its replica has no open
turn on the session and either that replica's lease expired (it died; a turn it left open is
closed by recovery first, so the next turn goes after that `interrupted` answer) or the hold is
older than a lease (its release was lost, e.g. the database was unreachable for a moment). A
replica restarted under its id hands its old holds to its retired id (`replica_ids`). A session
that does not exist needs no hold: `begin_turn` refuses the turn.

Costs a continuing turn two statements (take, release); turns that start a session, name their
parent, edit or regenerate take none.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from tether.store.postgres import PostgresStore

SESSION_CHANNEL = "tether_session"

_TAKE = """
INSERT INTO session_holds (session_id, holder, replica_id) VALUES ($1, $2, $3)
ON CONFLICT (session_id) DO UPDATE
    SET holder = excluded.holder, replica_id = excluded.replica_id, taken_at = now()
    WHERE NOT EXISTS (
        SELECT 1 FROM turns t WHERE t.session_id = session_holds.session_id
        AND t.replica_id = session_holds.replica_id
    ) AND (
        session_holds.taken_at < now() - make_interval(secs => $4) OR NOT EXISTS (
            SELECT 1 FROM replicas r WHERE r.id = session_holds.replica_id
            AND r.heartbeat > now() - make_interval(secs => $4)
        )
    )
RETURNING holder
"""

_RELEASE = """
WITH gone AS (DELETE FROM session_holds WHERE session_id = $1 AND holder = $2 RETURNING session_id)
SELECT pg_notify($3, session_id) FROM gone
"""


class PostgresSessionHolds:
    """The `SessionHolds` of the replicas of one database, through `store`'s pool."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.retry_sec = store.lease_sec / 2
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self._freed: dict[str, set[asyncio.Event]] = {}

    async def open(self) -> None:
        self._listener = await asyncpg.connect(self.store.url)
        await self._listener.add_listener(SESSION_CHANNEL, self._notified)

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def take(self, session_id: str, on_wait: Callable[[], Awaitable[None]]) -> str:
        holder = uuid.uuid4().hex
        told = False
        freed = asyncio.Event()
        waiting = self._freed.setdefault(session_id, set())
        waiting.add(freed)  # before the first try: a release in between is not missed
        try:
            while not await self._try(session_id, holder):
                if not told:
                    told = True
                    await on_wait()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.retry_sec):
                        await freed.wait()
                freed.clear()
            return holder
        finally:
            waiting.discard(freed)
            if not waiting:
                self._freed.pop(session_id, None)

    async def _try(self, session_id: str, holder: str) -> bool:
        try:
            taken = await self.store.pool.fetchval(
                _TAKE, session_id, holder, self.store.replica_id, self.store.lease_sec
            )
        except asyncpg.ForeignKeyViolationError:  # no such session: begin_turn says so
            return True
        return taken is not None

    async def release(self, session_id: str, hold: str) -> None:
        await self.store.pool.execute(_RELEASE, session_id, hold, SESSION_CHANNEL)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        for freed in self._freed.get(str(payload), ()):
            freed.set()
