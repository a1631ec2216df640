"""Message rate limits: a token bucket, and a limiter that tells abuse from a burst.

Sans-I/O and clock-injected, so the arithmetic is tested without waiting.

`RateLimiter.check()` answers each incoming message:

- `ADMIT`: within `rate` per second, with bursts of up to `burst` messages;
- `REFUSE`: over the rate; the caller refuses this one message and carries on;
- `ABUSE`: refusals have outpaced the rate by `close_after` messages. Every refusal adds a
  strike and strikes drain at `rate` per second, so a client at twice the rate is refused
  about half the time forever but never cut off, while one at ten times the rate reaches
  `close_after` strikes after `close_after / (8 * rate)` seconds (2.5 s at 50/s and 1000).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

Clock = Callable[[], float]


class Verdict(enum.Enum):
    ADMIT = "admit"
    REFUSE = "refuse"
    ABUSE = "abuse"


class TokenBucket:
    """`rate` tokens a second, holding at most `capacity`; starts full."""

    __slots__ = ("_clock", "_stamp", "capacity", "rate", "tokens")

    def __init__(self, rate: float, capacity: float, *, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs rate > 0 and capacity >= 1")
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self) -> bool:
        """Take one token if there is one."""
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill()
        return max(0.0, (1 - self.tokens) / self.rate)


class RateLimiter:
    """One socket's message rate: ADMIT, REFUSE or ABUSE for each message."""

    __slots__ = ("_clock", "_stamp", "bucket", "close_after", "strikes")

    def __init__(
        self, rate: float, burst: int, close_after: int, *, clock: Clock = time.monotonic
    ) -> None:
        self.bucket = TokenBucket(rate, burst, clock=clock)
        self.close_after = close_after  # 0: never ABUSE
        self.strikes = 0.0
        self._clock = clock
        self._stamp = clock()

    def check(self) -> Verdict:
        now = self._clock()
        self.strikes = max(0.0, self.strikes - (now - self._stamp) * self.bucket.rate)
        self._stamp = now
        if self.bucket.take():
            return Verdict.ADMIT
        self.strikes += 1
        if self.close_after and self.strikes > self.close_after:
            return Verdict.ABUSE
        return Verdict.REFUSE

    def retry_after(self) -> float:
        """Seconds until the next message would be admitted."""
        return self.bucket.wait_time()
