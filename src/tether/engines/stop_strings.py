"""Cut streamed text at the first stop string, holding back only what could still begin one.

Text reaches the client as soon as it can no longer be the start of a stop string, so a stop
string split across tokens is still found and never shown.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopMatcher:
    def __init__(self, stops: Iterable[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def feed(self, text: str) -> str:
        """The text that is safe to show now; sets `stopped` when a stop string was completed."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._pending + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._pending = True, ""
            return buffer[:cut]
        keep = self._held_back(buffer)
        self._pending = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation, what was held back is plain text after all."""
        rest, self._pending = self._pending, ""
        return "" if self.stopped else rest
