"""The `mlc` engine against a stand-in `mlc_llm` (tests/support/fake_mlc_llm) and a real dist/."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.contract.engine_contract import EngineContract
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
from tether.engines.mlc import MLC_INSTALL_COMMAND, MLCEngine, MLCNotInstalledError

FAKE_ROOT = Path(__file__).resolve().parents[1] / "support" / "fake_mlc_llm"
TIMEOUT = scaled(10)
QWEN = "Qwen2.5-0.5B-Instruct-q4f16_1-MLC"
SMOL = "SmolLM2-135M-Instruct-q0f16-MLC"


@pytest.fixture
def fake_mlc(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(FAKE_ROOT))
    monkeypatch.delitem(sys.modules, "mlc_llm", raising=False)
    module = importlib.import_module("mlc_llm")
    monkeypatch.setitem(sys.modules, "mlc_llm", module)  # removed again at teardown
    return module


def make_model(dist: Path, name: str, quantization: str, index: str = "ndarray-cache.json") -> None:
    folder = dist / name
    folder.mkdir(parents=True)
    config = {"model_type": "qwen2", "quantization": quantization, "conv_template": "chatml"}
    (folder / "mlc-chat-config.json").write_text(json.dumps(config))
    (folder / index).write_text("{}")


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """The seeds' layout: model folders plus dist/libs, with some folders that are not models."""
    root = tmp_path / "dist"
    make_model(root, QWEN, "q4f16_1")
    make_model(root, SMOL, "q0f16", index="tensor-cache.json")
    (root / "libs").mkdir()
    for lib in (
        "Qwen2.5-0.5B-q4f16_1.dll",
        "Qwen2.5-0.5B-Instruct-q4f16_1-MLC-cpu.so",
        "Qwen2.5-7B-Instruct-q4f16_1-MLC-cpu.so",
        "SmolLM2-135M-Instruct-q0f16-MLC-cuda.so",
        "README.txt",
    ):
        (root / "libs" / lib).write_bytes(b"")
    (root / "notes").mkdir()  # no mlc-chat-config.json
    (root / "half-copied").mkdir()
    (root / "half-copied" / "mlc-chat-config.json").write_text("{}")  # no weight index
    (root / "model.gguf").write_bytes(b"GGUF")
    return root


def request(
    text: str = "hello there", model: str | None = QWEN, request_id: str = "r1", **options: object
) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=(ChatMessage("system", "Be brief."), ChatMessage("user", text)),
        model=model,
        options=GenerationOptions(**options),  # type: ignore[arg-type]
    )


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    async with asyncio.timeout(TIMEOUT):
        return [delta async for delta in stream]


async def test_models_are_discovered_in_dist(fake_mlc: ModuleType, dist: Path) -> None:
    engine = MLCEngine(dist, device="cpu")
    assert isinstance(engine, Engine)
    assert await engine.models() == [
        ModelInfo(id=QWEN, engine="mlc", loaded=False, path=str(dist / QWEN)),
        ModelInfo(id=SMOL, engine="mlc", loaded=False, path=str(dist / SMOL)),
    ]
    found = {m.id: m for m in engine.discover()}
    assert found[QWEN].model_lib == dist / "libs" / "Qwen2.5-0.5B-Instruct-q4f16_1-MLC-cpu.so"
    assert found[QWEN].quantization == "q4f16_1"
    assert found[SMOL].model_lib is None  # its only library is for CUDA: MLC would JIT-compile
    assert MLCEngine(dist, device="auto").discover()[1].model_lib == (
        dist / "libs" / "SmolLM2-135M-Instruct-q0f16-MLC-cuda.so"
    )


async def test_an_empty_or_missing_dist_lists_nothing(fake_mlc: ModuleType, tmp_path: Path) -> None:
    assert await MLCEngine(tmp_path / "nowhere").models() == []
    with pytest.raises(UnknownModelError):
        await collect(MLCEngine(tmp_path).stream(request(model=None)))


