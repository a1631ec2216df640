"""Rows to records and back, the same for every store: ids, timestamps, the message columns.

A row is anything indexed by column name (`aiosqlite.Row`, `asyncpg.Record`). Timestamps are
ISO 8601 text in UTC with microseconds and a `Z` (`2026-12-03T14:34:02.123456Z`), which sort as
text; tool calls are stored as JSON text (`[{"id", "name", "arguments"}]`, NULL for none).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from tether.engines.base import ToolCall
from tether.store.base import Agent, Message, NewMessage, Session

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
