"""Per-socket limits of `/ws/chat`: the message rate and the idle timeout.

`SocketGuard` is what `ChatSocket` consults; it knows nothing of the chat itself:

- `admit(raw, reply, close)` is called for every client frame before it is parsed. Over
  `limits.messages_per_sec` (bursts of `limits.message_burst`) the frame is dropped and answered
  with an `error` frame, code `rate_limited`, under the frame's `request_id` (empty when it has
  none); the socket stays open. Refusals outpacing the rate by `limits.rate_limit_close_after`
  frames (see `tether.ratelimit`) close the socket with 1008.
- `activity()` is called for every frame sent; `start(close, busy)` watches for
  `limits.idle_timeout_sec` without a frame either way while `busy()` (a request is running)
  is false, and then closes the socket with 1001 ("going away": the client may reconnect).
  WebSocket ping/pong control frames do not count; a client keeps an idle socket open with
  protocol `ping` frames.

Both close through the socket's `close`, which sends the frames already queued first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from tether import jsonsafe
from tether.config import LimitsSettings
from tether.protocol import ErrorBody, usable_request_id
from tether.ratelimit import Clock, RateLimiter, Verdict

log = structlog.get_logger("tether.ws")

CLOSE_IDLE = 1001
CLOSE_ABUSE = 1008

Reply = Callable[[str, ErrorBody], None]  # (request_id, body): queue an error frame
Close = Callable[[int, str], Awaitable[None]]  # (code, reason): close the socket


def request_id_of(raw: str | bytes) -> str:
    """The frame's `request_id` if it has a usable one, else "" (for refusing it cheaply)."""
    try:
        data = jsonsafe.loads(raw, finite=False)
    except jsonsafe.JSONInputError:
        return ""
    request_id = data.get("request_id") if isinstance(data, dict) else None
    return request_id if isinstance(request_id, str) and usable_request_id(request_id) else ""


class SocketGuard:
    def __init__(self, limits: LimitsSettings, *, clock: Clock = time.monotonic) -> None:
        self.idle_timeout = limits.idle_timeout_sec
        self.rate = (
            RateLimiter(
                limits.messages_per_sec,
                limits.message_burst,
                limits.rate_limit_close_after,
                clock=clock,
            )
            if limits.messages_per_sec > 0
            else None
        )
        self._clock = clock
        self.last_activity = clock()
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False

    def activity(self) -> None:
        self.last_activity = self._clock()

    async def admit(self, raw: str | bytes, reply: Reply, close: Close) -> bool:
        """Whether to handle this client frame; a refused one is answered or closes the socket."""
        self.activity()
        if self._closing:  # frames that were already queued when we closed
            return False
        if self.rate is None:
            return True
        verdict = self.rate.check()
        if verdict is Verdict.ADMIT:
            return True
        if verdict is Verdict.REFUSE:
            wait_ms = max(1, round(self.rate.retry_after() * 1000))
            reply(
                request_id_of(raw),
                ErrorBody(
                    "rate_limited",
                    f"more than {self.rate.bucket.rate:g} frames a second on this socket "
                    f"(limits.messages_per_sec); this frame was dropped, send it again in "
                    f"{wait_ms} ms",
                ),
            )
            return False
        log.warning("ws.rate_limit_abuse", strikes=round(self.rate.strikes))
        await self._close(close, CLOSE_ABUSE, "message rate limit exceeded")
        return False

    def start(self, close: Close, busy: Callable[[], bool]) -> None:
        """Watch for idleness until `stop()`; `busy()` says whether a request is running."""
        if self.idle_timeout > 0 and self._watcher is None:
            self.activity()
            self._watcher = asyncio.create_task(self._watch_idle(close, busy))

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch_idle(self, close: Close, busy: Callable[[], bool]) -> None:
        while True:
            remaining = self.last_activity + self.idle_timeout - self._clock()
            if remaining <= 0 and not busy():
                break
            # Sleep until the deadline as it stands; a frame since then moves it on. While a
            # request runs (it may be silent, e.g. in a long tool call), look again a period on.
            await asyncio.sleep(remaining if remaining > 0 else self.idle_timeout)
        log.info("ws.idle_timeout", idle_timeout_sec=self.idle_timeout)
        await self._close(close, CLOSE_IDLE, "idle timeout")

    async def _close(self, close: Close, code: int, reason: str) -> None:
        # The receive loop then sees the disconnect and ends the socket as for any close.
        self._closing = True
        await close(code, reason)
