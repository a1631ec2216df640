"""One turn at a time continues a session's active branch.

A turn that names a session but no `parent_id` goes after the end of the session's active
branch; two such turns at once would both find the same end and fork the history (two user
messages in a row, one answer off the active branch). `SessionTurns` keeps a line per session:
such a turn takes its place before its message is stored and leaves it once its answer is, and
the next one then continues after that answer. Turns that name their own `parent_id`, edits and
regenerations do not wait: they say where they go.

Sans-I/O but for asyncio's Future; nothing is stored while a turn waits, so a turn cancelled in
the line leaves nothing behind.

Across replicas (a shared store) one process's line is not enough: the turn first in its line
then takes the session's `SessionHolds` hold, which a turn of the same session on another
replica may have (it waits, told with a `queued` frame), and lets it go once its answer is
stored. One process on its own file (SQLite) needs no hold: `ONE_PROCESS`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(eq=False, slots=True)
class SessionPlace:
    """A turn's place in its session's line: `ready` once it is first; `ahead` turns were
    before it when it joined."""

    session_id: str
    ahead: int
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    moved: asyncio.Event = field(default_factory=asyncio.Event)  # `ahead` went down
    hold: str | None = None  # its SessionHolds hold, once taken

    async def wait(self) -> bool:
        """Until the place is first (True) or moves up the line (False: `ahead` is new)."""
        moved = asyncio.ensure_future(self.moved.wait())
        try:
            await asyncio.wait((self.ready, moved), return_when=asyncio.FIRST_COMPLETED)
        finally:
            moved.cancel()
        self.moved.clear()
        return self.ready.done()


class SessionTurns:
    """The lines of the server's sessions; a session without waiting turns has none."""

    def __init__(self) -> None:
        self._lines: dict[str, deque[SessionPlace]] = {}

    def join(self, session_id: str) -> SessionPlace:
        """A place at the end of `session_id`'s line."""
        line = self._lines.setdefault(session_id, deque())
        place = SessionPlace(session_id, len(line))
        if not line:
            place.ready.set_result(None)
        line.append(place)
        return place

    def leave(self, place: SessionPlace) -> None:
        """`place` is done (its answer is stored, or it was cancelled while waiting): the next
        turn goes. Idempotent."""
        line = self._lines.get(place.session_id)
        if line is None or place not in line:
            return
        first = line[0] is place
        line.remove(place)
        place.ready.cancel()  # no-op when it was its turn already
        if first and line:
            line[0].ready.set_result(None)
        for ahead, waiting in enumerate(line):
            if ahead < waiting.ahead:
                waiting.ahead = ahead
                waiting.moved.set()
        if not line:
            del self._lines[place.session_id]


class SessionHolds(Protocol):
    """A session's hold across processes sharing a store: one turn continuing the session at a
    time, wherever it runs."""

    async def take(self, session_id: str, on_wait: Callable[[], Awaitable[None]]) -> str:
        """Wait until this process holds `session_id` (calling `on_wait` once, before waiting
        for another's hold); the hold's id. Cancellable: nothing is held then."""
        ...

    async def release(self, session_id: str, hold: str) -> None:
        """Let go of `hold` (a turn elsewhere waiting for the session goes)."""
        ...


class _OneProcess:
    """One process owns the store (SQLite): its `SessionTurns` line is the session's only one."""

    async def take(self, session_id: str, on_wait: Callable[[], Awaitable[None]]) -> str:
        return session_id

    async def release(self, session_id: str, hold: str) -> None:
        return None


ONE_PROCESS: SessionHolds = _OneProcess()
