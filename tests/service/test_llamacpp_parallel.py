"""Parallel decoding on real llama.cpp (the tiny GGUF): several sequences of one model decoded
together in one context, each answering as it would alone.

Greedy answers are the same in a batch as alone with flash attention on; without it llama.cpp's
attention sums in another order when sequences share a batch, so an answer may part from its solo
answer after a few tokens. The identity tests turn it on (`ON`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.contract.engine_contract import EngineContract
from tests.service.test_llamacpp_engine import (
    SMOLLM2,
    TIMEOUT,
    answer,
    ask,
    collect,
    open_engine,
    split,
)
from tests.support.llama_runs import Runs
from tether.engines.base import ChatMessage, Delta, GenerationOptions, GenerationRequest
from tether.engines.llama_native import FlashAttention
from tether.engines.llamacpp import LlamaCppEngine

ON: FlashAttention = "on"
PROMPTS = ("Hello", "Tell me about the sea.", "What is two plus two?", "Name a colour.")


@pytest.fixture
async def engine(dist: Path) -> AsyncIterator[LlamaCppEngine]:
    async with open_engine(dist, parallel=4, flash_attn=ON) as engine:
        yield engine


def greedy(text: str, request_id: str, max_tokens: int = 48) -> GenerationRequest:
    return ask(text, request_id, max_tokens=max_tokens, temperature=0)


def outcome(deltas: list[Delta]) -> tuple[str, str | None, int]:
    """The answer, why it ended and how many tokens it has."""
    _, final = split(deltas)
    assert final.usage is not None
    return answer(deltas), final.finish_reason, final.usage.completion_tokens


async def solo_outcomes(
    engine: LlamaCppEngine, requests: list[GenerationRequest]
) -> list[tuple[str, str | None, int]]:
    return [outcome(await collect(engine, request)) for request in requests]


async def together(engine: LlamaCppEngine, requests: list[GenerationRequest]) -> list[list[Delta]]:
    async with asyncio.timeout(TIMEOUT):
        return await asyncio.gather(*(collect(engine, request) for request in requests))


class Overlap:
    """Tells whether streams ran at the same time: each one's first and last text delta."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._generating = asyncio.Condition()

    async def generating(self, count: int) -> None:
        """Wait until `count` streams have sent text."""
        async with self._generating:
            await self._generating.wait_for(lambda: len(self.first) >= count)

    async def collect(self, engine: LlamaCppEngine, request: GenerationRequest) -> list[Delta]:
        deltas: list[Delta] = []
        async for delta in engine.stream(request):
            now = asyncio.get_running_loop().time()
            if delta.text:
                if request.request_id not in self.first:
                    self.first[request.request_id] = now
                    async with self._generating:
                        self._generating.notify_all()
                self.last[request.request_id] = now
            deltas.append(delta)
        return deltas

    def overlapped(self, a: str, b: str) -> bool:
        return self.first[a] < self.last[b] and self.first[b] < self.last[a]


async def test_concurrent_greedy_answers_are_their_solo_answers(
    engine: LlamaCppEngine, dist: Path
) -> None:
    requests = [greedy(text, f"g{i}") for i, text in enumerate(PROMPTS)]
    solo = await solo_outcomes(engine, requests)
    overlap = Overlap()
    async with asyncio.timeout(TIMEOUT):
        batched = await asyncio.gather(*(overlap.collect(engine, r) for r in requests))
    assert [outcome(deltas) for deltas in batched] == solo
    assert len({text for text, _, _ in solo}) == len(solo)  # four answers, not one repeated
    assert all(overlap.overlapped("g0", f"g{i}") for i in (1, 2, 3))  # decoded together
    # The same text as an engine decoding one sequence at a time.
    async with open_engine(dist, parallel=1, flash_attn=ON) as one_at_a_time:
        assert await solo_outcomes(one_at_a_time, requests) == solo


async def test_each_sequence_keeps_its_own_seed_and_options(engine: LlamaCppEngine) -> None:
    requests = [
        ask("Hi", "s7", max_tokens=24, temperature=1.5, top_p=1.0, seed=7),
        ask("Hi", "s8", max_tokens=24, temperature=1.5, top_p=1.0, seed=8),
        greedy("Hi", "g", max_tokens=24),
        ask("Hi", "stop", max_tokens=24, temperature=0, stop=("e",)),
    ]
    solo = await solo_outcomes(engine, requests)
    batched = [outcome(deltas) for deltas in await together(engine, requests)]
    assert batched == solo
    assert solo[0][0] != solo[1][0]
    assert "e" not in solo[3][0]
    assert solo[2][0].startswith(solo[3][0])


async def test_cancelling_one_leaves_the_others_running(engine: LlamaCppEngine) -> None:
    requests = [greedy(text, f"c{i}", max_tokens=96) for i, text in enumerate(PROMPTS[:3])]
    solo = await solo_outcomes(engine, requests)
    first_token = asyncio.Event()

    async def cancelled_one() -> None:
        async for delta in engine.stream(greedy(PROMPTS[3], "gone", max_tokens=400)):
            if delta.text:
                first_token.set()

    victim = asyncio.create_task(cancelled_one())
    others = asyncio.gather(*(collect(engine, request) for request in requests))
    async with asyncio.timeout(TIMEOUT):
        await first_token.wait()
        victim.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await victim
        results = await others
    assert victim.cancelled()
    assert [outcome(deltas) for deltas in results] == solo