async def test_stream_answers_with_usage(fake_mlc: ModuleType, dist: Path) -> None:
    engine = MLCEngine(dist, device="cpu", mode="interactive")
    deltas = await collect(engine.stream(request(temperature=0.2, top_p=0.9, seed=7, stop=("X",))))
    assert "".join(d.text for d in deltas) == "echo: hello there"
    assert all(d.finish_reason is None for d in deltas[:-1])
    final = deltas[-1]
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (4, 3)
    (mlc,) = fake_mlc.ENGINES
    assert (mlc.model, mlc.device, mlc.mode) == (str(dist / QWEN), "cpu", "interactive")
    assert mlc.model_lib == str(dist / "libs" / "Qwen2.5-0.5B-Instruct-q4f16_1-MLC-cpu.so")
    (sent,) = mlc.requests
    assert sent["request_id"].startswith("r1-")
    assert sent["stream_options"] == {"include_usage": True}
    assert (sent["temperature"], sent["top_p"], sent["seed"], sent["stop"]) == (0.2, 0.9, 7, ["X"])
    assert sent["max_tokens"] is None
    assert mlc.aborted == []
    assert [m.loaded for m in await engine.models()] == [True, False]
    await engine.aclose()
    assert mlc.terminated


async def test_max_tokens_ends_with_length(fake_mlc: ModuleType, dist: Path) -> None:
    engine = MLCEngine(dist)
    deltas = await collect(engine.stream(request("one two three four", max_tokens=2)))
    assert "".join(d.text for d in deltas) == "echo: one "
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 2


async def test_the_default_model_is_the_configured_or_the_first(
    fake_mlc: ModuleType, dist: Path
) -> None:
    await collect(MLCEngine(dist).stream(request(model=None)))
    await collect(MLCEngine(dist, default_model=SMOL).stream(request(model=None)))
    assert [Path(e.model).name for e in fake_mlc.ENGINES] == [QWEN, SMOL]


async def test_unknown_model(fake_mlc: ModuleType, dist: Path) -> None:
    with pytest.raises(UnknownModelError, match="nope"):
        await collect(MLCEngine(dist).stream(request(model="nope")))
    assert fake_mlc.ENGINES == []


async def test_cancelling_the_consumer_aborts_the_mlc_request(
    fake_mlc: ModuleType, monkeypatch: pytest.MonkeyPatch, dist: Path
) -> None:
    # The stand-in then waits for abort() before its next token.
    monkeypatch.setattr(fake_mlc, "PAUSE_AFTER", 1)
    engine = MLCEngine(dist)
    first = asyncio.Event()
    received: list[str] = []

    async def consume() -> None:
        async for delta in engine.stream(request()):
            received.append(delta.text)
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(TIMEOUT):
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    (mlc,) = fake_mlc.ENGINES
    (sent,) = mlc.requests
    assert mlc.aborted == [sent["request_id"]]
    assert received == ["echo: "]
    assert mlc.finished == []


async def test_closing_the_stream_early_aborts_too(fake_mlc: ModuleType, dist: Path) -> None:
    engine = MLCEngine(dist)
    stream = engine.stream(request())
    async with asyncio.timeout(TIMEOUT):
        assert (await anext(stream)).text == "echo: "
        await stream.aclose()
    (mlc,) = fake_mlc.ENGINES
    assert mlc.aborted == [mlc.requests[0]["request_id"]]


async def test_lru_eviction_terminates_the_oldest_model(fake_mlc: ModuleType, dist: Path) -> None:
    engine = MLCEngine(dist, max_loaded=1)
    await collect(engine.stream(request(model=QWEN)))
    await collect(engine.stream(request(model=SMOL)))
    qwen, smol = fake_mlc.ENGINES
    assert qwen.terminated
    assert not smol.terminated
    assert [m.loaded for m in await engine.models()] == [False, True]
    await collect(engine.stream(request(model=SMOL)))
    assert len(fake_mlc.ENGINES) == 2  # a cache hit: no new engine

    two = MLCEngine(dist, max_loaded=2)
    await collect(two.stream(request(model=QWEN)))
    await collect(two.stream(request(model=SMOL)))
    assert [m.loaded for m in await two.models()] == [True, True]
    await two.aclose()
    assert all(e.terminated for e in fake_mlc.ENGINES[2:])
    await engine.aclose()
    assert smol.terminated


