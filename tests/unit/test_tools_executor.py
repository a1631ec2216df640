"""The executor: validation, threads, timeouts, concurrency, encoding, size caps, never raising."""

from __future__ import annotations

import asyncio
import contextvars
import json
import sys
import threading
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tests.support.timeouts import scaled
from tether.engines.base import ToolCall
from tether.tools.builtin.calculator import calculator
from tether.tools.executor import ToolExecutor, ToolThreads, encode_result, truncate
from tether.tools.registry import Registry, ToolError, tool

SCALE = scaled(1)
TIMEOUT = 10 * SCALE  # generous bound for things that should be instant


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def aecho(text: str) -> str:
    return text


def kaput() -> None:
    raise RuntimeError("kaput")


def refuse() -> None:
    raise ToolError("not today")


def executor(*fns: Any, **kwargs: Any) -> ToolExecutor:
    registry = Registry()
    for fn in fns:
        registry.add(fn)
    return ToolExecutor(registry, **kwargs)


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(id=f"call-{name}", name=name, arguments=arguments)


async def test_sync_and_async_results() -> None:
    results = await executor(add, aecho).run([call("add", a=2, b=3), call("aecho", text="hi")])
    assert [(r.call_id, r.name, r.result, r.error) for r in results] == [
        ("call-add", "add", "5", None),
        ("call-aecho", "aecho", "hi", None),
    ]
    assert all(r.duration_ms >= 0 for r in results)


async def test_empty_call_list() -> None:
    assert await executor(add).run([]) == []


async def test_unknown_tool_names_the_tool_and_the_choices() -> None:
    [result] = await executor(add, aecho).run([call("subtract", a=1)])
    assert result.result is None
    assert result.error == "unknown tool 'subtract'; available tools: add, aecho"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"a": 1}, "b: missing required argument"),
        ({"a": 1, "b": "two"}, "b: Input should be a valid integer"),
        ({"a": 1, "b": 2, "c": 3}, "c: unexpected argument"),
    ],
)
async def test_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    [result] = await executor(add).run([ToolCall("1", "add", arguments)])
    assert result.error is not None
    assert result.error.startswith("invalid arguments for tool 'add': ")
    assert message in result.error


async def test_arguments_that_are_not_an_object() -> None:
    bad = ToolCall("1", "add", ["a", "b"])  # type: ignore[arg-type]
    [result] = await executor(add).run([bad])
    assert result.error == "invalid arguments for tool 'add': expected a JSON object"


async def test_exceptions_become_errors() -> None:
    results = await executor(kaput, refuse).run([call("kaput"), call("refuse")])
    assert [r.error for r in results] == [
        "tool 'kaput' failed: RuntimeError: kaput",
        "tool 'refuse' failed: not today",
    ]


async def test_system_exit_in_a_tool_does_not_stop_anything() -> None:
    def leave() -> None:
        sys.exit(3)

    async def aleave() -> None:
        raise SystemExit(4)

    results = await executor(leave, aleave).run([call("leave"), call("aleave")])
    assert [r.error for r in results] == [
        "tool 'leave' failed: SystemExit: 3",
        "tool 'aleave' failed: SystemExit: 4",
    ]


async def test_async_timeout() -> None:
    never = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck() -> str:
        try:
            await never.wait()
        finally:
            cancelled.set()
        return "unreachable"

    [result] = await executor(stuck, timeout_s=0.05).run([call("stuck")])
    assert result.error == "tool 'stuck' timed out after 0.05 s"
    assert result.duration_ms >= 40
    assert cancelled.is_set()  # the tool was cancelled, not left running


async def test_per_tool_timeout_overrides_the_default() -> None:
    never = asyncio.Event()

    @tool(timeout_s=0.02)
    async def quick_to_give_up() -> None:
        await never.wait()

    [result] = await executor(quick_to_give_up, timeout_s=TIMEOUT).run([call("quick_to_give_up")])
    assert result.error == "tool 'quick_to_give_up' timed out after 0.02 s"


async def test_a_sync_tool_raising_stop_iteration_is_an_error_not_a_hang() -> None:
    def stop() -> None:
        raise StopIteration("empty")

    [result] = await executor(stop, timeout_s=TIMEOUT).run([call("stop")])
    assert result.error == "tool 'stop' failed: RuntimeError: StopIteration: empty"


async def test_a_tool_raising_timeout_error_itself_is_not_a_timeout() -> None:
    async def own_timeout() -> None:
        raise TimeoutError("upstream too slow")

    [result] = await executor(own_timeout).run([call("own_timeout")])
    assert result.error == "tool 'own_timeout' failed: TimeoutError: upstream too slow"


async def test_sync_tools_run_in_a_worker_thread() -> None:
    loop_thread = threading.get_ident()

    def where() -> int:
        return threading.get_ident()

    [result] = await executor(where).run([call("where")])
    assert result.result is not None
    assert int(result.result) != loop_thread


