"""The SQLite store: WAL, `synchronous=FULL`, migrations by `PRAGMA user_version`.

Writes go through one writer task with group commit (`tether.store.group_commit`): every store
call that writes is a job put in a line; the writer takes what waits into one transaction
(`BEGIN IMMEDIATE` ... `COMMIT`), so concurrent turns' starts, answers and journal frames share
one commit and one fsync, and no write ever waits on SQLite's own lock. A turn's jobs read what
they must (one statement for `begin_turn`, none for an answer or a journal batch) and hand their
rows to the batch, which writes each kind of row with one `executemany` in a fixed order
(`Step`): so a batch costs a few statements, not a few per turn. A job that refuses (NotFound,
`JournalAnswered`) has written nothing and the batch goes on; any other failure rolls the batch
back and its jobs run again one transaction each, so one bad job fails alone.

One writer connection, at FULL for a batch that stores a message and at NORMAL (in WAL mode
durable when the process dies, not on power loss until the next FULL commit, whose fsync covers
every frame before it) for a batch of journal frames only: a write per batch of tokens must not
cost an fsync. One connection, switching `synchronous` between batches, not one per level: a
connection drops its whole page cache whenever another has committed since its last
transaction, so two writers taking turns re-read every page they touch (88 reads a turn, and a
message's insert 173 µs; with one, 10 and 124 µs).
One reader connection, which WAL lets read while the writer writes.

Where the statements run. Reads go to aiosqlite's thread (the reader), so a long read (a
search, a long session) never holds up the event loop. Writes run on the event loop's own
thread, with the standard library's `sqlite3`: a batch is a handful of statements of
microseconds each, plus one fsync when durable (0.1-0.3 ms here). Through a thread, each
statement was a hand-off (~80 µs idle), and while the loop is busy (a flood of fast streams) a
hand-off waited for the GIL: a thread waiting for it asks for a switch only after 5 ms without
one, and the loop drops and retakes it at every `select`, so the writer's thread could starve
for 50-600 ms a statement (bench/fairness.py; `tests/e2e/test_fairness.py`: a short turn
beside four floods took 140 ms, 30-39x its time alone; with the writes on the loop, 18-26 ms,
4-8x). The price: the loop waits out each durable commit's fsync (one per batch, whatever it
holds). Checkpoints, which copy the WAL into the database and fsync it, do not run in the
writers' commits (`wal_autocheckpoint` off there): every `CHECKPOINT_EVERY` commits the writer
task, between two batches, has a third connection run one on aiosqlite's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite
import structlog

from tether import jsonsafe
from tether.engines.base import ToolCall
from tether.errors import BadRequest, Conflict, NotFound, TetherError
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
from tether.store.group_commit import Batch, CommitQueue
from tether.store.lock import DatabaseLock
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
from tether.tokens import digest

Synchronous = Literal["FULL", "NORMAL"]
T = TypeVar("T")
log = structlog.get_logger("tether.store")

# Another process holding the write lock is waited for this long, pausing as SQLite's own busy
# handler does (1, 2, 5, ... 100 ms).
BUSY_TIMEOUT_SEC = 10.0
BUSY_PAUSES_SEC = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)
# Commits between two checkpoints (SQLite's own default, 1000 WAL pages, is ~60 of a turn's).
CHECKPOINT_EVERY = 64


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


# A leaf and its nearest ancestors, root-most first: enough to find a remembered tail
# (`tether.store.branch_tails`).
RECENT_SQL = f"""
WITH RECURSIVE chain(id, up, depth) AS (
    SELECT id, parent_id, 0 FROM messages WHERE id = :leaf
    UNION ALL
    SELECT m.id, m.parent_id, chain.depth + 1
    FROM chain JOIN messages m ON m.id = chain.up
    WHERE chain.depth < :steps
)
SELECT {MESSAGE_COLUMNS} FROM messages JOIN chain USING (id) ORDER BY chain.depth DESC
"""


class Step(enum.IntEnum):
    """The order a batch writes its rows in (so that every row's references exist first);
    rows of one step keep the order of their jobs."""

    SESSION = 0
    MESSAGE = 1  # (a trigger moves the session's active leaf to it: migration 0008)
    TURN = 2
    JOURNAL = 3
    FRAME = 4
    JOURNAL_END = 5


@dataclass(frozen=True, slots=True)
class Write:
    """One row a job hands to its batch: `sql` with `params`, written at `step`; `leaf`:
    (session id, message id) when the row is a message, which becomes its session's active
    leaf."""

    step: Step
    sql: str
    params: tuple[Any, ...]
    leaf: tuple[str, str] | None = None


@dataclass(slots=True)
class WriteStats:
    """What the writer did, counted since the store opened (`SQLiteStore.stats`)."""

    transactions: int = 0  # committed
    durable: int = 0  # ... of them at synchronous=FULL (an fsync each)
    jobs: int = 0  # store calls settled by those commits
    statements: int = 0  # statements the writer ran
    rollbacks: int = 0  # batches that failed and were run again one job at a time


class _Tx:
    """The writer's connection inside one transaction, counting the statements it runs (on the
    loop's thread: see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, stats: WriteStats) -> None:
        self.conn = conn
        self._stats = stats
        # The active leaf of each session once the rows handed to this transaction so far are
        # written (they are written at its end): a turn after another in the same batch goes
        # after that one's message.
        self.leaves: dict[str, str] = {}

    def handed(self, writes: Iterable[Write]) -> None:
        """A job handed `writes` to the transaction."""
        for write in writes:
            if write.leaf is not None:
                session_id, message_id = write.leaf
                self.leaves[session_id] = message_id

    # (async, as the jobs that call them are: the seam stays one where a statement may wait)
    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        self._stats.statements += 1
        rows: list[sqlite3.Row] = self.conn.execute(sql, tuple(params)).fetchall()
        return rows

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        self._stats.statements += 1
        return self.conn.execute(sql, tuple(params))

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> sqlite3.Cursor:
        self._stats.statements += 1
        return self.conn.executemany(sql, [tuple(row) for row in rows])

    async def write(self, writes: Sequence[Write]) -> None:
        """Write the rows by step, each run of one statement as one `executemany`."""
        ordered = sorted(writes, key=lambda write: write.step)  # stable: job order kept
        for (_, sql), group in itertools.groupby(ordered, key=lambda w: (w.step, w.sql)):
            await self.executemany(sql, [write.params for write in group])


# A batched job: its reads, then its rows and what its caller gets. It must not write itself.
Prepare = Callable[[_Tx], Awaitable[tuple[Any, list[Write]]]]
# A solo job: runs alone in its transaction, writing as it goes.
Solo = Callable[[_Tx], Awaitable[Any]]

# Refusals: a batched job raising one has written nothing; its batch goes on without it.
REFUSALS = (TetherError, JournalAnswered)


@dataclass(eq=False, slots=True)
class _Job:
    prepare: Prepare
    future: asyncio.Future[Any]


_INSERT_SESSION = (
    "INSERT INTO sessions (id, title, agent_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
)
_SET_TITLE = "UPDATE sessions SET title = ? WHERE id = ?"
_INSERT_MESSAGE = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 14)})"
_OPEN_TURN = (
    "INSERT INTO turns (user_message_id, session_id, head_id, started_at) VALUES (?, ?, ?, ?)"
)
_MOVE_TURN = "UPDATE turns SET head_id = ? WHERE user_message_id = ?"
_CLOSE_TURN = "DELETE FROM turns WHERE user_message_id = ?"
# begin_turn's journal row. An ended journal of the same request_id is replaced (a new
# started_at: the journal_restarted trigger drops its frames); an open one is the request's
# own, from frames it journaled while it waited (`queued`): its started_at and frames stay.
_OPEN_JOURNAL = (
    "INSERT INTO journals (request_id, started_at, token_digest, user_message_id, "
    "question_digest) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (request_id) DO UPDATE SET started_at = CASE WHEN journals.ended_at IS NULL "
    "THEN journals.started_at ELSE excluded.started_at END, "
    "ended_at = NULL, token_digest = excluded.token_digest, "
    "user_message_id = excluded.user_message_id, question_digest = excluded.question_digest"
)
# A journal's first frames (from the journal writer): a row still open is this request's own,
# from begin_turn, kept as it is; an ended one is replaced.
_START_JOURNAL = (
    "INSERT INTO journals (request_id, started_at, token_digest) VALUES (?, ?, ?) "
    "ON CONFLICT (request_id) DO UPDATE "
    "SET started_at = excluded.started_at, ended_at = NULL, "
    "token_digest = excluded.token_digest, user_message_id = NULL, question_digest = NULL "
    "WHERE journals.ended_at IS NOT NULL"
)
# A seq the journal holds keeps its frame: an answer's last frames (`JournalEnd`) repeat those
# the journal writer had on their way.
_INSERT_FRAME = (
    "INSERT OR IGNORE INTO events (request_id, seq, frame, created_at) VALUES (?, ?, ?, ?)"
)
_END_JOURNAL = "UPDATE journals SET ended_at = ? WHERE request_id = ?"
# begin_turn's one read: the session (NULLs for a new one), whether the agent exists, and
# whether the request ended having asked this question already.
_BEGIN_READ = """
SELECT s.id, s.title, s.agent_id, s.created_at, s.updated_at, s.active_leaf_id,
       EXISTS (SELECT 1 FROM agents WHERE id = ?) AS agent_found,
       j.request_id AS answered, j.token_digest AS answered_token
FROM (SELECT 1) AS one
LEFT JOIN sessions AS s ON s.id = ?
LEFT JOIN journals AS j ON j.request_id = ? AND j.ended_at IS NOT NULL AND j.question_digest = ?
"""


