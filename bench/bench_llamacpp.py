"""Benchmark the llamacpp engine against raw llama-cpp-python on the same model and prompt.

1. Decode speed: tokens/s of `Llama.create_completion(stream=True)` against `LlamaCppEngine.stream`
   (worker thread, asyncio bridge, template, stop handling), greedy, the same prompt tokens, runs
   interleaved so that machine noise hits both alike. Reported as a ratio (engine / raw).
2. Prompt reuse: time to first token over a growing conversation, turn N against turn 1, and
   turn N's prompt evaluated from scratch (what every turn would cost without reuse).
3. Two sessions taking turns on one model: turn-N time to first token with the prompt-state cache
   against the same with the cache off.

    .venv/bin/python bench/bench_llamacpp.py [--model dist/X.gguf] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any, cast

import llama_cpp

from tether.engines.base import ChatMessage, GenerationOptions, GenerationRequest
from tether.engines.llamacpp import LlamaCppEngine

SYSTEM = "You are Tether, a helpful assistant running locally."
STORY = "Write a long story about a robot who learns to paint."
N_CTX = 4096


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def median(values: list[float]) -> float:
    return statistics.median(values)


class Timing:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last = self.start
        self.tokens = 0

    def token(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now

    @property
    def ttft(self) -> float:
        return (self.first or self.last) - self.start

    @property
    def decode_tps(self) -> float:
        """Tokens per second after the first token (prompt evaluation excluded)."""
        span = self.last - (self.first or self.last)
        return (self.tokens - 1) / span if span > 0 else 0.0


def raw_run(llama: llama_cpp.Llama, prompt: list[int], max_tokens: int) -> Timing:
    llama.reset()  # no prefix reuse: measure the same work as a cold engine turn
    timing = Timing()
    chunks = llama.create_completion(
        prompt, max_tokens=max_tokens, temperature=0.0, stream=True, repeat_penalty=1.0
    )
    for chunk in cast(Any, chunks):
        timing.token()
        timing.tokens += 1
        del chunk
    return timing


async def engine_run(engine: LlamaCppEngine, request: GenerationRequest) -> Timing:
    timing = Timing()
    async for delta in engine.stream(request):
        if delta.text:
            timing.token()
        if delta.usage is not None:
            timing.tokens = delta.usage.completion_tokens
    return timing


def story_request(request_id: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        request_id,
        (ChatMessage("system", SYSTEM), ChatMessage("user", STORY)),
        options=GenerationOptions(temperature=0.0, max_tokens=max_tokens),
    )


async def bench_decode(model: Path, threads: int, rounds: int, max_tokens: int) -> None:
    print(f"\n## decode speed: {max_tokens} tokens, greedy, {rounds} interleaved rounds")
    engine = LlamaCppEngine(
        model.parent, default_model=model.name, n_ctx=N_CTX, n_threads=threads,
        prompt_cache_bytes=0,
    )
    llama = llama_cpp.Llama(
        str(model), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    try:
        # The exact prompt tokens the engine builds, so both sides do the same work.
        await engine_run(engine, story_request("warm-up", 4))
        loaded = engine._slots[model.name.removesuffix(".gguf")].model
        assert loaded is not None
        prompt = loaded.encode(story_request("p", 1).messages)
        raw_run(llama, prompt, 4)
        raw_tps, engine_tps, raw_ttft, engine_ttft = [], [], [], []
        for i in range(rounds):
            raw = raw_run(llama, prompt, max_tokens)
            loaded.prompt_cache.clear()
            eng = await engine_run(engine, story_request(f"r{i}", max_tokens))
            raw_tps.append(raw.decode_tps)
            engine_tps.append(eng.decode_tps)
            raw_ttft.append(raw.ttft)
            engine_ttft.append(eng.ttft)
            print(
                f"round {i + 1}: raw {raw.tokens} tok {raw.decode_tps:6.1f} tok/s | "
                f"engine {eng.tokens} tok {eng.decode_tps:6.1f} tok/s"
            )
        print(f"raw llama-cpp-python: {median(raw_tps):6.1f} tok/s (median), ttft {ms(median(raw_ttft))}")
        print(f"tether engine:        {median(engine_tps):6.1f} tok/s (median), ttft {ms(median(engine_ttft))}")
        print(f"ratio engine/raw:     {median(engine_tps) / median(raw_tps):.3f}")
    finally:
        llama.close()
        await engine.aclose()


def next_turn(history: tuple[ChatMessage, ...], answer: str, turn: int) -> tuple[ChatMessage, ...]:
    question = f"Thank you. Now tell me fact number {turn} about the history of painting."
    return (*history, ChatMessage("assistant", answer), ChatMessage("user", question))


async def converse(
    engine: LlamaCppEngine, history: tuple[ChatMessage, ...], request_id: str, max_tokens: int
) -> tuple[float, str, int]:
    """One turn: its time to first token, its answer, and its prompt tokens."""
    request = GenerationRequest(
        request_id, history, options=GenerationOptions(temperature=0.0, max_tokens=max_tokens)
    )
    timing, text, prompt_tokens = Timing(), [], 0
    async for delta in engine.stream(request):
        if delta.text:
            timing.token()
            text.append(delta.text)
        if delta.usage is not None:
            prompt_tokens = delta.usage.prompt_tokens
    return timing.ttft, "".join(text), prompt_tokens


async def bench_turns(model: Path, threads: int, turns: int, max_tokens: int) -> None:
    print(f"\n## prompt reuse over one conversation of {turns} turns ({max_tokens} tokens each)")
    engine = LlamaCppEngine(model.parent, default_model=model.name, n_ctx=N_CTX, n_threads=threads)
    cold = LlamaCppEngine(
        model.parent, default_model=model.name, n_ctx=N_CTX, n_threads=threads,
        prompt_cache_bytes=0,
    )
    try:
        await converse(cold, (ChatMessage("user", "warm up"),), "warm", 2)
        history: tuple[ChatMessage, ...] = (ChatMessage("system", SYSTEM), ChatMessage("user", STORY))
        ttfts: list[float] = []
        for turn in range(1, turns + 1):
            ttft, answer, prompt_tokens = await converse(engine, history, f"t{turn}", max_tokens)
            ttfts.append(ttft)
            print(f"turn {turn}: prompt {prompt_tokens:5d} tokens, ttft {ms(ttft)}")
            last_history = history
            history = next_turn(history, answer, turn)
        # Turn N's prompt on a context that holds something else: evaluated in full.
        await converse(cold, (ChatMessage("user", "something else"),), "other", 2)
        cold_ttft, _, cold_tokens = await converse(cold, last_history, "cold", max_tokens)
        print(f"turn {turns} evaluated from scratch: {cold_tokens} tokens, ttft {ms(cold_ttft)}")
        print(f"turn-{turns}/turn-1 ttft with reuse:    {ttfts[-1] / ttfts[0]:.2f}")
        print(f"turn-{turns}/turn-1 ttft without reuse: {cold_ttft / ttfts[0]:.2f}")
    finally:
        await engine.aclose()
        await cold.aclose()


async def bench_sessions(model: Path, threads: int, turns: int, max_tokens: int) -> None:
    print(f"\n## two sessions taking turns on one model, {turns} turns each")
    results: dict[str, list[float]] = {}
    for label, cache_bytes in (("prompt cache on ", 256 << 20), ("prompt cache off", 0)):
        engine = LlamaCppEngine(
            model.parent, default_model=model.name, n_ctx=N_CTX, n_threads=threads,
            prompt_cache_bytes=cache_bytes,
        )
        try:
            sessions = {
                name: (ChatMessage("system", SYSTEM), ChatMessage("user", f"{STORY} Call it {name}."))
                for name in ("A", "B")
            }
            ttfts: list[float] = []
            for turn in range(1, turns + 1):
                for name, history in list(sessions.items()):
                    ttft, answer, _ = await converse(engine, history, f"{name}{turn}", max_tokens)
                    ttfts.append(ttft)
                    sessions[name] = next_turn(history, answer, turn)
            results[label] = ttfts
            last = ttfts[-2:]
            print(f"{label}: turn 1 ttft {ms(median(ttfts[:2]))}, turn {turns} ttft {ms(median(last))}")
        finally:
            await engine.aclose()
    on, off = median(results["prompt cache on "][-2:]), median(results["prompt cache off"][-2:])
    print(f"turn-{turns} ttft, cache on/off: {on / off:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("dist/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--turns", type=int, default=8)
    args = parser.parse_args()
    print(f"model {args.model}, {args.threads} threads, llama-cpp-python {llama_cpp.__version__}")
    await bench_decode(args.model, args.threads, args.rounds, args.tokens)
    await bench_turns(args.model, args.threads, args.turns, 48)
    await bench_sessions(args.model, args.threads, max(2, args.turns // 2), 48)


if __name__ == "__main__":
    asyncio.run(main())