async def test_sync_timeout_abandons_the_thread() -> None:
    release = threading.Event()
    finished = threading.Event()

    def blocking() -> str:
        release.wait(TIMEOUT)
        finished.set()
        return "late"

    [result] = await executor(blocking, timeout_s=0.05).run([call("blocking")])
    assert result.error == "tool 'blocking' timed out after 0.05 s"
    release.set()  # let the abandoned thread end before the loop closes
    assert await asyncio.to_thread(finished.wait, TIMEOUT)


class Hang:
    """A sync tool that blocks until the test ends (or `release()`), counting who is still in."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.inside = 0
        self.lock = threading.Lock()
        self.left = threading.Condition(self.lock)

    def __call__(self) -> str:
        with self.lock:
            self.inside += 1
        self.released.wait(TIMEOUT * 4)
        with self.lock:
            self.inside -= 1
            self.left.notify_all()
        return "late"

    def release(self) -> None:
        """Let every hung call end, and wait until they have."""
        self.released.set()
        with self.lock:
            assert self.left.wait_for(lambda: self.inside == 0, TIMEOUT)


def hang_tool(hang: Hang) -> Any:
    def hang_tool() -> str:
        """Never answers in time."""
        return hang()

    return hang_tool


async def test_hung_sync_calls_do_not_take_the_threads_of_other_tools() -> None:
    hang = Hang()
    tools = executor(hang_tool(hang), calculator, timeout_s=0.05)  # the default threads
    hung = tools.threads.max_overdue
    assert 0 < hung < tools.threads.max_threads
    try:
        for _ in range(hung):
            [result] = await tools.run([call("hang_tool")])
            assert result.error == "tool 'hang_tool' timed out after 0.05 s"
        # The hung tool is refused at once now, instead of taking one more thread...
        [result] = await tools.run([call("hang_tool")])
        assert result.error == (
            f"tool 'hang_tool' was not run: tool pool is full: {hung} calls still running past"
            " their timeout"
        )
        # ...and the threads left serve the tools that behave, all of them at once.
        spare = tools.threads.max_threads - hung
        results = await tools.run([call("calculator", expression="6*7") for _ in range(spare)])
        assert [r.result for r in results] == ["42"] * spare
    finally:
        await asyncio.to_thread(hang.release)


async def test_a_pool_full_of_hung_calls_refuses_at_once_rather_than_queueing() -> None:
    hang = Hang()
    tools = executor(hang_tool(hang), add, timeout_s=0.05, threads=ToolThreads(2, max_overdue=1))
    try:
        # Two calls in one answer start together, so both get a thread, and both hang.
        results = await tools.run([call("hang_tool"), call("hang_tool")])
        assert {r.error for r in results} == {"tool 'hang_tool' timed out after 0.05 s"}
        [result] = await executor(add, timeout_s=TIMEOUT, threads=tools.threads).run(
            [call("add", a=1, b=1)]
        )
        assert result.error == (
            "tool 'add' was not run: tool pool is full: 2 calls still running past their timeout"
        )
    finally:
        await asyncio.to_thread(hang.release)
    # Once the hung calls have ended (their threads report it on the loop), the threads serve.
    async with asyncio.timeout(TIMEOUT):
        await tools.threads.wait_until(lambda: not tools.threads.running)
    assert not tools.threads.overdue
    [result] = await tools.run([call("add", a=1, b=1)])
    assert result.result == "2"


async def test_a_call_waits_for_a_thread_behind_calls_still_within_their_timeout() -> None:
    first_done = threading.Event()
    go = threading.Event()

    def first() -> str:
        go.wait(TIMEOUT)
        first_done.set()
        return "first"

    def second() -> bool:
        return first_done.is_set()  # one thread: it can only run after the first

    tools = executor(first, second, timeout_s=TIMEOUT, threads=ToolThreads(1))
    task = asyncio.create_task(tools.run([call("first"), call("second")]))
    async with asyncio.timeout(TIMEOUT):
        await tools.threads.wait_until(lambda: tools.threads.waiting > 0)
    assert tools.threads.running == 1
    go.set()
    results = await asyncio.wait_for(task, TIMEOUT)
    assert [(r.result, r.error) for r in results] == [("first", None), ("true", None)]


async def test_sync_tools_see_the_callers_context_variables() -> None:
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")

    def whoami() -> str:
        return who.get()

    who.set("session-1")
    [result] = await executor(whoami).run([call("whoami")])
    assert result.result == "session-1"


async def test_closing_does_not_wait_for_hung_threads_and_refuses_new_calls() -> None:
    # asyncio.run waits for its default executor's threads at the end; the tools' threads are
    # not in it, so a hung tool cannot hold up the end of the server's loop.
    hang = Hang()

    async def serve() -> list[str | None]:
        tools = executor(hang_tool(hang), add, timeout_s=0.05)
        [hung] = await tools.run([call("hang_tool")])
        await tools.aclose()
        [late] = await tools.run([call("add", a=1, b=2)])
        return [hung.error, late.error]

    try:
        errors = await asyncio.wait_for(asyncio.to_thread(asyncio.run, serve()), TIMEOUT)
    finally:
        await asyncio.to_thread(hang.release)
    assert errors == [
        "tool 'hang_tool' timed out after 0.05 s",
        "tool 'add' was not run: the tool executor is shut down",
    ]


async def test_async_calls_of_one_answer_overlap() -> None:
    # Each call can only finish once both are running: sequential execution would time out.
    barrier = asyncio.Barrier(2)

    async def meet(who: str) -> str:
        await barrier.wait()
        return who

    results = await executor(meet, timeout_s=TIMEOUT).run(
        [ToolCall("1", "meet", {"who": "a"}), ToolCall("2", "meet", {"who": "b"})]
    )
    assert [(r.call_id, r.result, r.error) for r in results] == [("1", "a", None), ("2", "b", None)]


async def test_sync_calls_of_one_answer_overlap() -> None:
    barrier = threading.Barrier(2, timeout=TIMEOUT)

    def meet_in_threads(who: str) -> str:
        barrier.wait()
        return who

    results = await executor(meet_in_threads, timeout_s=TIMEOUT * 2).run(
        [
            ToolCall("1", "meet_in_threads", {"who": "a"}),
            ToolCall("2", "meet_in_threads", {"who": "b"}),
        ]
    )
    assert [r.result for r in results] == ["a", "b"]


async def test_one_failure_does_not_affect_the_others() -> None:
    results = await executor(add, kaput).run([call("kaput"), call("add", a=1, b=1), call("nope")])
    assert [r.result for r in results] == [None, "2", None]
    assert [r.error is None for r in results] == [False, True, False]


async def test_cancelling_run_cancels_the_tools() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    never = asyncio.Event()

    async def long() -> None:
        started.set()
        try:
            await never.wait()
        finally:
            cancelled.set()

    task = asyncio.create_task(executor(long, timeout_s=TIMEOUT).run([call("long"), call("long")]))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_sync_function_returning_an_awaitable_is_awaited() -> None:
    def lazy() -> Any:
        return aecho("awaited")

    [result] = await executor(lazy).run([call("lazy")])
    assert result.result == "awaited"


# --- encoding and size caps ---------------------------------------------------------------------


class Reading(BaseModel):
    value: float
    on: date


@dataclass
class Pair:
    left: int
    right: int


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("plain text", "plain text"),
        (42, "42"),
        (None, "null"),
        ({"a": [1, 2.5, True]}, '{"a": [1, 2.5, true]}'),
        ((1, 2), "[1, 2]"),
        ("ünïcode", "ünïcode"),
        (["ü"], '["ü"]'),
        (Reading(value=1.5, on=date(2026, 1, 2)), '{"value": 1.5, "on": "2026-01-02"}'),
        (Pair(1, 2), '{"left": 1, "right": 2}'),
        (date(2026, 1, 2), '"2026-01-02"'),
    ],
)
def test_encode_result(value: Any, encoded: str) -> None:
    assert encode_result(value) == encoded


async def test_results_are_json_encoded() -> None:
    def structured() -> dict[str, Any]:
        return {"ok": True, "items": [1, 2]}

    [result] = await executor(structured).run([call("structured")])
    assert result.result is not None
    assert json.loads(result.result) == {"ok": True, "items": [1, 2]}


async def test_unencodable_result_is_an_error() -> None:
    def weird() -> object:
        return object()

    [result] = await executor(weird).run([call("weird")])
    assert result.error is not None
    assert result.error.startswith("tool 'weird' returned a value that cannot be sent as JSON")


async def test_big_results_are_truncated_with_a_marker() -> None:
    def big() -> str:
        return "é" * 10_000  # 20,000 bytes

    [result] = await executor(big, max_result_bytes=1024).run([call("big")])
    assert result.result is not None
    assert len(result.result.encode()) <= 1024
    assert result.result.startswith("éé")
    assert result.result.endswith(
        "[truncated: 20000 bytes, showing the first " + _kept(result.result) + "]"
    )


async def test_big_errors_are_truncated_too() -> None:
    def loud() -> None:
        raise ToolError("x" * 5000)

    [result] = await executor(loud, max_result_bytes=500).run([call("loud")])
    assert result.error is not None
    assert len(result.error.encode()) <= 500
    assert "[truncated:" in result.error


def _kept(text: str) -> str:
    head = text.split("\n[truncated:")[0]
    return str(len(head.encode()))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=80, max_value=400))
def test_truncate_never_exceeds_the_cap(text: str, cap: int) -> None:
    out = truncate(text, cap)
    assert len(out.encode()) <= cap
    if len(text.encode()) <= cap:
        assert out == text
    else:
        head = out.split("\n[truncated:")[0]
        assert text.startswith(head)


# --- never raises -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(["add", "aecho", "kaput", "refuse", "missing", ""]),
    arguments=st.dictionaries(st.sampled_from(["a", "b", "text", "x"]), json_values, max_size=4),
)
async def test_any_call_gives_exactly_one_of_result_and_error(
    name: str, arguments: dict[str, Any]
) -> None:
    [result] = await executor(add, aecho, kaput, refuse).run([ToolCall("id", name, arguments)])
    assert (result.result is None) != (result.error is None)
    assert result.call_id == "id"
    assert result.name == name