def _message_writes(
    session_id: str, parent_id: str | None, new: NewMessage
) -> tuple[Message, list[Write]]:
    """The message `new` as stored after `parent_id`, and its row (its insert moves the
    session's active leaf to it: the messages_move_leaf trigger)."""
    message = new_message(session_id, parent_id, new)
    row = Write(Step.MESSAGE, _INSERT_MESSAGE, message_values(message), (session_id, message.id))
    return message, [row]


def _frame_writes(request_id: str, first_seq: int, frames: Sequence[str]) -> list[Write]:
    stamp = now_iso()
    return [
        Write(Step.FRAME, _INSERT_FRAME, (request_id, first_seq + offset, frame, stamp))
        for offset, frame in enumerate(frames)
    ]


def _journal_writes(appends: Sequence[JournalAppend]) -> list[Write]:
    stamp = now_iso()
    writes = [
        Write(Step.JOURNAL, _START_JOURNAL, (a.request_id, stamp, a.token_digest))
        for a in appends
        if a.first_seq == 0 and a.frames
    ]
    for a in appends:
        writes += _frame_writes(a.request_id, a.first_seq, a.frames)
    writes += [
        Write(Step.JOURNAL_END, _END_JOURNAL, (stamp, a.request_id)) for a in appends if a.ended
    ]
    return writes


