"""The journal writer's pace: how long its next batch waits, so that a stream's tokens share a
commit instead of costing one each.

Sans-I/O and clock-injected, like `tether.ratelimit`; `tether.runs` does the waiting.

A run's frames go to sockets only once committed (`tether.runs`), and the journal writer commits
every run's new frames in one batch (one transaction, its statements, their thread hand-offs),
whatever the batch holds. Unpaced, the writer starts its next batch the moment the last one
returns: a model streaming at 100 tokens/s, slower than a commit, costs a commit per token.

What `JournalPace.delay` promises:

- A batch starts at least `interval` seconds after the previous one started: the deltas that
  arrive meanwhile are joined into one frame (`tether.coalesce`), so at 100 tokens/s and 25 ms a
  commit carries ~2.5 tokens, and a chunk reaches its client at most `interval` later than
  unpaced.
- Unless the line holds something urgent: a request's first output (its time to first token is
  never paced) or a request that has ended (its client waits for the final frame). Then the
  batch starts at once, taking every run's frames with it.
- `interval` 0: no pace, every batch at once.
- The time to wait is never negative, and never more than `interval` (a clock that jumps
  back cannot stall the journal).
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class JournalPace:
    """When the journal writer's next batch may start."""

    __slots__ = ("_clock", "_last", "interval")

    def __init__(self, interval: float, *, clock: Clock = time.monotonic) -> None:
        if interval < 0:
            raise ValueError("the journal's interval is 0 (no pace) or more")
        self.interval = interval
        self._clock = clock
        self._last: float | None = None  # when the previous batch started

    def delay(self, *, urgent: bool) -> float:
        """Seconds to wait before the next batch (0: start it now)."""
        if urgent or self._last is None or self.interval == 0:
            return 0.0
        elapsed = self._clock() - self._last
        return min(self.interval, max(0.0, self.interval - elapsed))

    def started(self) -> None:
        """A batch starts now."""
        self._last = self._clock()
