"""The `openai` engine against a real `python -m llama_cpp.server` on loopback, tiny model."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.contract.engine_contract import EngineContract
from tests.support.servers import free_port
from tests.support.timeouts import scaled
from tether.engines.base import (
    ChatMessage,
    Delta,
    Engine,
    EngineError,
    GenerationOptions,
    GenerationRequest,
    ModelInfo,
    ToolCall,
    UnknownModelError,
)
from tether.engines.openai_compat import OpenAIEngine
from tether.engines.router import EngineRouter

SCALE = scaled(1)
TIMEOUT = 30 * SCALE
ALIAS = "tiny"


@dataclass(frozen=True)
class Server:
    base_url: str
    log: Path

    def disconnects(self) -> int:
        return self.log.read_text(errors="replace").count("Disconnected from client")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Server]:
    """A llama_cpp.server process serving the tiny GGUF."""
    folder = tmp_path_factory.mktemp("llama")
    model = tiny_gguf
    port = free_port()
    log = (folder / "server.log").open("wb")
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--host", "127.0.0.1", "--port", str(port),
        "--model", str(model), "--model_alias", ALIAS,
        "--n_ctx", "512", "--n_threads", "1", "--verbose", "false",
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
    assert await engine.models() == [ModelInfo(id=ALIAS, engine="openai", loaded=True)]


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