def _settle(
    future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None
) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def _session_in(tx: _Tx, session_id: str) -> Session:
    row = await tx.fetchone("SELECT * FROM sessions WHERE id = ?", (session_id,))
    if row is None:
        raise NotFound(f"session {session_id!r} does not exist")
    return session_from(row)


async def _message_in(tx: _Tx, message_id: str, session_id: str) -> Message:
    row = await tx.fetchone(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND session_id = ?",
        (message_id, session_id),
    )
    if row is None:
        raise NotFound(f"message {message_id!r} is not in session {session_id!r}")
    return message_from(row)


async def _user_message_in(tx: _Tx, message_id: str, session_id: str) -> Message:
    message = await _message_in(tx, message_id, session_id)
    if message.role != "user":
        raise NotFound(f"message {message_id!r} is a {message.role} message, not a user's")
    return message


async def _check_agent(tx: _Tx, agent_id: str | None) -> None:
    if (
        agent_id is not None
        and await tx.fetchone("SELECT 1 FROM agents WHERE id = ?", (agent_id,)) is None
    ):
        raise NotFound(f"agent {agent_id!r} does not exist")


def _session_writes(title: str, agent_id: str | None) -> tuple[Session, list[Write]]:
    stamp = now_iso()
    session = Session(new_id(), title, agent_id, stamp, stamp)
    row = (session.id, session.title, session.agent_id, stamp, stamp)
    return session, [Write(Step.SESSION, _INSERT_SESSION, row)]


