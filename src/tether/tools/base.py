"""The seam between the chat core and tool execution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tether.engines.base import ToolCall, ToolSpec

__all__ = ["ToolResult", "ToolRunner", "ToolSpec"]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one call: exactly one of `result` and `error` is set."""

    call_id: str
    name: str
    result: str | None = None
    error: str | None = None
    duration_ms: float = 0.0


class ToolRunner(Protocol):
    """What the chat core needs of the tool system."""

    def specs(self) -> list[ToolSpec]: ...

    async def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        """Run the calls of one answer (independent calls concurrently); never raises."""
        ...
