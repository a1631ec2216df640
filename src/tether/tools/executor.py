"""ToolExecutor: runs the model's tool calls and turns every outcome into a ToolResult.

Whatever goes wrong (unknown tool, bad arguments, an exception, a timeout) becomes a ToolResult
with `error` set, worded for the model so it can correct itself; `run` never raises (except for
the caller's own cancellation, which is passed on to the running tools).

Sync tools run in `ToolThreads`, the executor's own bounded set of threads. A thread cannot be
stopped, so a sync call that overruns its timeout (or whose caller is cancelled) is abandoned
and keeps its thread until the function returns: an "overdue" call. Hung calls therefore
cannot starve the event loop's shared executor, and the threads are daemons, so neither the
loop's nor the interpreter's shutdown waits for them. Overdue calls are budgeted: once
`max_overdue` threads are held by them, a tool that has overdue calls is refused at once (the
rest of the threads stay for tools that behave, the built-ins among them), and when every thread
is held by one, every sync call is refused, rather than waiting behind calls that may never end.
Otherwise a call waits for a free thread within its own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import inspect
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
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
DEFAULT_MAX_THREADS: Final = 8

log = structlog.get_logger("tether.tools")


class _Refused(Exception):
    """A sync call was not started; the message is the tool error's detail."""


class ToolThreads:
    """The threads sync tool calls run in: one daemon thread per call, at most `max_threads`.

    Its counts live on the event loop; a thread reports its end there. See the module docstring
    for the overdue budget (`max_overdue`, by default half the threads).
    """

    def __init__(
        self, max_threads: int = DEFAULT_MAX_THREADS, max_overdue: int | None = None
    ) -> None:
        self.max_threads = max(1, max_threads)
        self.max_overdue = self.max_threads // 2 if max_overdue is None else max(0, max_overdue)
        self.running = 0  # threads alive, overdue ones included
        self.overdue: Counter[str] = Counter()  # abandoned calls still running, by tool
        self.closed = False
        self._waiters: list[asyncio.Future[None]] = []  # calls waiting for a thread
        self._watchers: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    @property
    def waiting(self) -> int:
        """Calls waiting for a thread (behind calls that are all still within their timeout)."""
        return len(self._waiters)

    def _refusal(self, name: str) -> str | None:
        if self.closed:
            return "the tool executor is shut down"
        overdue = self.overdue.total()
        if overdue >= self.max_threads or (self.overdue[name] and overdue >= self.max_overdue):
            return f"tool pool is full: {overdue} calls still running past their timeout"
        return None

    def _changed(self, *, wake: bool = True) -> None:
        """The counts changed: let the calls waiting for a thread look again (one may be free,
        or none will ever be), and tell `wait_until`."""
        if wake:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
        for condition, watcher in self._watchers:
            if not watcher.done() and condition():
                watcher.set_result(None)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Until `condition()` holds, looked at whenever a call starts, waits, ends or is
        abandoned (for tests, and for a shutdown that wants the threads' end)."""
        if condition():
            return
        watcher: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, watcher)
        self._watchers.append(entry)
        try:
            await watcher
        finally:
            self._watchers.remove(entry)

    async def call(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in a thread of its own, with the caller's context variables."""
        loop = asyncio.get_running_loop()
        while (refusal := self._refusal(name)) is None and self.running >= self.max_threads:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            self._changed(wake=False)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        if refusal is not None:
            raise _Refused(refusal)
        call = _ThreadCall(self, name, loop)
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=call.work, args=(context, fn, args, kwargs), name=f"tool-{name}", daemon=True
        )
        self.running += 1
        self._changed(wake=False)
        try:
            thread.start()
        except BaseException:
            call.ended(None, None)
            raise
        try:
            return await call.result
        except asyncio.CancelledError:  # timed out, or the caller was cancelled: abandoned
            call.abandon()
            raise

    def close(self) -> None:
        """Refuse new calls from now on. Running threads are left to end (they are daemons)."""
        self.closed = True
        self._changed()


class _ThreadCall:
    """One sync call: its thread's outcome, delivered on the loop, and its place in the counts."""

    def __init__(self, threads: ToolThreads, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.threads = threads
        self.name = name
        self.loop = loop
        self.result: asyncio.Future[Any] = loop.create_future()
        self.overdue = False

    def work(
        self,
        context: contextvars.Context,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """The thread: run `fn`, then report on the loop (if it still runs: not at shutdown)."""
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(fn, *args, **kwargs)
        except StopIteration as exc:  # a future refuses it (it would end a generator)
            error = RuntimeError(f"StopIteration: {exc}")
        except BaseException as exc:  # SystemExit too: the executor reports it to the model
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(self.ended, value, error)

    def abandon(self) -> None:
        self.overdue = True
        self.threads.overdue[self.name] += 1
        self.threads._changed()  # waiting calls look again: every thread may be overdue now

    def ended(self, value: Any, error: BaseException | None) -> None:
        threads = self.threads
        threads.running -= 1
        if self.overdue:
            threads.overdue[self.name] -= 1
            if not threads.overdue[self.name]:
                del threads.overdue[self.name]
        if not self.result.done():
            if error is None:
                self.result.set_result(value)
            else:
                self.result.set_exception(error)
        threads._changed()


class ToolExecutor:
    """Implements `ToolRunner` over a Registry.

    Async tools run on the event loop, sync tools in the executor's `ToolThreads`. `aclose()` at
    shutdown refuses sync calls from then on and leaves running ones behind without waiting.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        threads: ToolThreads | None = None,
    ) -> None:
        self._registry = registry
        self._timeout_s = timeout_s
        self._max_result_bytes = max_result_bytes
        self.threads = threads if threads is not None else ToolThreads()

    async def aclose(self) -> None:
        """At shutdown: refuse sync calls from now on; do not wait for the running ones."""
        self.threads.close()

    def _tools(self) -> list[Tool]:
        return self._registry.tools()

    def _lookup(self, name: str) -> Tool | None:
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
            log.info(
                "tools.call_done",
                tool=call.name,
                call_id=call.id,
                duration_ms=round(duration_ms, 3),
            )
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
                value = await self._invoke(found, args, kwargs)
        except (Exception, SystemExit) as exc:
            if isinstance(exc, TimeoutError) and timeout.expired():
                return None, f"tool {name!r} timed out after {timeout_s:g} s"
            if isinstance(exc, _Refused):
                return None, f"tool {name!r} was not run: {exc}"
            if isinstance(exc, ToolError):
                return None, f"tool {name!r} failed: {exc}"
            log.warning("tools.tool_raised", tool=name, exc_info=exc)
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return None, f"tool {name!r} failed: {detail}"
        try:
            return self._cap(encode_result(value)), None
        except (TypeError, ValueError) as exc:
            return None, f"tool {name!r} returned a value that cannot be sent as JSON: {exc}"

    async def _invoke(self, found: Tool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if found.is_async:
            value = await found.fn(*args, **kwargs)
        else:
            value = await self.threads.call(found.name, found.fn, *args, **kwargs)
        if inspect.isawaitable(value):  # a sync function handing back a coroutine
            value = await value
        return value

    def _cap(self, text: str) -> str:
        return truncate(text, self._max_result_bytes)


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