async def test_a_request_joins_a_running_batch(engine: LlamaCppEngine) -> None:
    long, late = greedy(PROMPTS[0], "long", max_tokens=200), greedy(PROMPTS[1], "late")
    solo = await solo_outcomes(engine, [long, late])
    overlap = Overlap()
    running = asyncio.create_task(overlap.collect(engine, long))
    async with asyncio.timeout(TIMEOUT):
        await overlap.generating(1)  # the long one is generating
        joined = await overlap.collect(engine, late)
        first = await running
    assert [outcome(first), outcome(joined)] == solo
    assert overlap.overlapped("long", "late")
    assert overlap.last["late"] < overlap.last["long"]  # it did not wait for the long one


async def test_a_freed_slot_goes_to_the_request_waiting(dist: Path) -> None:
    async with open_engine(dist, parallel=2) as engine:
        requests = [greedy(PROMPTS[i], f"q{i}", max_tokens=24 + 40 * i) for i in range(3)]
        solo = await solo_outcomes(engine, requests)
        places: list[int] = []

        async def told(place: int) -> None:
            places.append(place)

        overlap = Overlap()
        first_two = [asyncio.create_task(overlap.collect(engine, r)) for r in requests[:2]]
        async with asyncio.timeout(TIMEOUT):
            await overlap.generating(2)
            assert engine.queue_position(None) == 1  # both slots taken
            third = replace(requests[2], on_queue_position=told)
            waited = await overlap.collect(engine, third)
            results = [*await asyncio.gather(*first_two), waited]
        assert [outcome(deltas) for deltas in results] == solo
        # The third started once the shortest had finished, beside the second.
        assert overlap.first["q2"] > overlap.last["q0"]
        assert overlap.overlapped("q1", "q2")
        assert places == []  # it was first in line all along: its place never changed


async def test_one_sequence_fills_its_window_while_the_others_run(dist: Path) -> None:
    async with open_engine(dist, n_ctx=256, parallel=3, flash_attn=ON) as engine:
        # A long prompt and no max_tokens: it ends when its window is full.
        full = ask("word " * 400, "full", temperature=0)
        others = [greedy(PROMPTS[i], f"o{i}", max_tokens=120) for i in range(2)]
        solo = await solo_outcomes(engine, others)
        overlap = Overlap()
        async with asyncio.timeout(TIMEOUT):
            results = await asyncio.gather(*(overlap.collect(engine, r) for r in [full, *others]))
        _, final = split(results[0])
        assert final.finish_reason == "length"
        assert final.usage is not None
        assert final.usage.prompt_tokens + final.usage.completion_tokens == 256
        assert [outcome(deltas) for deltas in results[1:]] == solo
        assert overlap.last["full"] < overlap.last["o0"]  # the others went on after it


async def test_a_returning_session_reuses_its_slot(dist: Path, runs: Runs) -> None:
    async with open_engine(dist, parallel=2, prompt_cache_bytes=0, on_run=runs) as engine:
        a1 = GenerationRequest(
            "a1", (ChatMessage("user", "alpha " * 50),), options=GenerationOptions(max_tokens=4)
        )
        b1 = GenerationRequest(
            "b1", (ChatMessage("user", "beta " * 50),), options=GenerationOptions(max_tokens=4)
        )
        _, a1_final = split(a1_deltas := await collect(engine, a1))
        await collect(engine, b1)  # the other slot: a's KV stays where it is
        a2 = GenerationRequest(
            "a2",
            (*a1.messages, ChatMessage("assistant", answer(a1_deltas)), ChatMessage("user", "on")),
            options=GenerationOptions(max_tokens=4),
        )
        _, a2_final = split(await collect(engine, a2))
        assert a1_final.usage is not None
        assert a2_final.metadata is not None
        assert a2_final.metadata["cached_tokens"] >= a1_final.usage.prompt_tokens - 1


async def test_a_waiting_request_hears_its_place_go_down(dist: Path) -> None:
    async with open_engine(dist, n_ctx=4096, parallel=1) as engine:
        holder = engine.stream(ask("Hello", "holder", temperature=0))
        async with asyncio.timeout(TIMEOUT):
            await anext(holder)
            others = [replace(greedy("Hi", f"w{i}", 8), client=f"w{i}") for i in range(2)]
            waiting = [asyncio.create_task(collect(engine, request)) for request in others]
            await asyncio.sleep(0)  # one loop turn: both wait in line
            places: list[int] = []

            async def told(place: int) -> None:
                places.append(place)

            last = replace(greedy("Hi", "last", 8), client="last", on_queue_position=told)
            assert engine.queue_position(None) == 3
            task = asyncio.create_task(collect(engine, last))
            await asyncio.sleep(0)  # one loop turn: it waits in line too
            assert engine.queue_position(None) == 4
            await holder.aclose()
            await asyncio.gather(*waiting)
            await task
        assert places == [2, 1]


class TestParallelContract(EngineContract):
    """The Engine contract, on an engine decoding up to four sequences together."""


@pytest.mark.slow
async def test_smollm2_answers_the_same_alone_and_in_a_batch() -> None:
    async with open_engine(
        SMOLLM2.parent, default_model=SMOLLM2.name, parallel=4, flash_attn=ON
    ) as engine:
        requests = [greedy(text, f"m{i}", max_tokens=32) for i, text in enumerate(PROMPTS)]
        solo = await solo_outcomes(engine, requests)
        batched = [outcome(deltas) for deltas in await together(engine, requests)]
    assert batched == solo
    assert "4" in solo[2][0] or "four" in solo[2][0].lower()
