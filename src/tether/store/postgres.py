"""The PostgreSQL store: several Tether replicas on one database (asyncpg, a pool).

Schema: `tether/store/migrations_pg/NNNN_*.sql`, applied at start-up by version (a
`schema_version` table), each in one transaction with its version row, under an advisory lock
(replicas starting together migrate once). It means what SQLite's schema means; full-text search
is a generated `tsvector` column with a GIN index instead of FTS5.

Concurrency: every transaction runs at READ COMMITTED. A session's writes take its row's lock
first (`FOR NO KEY UPDATE`, which foreign-key checks never wait on), so that concurrent turns of
one session chain, as they do on SQLite under its one writer, on any replica; nothing waits on a
serialisable snapshot, so no serialisation error reaches a client. Locks are taken in one order:
the session's row, then a journal's row, then its frames (an answer repeats the frames the
journal writer may still be inserting: `JournalEnd`), so two transactions never wait on each
other.

Leases (SQLite's file lock does not reach another machine): each store has a replica id (stable
across restarts and held while the store is open: `replica_ids`) and a row in `replicas` whose
heartbeat it moves every `lease_sec / 3` seconds. Turns and journals are
written with the replica that runs them; `orphans()` names the replicas whose lease expired (or
whose row is gone) while holding an advisory lock, so one replica recovers them, once, and never
a living one's. A replica stalled past its lease is treated as dead: its turns are closed under
it (it logs `store.lease_lost` when it wakes).

PostgreSQL's text holds no NUL character: a NUL in what a client sends (a question, a title, an
agent) is refused with BadRequest; one in generated content (a model's answer, a tool's result)
is stored as U+FFFD.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from tether import jsonsafe
from tether.engines.base import ToolCall
from tether.errors import BadRequest, Conflict, NotFound
from tether.store import replica_ids
from tether.store.base import (
    Agent,
    JournalAnswered,
    JournalAppend,
    JournalEnd,
    JournalRecord,
    JournalStart,
    JournalTail,
    Message,
    NewMessage,
    OpenJournal,
    Orphans,
    SearchHit,
    SearchSyntax,
    Session,
    TurnStart,
)
from tether.store.branch_tails import RECENT_STEPS, BranchTails
from tether.store.records import (
    MESSAGE_COLUMNS,
    agent_from,
    interrupted_answer,
    interrupted_tool_result,
    iso,
    journal_tail_from,
    message_from,
    message_values,
    new_id,
    new_message,
    now_iso,
    open_journals_from,
    search_hit_from,
    session_from,
    tool_calls_from,
)
from tether.store.sqlite import load_migrations
from tether.tokens import digest

log = structlog.get_logger("tether.store.postgres")

# (strings: asyncpg's classes take no type parameters at run time; its stubs do)
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"

# NOTIFY channels: a journal's frames were committed (payload: its request_id); a cancel is
# asked of whichever replica runs a request (payload: its request_id).
JOURNAL_CHANNEL = "tether_journal"
CANCEL_CHANNEL = "tether_cancel"

# Advisory lock keys (one namespace per purpose): migrating the schema, recovering.
MIGRATION_LOCK = 7_346_001
RECOVERY_LOCK = 7_346_002

_INSERT_MESSAGE = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({', '.join(f'${n}' for n in range(1, 15))})"
)
_SELECT_MESSAGE = f"SELECT {MESSAGE_COLUMNS} FROM messages"


def given_text(value: str, what: str) -> str:
    """A client's text as stored; raises BadRequest for a NUL (PostgreSQL text holds none)."""
    if "\x00" in value:
        raise BadRequest(f"{what} contains a NUL character, which PostgreSQL cannot store")
    return value


def generated(new: NewMessage) -> NewMessage:
    """A generated message as stored: NUL characters become U+FFFD."""
    if "\x00" not in new.content:
        return new
    return replace(new, content=new.content.replace("\x00", "\ufffd"))


def ts_query(text: str, syntax: SearchSyntax) -> tuple[str, str]:
    """The tsquery function and argument for a search: `words` gives every word to
    plainto_tsquery (all must occur, nothing is an operator), `websearch` passes
    websearch_to_tsquery's syntax ("a phrase", OR, -word). Raises BadRequest for an empty query
    or SQLite's `fts5` syntax."""
    if not jsonsafe.is_unicode(text):
        raise BadRequest(f"q {jsonsafe.LONE_SURROGATE}")
    text = text.replace("\x00", " ")
    if not text.strip():
        raise BadRequest("q must not be empty")
    if syntax == "fts5":
        raise BadRequest("syntax fts5 is SQLite's; this server stores in PostgreSQL: use websearch")
    return ("plainto_tsquery" if syntax == "words" else "websearch_to_tsquery"), text


