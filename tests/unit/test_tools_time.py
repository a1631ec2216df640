"""current_time: IANA zones, the local default, clear errors for bad zones."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tether.tools.builtin.time import make_current_time, resolve_zone
from tether.tools.registry import ToolError

NOON_UTC = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)  # a Thursday


def fixed() -> datetime:
    return NOON_UTC


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("Europe/Paris", "2026-01-15T13:00:00+01:00 (Thursday, Europe/Paris)"),
        ("America/New_York", "2026-01-15T07:00:00-05:00 (Thursday, America/New_York)"),
        ("Pacific/Kiritimati", "2026-01-16T02:00:00+14:00 (Friday, Pacific/Kiritimati)"),
        ("UTC", "2026-01-15T12:00:00+00:00 (Thursday, UTC)"),
        ("utc", "2026-01-15T12:00:00+00:00 (Thursday, utc)"),
        (" Asia/Tokyo ", "2026-01-15T21:00:00+09:00 (Thursday, Asia/Tokyo)"),
    ],
)
def test_zones(zone: str, expected: str) -> None:
    assert make_current_time(fixed).fn(timezone=zone) == expected


def test_default_is_the_server_local_zone() -> None:
    text = make_current_time(fixed).fn()
    stamp, _, rest = text.partition(" (")
    assert datetime.fromisoformat(stamp) == NOON_UTC
    assert datetime.fromisoformat(stamp).utcoffset() == NOON_UTC.astimezone().utcoffset()
    assert rest.startswith(NOON_UTC.astimezone().strftime("%A, "))


def test_system_clock_is_now() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = make_current_time().fn(timezone="UTC").split(" ")[0]
    assert before <= datetime.fromisoformat(stamp) <= datetime.now(UTC)


@pytest.mark.parametrize(
    "zone",
    ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "America", "Europe/", "x" * 300],
)
def test_bad_zones_are_clear_errors(zone: str) -> None:
    with pytest.raises(ToolError, match=r"unknown timezone .*IANA name"):
        make_current_time(fixed).fn(timezone=zone)
    with pytest.raises(ToolError):
        resolve_zone(zone)


def test_schema() -> None:
    spec = make_current_time().spec
    assert spec.name == "current_time"
    assert spec.parameters["properties"]["timezone"]["default"] is None
    assert "required" not in spec.parameters
