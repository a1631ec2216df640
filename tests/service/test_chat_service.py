"""ChatService against a real SQLite file and the echo engine: order, commits, cancel, tools."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from tests.support.timeouts import scaled
from tether.chat import ChatService, ToolPolicy, Turn, TurnControl
from tether.engines.base import (
    Delta,
    EngineBusyError,
    EngineError,
    GenerationRequest,
    ModelInfo,
)
from tether.engines.echo import EchoEngine
from tether.engines.router import EngineRouter
from tether.events import (
    Accepted,
    ChatEvent,
    Completed,
    Failed,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from tether.protocol import ChatOptions
from tether.store.base import Agent
from tether.store.sqlite import SQLiteStore
from tether.tools.executor import ToolExecutor
from tether.tools.loader import build_registry
from tether.tools.registry import Registry

CALC = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'


class RecordingEcho(EchoEngine):
    """The echo engine, remembering each request it was given (to check prompts)."""

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        self.requests.append(request)
        async for delta in super().stream(request):
            yield delta


@pytest.fixture
def engine() -> RecordingEcho:
    return RecordingEcho()


def make_service(store: SQLiteStore, engine: EchoEngine, **kwargs: object) -> ChatService:
    tools = ToolExecutor(build_registry(["builtin"]), timeout_s=5)
    return ChatService(
        store=store,
        engine=EngineRouter([engine]),
        system_prompt="You are a test.",
        tool_policy=ToolPolicy(runner=tools),
        **kwargs,  # type: ignore[arg-type]
    )


def rows(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


async def run(
    service: ChatService, turn: Turn, control: TurnControl | None = None
) -> list[ChatEvent]:
    events: list[ChatEvent] = []

    async def emit(event: ChatEvent) -> None:
        events.append(event)

    async with asyncio.timeout(scaled(30)):
        await service.run_turn(turn, emit, control)
    return events


async def test_a_turn_streams_and_commits_in_order(
    store: SQLiteStore, engine: RecordingEcho
) -> None:
    service = make_service(store, engine)
    seen_at_processing: list[tuple[object, ...]] = []
    seen_at_complete: list[tuple[object, ...]] = []
    events: list[ChatEvent] = []

    async def emit(event: ChatEvent) -> None:
        # Read through a separate connection: only committed rows are visible there.
        if isinstance(event, Accepted):
            seen_at_processing.extend(rows(store.path, "SELECT role, content FROM messages"))
        if isinstance(event, Completed):
            seen_at_complete.extend(rows(store.path, "SELECT role, content FROM messages"))
        events.append(event)

    await service.run_turn(Turn("r1", "hello big world"), emit)
    assert isinstance(events[0], Accepted)
    assert events[0].created_session
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "hello big world"
    final = events[-1]
    assert isinstance(final, Completed)
    assert final.finish_reason == "stop"
    assert final.usage.completion_tokens == 3
    assert final.timings.total_ms >= 0
    assert seen_at_processing == [("user", "hello big world")]
    assert seen_at_complete == [("user", "hello big world"), ("assistant", "hello big world")]


async def test_history_and_system_prompt_reach_the_engine(
    store: SQLiteStore, engine: RecordingEcho
) -> None:
    service = make_service(store, engine)
    first = await run(service, Turn("r1", "one"))
    accepted = first[0]
    assert isinstance(accepted, Accepted)
    await run(
        service, Turn("r2", "two", session_id=accepted.session_id, options=ChatOptions(tools=False))
    )
    prompt = engine.requests[-1].messages
    assert [(m.role, m.content) for m in prompt] == [
        ("system", "You are a test."),
        ("user", "one"),
        ("assistant", "one"),
        ("user", "two"),
    ]
    # With tools on (the first turn), the system prompt lists them.
    assert "calculator" in engine.requests[0].messages[0].content


async def test_agent_prompt_and_context(store: SQLiteStore, engine: RecordingEcho) -> None:
    await store.put_agent(Agent("rev", "Reviewer", "You review.", "- be brief"))
    service = make_service(store, engine)
    events = await run(service, Turn("r1", "hi", agent_id="rev", options=ChatOptions(tools=False)))
    assert isinstance(events[-1], Completed)
    assert engine.requests[0].messages[0].content == "You review.\n\n- be brief"
    accepted = events[0]
    assert isinstance(accepted, Accepted)
    # The session remembers its agent for later turns.
    await run(
        service,
        Turn("r2", "again", session_id=accepted.session_id, options=ChatOptions(tools=False)),
    )
    assert engine.requests[1].messages[0].content == "You review.\n\n- be brief"


async def test_unknown_session_and_agent_fail_without_inventing(
    store: SQLiteStore, engine: RecordingEcho
) -> None:
    service = make_service(store, engine)
    for turn in (Turn("r1", "hi", session_id="nope"), Turn("r2", "hi", agent_id="ghost")):
        events = await run(service, turn)
        assert len(events) == 1
        assert isinstance(events[0], Failed)
        assert events[0].code == "not_found"
    assert rows(store.path, "SELECT count(*) FROM sessions") == [(0,)]
    assert engine.requests == []


async def test_cancel_keeps_the_partial_answer(store: SQLiteStore, engine: RecordingEcho) -> None:
    service = make_service(store, engine)
    control = TurnControl()
    events: list[ChatEvent] = []

    async def emit(event: ChatEvent) -> None:
        events.append(event)
        if isinstance(event, TextDelta) and len(events) == 3:
            control.cancel()

    slow = ChatOptions(token_delay_ms=50)
    async with asyncio.timeout(scaled(30)):
        await service.run_turn(Turn("r1", "a b c d e f g h", options=slow), emit, control)
    final = events[-1]
    assert isinstance(final, Completed)
    assert final.finish_reason == "cancelled"
    stored = rows(store.path, "SELECT content, status FROM messages WHERE role = 'assistant'")
    assert stored == [("a b ", "cancelled")]


async def test_the_tool_loop_with_echo(store: SQLiteStore, engine: RecordingEcho) -> None:
    service = make_service(store, engine)
    events = await run(service, Turn("r1", CALC))
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["Accepted", "ToolCallStarted", "ToolCallFinished"]
    started, finished = events[1], events[2]
    assert isinstance(started, ToolCallStarted)
    assert (started.name, started.arguments) == ("calculator", {"expression": "6*7"})
    assert isinstance(finished, ToolCallFinished)
    assert (finished.call_id, finished.result, finished.error) == (started.call_id, "42", None)
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert answer == "Tool calculator returned: 42"
    assert isinstance(events[-1], Completed)
    stored = rows(store.path, "SELECT role, content, tool_call_id FROM messages ORDER BY rowid")
    assert stored == [
        ("user", CALC, None),
        ("assistant", "", None),
        ("tool", "42", started.call_id),
        ("assistant", "Tool calculator returned: 42", None),
    ]
    # The calls and results replay into the next turn's prompt.
    accepted = events[0]
    assert isinstance(accepted, Accepted)
    await run(service, Turn("r2", "thanks", session_id=accepted.session_id))
    replay = engine.requests[-1].messages
    assert [m.role for m in replay] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert replay[2].tool_calls[0].name == "calculator"


async def test_the_tool_loop_stops_at_the_limit(store: SQLiteStore, engine: RecordingEcho) -> None:
    service = make_service(store, engine, max_tool_loops=0)
    events = await run(service, Turn("r1", CALC))
    final = events[-1]
    assert isinstance(final, Completed)
    assert final.finish_reason == "tool_loop_limit"


async def test_tools_off_leaves_markup_as_text(store: SQLiteStore, engine: RecordingEcho) -> None:
    service = make_service(store, engine)
    events = await run(service, Turn("r1", CALC, options=ChatOptions(tools=False)))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == CALC


class FailingEngine(EchoEngine):
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        yield Delta(text="partial ")
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (EngineError("model crashed"), "engine_error"),
        (EngineBusyError("queue full"), "busy"),
        (RuntimeError("bug"), "internal"),
    ],
)
async def test_engine_failures_become_errors_and_keep_the_partial(
    store: SQLiteStore, error: Exception, code: str
) -> None:
    service = make_service(store, FailingEngine(error))
    events = await run(service, Turn("r1", "hi"))
    final = events[-1]
    assert isinstance(final, Failed)
    assert final.code == code
    if code == "internal":
        assert "bug" not in final.message  # no internals leak to the client
    assert rows(store.path, "SELECT content, status FROM messages WHERE role='assistant'") == [
        ("partial ", "error")
    ]


async def test_task_cancellation_stores_the_answer_as_interrupted(
    store: SQLiteStore, engine: RecordingEcho
) -> None:
    service = make_service(store, engine)
    first_text = asyncio.Event()
    events: list[ChatEvent] = []

    async def emit(event: ChatEvent) -> None:
        events.append(event)
        if isinstance(event, TextDelta):
            first_text.set()

    slow = ChatOptions(token_delay_ms=200)
    task = asyncio.create_task(service.run_turn(Turn("r1", "a b c d e", options=slow), emit))
    async with asyncio.timeout(scaled(30)):
        await first_text.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Its watchers are told, so that the request's frames end as every request's do.
    final = events[-1]
    assert isinstance(final, Completed)
    assert final.finish_reason == "interrupted"
    assert rows(
        store.path, "SELECT id, content, status, finish_reason FROM messages WHERE role='assistant'"
    ) == [(final.message_id, "a ", "interrupted", "interrupted")]


class NoToolsEcho(RecordingEcho):
    """An echo "model" whose chat template does not declare tool support (like SmolLM2's)."""

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=self.model_id, engine=self.name, loaded=True, tools=False)]


