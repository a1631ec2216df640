"""The SQLite store: aiosqlite, WAL, `synchronous=FULL`, migrations by `PRAGMA user_version`.

One writer connection (its transactions serialised by an asyncio lock, so concurrent turns never
meet "database is locked") and one reader connection, which WAL lets read while the writer writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from tether import jsonsafe
from tether.engines.base import ToolCall
from tether.errors import BadRequest, Conflict, NotFound
from tether.store.base import (
    Agent,
    JournalAppend,
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
from tether.store.lock import DatabaseLock
from tether.store.records import (
    INTERRUPTED_TOOL_RESULT,
    MESSAGE_COLUMNS,
    agent_from,
    iso,
    message_from,
    message_values,
    new_id,
    new_message,
    now_iso,
    session_from,
    tool_calls_from,
)
from tether.tokens import digest

Synchronous = Literal["FULL", "NORMAL"]


# Frames per INSERT statement: 4 variables each, within the 999 variables of older SQLites.
FRAMES_PER_INSERT = 240


def load_migrations(package: str = "tether.store.migrations") -> list[tuple[int, str]]:
    """(version, sql) for every `NNNN_*.sql` file shipped in the migrations `package`."""
    folder = resources.files(package)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def fts_query(text: str, syntax: SearchSyntax) -> str:
    """The FTS5 query for a search: `words` quotes every word of `text` as a string (all must
    occur, no operator is special), `fts5` passes FTS5's own syntax through after checking it.
    Raises BadRequest for an empty query or one FTS5 cannot parse."""
    if not jsonsafe.is_unicode(text):
        raise BadRequest(f"q {jsonsafe.LONE_SURROGATE}")
    text = text.replace("\x00", " ")  # FTS5 ends a string at NUL; it separates words anyway
    if not text.strip():
        raise BadRequest("q must not be empty")
    if syntax == "words":
        return " ".join('"' + word.replace('"', '""') + '"' for word in text.split())
    if syntax != "fts5":
        raise BadRequest(f"syntax {syntax} is PostgreSQL's; this server stores in SQLite: use fts5")
    # Checked against an empty in-memory index: what fails there is the query's syntax, never
    # the database.
    with contextlib.closing(sqlite3.connect(":memory:")) as probe:
        probe.execute("CREATE VIRTUAL TABLE messages_fts USING fts5(content)")
        try:
            probe.execute("SELECT 1 FROM messages_fts WHERE messages_fts MATCH ?", (text,))
        except sqlite3.OperationalError as exc:
            raise BadRequest(f"q is not an FTS5 query: {exc}") from None
    return text


# A branch, or its tail (`Store.branch`): walked up by parent_id from the leaf, each step one
# lookup of the primary key, the contents' UTF-8 bytes summed on the way; the walk stops at the
# first user message where the sum reaches :bound (NULL: at the root), so it costs the tail's
# length, not the branch's.
BRANCH_SQL = f"""
WITH RECURSIVE chain(id, up, is_user, depth, covered) AS (
    SELECT id, parent_id, role = 'user', 0, length(CAST(content AS BLOB))
    FROM messages WHERE id = :leaf
    UNION ALL
    SELECT m.id, m.parent_id, m.role = 'user', chain.depth + 1,
           chain.covered + length(CAST(m.content AS BLOB))
    FROM chain JOIN messages m ON m.id = chain.up
    WHERE :bound IS NULL OR chain.covered < :bound OR NOT chain.is_user
)
SELECT {MESSAGE_COLUMNS} FROM messages JOIN chain USING (id) ORDER BY chain.depth DESC
"""


class SQLiteStore:
    def __init__(self, path: Path, *, synchronous: Synchronous = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        # The frame journal's writer: commits at NORMAL, which in WAL mode is durable when the
        # process dies but not on power loss until the next FULL commit (its fsync covers every
        # frame written before it). A write per batch of tokens must not cost an fsync.
        self._journal: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._file_lock = DatabaseLock(path)
        self._cancel_handlers: list[Callable[[str], None]] = []

    # -- life cycle -------------------------------------------------------------------------

    async def _connect(self, synchronous: Synchronous) -> aiosqlite.Connection:
        # isolation_level=None: autocommit; transactions are explicit BEGIN IMMEDIATE ... COMMIT.
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA busy_timeout = 10000")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute(f"PRAGMA synchronous = {synchronous}")
        return conn

    async def open(self) -> None:
        """Open (creating and migrating) the database; raises `DatabaseInUse` when another
        process has it open."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file_lock.acquire()
        self._writer = await self._connect(self.synchronous)
        await self._writer.execute("PRAGMA journal_mode = WAL")
        await self._migrate(self._writer)
        self._journal = await self._connect("NORMAL")
        self._reader = await self._connect(self.synchronous)

    async def close(self) -> None:
        for conn in (self._reader, self._journal, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._journal = self._writer = None
        self._file_lock.release()

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        for version, sql in load_migrations():
            if version <= current:
                continue
            # executescript commits first; the version bump rides in the same script so a crash
            # can never leave a migration applied but unrecorded.
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
            )

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("store is not open")
        return self._reader

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._writer is None:
            raise RuntimeError("store is not open")
        # The journal's connection writes under the same lock: no write ever waits on SQLite's
        # own lock (busy_timeout sleeps).
        async with self._write_lock:
            conn = self._writer
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                await asyncio.shield(conn.execute("ROLLBACK"))
                raise
            # Shielded: once the rows are written, a cancelled caller must not leave the
            # transaction open for the next writer.
            await asyncio.shield(conn.execute("COMMIT"))

    # Each read runs to its end in one call on the reader's thread. A statement left open
    # across awaits (execute, then fetch) holds the connection's read snapshot, and every read
    # other tasks start meanwhile shares that stale snapshot: a turn could miss the message it
    # had just committed.
    async def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def _fetchall(
        self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()
    ) -> list[aiosqlite.Row]:
        values = params if isinstance(params, Mapping) else tuple(params)
        return list(await self.reader.execute_fetchall(sql, values))

    # -- sessions ---------------------------------------------------------------------------

    async def _insert_session(
        self, conn: aiosqlite.Connection, title: str, agent_id: str | None
    ) -> Session:
        stamp = now_iso()
        session = Session(new_id(), title, agent_id, stamp, stamp)
        await conn.execute(
            "INSERT INTO sessions (id, title, agent_id, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (session.id, session.title, session.agent_id, stamp, stamp),
        )
        return session

    async def _check_agent(self, conn: aiosqlite.Connection, agent_id: str | None) -> None:
        if agent_id is None:
            return
        async with conn.execute("SELECT 1 FROM agents WHERE id = ?", (agent_id,)) as cursor:
            if await cursor.fetchone() is None:
                raise NotFound(f"agent {agent_id!r} does not exist")

    async def create_session(self, title: str = "", agent_id: str | None = None) -> Session:
        async with self._transaction() as conn:
            await self._check_agent(conn, agent_id)
            return await self._insert_session(conn, title, agent_id)

    async def ensure_session(self, session_id: str) -> bool:
        stamp = now_iso()
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "INSERT OR IGNORE INTO sessions (id, title, agent_id, created_at, updated_at) "
                "VALUES (?, '', NULL, ?, ?)",
                (session_id, stamp, stamp),
            )
            return cursor.rowcount == 1

    async def get_session(self, session_id: str) -> Session | None:
        row = await self._fetchone("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return session_from(row) if row else None

    async def list_sessions(self, limit: int = 100, offset: int = 0) -> list[Session]:
        rows = await self._fetchall(
            "SELECT * FROM sessions ORDER BY updated_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [session_from(row) for row in rows]

    async def update_session(self, session_id: str, *, title: str) -> Session | None:
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE sessions SET title = ?, updated_at = ? WHERE id = ?",
                (title, now_iso(), session_id),
            )
            async with conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)) as cur:
                row = await cur.fetchone()
        return session_from(row) if row else None

    async def delete_session(self, session_id: str) -> bool:
        async with self._transaction() as conn:
            cursor = await conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return cursor.rowcount > 0

    async def delete_all_sessions(self) -> int:
        async with self._transaction() as conn:
            cursor = await conn.execute("DELETE FROM sessions")
            return cursor.rowcount

    # -- messages ---------------------------------------------------------------------------

    async def _insert_message(
        self, conn: aiosqlite.Connection, session_id: str, parent_id: str | None, new: NewMessage
    ) -> Message:
        message = new_message(session_id, parent_id, new)
        await conn.execute(
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 14)})",
            message_values(message),
        )
        await conn.execute(
            "UPDATE sessions SET updated_at = ?, active_leaf_id = ? WHERE id = ?",
            (message.created_at, message.id, session_id),
        )
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
        async with self._transaction() as conn:
            created = session_id is None
            if session_id is None:
                await self._check_agent(conn, agent_id)
                session = await self._insert_session(conn, title, agent_id)
            else:
                session = await self._session_in(conn, session_id)
            if sibling_of is not None:
                parent_id = (await self._user_message_in(conn, sibling_of, session.id)).parent_id
            elif parent_id is not None:
                await self._message_in(conn, parent_id, session.id)
            else:
                parent_id = session.active_leaf_id
            if not session.title and session.active_leaf_id is None and title:
                await conn.execute(
                    "UPDATE sessions SET title = ? WHERE id = ?", (title, session.id)
                )
                session = replace(session, title=title)
            message = await self._insert_message(
                conn, session.id, parent_id, NewMessage(role="user", content=text)
            )
            await self._open_turn(conn, message)
            if journal is not None:
                await self._open_journal(conn, journal, message)
            started = replace(session, updated_at=message.created_at, active_leaf_id=message.id)
            return TurnStart(started, message, created)

    async def begin_regeneration(
        self, message_id: str, *, session_id: str, journal: JournalStart | None = None
    ) -> TurnStart:
        async with self._transaction() as conn:
            session = await self._session_in(conn, session_id)
            message = await self._message_in(conn, message_id, session.id)
            while message.role != "user":  # up from an answer, a tool call or its result
                if message.parent_id is None:
                    raise NotFound(f"message {message_id!r} answers no user message")
                message = await self._message_in(conn, message.parent_id, session.id)
            async with conn.execute(
                "SELECT 1 FROM turns WHERE user_message_id = ?", (message.id,)
            ) as cursor:
                if await cursor.fetchone() is not None:
                    raise Conflict(f"message {message.id!r} is being answered already")
            await self._open_turn(conn, message)
            if journal is not None:
                await self._open_journal(conn, journal, message)
            return TurnStart(session, message, False)

    async def _open_turn(self, conn: aiosqlite.Connection, message: Message) -> None:
        """The turn of `message` is open until its answer is stored (see close_open_turns)."""
        await conn.execute(
            "INSERT INTO turns (user_message_id, session_id, head_id, started_at) "
            "VALUES (?, ?, ?, ?)",
            (message.id, message.session_id, message.id, now_iso()),
        )

    async def _session_in(self, conn: aiosqlite.Connection, session_id: str) -> Session:
        async with conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"session {session_id!r} does not exist")
        return session_from(row)

    async def _message_in(
        self, conn: aiosqlite.Connection, message_id: str, session_id: str
    ) -> Message:
        async with conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND session_id = ?",
            (message_id, session_id),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise NotFound(f"message {message_id!r} is not in session {session_id!r}")
        return message_from(row)

    async def _user_message_in(
        self, conn: aiosqlite.Connection, message_id: str, session_id: str
    ) -> Message:
        message = await self._message_in(conn, message_id, session_id)
        if message.role != "user":
            raise NotFound(f"message {message_id!r} is a {message.role} message, not a user's")
        return message

    async def _open_journal(
        self, conn: aiosqlite.Connection, journal: JournalStart, question: Message
    ) -> None:
        # (the journal_restarted trigger drops the frames of an ended journal of the same id)
        await conn.execute(
            "INSERT INTO journals (request_id, started_at, token_digest, user_message_id, "
            "question_digest) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET started_at = excluded.started_at, "
            "ended_at = NULL, token_digest = excluded.token_digest, "
            "user_message_id = excluded.user_message_id, "
            "question_digest = excluded.question_digest",
            (
                journal.request_id,
                question.created_at,
                journal.token_digest,
                question.id,
                digest(question.content),
            ),
        )

    async def append_message(self, session_id: str, parent_id: str, message: NewMessage) -> Message:
        async with self._transaction() as conn:
            return await self._insert_message(conn, session_id, parent_id, message)

    async def append_to_turn(
        self, session_id: str, parent_id: str, message: NewMessage, *, turn_id: str
    ) -> Message:
        async with self._transaction() as conn:
            stored = await self._insert_message(conn, session_id, parent_id, message)
            await conn.execute(
                "UPDATE turns SET head_id = ? WHERE user_message_id = ?", (stored.id, turn_id)
            )
            return stored

    async def end_turn(
        self, session_id: str, parent_id: str, message: NewMessage, *, turn_id: str
    ) -> Message:
        async with self._transaction() as conn:
            stored = await self._insert_message(conn, session_id, parent_id, message)
            await conn.execute("DELETE FROM turns WHERE user_message_id = ?", (turn_id,))
            return stored

    # -- recovery (one process per file: whatever is open at start-up is a dead one's) ------

    recovery_interval_sec: float | None = None

    @asynccontextmanager
    async def orphans(self) -> AsyncIterator[Orphans]:
        yield Orphans(None)

    async def close_open_turns(
        self, orphans: Orphans, partial_answers: Mapping[str, str] | None = None
    ) -> dict[str, Message]:
        partial_answers = partial_answers or {}
        closed: dict[str, Message] = {}
        async with self._transaction() as conn:
            async with conn.execute(
                "SELECT user_message_id, session_id, head_id FROM turns ORDER BY started_at"
            ) as cursor:
                open_turns = list(await cursor.fetchall())
            for turn in open_turns:
                head_id = turn["head_id"]
                # Calls the dead process stored but never answered get an error result first:
                # a history with a call left unanswered is refused by chat templates and by
                # OpenAI-compatible servers.
                unanswered = await self._unanswered_calls(conn, head_id)
                for call in unanswered:
                    result = await self._insert_message(
                        conn,
                        turn["session_id"],
                        head_id,
                        NewMessage(
                            role="tool",
                            content=INTERRUPTED_TOOL_RESULT,
                            name=call.name,
                            tool_call_id=call.id,
                            status="error",
                        ),
                    )
                    head_id = result.id
                # No text is generated while calls wait for results: text the journal shows
                # after the last tool frame then is the calling message's, already stored.
                text = "" if unanswered else partial_answers.get(turn["user_message_id"], "")
                closed[turn["user_message_id"]] = await self._insert_message(
                    conn,
                    turn["session_id"],
                    head_id,
                    NewMessage(role="assistant", content=text, status="interrupted"),
                )
            await conn.execute("DELETE FROM turns")
        return closed

    async def turn_answer(self, user_message_id: str) -> Message | None:
        # A turn is a chain: each message it stores is the first child of the one before (a
        # later branch from the same parent is younger, so ORDER BY rowid keeps to the turn).
        # Under the user's message the newest answer is the turn's: a regeneration answers the
        # message again (one turn of a message runs at a time); a user message there (a chat
        # with that parent_id) starts another turn.
        row = await self._fetchone(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE parent_id = ? AND role != 'user' "
            "ORDER BY rowid DESC LIMIT 1",
            (user_message_id,),
        )
        while True:
            if row is None or row["role"] == "user":
                return None
            message = message_from(row)
            if message.role == "assistant" and not message.tool_calls:
                return message
            row = await self._fetchone(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE parent_id = ? "
                "ORDER BY rowid LIMIT 1",
                (message.id,),
            )

    async def _unanswered_calls(self, conn: aiosqlite.Connection, head_id: str) -> list[ToolCall]:
        """The tool calls of the answer at (or just above the tool results at) `head_id` that
        have no result yet."""
        answered: set[str] = set()
        current: str | None = head_id
        while current is not None:
            async with conn.execute(
                "SELECT role, tool_calls, tool_call_id, parent_id FROM messages WHERE id = ?",
                (current,),
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return []
            if row["role"] == "tool":
                answered.add(row["tool_call_id"])
                current = row["parent_id"]
                continue
            if row["role"] != "assistant":
                return []
            return [c for c in tool_calls_from(row["tool_calls"]) if c.id not in answered]
        return []

    async def list_messages(self, session_id: str) -> list[Message]:
        rows = await self._fetchall(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ? ORDER BY rowid",
            (session_id,),
        )
        return [message_from(row) for row in rows]

    async def set_active_leaf(self, session_id: str, message_id: str) -> Message:
        async with self._transaction() as conn:
            leaf = await self._message_in(conn, message_id, session_id)
            while True:
                async with conn.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE parent_id = ? "
                    "ORDER BY rowid DESC LIMIT 1",
                    (leaf.id,),
                ) as cursor:
                    row = await cursor.fetchone()
                if row is None:
                    break
                leaf = message_from(row)
            await conn.execute(
                "UPDATE sessions SET active_leaf_id = ? WHERE id = ?", (leaf.id, session_id)
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
        rows = await self._fetchall(
            """
            SELECT m.id, m.session_id, s.title, m.role, m.created_at,
                   snippet(messages_fts, 0, '<mark>', '</mark>', '…', 16) AS snippet,
                   bm25(messages_fts) AS score
            FROM messages_fts
            JOIN messages m ON m.rowid = messages_fts.rowid
            JOIN sessions s ON s.id = m.session_id
            WHERE messages_fts MATCH ? AND (? IS NULL OR m.session_id = ?)
            ORDER BY score, m.rowid LIMIT ?
            """,
            (fts_query(query, syntax), session_id, session_id, limit),
        )
        return [
            SearchHit(
                message_id=row["id"],
                session_id=row["session_id"],
                session_title=row["title"],
                role=row["role"],
                snippet=row["snippet"],
                created_at=row["created_at"],
                rank=row["score"],
            )
            for row in rows
        ]

    async def branch(self, message_id: str, *, covering_bytes: int | None = None) -> list[Message]:
        rows = await self._fetchall(BRANCH_SQL, {"leaf": message_id, "bound": covering_bytes})
        return [message_from(row) for row in rows]

    # -- the frame journal ------------------------------------------------------------------

    async def append_journals(self, appends: Sequence[JournalAppend]) -> None:
        # No explicit transaction: each statement commits on its own, so the usual batch (new
        # frames of running journals) costs one call on the journal's thread. A crash between
        # the statements leaves states recovery handles: a started journal with no frames, or
        # a final frame whose journal is not marked ended.
        conn = self._journal
        if conn is None:
            raise RuntimeError("store is not open")
        stamp = now_iso()
        started = [
            (a.request_id, stamp, a.token_digest) for a in appends if a.first_seq == 0 and a.frames
        ]
        rows = [
            (a.request_id, a.first_seq + offset, frame, stamp)
            for a in appends
            for offset, frame in enumerate(a.frames)
        ]
        ended = [(stamp, a.request_id) for a in appends if a.ended]
        async with self._write_lock:
            if started:  # (the journal_restarted trigger drops an earlier journal's frames)
                # A row still open is this request's own, from begin_turn: kept as it is.
                await conn.executemany(
                    "INSERT INTO journals (request_id, started_at, token_digest) VALUES (?, ?, ?) "
                    "ON CONFLICT (request_id) DO UPDATE "
                    "SET started_at = excluded.started_at, ended_at = NULL, "
                    "token_digest = excluded.token_digest, user_message_id = NULL, "
                    "question_digest = NULL "
                    "WHERE journals.ended_at IS NOT NULL",
                    started,
                )
            for first in range(0, len(rows), FRAMES_PER_INSERT):
                part = rows[first : first + FRAMES_PER_INSERT]
                await conn.execute(
                    "INSERT INTO events (request_id, seq, frame, created_at) VALUES "
                    + ", ".join(["(?, ?, ?, ?)"] * len(part)),
                    [value for row in part for value in row],
                )
            if ended:
                await conn.executemany(
                    "UPDATE journals SET ended_at = ? WHERE request_id = ?", ended
                )

    async def open_journals(self, orphans: Orphans) -> list[OpenJournal]:
        rows = await self._fetchall(
            "SELECT j.request_id, j.user_message_id, e.frame FROM journals j "
            "LEFT JOIN events e USING (request_id) "
            "WHERE j.ended_at IS NULL ORDER BY j.started_at, j.request_id, e.seq"
        )
        journals: dict[str, OpenJournal] = {}
        for row in rows:
            journal = journals.setdefault(
                row["request_id"],
                OpenJournal(row["request_id"], [], row["user_message_id"]),
            )
            if row["frame"] is not None:
                journal.frames.append(row["frame"])
        return list(journals.values())

    async def read_journal(self, request_id: str) -> list[str] | None:
        rows = await self._fetchall(
            "SELECT frame FROM events WHERE request_id = ? ORDER BY seq", (request_id,)
        )
        return [row["frame"] for row in rows] or None

    async def journal_record(self, request_id: str) -> JournalRecord | None:
        row = await self._fetchone(
            "SELECT token_digest, question_digest FROM journals WHERE request_id = ?",
            (request_id,),
        )
        if row is None:
            return None
        return JournalRecord(request_id, row["token_digest"], row["question_digest"])

    async def journal_tail(self, request_id: str, after_seq: int) -> JournalTail | None:
        rows = await self._fetchall(
            "SELECT j.ended_at, e.frame FROM journals j "
            "LEFT JOIN events e ON e.request_id = j.request_id AND e.seq > ? "
            "WHERE j.request_id = ? ORDER BY e.seq",
            (after_seq, request_id),
        )
        if not rows:
            return None
        frames = [row["frame"] for row in rows if row["frame"] is not None]
        return JournalTail(frames, rows[0]["ended_at"] is not None)

    @asynccontextmanager
    async def journal_changes(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        yield asyncio.Event()  # one process per file: no other process writes its journals

    # -- run signals (one process per file: they stay in it) --------------------------------

    async def request_cancel(self, request_id: str) -> None:
        for handler in self._cancel_handlers:
            handler(request_id)

    def on_cancel_request(self, handler: Callable[[str], None]) -> None:
        self._cancel_handlers.append(handler)

    async def prune_journals(self, max_age_sec: float, max_rows: int) -> int:
        stamp = iso(datetime.now(UTC) - timedelta(seconds=max_age_sec))
        async with self._transaction() as conn:
            # Ended more than max_age_sec ago; then, newest kept first, the ended journals
            # beyond max_rows frames.
            async with conn.execute(
                """
                SELECT request_id FROM journals WHERE ended_at < ?
                UNION
                SELECT request_id FROM (
                    SELECT j.request_id, SUM(n.frames) OVER (
                        ORDER BY j.ended_at DESC, j.request_id DESC ROWS UNBOUNDED PRECEDING
                    ) AS kept
                    FROM journals j
                    JOIN (SELECT request_id, count(*) AS frames FROM events GROUP BY request_id)
                        AS n USING (request_id)
                    WHERE j.ended_at IS NOT NULL
                ) WHERE kept > ?
                """,
                (stamp, max_rows),
            ) as cursor:
                pruned = [(row["request_id"],) for row in await cursor.fetchall()]
            if not pruned:
                return 0
            deleted = await conn.executemany("DELETE FROM events WHERE request_id = ?", pruned)
            await conn.executemany("DELETE FROM journals WHERE request_id = ?", pruned)
            return max(deleted.rowcount, 0)

    # -- agents -----------------------------------------------------------------------------

    async def put_agent(self, agent: Agent) -> Agent:
        stamp = now_iso()
        async with self._transaction() as conn:
            await conn.execute(
                """
                INSERT INTO agents (id, name, system_prompt, markdown_context, default_options,
                                    created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    name = excluded.name, system_prompt = excluded.system_prompt,
                    markdown_context = excluded.markdown_context,
                    default_options = excluded.default_options, updated_at = excluded.updated_at
                """,
                (
                    agent.id,
                    agent.name,
                    agent.system_prompt,
                    agent.markdown_context,
                    json.dumps(agent.default_options),
                    stamp,
                    stamp,
                ),
            )
            async with conn.execute("SELECT * FROM agents WHERE id = ?", (agent.id,)) as cursor:
                row = await cursor.fetchone()
        assert row is not None
        return agent_from(row)

    async def get_agent(self, agent_id: str) -> Agent | None:
        row = await self._fetchone("SELECT * FROM agents WHERE id = ?", (agent_id,))
        return agent_from(row) if row else None

    async def list_agents(self) -> list[Agent]:
        return [
            agent_from(row) for row in await self._fetchall("SELECT * FROM agents ORDER BY name")
        ]

    async def delete_agent(self, agent_id: str) -> bool:
        async with self._transaction() as conn:
            cursor = await conn.execute("DELETE FROM agents WHERE id = ?", (agent_id,))
            return cursor.rowcount > 0
