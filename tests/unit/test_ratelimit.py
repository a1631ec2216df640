"""The token bucket and the rate limiter, on a clock the test moves."""

from __future__ import annotations

import pytest

from tether.ratelimit import RateLimiter, TokenBucket, Verdict
from tether.transports.ws_limits import request_id_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    assert bucket.wait_time() == pytest.approx(0.1)
    clock.advance(0.1)
    assert bucket.take()
    assert not bucket.take()
    clock.advance(100)  # refills only up to the capacity
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(0, 5)
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(1, 0)


def send(limiter: RateLimiter, clock: Clock, per_sec: float, seconds: float) -> list[Verdict]:
    verdicts = []
    for _ in range(round(per_sec * seconds)):
        clock.advance(1 / per_sec)
        verdicts.append(limiter.check())
    return verdicts


def test_within_the_rate_everything_is_admitted() -> None:
    clock = Clock()
    limiter = RateLimiter(50, 100, 1000, clock=clock)
    assert set(send(limiter, clock, 50, 60)) == {Verdict.ADMIT}


def test_twice_the_rate_is_refused_half_the_time_but_never_closed() -> None:
    clock = Clock()
    limiter = RateLimiter(50, 100, 1000, clock=clock)
    verdicts = send(limiter, clock, 100, 120)
    assert Verdict.ABUSE not in verdicts
    admitted = verdicts.count(Verdict.ADMIT)
    assert admitted == pytest.approx(50 * 120 + 100, abs=2)  # the rate plus the first burst


def test_ten_times_the_rate_is_abuse_after_a_while() -> None:
    clock = Clock()
    limiter = RateLimiter(50, 100, 1000, clock=clock)
    verdicts = send(limiter, clock, 500, 10)
    first_abuse = verdicts.index(Verdict.ABUSE)
    # 100 free, then 450 refusals a second draining at 50: 1000 strikes after 2.5 s more.
    assert first_abuse / 500 == pytest.approx(0.2 + 2.5, abs=0.1)
    assert Verdict.REFUSE in verdicts[:first_abuse]


def test_close_after_zero_never_closes() -> None:
    clock = Clock()
    limiter = RateLimiter(5, 1, 0, clock=clock)
    verdicts = send(limiter, clock, 5000, 2)
    assert Verdict.ABUSE not in verdicts
    assert verdicts.count(Verdict.ADMIT) == pytest.approx(11, abs=1)
    assert limiter.retry_after() > 0


@pytest.mark.parametrize(
    ("raw", "request_id"),
    [
        ('{"type": "ping", "request_id": "r7"}', "r7"),
        (b'{"request_id": "b"}', "b"),
        ('{"type": "ping"}', ""),
        ('{"request_id": 5}', ""),
        ('{"request_id": ""}', ""),
        ('{"request_id": "\\ud800"}', ""),
        (f'{{"request_id": "{"x" * 201}"}}', ""),
        ("[1]", ""),
        ("not json", ""),
        ("[" * 100_000, ""),
        (b"\xff", ""),
    ],
)
def test_request_id_of_a_refused_frame(raw: str | bytes, request_id: str) -> None:
    assert request_id_of(raw) == request_id
