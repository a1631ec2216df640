"""The journal writer's pace, on a clock the test moves."""

from __future__ import annotations

import pytest

from tether.journal_pace import JournalPace


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_batch_and_urgent_ones_start_at_once() -> None:
    clock = Clock()
    pace = JournalPace(0.025, clock=clock)
    assert pace.delay(urgent=False) == 0.0  # no batch before it
    pace.started()
    assert pace.delay(urgent=True) == 0.0
    assert pace.delay(urgent=False) == pytest.approx(0.025)


def test_a_batch_waits_out_the_interval_from_the_last_start() -> None:
    clock = Clock()
    pace = JournalPace(0.025, clock=clock)
    pace.started()
    clock.now += 0.010  # the commit took 10 ms
    assert pace.delay(urgent=False) == pytest.approx(0.015)
    clock.now += 0.020  # a commit slower than the interval: no wait at all
    assert pace.delay(urgent=False) == 0.0
    pace.started()
    assert pace.delay(urgent=False) == pytest.approx(0.025)


def test_no_interval_no_pace() -> None:
    pace = JournalPace(0.0, clock=Clock())
    pace.started()
    assert pace.delay(urgent=False) == 0.0


def test_a_clock_that_jumps_back_waits_at_most_the_interval() -> None:
    clock = Clock()
    pace = JournalPace(0.025, clock=clock)
    pace.started()
    clock.now -= 60
    assert pace.delay(urgent=False) == pytest.approx(0.025)


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        JournalPace(-1)
