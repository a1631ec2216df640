"""Rows to records and back, the same for every store: ids, timestamps, the message columns.

A row is anything indexed by column name (`aiosqlite.Row`, `asyncpg.Record`). Timestamps are
ISO 8601 text in UTC with microseconds and a `Z` (`2026-12-03T14:34:02.123456Z`), which sort as
text; tool calls are stored as JSON text (`[{"id", "name", "arguments"}]`, NULL for none).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from tether.engines.base import ToolCall
from tether.store.base import (
    Agent,
    JournalTail,
    Message,
    NewMessage,
    OpenJournal,
    SearchHit,
    Session,
)

INTERRUPTED_TOOL_RESULT = "Error: interrupted: the server stopped before the tool returned"

MESSAGE_COLUMNS = (
    "id, session_id, parent_id, role, content, created_at, status, name, tool_call_id, "
    "tool_calls, model, finish_reason, prompt_tokens, completion_tokens"
)


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


def now_iso() -> str:
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    return uuid.uuid4().hex


def tool_calls_json(calls: Iterable[ToolCall]) -> str | None:
    encoded = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls]
    return json.dumps(encoded) if encoded else None


def tool_calls_from(raw: str | None) -> tuple[ToolCall, ...]:
    if not raw:
        return ()
    return tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in json.loads(raw))


def interrupted_tool_result(call: ToolCall) -> NewMessage:
    """The error result recovery stores for a call a dead process left without one (a history
    with a call left unanswered is refused by chat templates and OpenAI-compatible servers)."""
    return NewMessage(
        role="tool",
        content=INTERRUPTED_TOOL_RESULT,
        name=call.name,
        tool_call_id=call.id,
        status="error",
    )


def interrupted_answer(partial: str, unanswered: Sequence[ToolCall]) -> NewMessage:
    """The answer recovery stores for a turn a dead process left open: `partial` (what its
    client was sent), unless calls were left unanswered: no text is generated while calls wait
    for results, so text the journal shows after them is the calling message's, stored
    already."""
    return NewMessage(role="assistant", content="" if unanswered else partial, status="interrupted")


def new_message(session_id: str, parent_id: str | None, new: NewMessage) -> Message:
    """The message `new` becomes, with its id (a fresh one unless `new` names it) and the time
    now."""
    return Message(
        id=new.id or new_id(),
        session_id=session_id,
        parent_id=parent_id,
        role=new.role,
        content=new.content,
        created_at=now_iso(),
        status=new.status,
        name=new.name,
        tool_call_id=new.tool_call_id,
        tool_calls=new.tool_calls,
        model=new.model,
        finish_reason=new.finish_reason,
        prompt_tokens=new.prompt_tokens,
        completion_tokens=new.completion_tokens,
    )


def message_values(message: Message) -> tuple[Any, ...]:
    """The message's values in MESSAGE_COLUMNS order."""
    return (
        message.id,
        message.session_id,
        message.parent_id,
        message.role,
        message.content,
        message.created_at,
        message.status,
        message.name,
        message.tool_call_id,
        tool_calls_json(message.tool_calls),
        message.model,
        message.finish_reason,
        message.prompt_tokens,
        message.completion_tokens,
    )


def message_from(row: Row) -> Message:
    return Message(
        id=row["id"],
        session_id=row["session_id"],
        parent_id=row["parent_id"],
        role=row["role"],
        content=row["content"],
        created_at=row["created_at"],
        status=row["status"],
        name=row["name"],
        tool_call_id=row["tool_call_id"],
        tool_calls=tool_calls_from(row["tool_calls"]),
        model=row["model"],
        finish_reason=row["finish_reason"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
    )


def session_from(row: Row) -> Session:
    return Session(
        id=row["id"],
        title=row["title"],
        agent_id=row["agent_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        active_leaf_id=row["active_leaf_id"],
    )


def agent_from(row: Row) -> Agent:
    return Agent(
        id=row["id"],
        name=row["name"],
        system_prompt=row["system_prompt"],
        markdown_context=row["markdown_context"],
        default_options=json.loads(row["default_options"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def search_hit_from(row: Row) -> SearchHit:
    """A search's row: id, session_id, title (the session's), role, snippet, created_at, score."""
    return SearchHit(
        message_id=row["id"],
        session_id=row["session_id"],
        session_title=row["title"],
        role=row["role"],
        snippet=row["snippet"],
        created_at=row["created_at"],
        rank=row["score"],
    )


def open_journals_from(rows: Iterable[Row]) -> list[OpenJournal]:
    """Open journals from rows of (request_id, user_message_id, frame), a journal's in seq
    order (frame NULL: a journal with no frame yet), journals in the rows' order."""
    journals: dict[str, OpenJournal] = {}
    for row in rows:
        journal = journals.setdefault(
            row["request_id"], OpenJournal(row["request_id"], [], row["user_message_id"])
        )
        if row["frame"] is not None:
            journal.frames.append(row["frame"])
    return list(journals.values())


def journal_tail_from(rows: Sequence[Row]) -> JournalTail | None:
    """A journal's tail from rows of (ended_at, frame) in seq order, one row with frame NULL when
    there is no frame after the seq; None for no rows (no journal)."""
    if not rows:
        return None
    frames = [row["frame"] for row in rows if row["frame"] is not None]
    return JournalTail(frames, rows[0]["ended_at"] is not None)
