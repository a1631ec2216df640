"""The llamacpp engine on real llama.cpp: a tiny random-weight GGUF (built once per machine from
SmolLM2's tokenizer and template) for everything but one slow test, which asks SmolLM2 itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import llama_cpp
import pytest

from tests.contract.engine_contract import EngineContract
from tests.support.llama_runs import Runs
from tests.support.timeouts import scaled
from tests.support.tiny_gguf import ensure_tiny_gguf
from tether.engines.base import (
    ChatMessage,
    Delta,
    Engine,
    EngineBusyError,
    GenerationOptions,
    GenerationRequest,
    ToolCall,
    UnknownModelError,
    Usage,
)
from tether.engines.llama_native import FlashAttention
from tether.engines.llamacpp import LlamaCppEngine

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / "dist" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SCALE = scaled(1)
TIMEOUT = 30 * SCALE
SYSTEM = "You are Tether, a helpful assistant running locally."


@contextlib.asynccontextmanager
async def open_engine(
    dist: Path,
    *,
    default_model: str = "tiny",
    n_ctx: int = 512,
    parallel: int = 1,
    max_loaded: int = 1,
    max_queue: int = 16,
    prompt_cache_bytes: int = 256 << 20,
    flash_attn: FlashAttention = "off",
    on_run: Runs | None = None,
) -> AsyncIterator[LlamaCppEngine]:
    # One thread: the machine is shared, and spinning OpenMP threads suffer most from that.
    engine = LlamaCppEngine(
        dist,
        default_model=default_model,
        n_ctx=n_ctx,
        n_threads=1,
        parallel=parallel,
        max_loaded=max_loaded,
        max_queue=max_queue,
        prompt_cache_bytes=prompt_cache_bytes,
        flash_attn=flash_attn,
        on_run=on_run,
    )
    try:
        yield engine
    finally:
        await engine.aclose()


@pytest.fixture
async def engine(dist: Path, runs: Runs) -> AsyncIterator[LlamaCppEngine]:
    async with open_engine(dist, on_run=runs) as engine:
        yield engine


def ask(
    text: str,
    request_id: str = "r1",
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: tuple[str, ...] = (),
) -> GenerationRequest:
    options = GenerationOptions(
        temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stop
    )
    return GenerationRequest(
        request_id=request_id,
        messages=(ChatMessage("system", SYSTEM), ChatMessage("user", text)),
        options=options,
    )


async def collect(engine: Engine, request: GenerationRequest) -> list[Delta]:
    return [delta async for delta in engine.stream(request)]


async def first_delta(stream: AsyncIterator[Delta]) -> Delta:
    return await anext(stream)


def answer(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def split(deltas: list[Delta]) -> tuple[list[Delta], Delta]:
    *texts, final = deltas
    assert all(d.finish_reason is None and d.usage is None for d in texts)
    assert final.finish_reason is not None
    assert final.text == ""
    return texts, final


def test_tiny_model_is_cached_and_carries_the_real_template(tiny_gguf: Path) -> None:
    mtime = tiny_gguf.stat().st_mtime_ns
    assert ensure_tiny_gguf(tiny_gguf.parent, SMOLLM2) == tiny_gguf
    assert tiny_gguf.stat().st_mtime_ns == mtime  # not rebuilt
    assert tiny_gguf.stat().st_size < 16_000_000
    tiny = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    real = llama_cpp.Llama(str(SMOLLM2), vocab_only=True, verbose=False)
    try:
        template = tiny.metadata["tokenizer.chat_template"]
        assert template == real.metadata["tokenizer.chat_template"]
        assert tiny.tokenize(b"The capital of France") == real.tokenize(b"The capital of France")
    finally:
        tiny.close()
        real.close()


async def test_is_an_engine(engine: LlamaCppEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.name == "llamacpp"


async def test_text_deltas_then_one_final_delta_with_usage(engine: LlamaCppEngine) -> None:
    deltas = await collect(engine, ask("Hello", max_tokens=16, temperature=0))
    texts, final = split(deltas)
    assert texts
    assert final.finish_reason == "length"
    assert final.usage is not None
    assert final.usage.completion_tokens == 16
    assert final.usage.prompt_tokens > 10
    assert final.metadata == {"trimmed_messages": 0, "cached_tokens": 0}


async def test_temperature_zero_is_deterministic(engine: LlamaCppEngine) -> None:
    first = await collect(engine, ask("Hello", max_tokens=12, temperature=0))
    again = await collect(engine, ask("Hello", max_tokens=12, temperature=0))
    assert answer(first) == answer(again)


async def test_seed_makes_sampling_repeatable(engine: LlamaCppEngine) -> None:
    texts = [
        answer(await collect(engine, ask("Hi", max_tokens=24, temperature=1.5, top_p=1.0, seed=s)))
        for s in (7, 7, 8)
    ]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


async def test_stop_string_ends_the_answer_before_it(engine: LlamaCppEngine) -> None:
    full = answer(await collect(engine, ask("Hello", max_tokens=40, temperature=0)))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full[: full.index(stop)]
    _, final = split(deltas := await collect(engine, ask("Hello", stop=(stop,), temperature=0)))
    assert answer(deltas) == cut
    assert final.finish_reason == "stop"


async def test_max_tokens_zero_finishes_at_once(engine: LlamaCppEngine) -> None:
    deltas = await collect(engine, ask("Hello", max_tokens=0))
    assert len(deltas) == 1
    assert deltas[0].finish_reason == "length"


async def test_tool_calls_and_results_go_through_the_template(engine: LlamaCppEngine) -> None:
    request = GenerationRequest(
        request_id="tools",
        messages=(
            ChatMessage("user", "What time is it?"),
            ChatMessage("assistant", "", tool_calls=(ToolCall("c1", "clock", {"tz": "UTC"}),)),
            ChatMessage("tool", "12:00", name="clock", tool_call_id="c1"),
        ),
        options=GenerationOptions(max_tokens=4),
    )
    _, final = split(await collect(engine, request))
    assert final.finish_reason == "length"


async def test_unknown_model_is_refused(engine: LlamaCppEngine) -> None:
    request = GenerationRequest("r", (ChatMessage("user", "hi"),), model="no-such-model")
    with pytest.raises(UnknownModelError, match="no-such-model"):
        await collect(engine, request)


async def test_models_lists_dist_and_what_is_loaded(engine: LlamaCppEngine, dist: Path) -> None:
    before = {m.id: m for m in await engine.models()}
    assert set(before) == {"tiny", "tiny-b"}
    assert not before["tiny"].loaded
    assert before["tiny"].engine == "llamacpp"
    assert before["tiny"].path == str(dist / "tiny.gguf")
    assert not before["tiny"].tools  # SmolLM2's template renders no tools
    await collect(engine, ask("hi", max_tokens=1))
    after = {m.id: m.loaded for m in await engine.models()}
    assert after == {"tiny": True, "tiny-b": False}


async def test_a_model_added_later_is_found(engine: LlamaCppEngine, dist: Path) -> None:
    (dist / "late.gguf").symlink_to((dist / "tiny.gguf").resolve())
    request = GenerationRequest(
        "r",
        (ChatMessage("user", "hi"),),
        model="late.gguf",
        options=GenerationOptions(max_tokens=2),
    )
    _, final = split(await collect(engine, request))
    assert final.usage is not None


async def test_least_recently_used_idle_model_is_closed(dist: Path) -> None:
    async with open_engine(dist, max_loaded=1) as engine:
        for model in ("tiny", "tiny-b"):
            request = GenerationRequest(
                "r",
                (ChatMessage("user", "hi"),),
                model=model,
                options=GenerationOptions(max_tokens=2),
            )
            await collect(engine, request)
        loaded = {m.id: m.loaded for m in await engine.models()}
        assert loaded == {"tiny": False, "tiny-b": True}


async def test_long_history_is_trimmed_oldest_first(engine: LlamaCppEngine) -> None:
    history = [ChatMessage("system", SYSTEM)]
    for i in range(40):
        history += [
            ChatMessage("user", f"question {i}: " + "tell me more " * 10),
            ChatMessage("assistant", f"answer {i}: " + "here is more " * 10),
        ]
    history.append(ChatMessage("user", "and finally?"))
    request = GenerationRequest("long", tuple(history), options=GenerationOptions(max_tokens=8))
    _, final = split(await collect(engine, request))
    assert final.usage is not None
    assert final.usage.prompt_tokens <= 512 - 8
    assert final.metadata is not None
    assert final.metadata["trimmed_messages"] > 40
    assert final.metadata["trimmed_messages"] % 2 == 0


async def test_a_trimmed_session_keeps_its_cut_so_its_prompt_prefix_is_reused(
    engine: LlamaCppEngine,
) -> None:
    # A session outgrowing the window (n_ctx 512). Trimming one turn at a time would change the
    # prompt's start every turn, and each turn would re-read its whole prompt.
    history = [ChatMessage("system", SYSTEM)]
    prompt: list[int] = []
    trimmed: list[int] = []
    cached: list[int] = []
    turns = 18
    for i in range(turns):
        history.append(ChatMessage("user", f"question {i}: " + "tell me more " * 6))
        request = GenerationRequest(
            f"t{i}", tuple(history), options=GenerationOptions(max_tokens=8, temperature=0)
        )
        deltas = await collect(engine, request)
        _, final = split(deltas)
        assert final.usage is not None
        assert final.metadata is not None
        prompt.append(final.usage.prompt_tokens)
        trimmed.append(final.metadata["trimmed_messages"])
        cached.append(final.metadata["cached_tokens"])
        history.append(ChatMessage("assistant", answer(deltas)))
    first = next(i for i, count in enumerate(trimmed) if count)
    assert first + 3 < turns
    assert all(count % 2 == 0 for count in trimmed)  # whole turns
    assert max(prompt) <= 512 - 8
    # The first trim cuts deep, so the turns after it fit behind the same cut...
    assert prompt[first] <= 0.6 * (512 - 8)
    assert trimmed[first + 1] == trimmed[first]
    # ...and start with the prompt the turn before them evaluated.
    for turn in range(first + 1, turns):
        if trimmed[turn] == trimmed[turn - 1]:
            assert cached[turn] >= prompt[turn - 1] - 1
    moves = sum(1 for turn in range(first + 1, turns) if trimmed[turn] != trimmed[turn - 1])
    assert moves <= (turns - first) // 3


async def test_last_user_message_alone_too_long_is_truncated(engine: LlamaCppEngine) -> None:
    # Greedy: sampled at the default temperature, the model sometimes ends within 8 tokens.
    _, final = split(await collect(engine, ask("word " * 5000, max_tokens=8, temperature=0)))
    assert final.finish_reason == "length"
    assert final.metadata is not None
    assert final.metadata["truncated_messages"] == 1


async def test_next_turn_reuses_the_evaluated_prefix(engine: LlamaCppEngine) -> None:
    turn1 = ask("Hello", max_tokens=8, temperature=0)
    _, first = split(deltas := await collect(engine, turn1))
    turn2 = GenerationRequest(
        "r2",
        (*turn1.messages, ChatMessage("assistant", answer(deltas)), ChatMessage("user", "More?")),
        options=GenerationOptions(max_tokens=8),
    )
    _, second = split(await collect(engine, turn2))
    assert first.usage is not None
    assert second.metadata is not None
    assert second.metadata["cached_tokens"] >= first.usage.prompt_tokens - 1


async def test_interleaved_sessions_restore_their_own_prompt_state(
    engine: LlamaCppEngine,
) -> None:
    a1 = GenerationRequest(
        "a1", (ChatMessage("user", "alpha " * 50),), options=GenerationOptions(max_tokens=4)
    )
    b1 = GenerationRequest(
        "b1", (ChatMessage("user", "beta " * 50),), options=GenerationOptions(max_tokens=4)
    )
    _, a1_final = split(a1_deltas := await collect(engine, a1))
    await collect(engine, b1)  # another session takes over the context
    a2 = GenerationRequest(
        "a2",
        (*a1.messages, ChatMessage("assistant", answer(a1_deltas)), ChatMessage("user", "next")),
        options=GenerationOptions(max_tokens=4),
    )
    _, a2_final = split(await collect(engine, a2))
    assert a1_final.usage is not None
    assert a2_final.metadata is not None
    assert a2_final.metadata["cached_tokens"] >= a1_final.usage.prompt_tokens - 1


async def test_cancel_stops_generation_within_one_token(dist: Path, runs: Runs) -> None:
    # A big context and no max_tokens: left alone, this would run for seconds.
    async with open_engine(dist, n_ctx=4096, on_run=runs) as engine:
        received: list[Delta] = []
        five = asyncio.Event()

        async def consume() -> None:
            async for delta in engine.stream(ask("Hello", temperature=0)):
                received.append(delta)
                if len(received) == 5:
                    five.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(five.wait(), TIMEOUT)
        # The loop is free while the worker generates: we are here, and the answer is not done.
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = await runs.next()
        assert stats.finish_reason == "cancelled"
        assert stats.tokens_after_cancel is not None
        assert stats.tokens_after_cancel <= 1
        assert stats.cancel_latency_s is not None
        assert stats.cancel_latency_s < 1.0 * SCALE
        assert stats.completion_tokens < 4000
        # The model's line has moved on: the next request runs at once.
        _, final = split(await asyncio.wait_for(collect(engine, ask("hi", max_tokens=2)), TIMEOUT))
        assert final.finish_reason == "length"


async def test_a_cancelled_generation_reports_its_exact_usage(dist: Path, runs: Runs) -> None:
    async with open_engine(dist, n_ctx=4096, on_run=runs) as engine:
        heard: list[Usage] = []
        request = replace(ask("Hello", temperature=0), usage_sink=heard.append)
        stream = engine.stream(request)
        seen = 0
        async with asyncio.timeout(TIMEOUT):
            async for _ in stream:
                seen += 1
                if seen == 5:
                    break
            await stream.aclose()
        stats = await runs.next()
        assert stats.finish_reason == "cancelled"
        # What the worker counted, not an estimate: the prompt, and every token it kept.
        assert heard == [Usage(stats.prompt_tokens, stats.completion_tokens)]
        assert stats.completion_tokens >= seen  # the worker may have run ahead of the reader


async def test_requests_for_one_model_run_one_at_a_time_in_order(engine: LlamaCppEngine) -> None:
    finished: list[int] = []
    started = [asyncio.Event() for _ in range(3)]

    async def consume(i: int) -> None:
        stream = engine.stream(ask("Hello", f"r{i}", max_tokens=32))
        started[i].set()
        async for _ in stream:
            pass
        finished.append(i)

    assert engine.queue_position(None) == 0
    tasks = [asyncio.create_task(consume(i)) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert finished == [0, 1, 2]
    assert engine.queue_position(None) == 0


async def test_queue_position_and_bound(dist: Path) -> None:
    async with open_engine(dist, n_ctx=4096, max_queue=1) as engine:
        first = engine.stream(ask("Hello", "first", temperature=0))
        await asyncio.wait_for(anext(first), TIMEOUT)  # running now
        assert engine.queue_position("tiny") == 1
        assert engine.queue_position("tiny-b") == 0
        # One accepted elsewhere but not here yet fills the line as one in it would.
        with pytest.raises(EngineBusyError):
            engine.queue_position("tiny", arriving=1)
        assert engine.queue_position("tiny-b", arriving=1) == 0

        second = engine.stream(ask("Hello", "second", max_tokens=1))
        waiting = asyncio.create_task(first_delta(second))
        await asyncio.sleep(0)  # one loop turn: the second request runs up to its wait in line
        # The line is full: asking for a place is refused, as is a third stream.
        with pytest.raises(EngineBusyError):
            engine.queue_position(None)
        with pytest.raises(EngineBusyError):
            await anext(engine.stream(ask("Hello", "third")))

        await first.aclose()  # cancels the first; the second's turn comes
        delta = await asyncio.wait_for(waiting, TIMEOUT)
        assert delta.text or delta.finish_reason
        await second.aclose()


async def test_cancelled_while_waiting_leaves_the_line(dist: Path) -> None:
    async with open_engine(dist, n_ctx=4096) as engine:
        first = engine.stream(ask("Hello", "first", temperature=0))
        await asyncio.wait_for(anext(first), TIMEOUT)
        waiting = asyncio.create_task(first_delta(engine.stream(ask("Hello", "second"))))
        await asyncio.sleep(0)  # one loop turn: the second request joins the line
        assert engine.queue_position(None) == 2
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert engine.queue_position(None) == 1
        await first.aclose()


async def test_aclose_stops_running_work_and_unloads(dist: Path, runs: Runs) -> None:
    engine = LlamaCppEngine(dist, default_model="tiny", n_ctx=4096, n_threads=1, on_run=runs)
    stream = engine.stream(ask("Hello", temperature=0))
    await asyncio.wait_for(anext(stream), TIMEOUT)
    await asyncio.wait_for(engine.aclose(), TIMEOUT)
    assert (await runs.next()).finish_reason == "cancelled"
    assert not any(m.loaded for m in await engine.models())
    await stream.aclose()


@pytest.mark.slow
async def test_smollm2_knows_the_capital_of_france() -> None:
    async with open_engine(SMOLLM2.parent, default_model=SMOLLM2.name) as engine:
        request = ask("What is the capital of France?", temperature=0, max_tokens=48)
        texts, final = split(await asyncio.wait_for(collect(engine, request), TIMEOUT))
        assert "Paris" in answer(texts)
        assert final.finish_reason == "stop"


class TestLlamaCppContract(EngineContract):
    """The Engine contract every engine passes, on the real engine."""


async def test_one_clients_queued_requests_do_not_hold_up_anothers(engine: LlamaCppEngine) -> None:
    """Ten requests of one session, then one of another: the other's goes second, not last."""
    finished: list[str] = []

    async def run(request: GenerationRequest) -> None:
        await collect(engine, request)
        finished.append(request.request_id)

    busy = [replace(ask("hi", f"busy{i}", max_tokens=2), client="busy") for i in range(10)]
    other = replace(ask("hi", "other", max_tokens=2), client="other")
    tasks = [asyncio.create_task(run(request)) for request in busy]
    await asyncio.sleep(0)  # the ten are in line (the first one holds the model)
    tasks.append(asyncio.create_task(run(other)))
    async with asyncio.timeout(scaled(60)):
        await asyncio.gather(*tasks)
    assert finished.index("other") <= 2  # the holder, at most one more of busy's, then other
    assert [f for f in finished if f != "other"] == [f"busy{i}" for i in range(10)]
