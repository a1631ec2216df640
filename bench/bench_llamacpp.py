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
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import llama_cpp

from tether.engines.base import ChatMessage, GenerationOptions, GenerationRequest
from tether.engines.chat_template import ChatTemplate
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
    cast(Any, llama).reset()  # no prefix reuse: measure the same work as a cold engine turn
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


async def decode_side(side: str, model: Path, threads: int, max_tokens: int) -> dict[str, float]:
    """One measurement in this process: raw llama-cpp-python or the engine, never both.

    Each side runs in a process of its own because llama.cpp's OpenMP build keeps a team of
    threads per calling thread, and two teams in one process slow each other down.
    """
    engine = LlamaCppEngine(
        model.parent,
        default_model=model.name,
        n_ctx=N_CTX,
        n_threads=threads,
        prompt_cache_bytes=0,
    )
    try:
        if side == "engine":
            warm_up = GenerationRequest(
                "warm-up", (ChatMessage("user", "Hi"),), options=GenerationOptions(max_tokens=4)
            )
            await engine_run(engine, warm_up)  # loads the model; shares no prompt with the run
            timing = await engine_run(engine, story_request("run", max_tokens))
        else:
            # The exact prompt tokens the engine builds (its template), so both do the same work.
            llama = llama_cpp.Llama(
                str(model), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False
            )
            template = ChatTemplate(
                llama.metadata.get("tokenizer.chat_template"), bos_token="", eos_token=""
            )
            text = template.render(story_request("p", 1).messages)
            prompt = llama.tokenize(text.encode(), add_bos=False, special=True)
            raw_run(llama, prompt, 4)
            timing = raw_run(llama, prompt, max_tokens)
            llama.close()
    finally:
        await engine.aclose()
    return {"tps": timing.decode_tps, "ttft": timing.ttft, "tokens": timing.tokens}


