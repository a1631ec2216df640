"""The Store protocols and the records they keep. `SQLiteStore` (one process per file) and
`PostgresStore` (several replicas on one database) implement them; `factory.open_store` picks
one from `storage.url`.

`Store` is the union of six small protocols, each what one kind of user needs:
`SessionStore` (sessions and their messages: the REST and history routes), `AgentStore`,
`TurnStore` (a turn's writes: the chat core), `RecoveryStore` (closing what a dead process left
open: `tether.recovery`), `JournalStore` (the frame journal: `tether.runs`) and `RunSignals`
(cancels between the processes sharing a store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from tether.engines.base import Role, ToolCall

MessageStatus = Literal["complete", "cancelled", "error", "interrupted"]
# How a search query reads: `words` (every word must occur; nothing in it is an operator) or
# `fts5` (SQLite FTS5's query syntax: phrases, AND/OR/NOT, prefix*, NEAR; SQLite only) or
# `websearch` (PostgreSQL's websearch_to_tsquery: "a phrase", OR, -not; PostgreSQL only).
SearchSyntax = Literal["words", "fts5", "websearch"]


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    title: str
    agent_id: str | None
    created_at: str
    updated_at: str
    # Where the session's active branch ends (None: the session has no message yet).
    active_leaf_id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    session_id: str
    parent_id: str | None
    role: Role
    content: str
    created_at: str
    status: MessageStatus = "complete"
    name: str | None = None  # tool name, on role "tool"
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    model: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    name: str
    system_prompt: str = ""
    markdown_context: str = ""
    default_options: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    updated_at: str = ""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to append; the store assigns created_at, and id unless it is given (a turn
    names its answer before storing it, so that the answer's final frame can be committed with
    it: `JournalEnd`)."""

    role: Role
    content: str
    status: MessageStatus = "complete"
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    model: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class TurnStart:
    """What `begin_turn` committed: the session (maybe new) and the user's message."""

    session: Session
    message: Message
    created_session: bool


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A message matching a search, with `snippet`: its best-matching passage, matches marked
    `<mark>`...`</mark>` (plain text around them, not HTML-escaped)."""

    message_id: str
    session_id: str
    session_title: str
    role: Role
    snippet: str
    created_at: str
    rank: float  # lower is better (SQLite: bm25; PostgreSQL: -ts_rank_cd)


@dataclass(frozen=True, slots=True)
class JournalStart:
    """The journal row `begin_turn` writes with the user's message: the request and the SHA-256
    (hex) of its resume token; with `opening`, also the journal's frame at `opening_seq` (the
    request's `processing`), rendered from what the transaction stores, so that the frame is
    committed with the message and can be sent the moment `begin_turn` returns. `opening` may
    be called more than once (a transaction retried); the frame of its last call is the one
    committed."""

    request_id: str
    token_digest: str
    opening: Callable[[TurnStart], str] | None = None
    opening_seq: int = 0


@dataclass(frozen=True, slots=True)
class JournalEnd:
    """A journal's last frames, committed with the answer `end_turn` stores, and the
    journal's end: `frames[i]` has seq `first_seq + i`. They start after the last frame known
    committed, so some may be on their way in another write already (`append_journals`): a
    seq the journal holds keeps its frame (the same text), and when the end commits every
    frame up to the last is in."""

    request_id: str
    first_seq: int
    frames: Sequence[str]


class JournalAnswered(Exception):
    """`begin_turn` was asked to open the journal of a request that ended having asked the same
    question (its client is retrying: it never learned the outcome). Nothing was stored; the
    request's journal (`read_journal`) tells what became of it."""

    def __init__(self, request_id: str, token_digest: str | None) -> None:
        super().__init__(f"request {request_id!r} was answered already")
        self.request_id = request_id
        self.token_digest = token_digest


@dataclass(frozen=True, slots=True)
class JournalAppend:
    """New frames of one request's journal: `frames[i]` has seq `first_seq + i`.

    A seq the journal holds already keeps its frame (`JournalEnd`). `first_seq` 0 starts the
    journal (replacing an ended one of the same request_id, whose
    row then takes `token_digest`; a row `begin_turn` opened for this request is kept as it is);
    `ended` says these are its last frames."""

    request_id: str
    first_seq: int
    frames: Sequence[str]
    ended: bool = False
    token_digest: str | None = None


@dataclass(frozen=True, slots=True)
class OpenJournal:
    """The journal of a request that was running when its process died."""

    request_id: str
    frames: list[str]
    user_message_id: str | None = None  # from the row `begin_turn` wrote


@dataclass(frozen=True, slots=True)
class JournalTail:
    """A journal's frames after some seq, in order, and whether it has ended (read together:
    an ended tail holds the journal's last frames)."""

    frames: list[str]
    ended: bool


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """Who a stored journal belongs to (see migration 0005)."""

    request_id: str
    token_digest: str | None
    question_digest: str | None


