"""One socket's outgoing frames: a bounded FIFO, drained by the socket's own writer task.

Runs never wait on a socket (`tether.runs`): they `put` their frames here and go on, and the
writer sends them in order, one at a time. A client that reads too slowly is dropped rather
than waited for: when more than `limits.send_buffer_frames` frames are waiting, or one frame is
not taken within `limits.send_timeout_sec`, the writer calls `on_stall` (the socket stops
watching its requests, which go on per `reliability.on_disconnect` and can be resumed) and
closes the socket with 1008 (policy violation: the client does not read what it asked for).
The close itself cannot wait on the client either: `tether.serving.websocket` writes it at once and
resets the connection if it is not taken within the same timeout.

Replays (a `resume` of many frames) go at the client's pace instead: `room()` waits until the
buffer is at most half full, so a long journal never overflows it and live frames keep room.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

CLOSE_STALLED = 1008
STALLED_REASON = "client too slow to read its frames"
# Bounds a close when sends have no timeout (send_timeout_sec 0).
CLOSE_TIMEOUT_SEC = 10.0

Send = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


class Outbox:
    def __init__(
        self,
        send: Send,
        close: Close,
        *,
        max_frames: int,
        timeout_sec: float,
        on_stall: Callable[[str], None],
    ) -> None:
        self.max_frames = max_frames
        self.timeout = timeout_sec if timeout_sec > 0 else None
        self._send = send
        self._close = close
        self._on_stall = on_stall
        self._frames: deque[str] = deque()
        self._ready = asyncio.Event()  # frames, a close or a stall for the writer
        self._room = asyncio.Event()  # set while replays may add frames
        self._room.set()
        self._deadline: asyncio.Timeout | None = None  # the send in progress
        self._closing: tuple[int, str] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.stalled: str | None = None  # why the client was dropped
        self.open = True  # frames are accepted

    def __len__(self) -> int:
        return len(self._frames)

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name="ws-writer")

    def put(self, frame: str) -> None:
        """Queue `frame`; never waits. One too many drops the client (by the writer, later)."""
        if not self.open:
            return
        self._frames.append(frame)
        if len(self._frames) > self.max_frames:
            self._stall(
                f"more than {self.max_frames} frames waiting to be sent (limits.send_buffer_frames)"
            )
        self._ready.set()
        if self._room.is_set() and not self._has_room():
            self._room.clear()

    async def room(self) -> bool:
        """Wait until the buffer is at most half full; False once the socket is closing."""
        while self.open and not self._room.is_set():
            await self._room.wait()
        return self.open

    async def close(self, code: int, reason: str) -> None:
        """Send what is waiting, then close with `code`; return when the writer is done."""
        if self.open:
            self.open = False
            self._closing = (code, reason)
            self._ready.set()
            self._room.set()
        if self._writer is not None:
            await asyncio.wait({self._writer})  # not cancelled with a caller that is

    async def stop(self) -> None:
        """The socket is gone: drop what is waiting and end the writer."""
        self.open = False
        self._room.set()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    def _has_room(self) -> bool:
        return len(self._frames) <= self.max_frames // 2

    def _stall(self, reason: str) -> None:
        if self.stalled is not None:
            return
        self.stalled = reason
        self.open = False
        self._frames.clear()
        self._room.set()
        self._ready.set()
        if self._deadline is not None:  # give up on the send that is waiting now
            self._deadline.reschedule(asyncio.get_running_loop().time())

    async def _write(self) -> None:
        try:
            while self.stalled is None:
                if not self._frames:
                    if self._closing is not None:
                        break
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                frame = self._frames.popleft()
                if not self._room.is_set() and self._has_room():
                    self._room.set()
                try:
                    async with asyncio.timeout(self.timeout) as self._deadline:
                        await self._send(frame)
                except TimeoutError:
                    self._deadline = None
                    self._stall(
                        f"a frame waited {self.timeout:g} s for the client to take it "
                        "(limits.send_timeout_sec)"
                    )
                self._deadline = None
        except Exception:  # the client went away mid-send; the receive loop sees it too
            self.open = False
            self._room.set()
            return
        if self.stalled is not None:
            self._on_stall(self.stalled)
            code, reason = CLOSE_STALLED, STALLED_REASON
        else:
            assert self._closing is not None
            code, reason = self._closing
        with contextlib.suppress(Exception):  # already closed or gone: nothing left to do
            async with asyncio.timeout(self.timeout or CLOSE_TIMEOUT_SEC):
                await self._close(code, reason)
