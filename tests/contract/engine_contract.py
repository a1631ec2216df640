"""The Engine contract: every engine runs these tests through a subclass providing fixtures.

A subclass defines an `engine` fixture (an open engine) and a `prompt` attribute: a short user
message the engine answers with at least a few tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import ClassVar

import pytest

from tests.support.timeouts import scaled
from tether.detector import CallPiece, ToolCallDetector
from tether.engines.base import (
    ChatMessage,
    Delta,
    Engine,
    ForcedCall,
    GenerationOptions,
    GenerationRequest,
    ToolCall,
    ToolSpec,
    UnknownModelError,
    Usage,
)

PICK = ToolSpec(
    "pick",
    "Pick a colour.",
    {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}},
        "required": ["colour"],
    },
)


def request(text: str, request_id: str = "contract", **options: object) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=(
            ChatMessage("system", "You are a test."),
            ChatMessage("user", text),
        ),
        options=GenerationOptions(**options),  # type: ignore[arg-type]
    )


async def collect(engine: Engine, req: GenerationRequest) -> list[Delta]:
    async with asyncio.timeout(scaled(60)):
        return [delta async for delta in engine.stream(req)]


class EngineContract:
    prompt = "Tell me a long story about the sea and the ships that sail on it."
    # Options that make a long answer take a while, so a cancel lands mid-stream.
    slow_options: ClassVar[dict[str, object]] = {}
    # Whether the engine itself refuses a model it does not have. An upstream server may serve
    # its one model under any name (llama_cpp.server does); the EngineRouter refuses unknown
    # names for every engine (tests/unit/test_router.py).
    refuses_unknown_models: ClassVar[bool] = True

    def test_is_an_engine(self, engine: Engine) -> None:
        assert isinstance(engine, Engine)
        assert engine.name

    async def test_text_then_one_final_delta(self, engine: Engine) -> None:
        deltas = await collect(engine, request(self.prompt, max_tokens=8))
        *body, final = deltas
        assert all(d.finish_reason is None for d in body)
        assert final.finish_reason in {"stop", "length"}
        assert final.usage is not None
        assert final.usage.prompt_tokens > 0
        assert 0 < final.usage.completion_tokens <= 8
        assert "".join(d.text for d in body)

    async def test_max_tokens_ends_with_length(self, engine: Engine) -> None:
        deltas = await collect(engine, request(self.prompt, max_tokens=2, temperature=0.0))
        final = deltas[-1]
        assert final.usage is not None
        assert final.usage.completion_tokens <= 2
        if final.usage.completion_tokens == 2:
            assert final.finish_reason == "length"

    async def test_cancel_stops_and_engine_serves_again(self, engine: Engine) -> None:
        first_token = asyncio.Event()
        produced = 0

        async def consume() -> None:
            nonlocal produced
            long_request = request(self.prompt, "c1", max_tokens=400, **self.slow_options)
            async for delta in engine.stream(long_request):
                if delta.text:
                    produced += 1
                    first_token.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(scaled(60)):
            await first_token.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(scaled(5)):
                await task
        assert task.cancelled()
        assert produced < 400
        deltas = await collect(engine, request(self.prompt, "c2", max_tokens=4))
        assert deltas[-1].finish_reason in {"stop", "length"}

    async def test_early_close_releases_the_engine(self, engine: Engine) -> None:
        stream = engine.stream(request(self.prompt, "e1", max_tokens=400, **self.slow_options))
        async with asyncio.timeout(scaled(60)):
            async for delta in stream:
                if delta.text:
                    break
            await stream.aclose()
        deltas = await collect(engine, request(self.prompt, "e2", max_tokens=4))
        assert deltas[-1].finish_reason in {"stop", "length"}

    async def test_usage_sink_hears_the_final_usage_once(self, engine: Engine) -> None:
        heard: list[Usage] = []
        req = replace(request(self.prompt, "s0", max_tokens=8), usage_sink=heard.append)
        deltas = await collect(engine, req)
        assert heard == [deltas[-1].usage]

    async def test_usage_sink_hears_a_cancelled_generation(self, engine: Engine) -> None:
        # The consumer never sees a final delta, yet the prompt was read and tokens were made.
        heard: list[Usage] = []
        first_token = asyncio.Event()
        seen = 0

        async def consume() -> None:
            nonlocal seen
            long_request = request(self.prompt, "s1", max_tokens=400, **self.slow_options)
            async for delta in engine.stream(replace(long_request, usage_sink=heard.append)):
                assert delta.finish_reason is None
                if delta.text:
                    seen += 1
                    first_token.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(scaled(60)):
            await first_token.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(scaled(5)):
                await task
        assert task.cancelled()
        # Heard by the time the cancellation came out of the consumer, and only once.
        [usage] = heard
        assert usage.prompt_tokens > 0
        assert usage.completion_tokens >= seen - 1

    async def test_usage_sink_hears_an_early_close(self, engine: Engine) -> None:
        heard: list[Usage] = []
        long_request = request(self.prompt, "s2", max_tokens=400, **self.slow_options)
        stream = engine.stream(replace(long_request, usage_sink=heard.append))
        seen = 0
        async with asyncio.timeout(scaled(60)):
            async for delta in stream:
                assert delta.finish_reason is None
                seen += 1
                if seen == 2:
                    break
            assert heard == []  # still running: nothing final to tell yet
            await stream.aclose()
        [usage] = heard
        assert usage.prompt_tokens > 0
        assert usage.completion_tokens >= seen - 1

    async def test_concurrent_requests_all_complete(self, engine: Engine) -> None:
        results = await asyncio.gather(
            *(collect(engine, request(self.prompt, f"p{i}", max_tokens=4)) for i in range(3))
        )
        for deltas in results:
            assert deltas[-1].finish_reason in {"stop", "length"}

    async def test_models_are_listed(self, engine: Engine) -> None:
        models = await engine.models()
        assert models
        assert all(model.engine == engine.name for model in models)

    async def test_a_forced_call_is_one_call_of_that_tool(self, engine: Engine) -> None:
        [model, *_] = await engine.models()
        if not model.forced_calls:
            pytest.skip("this engine's models do not force calls (the chat core refuses them)")
        other = ToolSpec("other", "Do something else.", {"type": "object", "properties": {}})
        forced = replace(
            request("Which colour?", temperature=0.0, max_tokens=64),
            model=model.id,
            tools=(other, PICK),
            forced_call=ForcedCall("pick"),
        )
        deltas = await collect(engine, forced)
        # Written as text (the detector reads it) or parsed by the engine's runtime: either way
        # the chat core gets one call.
        detector = ToolCallDetector(detect_calls=True)
        pieces = [piece for delta in deltas for piece in detector.feed(delta.text)]
        calls: list[CallPiece | ToolCall] = [
            piece for piece in [*pieces, *detector.flush()] if isinstance(piece, CallPiece)
        ]
        calls += [call for call in deltas[-1].tool_calls if isinstance(call, ToolCall)]
        [call] = calls
        assert call.name == "pick"
        assert call.arguments["colour"] in ("red", "green", "blue")

    async def test_unknown_model_is_refused(self, engine: Engine) -> None:
        if not self.refuses_unknown_models:
            pytest.skip("this engine's upstream decides which model names it serves")
        req = GenerationRequest(
            request_id="u",
            messages=(ChatMessage("user", "hi"),),
            model="no-such-model-anywhere",
        )
        with pytest.raises(UnknownModelError):
            await collect(engine, req)

    def test_queue_position_is_a_count(self, engine: Engine) -> None:
        assert engine.queue_position(None) >= 0