async def _rollback_only(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset of a connection coming back: only an open transaction (a cancelled
    caller's) is rolled back. asyncpg's default also resets session state (RESET ALL, UNLISTEN,
    advisory locks) in a round trip per release; this store leaves none on pooled connections
    (LISTEN and the recovery lock have connections of their own)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _count(status: str) -> int:
    """The row count of a command status (`DELETE 3`, `INSERT 0 1`)."""
    return int(status.rsplit(" ", 1)[-1])


# A leaf and up to RECENT_STEPS of its ancestors, root-most first.
RECENT_SQL = f"""
WITH RECURSIVE chain(id, up, depth) AS (
    SELECT id, parent_id, 0 FROM messages WHERE id = $1
    UNION ALL
    SELECT m.id, m.parent_id, chain.depth + 1
    FROM chain JOIN messages m ON m.id = chain.up
    WHERE chain.depth < {RECENT_STEPS}
)
SELECT {MESSAGE_COLUMNS} FROM messages JOIN chain USING (id) ORDER BY chain.depth DESC
"""
# As SQLite's BRANCH_SQL: walked up from the leaf, the contents' UTF-8 bytes summed, the walk
# stopping at the first user message where the sum reaches the bound (NULL: the root).
BRANCH_SQL = f"""
WITH RECURSIVE chain(id, up, is_user, depth, covered) AS (
    SELECT id, parent_id, role = 'user', 0, octet_length(content)::bigint
    FROM messages WHERE id = $1
    UNION ALL
    SELECT m.id, m.parent_id, m.role = 'user', chain.depth + 1,
           chain.covered + octet_length(m.content)
    FROM chain JOIN messages m ON m.id = chain.up
    WHERE $2::bigint IS NULL OR chain.covered < $2::bigint OR NOT chain.is_user
)
SELECT {MESSAGE_COLUMNS} FROM messages JOIN chain USING (id) ORDER BY chain.depth DESC
"""


class PostgresStore:
    def __init__(
        self,
        url: str,
        *,
        lease_sec: float = 30.0,
        pool_size: int = 10,
        replica_id: str | None = None,
    ) -> None:
        self.url = url
        self.lease_sec = lease_sec
        self.pool_size = pool_size
        self.replica_id = replica_id or uuid.uuid4().hex
        # A living replica recovers the dead ones' turns soon after their leases expire.
        self.recovery_interval_sec: float | None = lease_sec / 2
        self._pool: Pool | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # LISTEN needs a connection of its own, outside the pool, for as long as the store is
        # open; notifications wake the journal's followers and call the cancel handlers.
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self._journal_waiters: dict[str, set[asyncio.Event]] = {}
        self._cancel_handlers: list[Callable[[str], None]] = []
        # Messages never change, so a tail loaded here holds whichever replica wrote it.
        self._tails = BranchTails()

    # -- life cycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate, claim the replica id and take its lease (`replica_ids`: what a
        dead process left under the id is recovered at once). Raises OSError or
        asyncpg.PostgresError when the database cannot be reached or refuses, ReplicaIdInUse
        when a living replica has the id."""
        self._pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=self.pool_size, reset=_rollback_only
        )
        try:
            self._listener = await asyncpg.connect(self.url)
            async with self._pool.acquire() as conn:
                await self._migrate(conn)
                retired = await replica_ids.claim(self._listener, conn, self.replica_id)
            log.info("store.replica", replica_id=self.replica_id, left_open_turns=retired)
            await self._listener.add_listener(JOURNAL_CHANNEL, self._journal_notified)
            await self._listener.add_listener(CANCEL_CHANNEL, self._cancel_notified)
        except BaseException:
            await self._close_connections()
            raise
        self._heartbeat = asyncio.create_task(self._beat(), name="store-heartbeat")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._pool is not None:
            # A clean stop leaves no turn open (the runs drained); whatever is left is closed by
            # the next recovery, at once, since this replica's lease is gone.
            with contextlib.suppress(Exception):
                await self._pool.execute("DELETE FROM replicas WHERE id = $1", self.replica_id)
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _migrate(self, conn: Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            for version, sql in load_migrations("tether.store.migrations_pg"):
                if version > current:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_sec / 3)
            try:
                await self.heartbeat()
            except Exception:
                log.exception("store.heartbeat_failed", replica_id=self.replica_id)

    async def heartbeat(self) -> None:
        """Renew this replica's lease (its row comes back if a recovery took it)."""
        moved = await self.pool.execute(
            "UPDATE replicas SET heartbeat = now() WHERE id = $1", self.replica_id
        )
        if _count(moved) == 0:
            log.error("store.lease_lost", replica_id=self.replica_id)
            await self.pool.execute(
                "INSERT INTO replicas (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
                self.replica_id,
            )

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def _lock_session(self, conn: Connection, session_id: str) -> Session:
        """The session, its row locked until the transaction ends: a session's writes go one
        at a time (foreign-key checks do not wait on this lock)."""
        row = await conn.fetchrow(
            "SELECT * FROM sessions WHERE id = $1 FOR NO KEY UPDATE", session_id
        )
        if row is None:
            raise NotFound(f"session {session_id!r} does not exist")
        return session_from(row)

    # -- sessions ---------------------------------------------------------------------------

    async def _insert_session(self, conn: Connection, title: str, agent_id: str | None) -> Session:
        stamp = now_iso()
        session = Session(new_id(), given_text(title, "title"), agent_id, stamp, stamp)
        await conn.execute(
            "INSERT INTO sessions (id, title, agent_id, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $4)",
            session.id,
            session.title,
            session.agent_id,
            stamp,
        )
        return session

    async def _check_agent(self, conn: Connection, agent_id: str | None) -> None:
        if (
            agent_id is not None
            and await conn.fetchval("SELECT 1 FROM agents WHERE id = $1 FOR KEY SHARE", agent_id)
            is None
        ):
            raise NotFound(f"agent {agent_id!r} does not exist")

    async def create_session(self, title: str = "", agent_id: str | None = None) -> Session:
        async with self._transaction() as conn:
            await self._check_agent(conn, agent_id)
            return await self._insert_session(conn, title, agent_id)

    async def ensure_session(self, session_id: str) -> bool:
        stamp = now_iso()
        status = await self.pool.execute(
            "INSERT INTO sessions (id, title, agent_id, created_at, updated_at) "
            "VALUES ($1, '', NULL, $2, $2) ON CONFLICT (id) DO NOTHING",
            given_text(session_id, "session_id"),
            stamp,
        )
        return _count(status) == 1

    async def get_session(self, session_id: str) -> Session | None:
        row = await self.pool.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)
        return session_from(row) if row else None

    async def list_sessions(self, limit: int = 100, offset: int = 0) -> list[Session]:
        rows = await self.pool.fetch(
            "SELECT * FROM sessions ORDER BY updated_at DESC, seq DESC LIMIT $1 OFFSET $2",
            limit,
            offset,
        )
        return [session_from(row) for row in rows]

    async def update_session(self, session_id: str, *, title: str) -> Session | None:
        row = await self.pool.fetchrow(
            "UPDATE sessions SET title = $1, updated_at = $2 WHERE id = $3 RETURNING *",
            given_text(title, "title"),
            now_iso(),
            session_id,
        )
        return session_from(row) if row else None

    async def delete_session(self, session_id: str) -> bool:
        return _count(await self.pool.execute("DELETE FROM sessions WHERE id = $1", session_id)) > 0

    async def delete_all_sessions(self) -> int:
        return _count(await self.pool.execute("DELETE FROM sessions"))

    # -- messages ---------------------------------------------------------------------------

    async def _insert_message(
        self, conn: Connection, session_id: str, parent_id: str | None, new: NewMessage
    ) -> Message:
        """Insert after `parent_id` (the caller holds the session's lock); the insert moves the
        session's active leaf to it (the messages_move_leaf trigger)."""
        message = new_message(session_id, parent_id, new)
        await conn.execute(_INSERT_MESSAGE, *message_values(message))
        return message

    async def _message_in(self, conn: Connection, message_id: str, session_id: str) -> Message:
        row = await conn.fetchrow(
            f"{_SELECT_MESSAGE} WHERE id = $1 AND session_id = $2", message_id, session_id
        )
        if row is None:
            raise NotFound(f"message {message_id!r} is not in session {session_id!r}")
        return message_from(row)

    async def _user_message_in(self, conn: Connection, message_id: str, session_id: str) -> Message:
        message = await self._message_in(conn, message_id, session_id)
        if message.role != "user":
            raise NotFound(f"message {message_id!r} is a {message.role} message, not a user's")
        return message

    async def begin_turn(
        self,
        *,
        session_id: str | None,
        text: str,
        parent_id: str | None = None,
        agent_id: str | None = None,
        title: str = "",
        sibling_of: str | None = None,
        journal: JournalStart | None = None,
    ) -> TurnStart:
        if sibling_of is not None and parent_id is not None:
            raise BadRequest("a turn goes after parent_id or beside sibling_of, not both")
        given_text(text, "text")
        given_text(title, "title")
        async with self._transaction() as conn:
            if journal is not None:
                await self._check_answered(conn, journal, text)
            created = session_id is None
            if session_id is None:
                await self._check_agent(conn, agent_id)
                session = await self._insert_session(conn, title, agent_id)
            else:
                session = await self._lock_session(conn, session_id)
            if sibling_of is not None:
                parent_id = (await self._user_message_in(conn, sibling_of, session.id)).parent_id
            elif parent_id is not None:
                await self._message_in(conn, parent_id, session.id)
            else:
                parent_id = session.active_leaf_id
            if not session.title and session.active_leaf_id is None and title:
                await conn.execute(
                    "UPDATE sessions SET title = $1 WHERE id = $2", title, session.id
                )
                session = replace(session, title=title)
            message = await self._insert_message(
                conn, session.id, parent_id, NewMessage(role="user", content=text)
            )
            await self._open_turn(conn, message)
            started = replace(session, updated_at=message.created_at, active_leaf_id=message.id)
            start = TurnStart(started, message, created)
            if journal is not None:
                await self._open_journal(conn, journal, start)
            return start

    async def begin_regeneration(
        self, message_id: str, *, session_id: str, journal: JournalStart | None = None
    ) -> TurnStart:
        async with self._transaction() as conn:
            session = await self._lock_session(conn, session_id)
            message = await self._message_in(conn, message_id, session.id)
            while message.role != "user":  # up from an answer, a tool call or its result
                if message.parent_id is None:
                    raise NotFound(f"message {message_id!r} answers no user message")
                message = await self._message_in(conn, message.parent_id, session.id)
            if not await self._open_turn(conn, message):
                raise Conflict(f"message {message.id!r} is being answered already")
            start = TurnStart(session, message, False)
            if journal is not None:
                await self._open_journal(conn, journal, start)
            return start

    async def _open_turn(self, conn: Connection, message: Message) -> bool:
        """Open the turn of `message` (run by this replica); False when one is open already."""
        status = await conn.execute(
            "INSERT INTO turns (user_message_id, session_id, head_id, started_at, replica_id) "
            "VALUES ($1, $2, $1, $3, $4) ON CONFLICT (user_message_id) DO NOTHING",
            message.id,
            message.session_id,
            now_iso(),
            self.replica_id,
        )
        return _count(status) == 1

    async def _check_answered(self, conn: Connection, journal: JournalStart, text: str) -> None:
        """Raise JournalAnswered when `journal`'s request ended having asked `text` (a client
        retrying), before anything is written."""
        row = await conn.fetchrow(
            "SELECT token_digest FROM journals WHERE request_id = $1 "
            "AND ended_at IS NOT NULL AND question_digest = $2",
            journal.request_id,
            digest(text),
        )
        if row is not None:
            raise JournalAnswered(journal.request_id, row["token_digest"])

    async def _open_journal(
        self, conn: Connection, journal: JournalStart, start: TurnStart
    ) -> None:
        """Open the journal row of `start`'s question and commit the journal's opening frame.

        An ended journal of the same request_id is replaced (a new started_at: the
        journal_restarted trigger drops its frames); one open here is the request's own, from
        frames it journaled while it waited (`queued`): its started_at and frames stay. One
        open on another replica is a request running there: Conflict."""
        question = start.message
        status = await conn.execute(
            "INSERT INTO journals (request_id, started_at, token_digest, user_message_id, "
            "question_digest, replica_id) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (request_id) DO UPDATE SET started_at = CASE "
            "WHEN journals.ended_at IS NULL THEN journals.started_at "
            "ELSE excluded.started_at END, "
            "ended_at = NULL, token_digest = excluded.token_digest, "
            "user_message_id = excluded.user_message_id, "
            "question_digest = excluded.question_digest, replica_id = excluded.replica_id "
            "WHERE journals.ended_at IS NOT NULL OR journals.replica_id = excluded.replica_id",
            journal.request_id,
            now_iso(),  # (not the message's: a regeneration's question is an old one)
            journal.token_digest,
            question.id,
            digest(question.content),
            self.replica_id,
        )
        if _count(status) == 0:
            raise Conflict(f"request {journal.request_id!r} is already running")
        if journal.opening is not None:
            await self._insert_frames(
                conn, journal.request_id, journal.opening_seq, [journal.opening(start)]
            )

    @staticmethod
    async def _insert_frames(
        conn: Connection, request_id: str, first_seq: int, frames: Sequence[str]
    ) -> None:
        """Insert a journal's frames from `first_seq` (a seq already there is left as it is:
        `JournalEnd`) and wake its followers at commit."""
        await conn.execute(
            "INSERT INTO events (request_id, seq, frame, created_at) "
            "SELECT $1, $2 + ordinality::int - 1, frame, $4 "
            "FROM unnest($3::text[]) WITH ORDINALITY AS f(frame, ordinality) "
            "ON CONFLICT (request_id, seq) DO NOTHING",
            request_id,
            first_seq,
            list(frames),
            now_iso(),
        )
        await conn.execute("SELECT pg_notify($1, $2)", JOURNAL_CHANNEL, request_id)

    async def append_message(self, session_id: str, parent_id: str, message: NewMessage) -> Message:
        async with self._transaction() as conn:
            await self._lock_session(conn, session_id)
            return await self._insert_message(conn, session_id, parent_id, generated(message))

    async def append_to_turn(
        self, session_id: str, parent_id: str, message: NewMessage, *, turn_id: str
    ) -> Message:
        async with self._transaction() as conn:
            await self._lock_session(conn, session_id)
            stored = await self._insert_message(conn, session_id, parent_id, generated(message))
            await conn.execute(
                "UPDATE turns SET head_id = $1 WHERE user_message_id = $2", stored.id, turn_id
            )
            return stored

    async def end_turn(
        self,
        session_id: str,
        parent_id: str,
        message: NewMessage,
        *,
        turn_id: str,
        journal: JournalEnd | None = None,
    ) -> Message:
        async with self._transaction() as conn:
            await self._lock_session(conn, session_id)
            stored = await self._insert_message(conn, session_id, parent_id, generated(message))
            await conn.execute("DELETE FROM turns WHERE user_message_id = $1", turn_id)
            if journal is not None:
                # The journal's row first: the journal writer's transaction may hold it (its
                # first frames open it) and then insert frames this one repeats; taking the
                # row before the frames waits for that commit instead of deadlocking with it.
                await conn.execute(
                    "UPDATE journals SET ended_at = $1 WHERE request_id = $2",
                    now_iso(),
                    journal.request_id,
                )
                await self._insert_frames(
                    conn, journal.request_id, journal.first_seq, journal.frames
                )
            return stored

    async def list_messages(self, session_id: str) -> list[Message]:
        rows = await self.pool.fetch(
            f"{_SELECT_MESSAGE} WHERE session_id = $1 ORDER BY seq", session_id
        )
        return [message_from(row) for row in rows]

    async def set_active_leaf(self, session_id: str, message_id: str) -> Message:
        async with self._transaction() as conn:
            await self._lock_session(conn, session_id)
            leaf = await self._message_in(conn, message_id, session_id)
            # Down the newest children to a leaf, in one statement.
            row = await conn.fetchrow(
                f"""
                WITH RECURSIVE down(id, depth) AS (
                    SELECT $1::text, 0
                    UNION ALL
                    SELECT (SELECT c.id FROM messages c WHERE c.parent_id = down.id
                            ORDER BY c.seq DESC LIMIT 1), depth + 1
                    FROM down WHERE down.id IS NOT NULL
                )
                {_SELECT_MESSAGE} WHERE id = (
                    SELECT id FROM down WHERE id IS NOT NULL ORDER BY depth DESC LIMIT 1
                )
                """,
                leaf.id,
            )
            assert row is not None
            leaf = message_from(row)
            await conn.execute(
                "UPDATE sessions SET active_leaf_id = $1 WHERE id = $2", leaf.id, session_id
            )
            return leaf

    async def search(
        self,
        query: str,
        *,
        limit: int = 20,
        session_id: str | None = None,
        syntax: SearchSyntax = "words",
    ) -> list[SearchHit]:
        function, text = ts_query(query, syntax)
        rows = await self.pool.fetch(
            f"""
            SELECT m.id, m.session_id, s.title, m.role, m.created_at,
                   ts_headline('simple', m.content, q,
                       'StartSel=<mark>, StopSel=</mark>, MaxFragments=1, MaxWords=16, '
                       'MinWords=4, FragmentDelimiter=" … "') AS snippet,
                   -ts_rank_cd(m.search_vector, q, 1) AS score
            FROM {function}('simple', $1) AS q, messages m
            JOIN sessions s ON s.id = m.session_id
            WHERE m.search_vector @@ q AND ($2::text IS NULL OR m.session_id = $2)
            ORDER BY score, m.seq LIMIT $3
            """,
            text,
            session_id,
            limit,
        )
        return [search_hit_from(row) for row in rows]

    async def branch(self, message_id: str, *, covering_bytes: int | None = None) -> list[Message]:
        # As SQLite's: the leaf and a few ancestors, composed with the tail the session's last
        # turn loaded (`tether.store.branch_tails`); else the whole tail.
        async def recent() -> list[Message]:
            return [message_from(row) for row in await self.pool.fetch(RECENT_SQL, message_id)]

        async def whole() -> list[Message]:
            rows = await self.pool.fetch(BRANCH_SQL, message_id, covering_bytes)
            return [message_from(row) for row in rows]

        return await self._tails.load(message_id, covering_bytes, recent, whole)

    # -- recovery: the turns and journals of replicas whose lease expired ---------------------

    @asynccontextmanager
    async def orphans(self) -> AsyncIterator[Orphans]:
        # The lock is held by a connection of its own for the whole recovery and dies with it
        # (should this process die too): one replica recovers at a time.
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", RECOVERY_LOCK)
            dead = await conn.fetch(
                """
                SELECT owner FROM (
                    SELECT replica_id AS owner FROM turns
                    UNION SELECT replica_id FROM journals WHERE ended_at IS NULL
                    UNION SELECT id FROM replicas
                ) AS owners
                WHERE owner <> $1 AND NOT EXISTS (
                    SELECT 1 FROM replicas r WHERE r.id = owners.owner
                    AND r.heartbeat > now() - make_interval(secs => $2)
                )
                ORDER BY owner
                """,
                self.replica_id,
                self.lease_sec,
            )
            replicas = tuple(row["owner"] for row in dead)
            yield Orphans(replicas)
            await conn.execute("DELETE FROM replicas WHERE id = ANY($1)", list(replicas))
        finally:
            await conn.close()  # (and with it the lock)

    def _owned_by(self, orphans: Orphans) -> list[str]:
        if orphans.replicas is None:
            raise ValueError("a PostgreSQL store recovers named replicas only (Store.orphans)")
        return list(orphans.replicas)

    async def open_journals(self, orphans: Orphans) -> list[OpenJournal]:
        rows = await self.pool.fetch(
            "SELECT j.request_id, j.user_message_id, e.frame FROM journals j "
            "LEFT JOIN events e USING (request_id) "
            "WHERE j.ended_at IS NULL AND j.replica_id = ANY($1) "
            "ORDER BY j.started_at, j.request_id, e.seq",
            self._owned_by(orphans),
        )
        return open_journals_from(rows)

    async def close_open_turns(
        self, orphans: Orphans, partial_answers: Mapping[str, str] | None = None
    ) -> dict[str, Message]:
        partial_answers = partial_answers or {}
        closed: dict[str, Message] = {}
        async with self._transaction() as conn:
            open_turns = await conn.fetch(
                "DELETE FROM turns WHERE replica_id = ANY($1) "
                "RETURNING user_message_id, session_id, head_id, started_at",
                self._owned_by(orphans),
            )
            for turn in sorted(open_turns, key=lambda t: (t["started_at"], t["user_message_id"])):
                session_id = turn["session_id"]
                await self._lock_session(conn, session_id)
                head_id = turn["head_id"]
                # Calls the dead process stored but never answered get an error result first.
                unanswered = await self._unanswered_calls(conn, head_id)
                for call in unanswered:
                    result = await self._insert_message(
                        conn, session_id, head_id, interrupted_tool_result(call)
                    )
                    head_id = result.id
                partial = partial_answers.get(turn["user_message_id"], "")
                closed[turn["user_message_id"]] = await self._insert_message(
                    conn, session_id, head_id, generated(interrupted_answer(partial, unanswered))
                )
        return closed

    async def _unanswered_calls(self, conn: Connection, head_id: str) -> list[ToolCall]:
        """The tool calls of the answer at (or just above the tool results at) `head_id` that
        have no result yet."""
        rows = await conn.fetch(
            """
            WITH RECURSIVE up(id, role, tool_calls, tool_call_id, parent_id, depth) AS (
                SELECT id, role, tool_calls, tool_call_id, parent_id, 0
                FROM messages WHERE id = $1
                UNION ALL
                SELECT m.id, m.role, m.tool_calls, m.tool_call_id, m.parent_id, up.depth + 1
                FROM messages m JOIN up ON m.id = up.parent_id WHERE up.role = 'tool'
            )
            SELECT role, tool_calls, tool_call_id FROM up ORDER BY depth
            """,
            head_id,
        )
        answered = {row["tool_call_id"] for row in rows if row["role"] == "tool"}
        caller = rows[-1] if rows else None
        if caller is None or caller["role"] != "assistant":
            return []
        return [c for c in tool_calls_from(caller["tool_calls"]) if c.id not in answered]

    async def turn_answer(self, user_message_id: str) -> Message | None:
        # A turn is a chain: each message it stores is the first child of the one before; under
        # the user's message the newest answer is the turn's (see SQLiteStore.turn_answer).
        row = await self.pool.fetchrow(
            f"{_SELECT_MESSAGE} WHERE parent_id = $1 AND role != 'user' ORDER BY seq DESC LIMIT 1",
            user_message_id,
        )
        while True:
            if row is None or row["role"] == "user":
                return None
            message = message_from(row)
            if message.role == "assistant" and not message.tool_calls:
                return message
            row = await self.pool.fetchrow(
                f"{_SELECT_MESSAGE} WHERE parent_id = $1 ORDER BY seq LIMIT 1", message.id
            )

    # -- the frame journal ------------------------------------------------------------------

    async def append_journals(self, appends: Sequence[JournalAppend]) -> None:
        if not appends:
            return
        stamp = now_iso()
        started = [
            (a.request_id, stamp, a.token_digest, self.replica_id)
            for a in appends
            if a.first_seq == 0 and a.frames
        ]
        frames = [
            (a.request_id, a.first_seq + offset, frame)
            for a in appends
            for offset, frame in enumerate(a.frames)
        ]
        ended = [a.request_id for a in appends if a.ended]
        async with self._transaction() as conn:
            if started:  # (the journal_restarted trigger drops an earlier journal's frames)
                # A row still open is this request's own, from begin_turn: kept as it is.
                await conn.executemany(
                    "INSERT INTO journals (request_id, started_at, token_digest, replica_id) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO UPDATE "
                    "SET started_at = excluded.started_at, ended_at = NULL, "
                    "token_digest = excluded.token_digest, user_message_id = NULL, "
                    "question_digest = NULL, replica_id = excluded.replica_id "
                    "WHERE journals.ended_at IS NOT NULL",
                    started,
                )
            if frames:
                await conn.execute(
                    "INSERT INTO events (request_id, seq, frame, created_at) "
                    "SELECT request_id, seq, frame, $4 "
                    "FROM unnest($1::text[], $2::int[], $3::text[]) AS f(request_id, seq, frame) "
                    # (an answer's transaction may have committed them first: `JournalEnd`)
                    "ON CONFLICT (request_id, seq) DO NOTHING",
                    [f[0] for f in frames],
                    [f[1] for f in frames],
                    [f[2] for f in frames],
                    stamp,
                )
            if ended:
                await conn.execute(
                    "UPDATE journals SET ended_at = $1 WHERE request_id = ANY($2)", stamp, ended
                )
            # Delivered at commit, to every replica listening (followers of these requests).
            await conn.execute(
                "SELECT pg_notify($1, request_id) FROM unnest($2::text[]) AS request_id",
                JOURNAL_CHANNEL,
                list(dict.fromkeys(a.request_id for a in appends)),
            )

    async def read_journal(self, request_id: str) -> list[str] | None:
        rows = await self.pool.fetch(
            "SELECT frame FROM events WHERE request_id = $1 ORDER BY seq", request_id
        )
        return [row["frame"] for row in rows] or None

    async def journal_record(self, request_id: str) -> JournalRecord | None:
        row = await self.pool.fetchrow(
            "SELECT token_digest, question_digest FROM journals WHERE request_id = $1", request_id
        )
        if row is None:
            return None
        return JournalRecord(request_id, row["token_digest"], row["question_digest"])

    async def journal_tail(self, request_id: str, after_seq: int) -> JournalTail | None:
        # One statement, one snapshot: frames and end as one commit left them.
        rows = await self.pool.fetch(
            "SELECT j.ended_at, e.frame FROM journals j "
            "LEFT JOIN events e ON e.request_id = j.request_id AND e.seq > $2 "
            "WHERE j.request_id = $1 ORDER BY e.seq",
            request_id,
            after_seq,
        )
        return journal_tail_from(rows)

    @asynccontextmanager
    async def journal_changes(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        changed = asyncio.Event()
        waiters = self._journal_waiters.setdefault(request_id, set())
        waiters.add(changed)
        try:
            yield changed
        finally:
            waiters.discard(changed)
            if not waiters:
                del self._journal_waiters[request_id]

    def _journal_notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        for changed in self._journal_waiters.get(str(payload), ()):
            changed.set()

    # -- run signals: NOTIFY, to every replica --------------------------------------------------

    shared = True

    async def request_cancel(self, request_id: str) -> None:
        await self.pool.execute("SELECT pg_notify($1, $2)", CANCEL_CHANNEL, request_id)

    def on_cancel_request(self, handler: Callable[[str], None]) -> None:
        self._cancel_handlers.append(handler)

    def _cancel_notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        for handler in self._cancel_handlers:
            handler(str(payload))

    async def prune_journals(self, max_age_sec: float, max_rows: int) -> int:
        stamp = iso(datetime.now(UTC) - timedelta(seconds=max_age_sec))
        async with self._transaction() as conn:
            pruned = await conn.fetch(
                """
                DELETE FROM journals WHERE request_id IN (
                    SELECT request_id FROM journals WHERE ended_at < $1
                    UNION
                    SELECT request_id FROM (
                        SELECT j.request_id, SUM(n.frames) OVER (
                            ORDER BY j.ended_at DESC, j.request_id DESC ROWS UNBOUNDED PRECEDING
                        ) AS kept
                        FROM journals j
                        JOIN (SELECT request_id, count(*) AS frames FROM events
                              GROUP BY request_id) AS n USING (request_id)
                        WHERE j.ended_at IS NOT NULL
                    ) AS totals WHERE kept > $2
                ) RETURNING request_id
                """,
                stamp,
                max_rows,
            )
            if not pruned:
                return 0
            status = await conn.execute(
                "DELETE FROM events WHERE request_id = ANY($1)", [row[0] for row in pruned]
            )
            return _count(status)

    # -- agents -----------------------------------------------------------------------------

    async def put_agent(self, agent: Agent) -> Agent:
        for what, value in (
            ("agent id", agent.id),
            ("name", agent.name),
            ("system_prompt", agent.system_prompt),
            ("markdown_context", agent.markdown_context),
        ):
            given_text(value, what)
        stamp = now_iso()
        row = await self.pool.fetchrow(
            """
            INSERT INTO agents (id, name, system_prompt, markdown_context, default_options,
                                created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $6)
            ON CONFLICT (id) DO UPDATE SET
                name = excluded.name, system_prompt = excluded.system_prompt,
                markdown_context = excluded.markdown_context,
                default_options = excluded.default_options, updated_at = excluded.updated_at
            RETURNING *
            """,
            agent.id,
            agent.name,
            agent.system_prompt,
            agent.markdown_context,
            json.dumps(agent.default_options),
            stamp,
        )
        assert row is not None
        return agent_from(row)

    async def get_agent(self, agent_id: str) -> Agent | None:
        row = await self.pool.fetchrow("SELECT * FROM agents WHERE id = $1", agent_id)
        return agent_from(row) if row else None

    async def list_agents(self) -> list[Agent]:
        return [
            agent_from(row) for row in await self.pool.fetch("SELECT * FROM agents ORDER BY name")
        ]

    async def delete_agent(self, agent_id: str) -> bool:
        return _count(await self.pool.execute("DELETE FROM agents WHERE id = $1", agent_id)) > 0