async def test_tools_follow_the_template_unless_the_turn_says(store: SQLiteStore) -> None:
    engine = NoToolsEcho()
    service = make_service(store, engine)
    plain = await run(service, Turn("r1", CALC))
    assert "calculator" not in engine.requests[-1].messages[0].content
    assert "".join(e.text for e in plain if isinstance(e, TextDelta)) == CALC
    assert not [e for e in plain if isinstance(e, ToolCallStarted)]
    forced = await run(service, Turn("r2", CALC, options=ChatOptions(tools=True)))
    assert "calculator" in engine.requests[-2].messages[0].content
    assert [e.name for e in forced if isinstance(e, ToolCallStarted)] == ["calculator"]


async def test_cancel_mid_tool_answers_every_call(
    store: SQLiteStore, engine: RecordingEcho
) -> None:
    started = asyncio.Event()

    async def wait_forever(seconds: int) -> str:
        """Wait.

        Args:
            seconds: How long.
        """
        started.set()
        await asyncio.Event().wait()
        return "never"

    registry = Registry()
    registry.add(wait_forever)
    service = ChatService(
        store=store,
        engine=EngineRouter([engine]),
        system_prompt="You are a test.",
        tool_policy=ToolPolicy(runner=ToolExecutor(registry, timeout_s=60)),
    )
    control = TurnControl()
    text = 'Checking. <tool_call>{"name": "wait_forever", "arguments": {"seconds": 9}}</tool_call>'
    task = asyncio.create_task(
        run(service, Turn("r1", text, options=ChatOptions(tools=True)), control)
    )
    async with asyncio.timeout(scaled(30)):
        await started.wait()
    control.cancel()
    events = await task
    final = events[-1]
    assert isinstance(final, Completed)
    assert final.finish_reason == "cancelled"
    assert final.usage.completion_tokens > 0  # what the engine said before the call counts
    stored = rows(store.path, "SELECT role, content, status FROM messages ORDER BY rowid")
    assert stored == [
        ("user", text, "complete"),
        ("assistant", "Checking. ", "complete"),
        ("tool", "Error: cancelled before the tool returned", "error"),
        ("assistant", "", "cancelled"),
    ]


