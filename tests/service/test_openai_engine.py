"""The `openai` engine against a real `python -m llama_cpp.server` on loopback, tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.contract.engine_contract import EngineContract
from tests.support.servers import free_port
from tests.support.timeouts import scaled
from tether.chat import ChatService, ToolPolicy, Turn
from tether.engines.base import (
    ChatMessage,
    Delta,
    Engine,
    EngineError,
    ForcedCall,
    GenerationOptions,
    GenerationRequest,
    ModelInfo,
    ToolCall,
    ToolSpec,
    UnknownModelError,
)
from tether.engines.openai_compat import OpenAIEngine
from tether.engines.router import EngineRouter
from tether.events import ChatEvent, Completed, ToolCallFinished, ToolCallStarted
from tether.protocol import ChatOptions
from tether.store.sqlite import SQLiteStore
from tether.tools.executor import ToolExecutor
from tether.tools.registry import Registry

SCALE = scaled(1)
TIMEOUT = 30 * SCALE
ALIAS = "tiny"


@dataclass(frozen=True)
class Server:
    base_url: str
    log: Path

    def disconnects(self) -> int:
        return self.log.read_text(errors="replace").count("Disconnected from client")


@contextlib.contextmanager
def serve(folder: Path, model: Path, *extra: str) -> Iterator[Server]:
    """A llama_cpp.server process serving `model`, with `extra` command-line options."""
    port = free_port()
    log = (folder / "server.log").open("wb")
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--host", "127.0.0.1", "--port", str(port),
        "--model", str(model), "--model_alias", ALIAS,
        "--n_ctx", "512", "--n_threads", "1", "--verbose", "false", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its disconnect notice must reach the log
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60 * SCALE
        while True:  # bounded readiness polling, not a guess
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {(folder / 'server.log').read_text()}")
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not become ready in time")
            time.sleep(0.05)
        yield Server(base, folder / "server.log")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Server]:
    """A llama_cpp.server process serving the tiny GGUF."""
    with serve(tmp_path_factory.mktemp("llama"), tiny_gguf) as running:
        yield running


@pytest.fixture(scope="module")
def calling_server(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Server]:
    """llama_cpp.server with a function-calling chat format: native `tool_calls` in the stream.

    With `tool_choice` naming a function it writes the call under a grammar made from the
    function's schema, so even the tiny model's call is well formed.
    """
    folder = tmp_path_factory.mktemp("llama_tools")
    with serve(folder, tiny_gguf, "--chat_format", "chatml-function-calling") as running:
        yield running


@pytest.fixture
async def engine(server: Server) -> AsyncIterator[OpenAIEngine]:
    engine = OpenAIEngine(
        server.base_url, default_model=ALIAS, connect_timeout=2, read_timeout=TIMEOUT
    )
    yield engine
    await engine.aclose()


def request(max_tokens: int = 8, text: str = "Say hello.") -> GenerationRequest:
    return GenerationRequest(
        request_id="r1",
        messages=(ChatMessage("system", "You are terse."), ChatMessage("user", text)),
        options=GenerationOptions(temperature=0.0, seed=1, max_tokens=max_tokens),
    )


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    async with asyncio.timeout(TIMEOUT):
        return [delta async for delta in stream]


async def test_stream_with_length_limit_and_usage(engine: OpenAIEngine) -> None:
    assert isinstance(engine, Engine)
    deltas = await collect(engine.stream(request(max_tokens=4)))
    *text, final = deltas
    assert text
    assert all(d.text and d.finish_reason is None for d in text)
    assert final.finish_reason == "length"
    assert final.usage is not None
    assert final.usage.completion_tokens == 4
    assert final.usage.prompt_tokens > 0
    # llama_cpp.server ignores stream_options.include_usage, so the engine estimates.
    assert final.metadata == {"usage_estimated": True}


async def test_models_are_listed(engine: OpenAIEngine) -> None:
    # structured_output: `response_format` is passed on for the upstream server to enforce.
    assert await engine.models() == [
        ModelInfo(id=ALIAS, engine="openai", loaded=True, structured_output=True, forced_calls=True)
    ]
    unsent = OpenAIEngine(str(engine.base_url), native_tools=False)
    try:
        [info] = await unsent.models()
    finally:
        await unsent.aclose()
    assert not info.forced_calls  # a forced call is the upstream's to enforce: tools must go


async def test_a_json_schema_is_passed_on_as_openais_response_format(
    engine: OpenAIEngine,
) -> None:
    # OpenAI's `json_schema` shape (what OpenAI, vLLM and llama.cpp's own server take); this
    # upstream, llama-cpp-python's server, knows only `json_object` and says so, which shows
    # the field reached it.
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    options = GenerationOptions(temperature=0.0, max_tokens=8, json_schema=schema)
    with pytest.raises(EngineError, match=r"response_format.*json_schema"):
        await collect(engine.stream(replace(request(), options=options)))


async def test_without_a_default_the_first_listed_model_is_used(server: Server) -> None:
    engine = OpenAIEngine(server.base_url)
    try:
        deltas = await collect(engine.stream(request(max_tokens=2)))
    finally:
        await engine.aclose()
    assert deltas[-1].finish_reason == "length"


async def test_tool_history_is_sent_in_openai_shape(engine: OpenAIEngine) -> None:
    call = ToolCall(id="call_1", name="add", arguments={"a": 1, "b": 2})
    history = GenerationRequest(
        request_id="r2",
        messages=(
            ChatMessage("user", "Add 1 and 2."),
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", "3", name="add", tool_call_id="call_1"),
        ),
        options=GenerationOptions(max_tokens=2),
    )
    deltas = await collect(engine.stream(history))
    assert deltas[-1].finish_reason in ("stop", "length")


async def test_cancel_closes_the_upstream_stream(engine: OpenAIEngine, server: Server) -> None:
    first = asyncio.Event()
    disconnects = server.disconnects()

    async def consume() -> None:
        async for _ in engine.stream(request(max_tokens=400)):
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(TIMEOUT):
        await first.wait()
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert time.monotonic() - started < 1 * SCALE
    # The server saw the client go (llama_cpp.server logs it and stops generating)...
    deadline = time.monotonic() + 5 * SCALE
    while server.disconnects() == disconnects:
        assert time.monotonic() < deadline, "llama_cpp.server never saw the disconnect"
        await asyncio.sleep(0.02)
    # ...and serves the next request.
    assert (await collect(engine.stream(request(max_tokens=2))))[-1].finish_reason == "length"


async def test_nothing_listening_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = OpenAIEngine(url, default_model="m", connect_timeout=2)
    try:
        with pytest.raises(EngineError, match=re.escape(f"at {url}/chat/completions")):
            await collect(engine.stream(request()))
        with pytest.raises(EngineError, match=re.escape(f"at {url}/models: ")):
            await engine.models()
    finally:
        await engine.aclose()


async def test_an_unreachable_upstream_says_which_url_and_why() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    router = EngineRouter([OpenAIEngine(url, connect_timeout=2)])
    try:
        with pytest.raises(UnknownModelError) as caught:
            await router.resolve(None)
        message = str(caught.value)
        assert f"{url}/models" in message
        assert "connect" in message.lower()  # httpx's reason: nothing accepts the connection
        health = await router.health()
        assert health.engines["openai"].state == "unavailable"
    finally:
        await router.aclose()


async def test_a_wrong_path_is_an_upstream_404(server: Server) -> None:
    engine = OpenAIEngine(server.base_url.removesuffix("/v1") + "/nope", default_model=ALIAS)
    try:
        with pytest.raises(EngineError, match=r"upstream 404 .*base URL"):
            await collect(engine.stream(request()))
    finally:
        await engine.aclose()


class TestOpenAIContract(EngineContract):
    """The Engine contract every engine passes, on the real engine."""

    refuses_unknown_models = False


def unit(unit: Literal["c", "f"]) -> str:
    """Say which temperature unit is in use."""
    return f"unit {unit}"


UNIT = ToolSpec(
    "unit",
    "Say which temperature unit is in use.",
    {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"]},
)


async def test_native_tool_calls_come_on_the_final_delta(calling_server: Server) -> None:
    engine = OpenAIEngine(calling_server.base_url, default_model=ALIAS, tool_choice="unit")
    asking = GenerationRequest(
        request_id="t1",
        messages=(ChatMessage("user", "Which unit?"),),
        options=GenerationOptions(temperature=0.0, seed=1, max_tokens=32),
        tools=(UNIT,),
    )
    try:
        deltas = await collect(engine.stream(asking))
    finally:
        await engine.aclose()
    *text, final = deltas
    assert all(not d.tool_calls for d in text)
    [call] = final.tool_calls
    assert isinstance(call, ToolCall)
    assert call.name == "unit"
    assert call.arguments["unit"] in ("c", "f")
    assert call.id
    assert final.finish_reason == "stop"


async def test_a_forced_call_is_passed_on_as_tool_choice(calling_server: Server) -> None:
    # The engine's configured choice is "auto"; the request's forced call overrides it, and the
    # upstream (llama_cpp.server, a grammar of the named function) enforces it.
    engine = OpenAIEngine(calling_server.base_url, default_model=ALIAS)
    forced = GenerationRequest(
        request_id="t4",
        messages=(ChatMessage("user", "Which unit?"),),
        options=GenerationOptions(temperature=0.0, seed=1, max_tokens=32),
        tools=(UNIT,),
        forced_call=ForcedCall("unit"),
    )
    assert engine.payload(forced, ALIAS)["tool_choice"] == {
        "type": "function",
        "function": {"name": "unit"},
    }
    try:
        deltas = await collect(engine.stream(forced))
    finally:
        await engine.aclose()
    [call] = deltas[-1].tool_calls
    assert isinstance(call, ToolCall)
    assert call.name == "unit"
    assert call.arguments["unit"] in ("c", "f")


async def test_the_chat_core_runs_native_calls_and_the_model_answers(
    calling_server: Server, store: SQLiteStore
) -> None:
    engine = OpenAIEngine(
        calling_server.base_url, default_model=ALIAS, tool_choice="unit", read_timeout=TIMEOUT
    )
    registry = Registry()
    registry.add(unit)
    service = ChatService(
        store=store,
        engine=EngineRouter([engine]),
        system_prompt="You are a test.",
        tool_policy=ToolPolicy(runner=ToolExecutor(registry, timeout_s=5)),
    )
    events: list[ChatEvent] = []

    async def emit(event: ChatEvent) -> None:
        events.append(event)

    options = ChatOptions(temperature=0.0, seed=1, max_tokens=24)
    try:
        async with asyncio.timeout(TIMEOUT):
            await service.run_turn(Turn("t2", "Which unit?", options=options), emit)
    finally:
        await engine.aclose()
    [started] = [e for e in events if isinstance(e, ToolCallStarted)]
    [finished] = [e for e in events if isinstance(e, ToolCallFinished)]
    assert started.name == "unit"
    assert finished.error is None
    assert finished.result == f"unit {started.arguments['unit']}"
    completed = events[-1]
    assert isinstance(completed, Completed), events
    assert completed.finish_reason in ("stop", "length")
    assert completed.usage.completion_tokens > 0  # both rounds answered
    history = await store.branch(completed.message_id)
    roles = [(m.role, m.tool_call_id, bool(m.tool_calls)) for m in history]
    assert roles == [
        ("user", None, False),
        ("assistant", None, True),
        ("tool", started.call_id, False),
        ("assistant", None, False),
    ]
    assert history[1].tool_calls[0].id == started.call_id


@contextlib.asynccontextmanager
async def refusing_upstream(bodies: list[dict[str, Any]]) -> AsyncIterator[str]:
    """An upstream that answers like Ollama for a model without tool support: 400 to any request
    with `tools`, else a one-chunk event stream. Every request body lands in `bodies`."""

    async def completions(request: Request) -> Response:
        body = await request.json()
        bodies.append(body)
        if "tools" in body:
            error = {"error": {"message": f"{body['model']} does not support tools"}}
            return JSONResponse(error, status_code=400)
        chunk = {"choices": [{"index": 0, "delta": {"content": "plain"}, "finish_reason": "stop"}]}
        events = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
        return Response(events, media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # No log_config nor log_level: either would reconfigure uvicorn's loggers for the whole
    # process (`uvicorn.access` silenced), which later tests of the access log would miss.
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()  # start-up failed: raise its error here
                    raise RuntimeError("uvicorn exited during start-up")
                await asyncio.sleep(0.01)  # polling a flag uvicorn sets; bounded by the timeout
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, TIMEOUT)
        sock.close()


def asking_for(model: str) -> GenerationRequest:
    return GenerationRequest(
        request_id="t3", messages=(ChatMessage("user", "Which unit?"),), model=model, tools=(UNIT,)
    )


async def test_auto_drops_tools_for_a_model_whose_upstream_refuses_them() -> None:
    bodies: list[dict[str, Any]] = []
    async with refusing_upstream(bodies) as url:
        engine = OpenAIEngine(url)
        try:
            first = await collect(engine.stream(asking_for("m")))
            second = await collect(engine.stream(asking_for("m")))
        finally:
            await engine.aclose()
    assert "".join(d.text for d in first) == "plain"
    assert "".join(d.text for d in second) == "plain"
    # Refused once, retried without tools, then remembered: the second turn asks without them.
    assert ["tools" in body for body in bodies] == [True, False, False]


async def test_a_forced_call_is_never_retried_without_tools() -> None:
    bodies: list[dict[str, Any]] = []
    async with refusing_upstream(bodies) as url:
        engine = OpenAIEngine(url)  # "auto": an unforced turn would be retried without tools
        try:
            with pytest.raises(EngineError, match="upstream 400: m does not support tools"):
                await collect(engine.stream(replace(asking_for("m"), forced_call=ForcedCall())))
        finally:
            await engine.aclose()
    assert [(body["tool_choice"], "tools" in body) for body in bodies] == [("required", True)]


async def test_native_tools_true_makes_the_refusal_the_error() -> None:
    async with refusing_upstream([]) as url:
        engine = OpenAIEngine(url, native_tools=True)
        try:
            with pytest.raises(EngineError, match="upstream 400: m does not support tools"):
                await collect(engine.stream(asking_for("m")))
        finally:
            await engine.aclose()