@dataclass(frozen=True, slots=True)
class Orphans:
    """Whose open turns and journals one recovery closes: those of `replicas` (their leases
    expired: PostgreSQL), or, with None, every one (SQLite: one process per file, so whatever
    is open at start-up was left by a dead process)."""

    replicas: tuple[str, ...] | None = None


class SessionStore(Protocol):
    """Sessions and their messages, as the REST and history routes read and change them."""

    async def create_session(self, title: str = "", agent_id: str | None = None) -> Session:
        """Raises `NotFound` for an unknown agent."""
        ...

    async def ensure_session(self, session_id: str) -> bool:
        """Create an empty session named `session_id` unless it exists (seed 000's clients name
        their sessions); True when it was created."""
        ...

    async def get_session(self, session_id: str) -> Session | None: ...

    async def list_sessions(self, limit: int = 100, offset: int = 0) -> list[Session]:
        """Most recently updated first (ties: the newest created first)."""
        ...

    async def update_session(self, session_id: str, *, title: str) -> Session | None:
        """Set the session's title; None when there is no such session."""
        ...

    async def delete_session(self, session_id: str) -> bool: ...

    async def delete_all_sessions(self) -> int: ...

    async def list_messages(self, session_id: str) -> list[Message]:
        """Every message of the session (the whole tree), oldest first."""
        ...

    async def set_active_leaf(self, session_id: str, message_id: str) -> Message:
        """Make the branch through `message_id` the session's active one, down to its newest
        leaf (following the newest child); returns that leaf. Raises `NotFound` for a message
        outside the session."""
        ...

    async def search(
        self,
        query: str,
        *,
        limit: int = 20,
        session_id: str | None = None,
        syntax: SearchSyntax = "words",
    ) -> list[SearchHit]:
        """Messages matching `query` (read as `syntax` says), best first, of one session or of
        all. Raises `BadRequest` for an empty query, one that does not parse, or a syntax this
        store does not read."""
        ...

    async def branch(self, message_id: str, *, covering_bytes: int | None = None) -> list[Message]:
        """The messages from the root of the session down to `message_id`, in order.

        With `covering_bytes`, only the branch's tail that covers that many bytes: up from
        `message_id`, the messages until the UTF-8 bytes of their contents reach
        `covering_bytes` and on to the first user message at or above that point (so the tail
        starts a turn), or the root. Its cost is the tail's, whatever the branch's length.
        """
        ...


class AgentStore(Protocol):
    async def put_agent(self, agent: Agent) -> Agent:
        """Create or replace the agent (keeping its `created_at`)."""
        ...

    async def get_agent(self, agent_id: str) -> Agent | None: ...

    async def list_agents(self) -> list[Agent]:
        """By name."""
        ...

    async def delete_agent(self, agent_id: str) -> bool: ...


class TurnStore(Protocol):
    """A stored turn's writes, each committed on its own: the question (`begin_turn`, or
    `begin_regeneration` to answer a stored one again), the messages of its rounds
    (`append_to_turn`), its answer (`end_turn`). A turn is *open* from its start to its end:
    one left open by a dead process is closed by recovery."""

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
        """Commit a user message, creating the session when `session_id` is None; with
        `journal`, open that request's journal row in the same transaction (replacing an ended
        journal of its request_id; keeping the frames of one still open, which the request
        journaled while it waited), naming the message and the digest of its text, and commit
        the journal's `opening` frame with them.

        Raises `JournalAnswered`, storing nothing, when `journal`'s request ended having asked
        `text` (a retried chat is idempotent).

        Raises `NotFound` for an unknown session or a parent outside the session. The parent
        defaults to the end of the session's active branch (its newest message unless switched
        with `set_active_leaf`), so plain turns form one chain (concurrent ones too: they are
        serialised per session) and a turn with an older `parent_id` starts a branch.
        `sibling_of` (an edit) names a user message of the session the new one goes beside,
        under the same parent (none for the first message); it excludes `parent_id`. `title`
        names a new session, and a session without a title gets it with its first message.
        """
        ...

    async def begin_regeneration(
        self, message_id: str, *, session_id: str, journal: JournalStart | None = None
    ) -> TurnStart:
        """Open a turn that answers a stored user message again: `message_id` or, for any
        other message, the user message of its turn. No message is stored; the new answer goes
        beside the earlier ones. Raises `NotFound` for a message outside the session,
        `Conflict` while a turn of that user message is running."""
        ...

    async def append_message(self, session_id: str, parent_id: str, message: NewMessage) -> Message:
        """Commit a message after `parent_id`, outside any turn (it becomes the session's
        active leaf)."""
        ...

    async def append_to_turn(
        self, session_id: str, parent_id: str, message: NewMessage, *, turn_id: str
    ) -> Message:
        """Commit a message of the open turn `turn_id` (the user message id of its start: a
        tool call, a tool result) after `parent_id`; the turn's record moves to it in the same
        transaction."""
        ...

    async def end_turn(
        self,
        session_id: str,
        parent_id: str,
        message: NewMessage,
        *,
        turn_id: str,
        journal: JournalEnd | None = None,
    ) -> Message:
        """Commit the answer of the open turn `turn_id` after `parent_id`, closing the turn in
        the same transaction; with `journal`, the journal's last frames and its end are
        committed in that transaction too."""
        ...

    async def branch(self, message_id: str, *, covering_bytes: int | None = None) -> list[Message]:
        """As `SessionStore.branch`: the branch down to `message_id`, or its tail covering
        `covering_bytes` (what the model's window can hold)."""
        ...

    async def get_session(self, session_id: str) -> Session | None: ...

    async def get_agent(self, agent_id: str) -> Agent | None: ...