async def test_agent_default_options_apply_under_the_turn_options(
    store: SQLiteStore, engine: RecordingEcho
) -> None:
    defaults = {"temperature": 0.3, "max_tokens": 2, "seed": 7, "stop": ["zz"], "tools": False}
    await store.put_agent(Agent("rev", "Reviewer", default_options=defaults))
    service = make_service(store, engine)
    events = await run(service, Turn("r1", "a b c d", agent_id="rev"))
    final = events[-1]
    assert isinstance(final, Completed)
    assert final.finish_reason == "length"  # the agent's max_tokens
    first = engine.requests[0].options
    assert (first.temperature, first.max_tokens, first.seed, first.stop) == (0.3, 2, 7, ("zz",))
    assert "calculator" not in engine.requests[0].messages[0].content  # tools: false
    accepted = events[0]
    assert isinstance(accepted, Accepted)
    # A later turn of the agent's session gets them too; what the turn sets wins, key by key.
    mine = ChatOptions(max_tokens=3, seed=None)
    events = await run(service, Turn("r2", "a b c d", session_id=accepted.session_id, options=mine))
    second = engine.requests[1].options
    assert (second.temperature, second.max_tokens, second.seed) == (0.3, 3, None)


async def test_unusable_stored_defaults_refuse_the_turn_and_say_why(
    store: SQLiteStore, engine: RecordingEcho
) -> None:
    # Stored before they were checked (the REST API checks them now).
    await store.put_agent(Agent("old", "Old", default_options={"temperature": "hot"}))
    service = make_service(store, engine)
    events = await run(service, Turn("r1", "hi", agent_id="old"))
    assert len(events) == 1
    failed = events[0]
    assert isinstance(failed, Failed)
    assert failed.code == "bad_request"
    assert "agent 'old'" in failed.message
    assert "default_options.temperature" in failed.message
    assert rows(store.path, "SELECT count(*) FROM messages") == [(0,)]
    assert engine.requests == []
