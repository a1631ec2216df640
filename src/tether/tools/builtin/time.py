"""The `current_time` tool: the date and time now, in the server's zone or an IANA zone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tether.tools.registry import Tool, ToolError, make_tool

Clock = Callable[[], datetime]


def _system_clock() -> datetime:
    return datetime.now(UTC)


def resolve_zone(name: str) -> tzinfo:
    """The zone called `name` (IANA, e.g. "Europe/Paris"; "UTC"/"Z" in any case)."""
    key = name.strip()
    if key.upper() in {"UTC", "Z", "GMT"}:
        return UTC
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: keys like "../x" or absolute paths; OSError: a folder such as "America".
        raise ToolError(
            f"unknown timezone {name!r}: use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None


def make_current_time(clock: Clock = _system_clock) -> Tool:
    """The `current_time` tool reading `clock` (an aware datetime; tests pass a fixed one)."""

    def current_time(timezone: str | None = None) -> str:
        """Get the current date and time.

        Args:
            timezone: IANA timezone name, e.g. "Europe/Paris"; the server's local zone if omitted.
        """
        now = clock()
        local = now.astimezone(resolve_zone(timezone)) if timezone else now.astimezone()
        zone = timezone.strip() if timezone else (local.tzname() or "local")
        return f"{local.isoformat(timespec='seconds')} ({local:%A}, {zone})"

    return make_tool(current_time)
