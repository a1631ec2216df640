"""Text deltas that wait for the journal together leave in one `chunk` frame.

Sans-I/O. A run (`tether.runs`) hands its turn's text and thinking deltas to a `DeltaMerger`
instead of rendering a frame for each: deltas of one kind that arrive while the journal writer
is busy with the previous batch are joined, and the writer takes them as one delta (`take`)
when it gathers its next batch. So a model slower than the journal still gets a frame per
delta, while one faster (the echo engine at full speed, a fast GPU) gets a frame per batch
instead of tens of thousands: fewer rows to commit, frames to send and JSON to parse, which is
what keeps one huge answer from crowding out the others.

What is promised: the deltas `add`ed come out of `add` and `take`, joined, in order, with no
character lost, added or moved; a delta out never joins two kinds (text, thinking); nor does it
exceed `max_chars` characters unless it is a single delta that long on its own (deltas are
never split).
"""

from __future__ import annotations

from tether.events import TextDelta, ThinkingDelta

# The most characters joined into one delta (so one frame), unless a single delta is longer.
MAX_CHUNK_CHARS = 4096

Delta = TextDelta | ThinkingDelta


class DeltaMerger:
    """Joins consecutive deltas of one kind until `take` (or a full or other kind) ends them."""

    def __init__(self, max_chars: int = MAX_CHUNK_CHARS) -> None:
        self.max_chars = max_chars
        self._kind: type[Delta] = TextDelta
        self._parts: list[str] = []
        self._chars = 0

    def __bool__(self) -> bool:
        """Whether deltas are waiting."""
        return bool(self._parts)

    def add(self, delta: Delta) -> Delta | None:
        """Take `delta`; return the joined deltas it cannot join (another kind, or too many
        characters together), which go before it, or None."""
        done = None
        if self._parts and (
            type(delta) is not self._kind or self._chars + len(delta.text) > self.max_chars
        ):
            done = self.take()
        self._kind = type(delta)
        self._parts.append(delta.text)
        self._chars += len(delta.text)
        return done

    def take(self) -> Delta | None:
        """The waiting deltas joined into one (None when none wait); nothing waits after."""
        if not self._parts:
            return None
        joined = self._kind("".join(self._parts))
        self._parts.clear()
        self._chars = 0
        return joined
