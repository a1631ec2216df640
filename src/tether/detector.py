"""Sans-I/O streaming detector: splits model output into visible text, thoughts and tool calls.

`feed(text)` takes the next piece of model output and returns the events it completes;
`flush()` ends the stream and returns whatever was held back. Neither ever raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class TextPiece:
    """Visible answer text, released as soon as it cannot be the start of markup."""

    text: str


@dataclass(frozen=True, slots=True)
class ThoughtPiece:
    """Text inside `<think>...</think>`: hidden unless the client asked for thoughts."""

    text: str


@dataclass(frozen=True, slots=True)
class CallPiece:
    """A complete, well-formed tool call."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MalformedCall:
    """Tool-call markup whose body is not a valid call; `error` tells the model why."""

    raw: str
    error: str


DetectorEvent = TextPiece | ThoughtPiece | CallPiece | MalformedCall


class StreamDetector(Protocol):
    def feed(self, text: str) -> list[DetectorEvent]: ...

    def flush(self) -> list[DetectorEvent]: ...


class PassthroughDetector:
    """Every piece of output is visible text (used when a turn has no tools and no markup)."""

    def feed(self, text: str) -> list[DetectorEvent]:
        return [TextPiece(text)] if text else []

    def flush(self) -> list[DetectorEvent]:
        return []