class RecoveryStore(Protocol):
    """What `tether.recovery` reads and writes to close the turns and journals of dead
    processes."""

    # Seconds between recoveries while the server runs (a replica recovers the others' turns
    # when their leases expire); None: at start-up only.
    recovery_interval_sec: float | None

    def orphans(self) -> AbstractAsyncContextManager[Orphans]:
        """Claim the open work of dead processes for one recovery. No other process recovers
        while it is held; when the block ends without an error the dead processes are
        forgotten (their work is closed)."""
        ...

    async def open_journals(self, orphans: Orphans) -> list[OpenJournal]:
        """The journals of `orphans` that never ended, oldest first."""
        ...

    async def close_open_turns(
        self, orphans: Orphans, partial_answers: Mapping[str, str] | None = None
    ) -> dict[str, Message]:
        """Close every open turn of `orphans`: calls it stored without results get error
        results, then an assistant message with status `interrupted` goes after the turn's
        newest message. Its content is `partial_answers[user_message_id]` (what the client was
        sent of the answer), kept only when no call was left unanswered: text after unanswered
        calls would be the calling message's own. Returns the interrupted answers by the user
        message id of their turn."""
        ...

    async def turn_answer(self, user_message_id: str) -> Message | None:
        """The answer that closed the turn of `user_message_id`, if it is stored: the first
        assistant message without tool calls down the turn's chain, which starts at the newest
        answer under the user's message (a regeneration's, when there is one)."""
        ...


class JournalStore(Protocol):
    """The frame journal (`resume`): every frame of a request, in seq order."""

    async def append_journals(self, appends: Sequence[JournalAppend]) -> None:
        """Commit, in order, new frames of several journals (one transaction on PostgreSQL;
        SQLite commits per statement, each state between them one recovery handles).

        Durable against a crash of the process before this returns; on SQLite with
        `synchronous=FULL` the messages are also durable against power loss, the journal rows
        only from the next message committed on (they are written at `NORMAL`: a write per
        token must not cost an fsync)."""
        ...

    async def read_journal(self, request_id: str) -> list[str] | None:
        """The frames of `request_id` in seq order, or None when there is no journal."""
        ...

    async def journal_record(self, request_id: str) -> JournalRecord | None:
        """Who the journal of `request_id` belongs to, or None when there is none."""
        ...

    async def journal_tail(self, request_id: str, after_seq: int) -> JournalTail | None:
        """The frames of `request_id` after `after_seq` and whether its journal ended; None
        when there is no journal."""
        ...

    def journal_changes(self, request_id: str) -> AbstractAsyncContextManager[asyncio.Event]:
        """An event set (while the block runs) each time another process sharing this store
        commits frames of `request_id` (PostgreSQL: LISTEN/NOTIFY; SQLite, one process: never).
        A wake-up only: the journal itself says what changed."""
        ...

    async def prune_journals(self, max_age_sec: float, max_rows: int) -> int:
        """Delete the journals that ended more than `max_age_sec` ago, then the oldest ended
        journals until at most `max_rows` frames of ended journals remain; a running journal is
        never deleted. Returns the number of frames deleted."""
        ...


class RunSignals(Protocol):
    """What the processes sharing a store tell each other about running requests."""

    # Whether other processes run requests on this store (replicas on one PostgreSQL); False
    # when a process has the store to itself (SQLite's file lock): then no request runs
    # anywhere else, and nothing need be asked of the store to know it.
    shared: bool

    async def request_cancel(self, request_id: str) -> None:
        """Ask whichever process runs `request_id` to cancel it (its handlers get it)."""
        ...

    def on_cancel_request(self, handler: Callable[[str], None]) -> None:
        """Call `handler(request_id)` for every `request_cancel`, from any process."""
        ...


class Store(SessionStore, AgentStore, TurnStore, RecoveryStore, JournalStore, RunSignals, Protocol):
    async def open(self) -> None:
        """Connect, creating and migrating the schema."""
        ...

    async def close(self) -> None: ...