def _turn_writes(message: Message, journal: JournalStart | None) -> list[Write]:
    """The turn of `message` is open until its answer is stored (see close_open_turns); its
    journal row, and the journal's opening frame, go with it."""
    writes = [Write(Step.TURN, _OPEN_TURN, (message.id, message.session_id, message.id, now_iso()))]
    if journal is None:
        return writes
    row = (
        journal.request_id,
        now_iso(),  # (not the message's: a regeneration's question is an old one)
        journal.token_digest,
        message.id,
        digest(message.content),
    )
    return [*writes, Write(Step.JOURNAL, _OPEN_JOURNAL, row)]


def _opening_writes(journal: JournalStart | None, start: TurnStart) -> list[Write]:
    if journal is None or journal.opening is None:
        return []
    return _frame_writes(journal.request_id, journal.opening_seq, [journal.opening(start)])


class SQLiteStore:
    def __init__(self, path: Path, *, synchronous: Synchronous = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self.stats = WriteStats()
        self._writer: sqlite3.Connection | None = None
        self._writer_mode: Synchronous = synchronous  # its `synchronous` now
        self._reader: aiosqlite.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._commits_since_checkpoint = 0
        self._queue: CommitQueue[_Job] = CommitQueue()
        self._writing: asyncio.Task[None] | None = None
        self._file_lock = DatabaseLock(path)
        self._cancel_handlers: list[Callable[[str], None]] = []
        self._tails = BranchTails()

    # -- life cycle -------------------------------------------------------------------------

    async def _connect(self, synchronous: Synchronous) -> aiosqlite.Connection:
        """A connection on aiosqlite's thread (reads, checkpoints)."""
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA busy_timeout = 10000")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute(f"PRAGMA synchronous = {synchronous}")
        return conn

    def _connect_writer(self, synchronous: Synchronous) -> sqlite3.Connection:
        """A writer's connection, used on the loop's thread (see the module docstring)."""
        # isolation_level=None: autocommit; transactions are explicit BEGIN IMMEDIATE ... COMMIT.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        # No busy wait here, which would block the loop: `_begin` waits for another process
        # holding the write lock (a backup, the sqlite3 shell) by awaiting.
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's thread does them
        return conn

    async def open(self) -> None:
        """Open (creating and migrating) the database; raises `DatabaseInUse` when another
        process has it open."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file_lock.acquire()
        self._writer = self._connect_writer(self.synchronous)
        self._writer.execute("PRAGMA journal_mode = WAL")
        self._migrate(self._writer)
        self._reader = await self._connect(self.synchronous)
        self._checkpointer = await self._connect(self.synchronous)

    async def close(self) -> None:
        if self._writing is not None:
            await asyncio.wait({self._writing})  # what is waiting is written first
        for conn in (self._checkpointer, self._reader):
            if conn is not None:
                await conn.close()
        if self._writer is not None:  # the last to close checkpoints the WAL
            self._writer.close()
        self._checkpointer = self._reader = None
        self._writer = None
        self._file_lock.release()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        row = conn.execute("PRAGMA user_version").fetchone()
        current = int(row[0]) if row else 0
        for version, sql in load_migrations():
            if version <= current:
                continue
            # executescript commits first; the version bump rides in the same script so a crash
            # can never leave a migration applied but unrecorded.
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
            )

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database on the checkpointer's thread, between two batches:
        no write is open, so the checkpoint completes and the next write starts the WAL over
        (as SQLite's own checkpoint after a commit would, but not on the loop's thread)."""
        self._commits_since_checkpoint = 0
        if self._checkpointer is None:
            return
        try:
            await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one tries again; the WAL only grows meanwhile
            log.warning("store.checkpoint_failed", error=str(exc))

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("store is not open")
        return self._reader

    # -- the writer: group commit -------------------------------------------------------------

    async def _batched(self, prepare: Prepare, *, durable: bool = True) -> Any:
        """Run `prepare` in the next transaction the writer commits, with whatever else waits;
        return what it returned once its rows are committed."""
        return await self._put(prepare, solo=False, durable=durable)

    async def _solo(self, work: Solo) -> Any:
        """Run `work` in a transaction of its own (it writes as it goes)."""

        async def prepare(tx: _Tx) -> tuple[Any, list[Write]]:
            return await work(tx), []

        return await self._put(prepare, solo=True, durable=True)

    async def _put(self, prepare: Prepare, *, solo: bool, durable: bool) -> Any:
        if self._writer is None:
            raise RuntimeError("store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put(_Job(prepare, future), solo=solo, durable=durable)
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write(), name="store-writer")
        # A caller cancelled before the writer took its job stores nothing; one cancelled
        # while its transaction runs has it committed (or rolled back) all the same.
        return await future

    async def _write(self) -> None:
        while (batch := self._queue.take()) is not None:
            jobs = [job for job in batch.jobs if not job.future.done()]
            if jobs:
                await self._commit(batch, jobs)
            if self._commits_since_checkpoint >= CHECKPOINT_EVERY:
                await self._checkpoint()

    async def _commit(self, batch: Batch[_Job], jobs: list[_Job]) -> None:
        conn = self._writer
        assert conn is not None
        tx = _Tx(conn, self.stats)
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            self._set_mode(conn, self.synchronous if batch.durable else "NORMAL")
            await self._begin(tx)
            writes: list[Write] = []
            for job in jobs:
                try:
                    result, rows = await job.prepare(tx)
                except REFUSALS as exc:
                    if batch.alone:
                        raise
                    outcomes.append((job, None, exc))
                    continue
                outcomes.append((job, result, None))
                tx.handed(rows)
                writes += rows
            await tx.write(writes)
            await tx.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # (the jobs hear of `exc` all the same)
                    await tx.execute("ROLLBACK")
            if batch.alone:
                _settle(jobs[0].future, error=exc)
            else:  # which job broke it is unknown: each runs again alone
                self.stats.rollbacks += 1
                self._queue.retry_alone(batch)
            return
        self.stats.transactions += 1
        self.stats.durable += batch.durable
        self._commits_since_checkpoint += 1
        self.stats.jobs += len(outcomes)
        for job, result, error in outcomes:
            _settle(job.future, result, error)

    def _set_mode(self, conn: sqlite3.Connection, mode: Synchronous) -> None:
        """The writer's `synchronous` for the next transaction (a pragma without I/O)."""
        if mode != self._writer_mode:
            conn.execute(f"PRAGMA synchronous = {mode}")
            self._writer_mode = mode

    @staticmethod
    async def _begin(tx: _Tx) -> None:
        """BEGIN IMMEDIATE, waiting (up to BUSY_TIMEOUT_SEC, as the other connections'
        busy_timeout does, but awaiting) while another process holds the write lock."""
        deadline = asyncio.get_running_loop().time() + BUSY_TIMEOUT_SEC
        for pause in itertools.chain(BUSY_PAUSES_SEC, itertools.repeat(BUSY_PAUSES_SEC[-1])):
            try:
                await tx.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
                if asyncio.get_running_loop().time() + pause > deadline:
                    raise
            await asyncio.sleep(pause)  # SQLite's own busy handler's back-off, not blocking

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

    async def _quick_fetchall(
        self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()
    ) -> list[sqlite3.Row]:
        """A read of a row or a few by key (microseconds, bounded), on the writer's connection
        between its transactions: no thread hop (which waits for the GIL behind a busy loop),
        and its page cache is warm (the writer wrote those pages). Within a transaction (a
        batch never awaits mid-way today, but the read must never see uncommitted rows), the
        reader's thread."""
        writer = self._writer
        if writer is None or writer.in_transaction:
            return await self._fetchall(sql, params)
        values = params if isinstance(params, Mapping) else tuple(params)
        rows: list[sqlite3.Row] = writer.execute(sql, values).fetchall()
        return rows

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(self, title: str = "", agent_id: str | None = None) -> Session:
        async def prepare(tx: _Tx) -> tuple[Session, list[Write]]:
            await _check_agent(tx, agent_id)
            return _session_writes(title, agent_id)

        session: Session = await self._batched(prepare)
        return session

    async def ensure_session(self, session_id: str) -> bool:
        stamp = now_iso()

        async def work(tx: _Tx) -> bool:
            cursor = await tx.execute(
                "INSERT OR IGNORE INTO sessions (id, title, agent_id, created_at, updated_at) "
                "VALUES (?, '', NULL, ?, ?)",
                (session_id, stamp, stamp),
            )
            return cursor.rowcount == 1

        created: bool = await self._solo(work)
        return created

    async def get_session(self, session_id: str) -> Session | None:
        rows = await self._quick_fetchall("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return session_from(rows[0]) if rows else None

    async def list_sessions(self, limit: int = 100, offset: int = 0) -> list[Session]:
        rows = await self._fetchall(
            "SELECT * FROM sessions ORDER BY updated_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [session_from(row) for row in rows]

    async def update_session(self, session_id: str, *, title: str) -> Session | None:
        async def work(tx: _Tx) -> sqlite3.Row | None:
            await tx.execute(
                "UPDATE sessions SET title = ?, updated_at = ? WHERE id = ?",
                (title, now_iso(), session_id),
            )
            return await tx.fetchone("SELECT * FROM sessions WHERE id = ?", (session_id,))

        row = await self._solo(work)
        return session_from(row) if row else None

    async def delete_session(self, session_id: str) -> bool:
        async def work(tx: _Tx) -> bool:
            cursor = await tx.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return cursor.rowcount > 0

        deleted: bool = await self._solo(work)
        return deleted

    async def delete_all_sessions(self) -> int:
        async def work(tx: _Tx) -> int:
            cursor = await tx.execute("DELETE FROM sessions")
            return cursor.rowcount

        deleted: int = await self._solo(work)
        return deleted

    # -- messages ---------------------------------------------------------------------------

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

        async def prepare(tx: _Tx) -> tuple[TurnStart, list[Write]]:
            request_id = None if journal is None else journal.request_id
            row = await tx.fetchone(_BEGIN_READ, (agent_id, session_id, request_id, digest(text)))
            assert row is not None  # (one row, always)
            if row["answered"] is not None:
                raise JournalAnswered(row["answered"], row["answered_token"])
            writes: list[Write] = []
            if session_id is None:
                if agent_id is not None and not row["agent_found"]:
                    raise NotFound(f"agent {agent_id!r} does not exist")
                session, writes = _session_writes(title, agent_id)
            elif row["id"] is None:
                raise NotFound(f"session {session_id!r} does not exist")
            else:
                stored = session_from(row)
                session = replace(
                    stored, active_leaf_id=tx.leaves.get(stored.id, stored.active_leaf_id)
                )
            parent = await self._turn_parent(tx, session, parent_id, sibling_of)
            if not session.title and session.active_leaf_id is None and title:
                writes.append(Write(Step.SESSION, _SET_TITLE, (title, session.id)))
                session = replace(session, title=title)
            message, rows = _message_writes(session.id, parent, NewMessage("user", text))
            started = replace(session, updated_at=message.created_at, active_leaf_id=message.id)
            start = TurnStart(started, message, session_id is None)
            writes += rows + _turn_writes(message, journal) + _opening_writes(journal, start)
            return start, writes

        start: TurnStart = await self._batched(prepare)
        return start

    @staticmethod
    async def _turn_parent(
        tx: _Tx, session: Session, parent_id: str | None, sibling_of: str | None
    ) -> str | None:
        """Where a new turn's message goes: beside `sibling_of`, after `parent_id` (checked to
        be in the session), else at the end of the session's active branch."""
        if sibling_of is not None:
            return (await _user_message_in(tx, sibling_of, session.id)).parent_id
        if parent_id is not None:
            await _message_in(tx, parent_id, session.id)
            return parent_id
        return session.active_leaf_id

    async def begin_regeneration(
        self, message_id: str, *, session_id: str, journal: JournalStart | None = None
    ) -> TurnStart:
        async def prepare(tx: _Tx) -> tuple[TurnStart, list[Write]]:
            session = await _session_in(tx, session_id)
            message = await _message_in(tx, message_id, session.id)
            while message.role != "user":  # up from an answer, a tool call or its result
                if message.parent_id is None:
                    raise NotFound(f"message {message_id!r} answers no user message")
                message = await _message_in(tx, message.parent_id, session.id)
            if (
                await tx.fetchone("SELECT 1 FROM turns WHERE user_message_id = ?", (message.id,))
                is not None
            ):
                raise Conflict(f"message {message.id!r} is being answered already")
            start = TurnStart(session, message, False)
            return start, _turn_writes(message, journal) + _opening_writes(journal, start)

        start: TurnStart = await self._batched(prepare)
        return start

    async def append_message(self, session_id: str, parent_id: str, message: NewMessage) -> Message:
        async def prepare(_tx: _Tx) -> tuple[Message, list[Write]]:
            return _message_writes(session_id, parent_id, message)

        stored: Message = await self._batched(prepare)
        return stored

    async def append_to_turn(
        self, session_id: str, parent_id: str, message: NewMessage, *, turn_id: str
    ) -> Message:
        async def prepare(_tx: _Tx) -> tuple[Message, list[Write]]:
            stored, writes = _message_writes(session_id, parent_id, message)
            return stored, [*writes, Write(Step.TURN, _MOVE_TURN, (stored.id, turn_id))]

        stored: Message = await self._batched(prepare)
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
        async def prepare(_tx: _Tx) -> tuple[Message, list[Write]]:
            stored, writes = _message_writes(session_id, parent_id, message)
            writes.append(Write(Step.TURN, _CLOSE_TURN, (turn_id,)))
            if journal is not None:
                writes += _frame_writes(journal.request_id, journal.first_seq, journal.frames)
                writes.append(
                    Write(Step.JOURNAL_END, _END_JOURNAL, (now_iso(), journal.request_id))
                )
            return stored, writes

        stored: Message = await self._batched(prepare)
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

        async def work(tx: _Tx) -> dict[str, Message]:
            closed: dict[str, Message] = {}
            open_turns = await tx.fetchall(
                "SELECT user_message_id, session_id, head_id FROM turns ORDER BY started_at"
            )
            for turn in open_turns:
                head_id = turn["head_id"]
                # Calls the dead process stored but never answered get an error result first:
                # a history with a call left unanswered is refused by chat templates and by
                # OpenAI-compatible servers.
                unanswered = await self._unanswered_calls(tx, head_id)
                for call in unanswered:
                    result, writes = _message_writes(
                        turn["session_id"], head_id, interrupted_tool_result(call)
                    )
                    await tx.write(writes)
                    head_id = result.id
                partial = partial_answers.get(turn["user_message_id"], "")
                answer, writes = _message_writes(
                    turn["session_id"], head_id, interrupted_answer(partial, unanswered)
                )
                await tx.write(writes)
                closed[turn["user_message_id"]] = answer
            await tx.execute("DELETE FROM turns")
            return closed

        closed: dict[str, Message] = await self._solo(work)
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

    @staticmethod
    async def _unanswered_calls(tx: _Tx, head_id: str) -> list[ToolCall]:
        """The tool calls of the answer at (or just above the tool results at) `head_id` that
        have no result yet."""
        answered: set[str] = set()
        current: str | None = head_id
        while current is not None:
            row = await tx.fetchone(
                "SELECT role, tool_calls, tool_call_id, parent_id FROM messages WHERE id = ?",
                (current,),
            )
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
        async def work(tx: _Tx) -> Message:
            leaf = await _message_in(tx, message_id, session_id)
            while True:
                row = await tx.fetchone(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE parent_id = ? "
                    "ORDER BY rowid DESC LIMIT 1",
                    (leaf.id,),
                )
                if row is None:
                    break
                leaf = message_from(row)
            await tx.execute(
                "UPDATE sessions SET active_leaf_id = ? WHERE id = ?", (leaf.id, session_id)
            )
            return leaf

        leaf: Message = await self._solo(work)
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
        return [search_hit_from(row) for row in rows]

    async def branch(self, message_id: str, *, covering_bytes: int | None = None) -> list[Message]:
        # The leaf and a few ancestors first: a session's next turn finds the tail its last
        # one loaded among them and reads nothing more (a long session's turn: ~8 rows, not
        # its window's ~70).
        async def recent() -> list[Message]:
            params = {"leaf": message_id, "steps": RECENT_STEPS}
            return [message_from(row) for row in await self._quick_fetchall(RECENT_SQL, params)]

        async def whole() -> list[Message]:
            params = {"leaf": message_id, "bound": covering_bytes}
            return [message_from(row) for row in await self._fetchall(BRANCH_SQL, params)]

        return await self._tails.load(message_id, covering_bytes, recent, whole)

    # -- the frame journal ------------------------------------------------------------------

    async def append_journals(self, appends: Sequence[JournalAppend]) -> None:
        # A batch of journal frames only commits at NORMAL; with a turn's start or answer in
        # the same transaction, at FULL.
        async def prepare(_tx: _Tx) -> tuple[None, list[Write]]:
            return None, _journal_writes(appends)

        if appends:
            await self._batched(prepare, durable=False)

    async def open_journals(self, orphans: Orphans) -> list[OpenJournal]:
        rows = await self._fetchall(
            "SELECT j.request_id, j.user_message_id, e.frame FROM journals j "
            "LEFT JOIN events e USING (request_id) "
            "WHERE j.ended_at IS NULL ORDER BY j.started_at, j.request_id, e.seq"
        )
        return open_journals_from(rows)

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
        return journal_tail_from(rows)

    @asynccontextmanager
    async def journal_changes(self, request_id: str) -> AsyncIterator[asyncio.Event]:
        yield asyncio.Event()  # one process per file: no other process writes its journals

    # -- run signals (one process per file: they stay in it) --------------------------------

    shared = False

    async def request_cancel(self, request_id: str) -> None:
        for handler in self._cancel_handlers:
            handler(request_id)

    def on_cancel_request(self, handler: Callable[[str], None]) -> None:
        self._cancel_handlers.append(handler)

    async def prune_journals(self, max_age_sec: float, max_rows: int) -> int:
        stamp = iso(datetime.now(UTC) - timedelta(seconds=max_age_sec))

        async def work(tx: _Tx) -> int:
            # Ended more than max_age_sec ago; then, newest kept first, the ended journals
            # beyond max_rows frames.
            rows = await tx.fetchall(
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
            )
            pruned = [(row["request_id"],) for row in rows]
            if not pruned:
                return 0
            deleted = await tx.executemany("DELETE FROM events WHERE request_id = ?", pruned)
            await tx.executemany("DELETE FROM journals WHERE request_id = ?", pruned)
            return max(deleted.rowcount, 0)

        deleted: int = await self._solo(work)
        return deleted

    # -- agents -----------------------------------------------------------------------------

    async def put_agent(self, agent: Agent) -> Agent:
        stamp = now_iso()

        async def work(tx: _Tx) -> aiosqlite.Row | None:
            await tx.execute(
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
            return await tx.fetchone("SELECT * FROM agents WHERE id = ?", (agent.id,))

        row = await self._solo(work)
        assert row is not None
        return agent_from(row)

    async def get_agent(self, agent_id: str) -> Agent | None:
        rows = await self._quick_fetchall("SELECT * FROM agents WHERE id = ?", (agent_id,))
        return agent_from(rows[0]) if rows else None

    async def list_agents(self) -> list[Agent]:
        return [
            agent_from(row) for row in await self._fetchall("SELECT * FROM agents ORDER BY name")
        ]

    async def delete_agent(self, agent_id: str) -> bool:
        async def work(tx: _Tx) -> bool:
            cursor = await tx.execute("DELETE FROM agents WHERE id = ?", (agent_id,))
            return cursor.rowcount > 0

        deleted: bool = await self._solo(work)
        return deleted
