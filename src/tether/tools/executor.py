"""ToolExecutor: runs the model's tool calls and turns every outcome into a ToolResult.

Whatever goes wrong (unknown tool, bad arguments, an exception, a timeout) becomes a ToolResult
with `error` set, worded for the model so it can correct itself; `run` never raises (except for
the caller's own cancellation, which is passed on to the running tools).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
import json
import time
from collections.abc import Iterable
from enum import Enum
from pathlib import PurePath
from typing import Any, Final

import structlog
from pydantic import BaseModel, ValidationError

from tether.engines.base import ToolCall
from tether.tools.base import ToolResult, ToolSpec
from tether.tools.registry import Registry, Tool, ToolError

DEFAULT_TIMEOUT_S: Final = 15.0
DEFAULT_MAX_RESULT_BYTES: Final = 16 * 1024

log = structlog.get_logger("tether.tools")


class ToolExecutor:
    """Implements `ToolRunner` over a Registry.

    Async tools run on the event loop, sync tools in a worker thread (a thread cannot be
    stopped: a sync tool that overruns its timeout is abandoned and finishes in the background).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        only: Iterable[str] | None = None,
    ) -> None:
        self._registry = registry
        self._timeout_s = timeout_s
        self._max_result_bytes = max_result_bytes
        self._only = frozenset(only) if only is not None else None

    def restrict(self, names: Iterable[str]) -> ToolExecutor:
        """The same executor limited to `names` (a request's `options.tools`)."""
        allowed = frozenset(names)
        if self._only is not None:
            allowed &= self._only
        return ToolExecutor(
            self._registry,
            timeout_s=self._timeout_s,
            max_result_bytes=self._max_result_bytes,
            only=allowed,
        )

    def _tools(self) -> list[Tool]:
        tools = self._registry.tools()
        return tools if self._only is None else [t for t in tools if t.name in self._only]

    def _lookup(self, name: str) -> Tool | None:
        if self._only is not None and name not in self._only:
            return None
        return self._registry.get(name)

    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools()]

    async def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        """Run the calls of one answer concurrently; results in the order of `calls`."""
        if len(calls) == 1:
            return [await self.run_one(calls[0])]
        return list(await asyncio.gather(*(self.run_one(c) for c in calls)))

    async def run_one(self, call: ToolCall) -> ToolResult:
        start = time.perf_counter()
        try:
            result, error = await self._execute(call)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must still not kill the request
            if isinstance(exc, KeyboardInterrupt):
                raise
            log.exception("tools.executor_bug", tool=call.name)
            result, error = None, f"tool {call.name!r} failed: internal error ({exc!r})"
        duration_ms = (time.perf_counter() - start) * 1000
        if error is not None:
            # Expected in normal use (the model gets the error and may retry): info, not warning.
            log.info("tools.call_failed", tool=call.name, call_id=call.id, error=error)
            error = self._cap(error)
        else:
            log.debug("tools.call_done", tool=call.name, call_id=call.id, duration_ms=duration_ms)
        return ToolResult(
            call_id=call.id, name=call.name, result=result, error=error, duration_ms=duration_ms
        )

    async def _execute(self, call: ToolCall) -> tuple[str | None, str | None]:
        name = call.name
        found = self._lookup(name)
        if found is None:
            available = ", ".join(t.name for t in self._tools()) or "none"
            return None, f"unknown tool {name!r}; available tools: {available}"
        if not isinstance(call.arguments, dict):
            return None, f"invalid arguments for tool {name!r}: expected a JSON object"
        try:
            args, kwargs = found.prepare(call.arguments)
        except ValidationError as exc:
            return None, f"invalid arguments for tool {name!r}: {describe_validation(exc)}"
        timeout_s = found.timeout_s or self._timeout_s
        timeout = asyncio.timeout(timeout_s)
        try:
            async with timeout:
                value = await _invoke(found, args, kwargs)
        except (Exception, SystemExit) as exc:
            if isinstance(exc, TimeoutError) and timeout.expired():
                return None, f"tool {name!r} timed out after {timeout_s:g} s"
            if isinstance(exc, ToolError):
                return None, f"tool {name!r} failed: {exc}"
            log.warning("tools.tool_raised", tool=name, exc_info=exc)
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return None, f"tool {name!r} failed: {detail}"
        try:
            return self._cap(encode_result(value)), None
        except (TypeError, ValueError) as exc:
            return None, f"tool {name!r} returned a value that cannot be sent as JSON: {exc}"

    def _cap(self, text: str) -> str:
        return truncate(text, self._max_result_bytes)


async def _invoke(found: Tool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if found.is_async:
        value = await found.fn(*args, **kwargs)
    else:
        value = await asyncio.to_thread(found.fn, *args, **kwargs)
    if inspect.isawaitable(value):  # a sync function handing back a coroutine
        value = await value
    return value


def describe_validation(exc: ValidationError) -> str:
    """pydantic errors in one line, e.g. "expression: field required; foo: unexpected argument"."""
    parts: list[str] = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unexpected argument")
        elif err["type"] == "missing":
            parts.append(f"{where}: missing required argument")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def encode_result(value: Any) -> str:
    """Strings as they are; anything else as JSON (pydantic models, dataclasses, dates too)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def truncate(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` UTF-8 bytes, marker included, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    marker = f"\n[truncated: {len(data)} bytes, showing the first {{}}]"
    keep = max(0, max_bytes - len(marker.format(max_bytes).encode()))
    head = data[:keep].decode("utf-8", errors="ignore")
    return head + marker.format(len(head.encode("utf-8")))