async def test_eviction_waits_for_in_flight_requests(
    fake_mlc: ModuleType, monkeypatch: pytest.MonkeyPatch, dist: Path
) -> None:
    monkeypatch.setattr(fake_mlc, "PAUSE_AFTER", 1)
    engine = MLCEngine(dist, max_loaded=1)
    held = engine.stream(request(model=QWEN))
    async with asyncio.timeout(TIMEOUT):
        await anext(held)  # QWEN now has a request in flight
        monkeypatch.setattr(fake_mlc, "PAUSE_AFTER", None)
        await collect(engine.stream(request(model=SMOL)))
        qwen = fake_mlc.ENGINES[0]
        assert not qwen.terminated  # evicted, but still serving
        await held.aclose()
    assert qwen.terminated


async def test_concurrent_first_requests_share_one_load(fake_mlc: ModuleType, dist: Path) -> None:
    engine = MLCEngine(dist)
    results = await asyncio.gather(*(collect(engine.stream(request())) for _ in range(3)))
    assert all("".join(d.text for d in r) == "echo: hello there" for r in results)
    (mlc,) = fake_mlc.ENGINES
    assert len({r["request_id"] for r in mlc.requests}) == 3  # unique per MLC engine


async def test_a_failed_load_is_an_engine_error_and_is_retried(
    fake_mlc: ModuleType, monkeypatch: pytest.MonkeyPatch, dist: Path
) -> None:
    monkeypatch.setattr(fake_mlc, "FAIL_LOAD", True)
    engine = MLCEngine(dist)
    with pytest.raises(EngineError, match="cannot allocate device memory"):
        await collect(engine.stream(request()))
    monkeypatch.setattr(fake_mlc, "FAIL_LOAD", False)
    assert [d.text for d in await collect(engine.stream(request("hi")))][:2] == ["echo: ", "hi"]


async def test_tool_history_is_accepted_by_mlc(fake_mlc: ModuleType, dist: Path) -> None:
    call = ToolCall(id="c1", name="add", arguments={"a": 1})
    history = GenerationRequest(
        request_id="r2",
        model=QWEN,
        messages=(
            ChatMessage("system", "Use tools."),
            ChatMessage("user", "add one"),
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", "2", name="add", tool_call_id="c1"),
            ChatMessage("system", "Answer now."),
        ),
    )
    deltas = await collect(MLCEngine(dist).stream(history))
    assert deltas[-1].finish_reason == "stop"
    assert [m["role"] for m in fake_mlc.ENGINES[0].requests[0]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
    ]


def test_not_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, dist: Path) -> None:
    monkeypatch.setitem(sys.modules, "mlc_llm", None)  # makes `import mlc_llm` fail
    with pytest.raises(MLCNotInstalledError) as caught:
        MLCEngine(dist)
    message = str(caught.value)
    assert "\n" not in message
    assert MLC_INSTALL_COMMAND in message


async def test_a_broken_install_fails_at_load_with_the_same_error(
    fake_mlc: ModuleType, monkeypatch: pytest.MonkeyPatch, dist: Path
) -> None:
    engine = MLCEngine(dist)  # the package is found...
    monkeypatch.setitem(sys.modules, "mlc_llm", None)  # ...but importing it fails
    with pytest.raises(MLCNotInstalledError, match="import failed"):
        await collect(engine.stream(request()))


class TestMLCContract(EngineContract):
    """The Engine contract, on the MLC adapter over the stand-in `mlc_llm`."""

    @pytest.fixture
    async def engine(self, fake_mlc: ModuleType, dist: Path) -> AsyncIterator[MLCEngine]:
        engine = MLCEngine(dist, device="cpu")
        yield engine
        await engine.aclose()