def bench_decode(model: Path, threads: int, rounds: int, max_tokens: int) -> None:
    print(f"\n## decode speed: {max_tokens} tokens, greedy, {rounds} interleaved rounds")
    results: dict[str, list[dict[str, float]]] = {"raw": [], "engine": []}
    for i in range(rounds):
        for side in ("raw", "engine"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--model",
                    str(model),
                    "--threads",
                    str(threads),
                    "--tokens",
                    str(max_tokens),
                    "--decode-side",
                    side,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[side].append(json.loads(out.strip().splitlines()[-1]))
        raw, eng = results["raw"][-1], results["engine"][-1]
        print(
            f"round {i + 1}: raw {raw['tokens']:.0f} tok {raw['tps']:6.1f} tok/s | "
            f"engine {eng['tokens']:.0f} tok {eng['tps']:6.1f} tok/s"
        )
    raw_tps = median([r["tps"] for r in results["raw"]])
    engine_tps = median([r["tps"] for r in results["engine"]])
    raw_ttft = median([r["ttft"] for r in results["raw"]])
    engine_ttft = median([r["ttft"] for r in results["engine"]])
    # On a shared machine the best round is the one least disturbed by other work.
    raw_best = max(r["tps"] for r in results["raw"])
    engine_best = max(r["tps"] for r in results["engine"])
    print(f"raw llama-cpp-python: {raw_tps:6.1f} tok/s median, {raw_best:6.1f} best")
    print(f"tether engine:        {engine_tps:6.1f} tok/s median, {engine_best:6.1f} best")
    ratio, best_ratio = engine_tps / raw_tps, engine_best / raw_best
    print(f"ratio engine/raw:     {ratio:.3f} median, {best_ratio:.3f} best")
    print(f"ttft (cold prompt):   raw {ms(raw_ttft)}, engine {ms(engine_ttft)}")


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


async def bench_turns(model: Path, threads: int, turns: int, max_tokens: int, repeats: int) -> None:
    print(
        f"\n## prompt reuse: {repeats} conversations of {turns} turns ({max_tokens} tokens each),"
        " median per turn"
    )
    engine = LlamaCppEngine(model.parent, default_model=model.name, n_ctx=N_CTX, n_threads=threads)
    per_turn: list[list[float]] = [[] for _ in range(turns)]
    prompt_sizes: list[int] = []
    last_histories: list[tuple[ChatMessage, ...]] = []
    try:
        await converse(engine, (ChatMessage("user", "warm up"),), "warm", 2)
        for rep in range(repeats):
            # Each conversation differs from its first token on, so none reuses another's prompt.
            system = ChatMessage("system", f"Conversation {rep + 1}. {SYSTEM}")
            history: tuple[ChatMessage, ...] = (system, ChatMessage("user", STORY))
            for turn in range(turns):
                ttft, answer, prompt_tokens = await converse(
                    engine, history, f"c{rep}t{turn}", max_tokens
                )
                per_turn[turn].append(ttft)
                if rep == 0:
                    prompt_sizes.append(prompt_tokens)
                last_history = history
                history = next_turn(history, answer, turn + 1)
            last_histories.append(last_history)
    finally:
        await engine.aclose()
    ttfts = [median(values) for values in per_turn]
    for turn, (ttft, size) in enumerate(zip(ttfts, prompt_sizes, strict=True), start=1):
        print(f"turn {turn}: prompt {size:5d} tokens, ttft {ms(ttft)}")

    # Turn N's prompt on a context holding something else: evaluated in full, as every turn
    # would be without reuse.
    cold = LlamaCppEngine(
        model.parent,
        default_model=model.name,
        n_ctx=N_CTX,
        n_threads=threads,
        prompt_cache_bytes=0,
    )
    cold_ttfts: list[float] = []
    try:
        for i, last_history in enumerate(last_histories):
            await converse(cold, (ChatMessage("user", "something else"),), f"other{i}", 2)
            cold_ttft, _, _ = await converse(cold, last_history, f"cold{i}", max_tokens)
            cold_ttfts.append(cold_ttft)
    finally:
        await cold.aclose()
    cold_ttft = median(cold_ttfts)
    print(
        f"turn {turns} evaluated from scratch: {prompt_sizes[-1]:5d} tokens, ttft {ms(cold_ttft)}"
    )
    print(f"turn-{turns}/turn-1 ttft with reuse:    {ttfts[-1] / ttfts[0]:.2f}")
    print(f"turn-{turns}/turn-1 ttft without reuse: {cold_ttft / ttfts[0]:.2f}")


async def bench_sessions(model: Path, threads: int, turns: int, max_tokens: int) -> None:
    print(f"\n## two sessions taking turns on one model, {turns} turns each")
    results: dict[str, list[float]] = {}
    for label, cache_bytes in (("prompt cache on ", 256 << 20), ("prompt cache off", 0)):
        engine = LlamaCppEngine(
            model.parent,
            default_model=model.name,
            n_ctx=N_CTX,
            n_threads=threads,
            prompt_cache_bytes=cache_bytes,
        )
        try:
            sessions: dict[str, tuple[ChatMessage, ...]] = {
                name: (
                    ChatMessage("system", SYSTEM),
                    ChatMessage("user", f"{STORY} Call it {name}."),
                )
                for name in ("A", "B")
            }
            ttfts: list[float] = []
            for turn in range(1, turns + 1):
                for name, history in list(sessions.items()):
                    ttft, answer, _ = await converse(engine, history, f"{name}{turn}", max_tokens)
                    ttfts.append(ttft)
                    sessions[name] = next_turn(history, answer, turn)
            results[label] = ttfts
            first, last = median(ttfts[:2]), median(ttfts[-2:])
            print(f"{label}: turn 1 ttft {ms(first)}, turn {turns} ttft {ms(last)}")
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
    parser.add_argument("--repeats", type=int, default=3, help="conversations per measurement")
    parser.add_argument("--decode-side", choices=("raw", "engine"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decode_side:
        result = await decode_side(args.decode_side, args.model, args.threads, args.tokens)
        print(json.dumps(result))
        return
    print(f"model {args.model}, {args.threads} threads, llama-cpp-python {llama_cpp.__version__}")
    bench_decode(args.model, args.threads, args.rounds, args.tokens)
    await bench_turns(args.model, args.threads, args.turns, 48, args.repeats)
    await bench_sessions(args.model, args.threads, max(2, args.turns // 2), 48)


if __name__ == "__main__":
    asyncio.run(main())
