"""What the chat core tells transports about a turn, in order. Transports only render these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tether.engines.base import FinishReason, ToolCall, Usage


@dataclass(frozen=True, slots=True)
class Accepted:
    """The user's message is committed; generation may start (after `queue_position` others)."""

    session_id: str
    user_message_id: str
    model: str
    queue_position: int
    created_session: bool


@dataclass(frozen=True, slots=True)
class Queued:
    """The turn waits: `queue_position` requests go before it on the line `waiting_for` names.

    "session": earlier turns continuing the same session; nothing of the turn is stored yet,
    `Accepted` follows once its message is. "model": after `Accepted`, the turn's place in its
    model's line changed (the first place is `Accepted.queue_position`). Sent only while the
    turn waits, again each time its place changes."""

    queue_position: int
    waiting_for: Literal["session", "model"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCallFinished:
    call_id: str
    name: str
    result: str | None
    error: str | None
    duration_ms: float


@dataclass(frozen=True, slots=True)
class Timings:
    ttft_ms: float | None  # None when no token came
    tokens_per_s: float | None
    total_ms: float


@dataclass(frozen=True, slots=True)
class Completed:
    """The assistant's message is committed."""

    message_id: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    extra: dict[str, Any] = field(default_factory=dict)  # engine facts, e.g. trimmed_messages


@dataclass(frozen=True, slots=True)
class Failed:
    """The turn ended in an error; `code` is a stable TetherError code."""

    code: str
    message: str


ChatEvent = (
    Queued
    | Accepted
    | TextDelta
    | ThinkingDelta
    | ToolCallStarted
    | ToolCallFinished
    | Completed
    | Failed
)


# -- stateless turns (the OpenAI-compatible route): nothing is stored --------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """A stateless turn is admitted: generation may start (after `queue_position` others)."""

    model: str
    queue_position: int


@dataclass(frozen=True, slots=True)
class ToolCallsRequested:
    """The model called the turn's tools; the client runs them (sent before `Completed`)."""

    calls: tuple[ToolCall, ...]


StatelessEvent = Started | TextDelta | ThinkingDelta | ToolCallsRequested | Completed | Failed
