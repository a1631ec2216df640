"""The embedded model (SmolLM2-135M, `dist/`) through Tether against llama.cpp without it.

Every side is a process of its own with the model loaded once, the same GGUF, threads, seed and
sampling (greedy, repeat penalty 1.0), asked in interleaved rounds:

- raw: llama-cpp-python used directly (`peer_llamacpp.py`);
- `python -m llama_cpp.server`: its OpenAI-compatible server, over HTTP (SSE);
- tether: `tether serve --engine llamacpp`, over `/ws/chat` and over `/v1/chat/completions`.

`llamacpp_stream`: one long answer to the same prompt (system prompt and story request; a fresh
session on the socket): decode tokens/s (tokens after the first over the time from the first to
the last, measured by the client) and time to first token. Every side gets one full-length
warm-up (16 tokens on a quick run), not counted; then each round asks every side once, in an
order that rotates from round to round. The decode ratios (and goals) are the medians of each
round's own ratios; the ratios of the medians are beside them (`..._decode_of_medians`).
Goals: decode ≥ 0.97 of raw and ≥ 1.1 of llama_cpp.server.

`multiturn_ttft`: one session of 20 turns over `/ws/chat` (each answer's text goes into the next
turn's history), the same conversation asked of raw llama-cpp-python: time to first token of
turn 20 / turn 1 (goal ≤ 1.3; Tether's prompt-state reuse keeps it flat).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from subprocess import DEVNULL
from typing import Any

import httpx
from harness import (
    BENCH,
    MODEL,
    PYTHON,
    Goal,
    Outcome,
    Profile,
    Stopwatch,
    clean_env,
    free_port,
    median,
    ms,
    need_model,
    process,
    tether,
)
from websockets.asyncio.client import ClientConnection, connect

SYSTEM = "You are Tether, a helpful assistant running locally."  # config.yaml's system_prompt
PROMPT = "Write a long story about a robot who learns to paint."
OPENING = "Tell me about the history of painting, briefly."
SEED = 42
MODEL_ID = MODEL.stem
Run = dict[str, Any]


def tokens_per_s(run: Run) -> float:
    return float((run["tokens"] - 1) / run["decode"]) if run["decode"] > 0 else 0.0


@dataclass
class RawPeer:
    """The raw llama-cpp-python process: a JSON request per line, a JSON result per line."""

    proc: subprocess.Popen[str]

    def ask(self, messages: list[dict[str, str]], max_tokens: int) -> Run:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"messages": messages, "max_tokens": max_tokens}) + "\n")
        self.proc.stdin.flush()
        result: Run = json.loads(self.proc.stdout.readline())
        return result


@contextlib.contextmanager
def raw_peer(threads: int) -> Iterator[RawPeer]:
    command = [PYTHON, str(BENCH / "peer_llamacpp.py"), str(MODEL), str(threads), str(SEED)]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=clean_env()
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("raw llama-cpp-python did not start")
        peer = RawPeer(proc)
        peer.ask([{"role": "user", "content": "Hi"}], 2)  # warm up (Tether's start does too)
        yield peer
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


@contextlib.contextmanager
def llama_server(threads: int) -> Iterator[str]:
    """`python -m llama_cpp.server` on the same model; its base URL."""
    port = free_port()
    command = [PYTHON, "-m", "llama_cpp.server", "--model", str(MODEL), "--n_ctx", "4096",
               "--n_threads", str(threads), "--n_threads_batch", str(threads),
               "--seed", str(SEED), "--port", str(port), "--verbose", "false"]  # fmt: skip
    # (its access log goes to stderr, a line a request)
    ready = "/v1/models"
    with process(command, port, env=clean_env(), ready_path=ready, stderr=DEVNULL) as server:
        yield server.http_url


@contextlib.contextmanager
def tether_llamacpp(threads: int) -> Iterator[str]:
    """`tether serve --engine llamacpp`, the model loaded; its base URL."""
    with tether("llamacpp", settings={"ENGINE__LLAMACPP__N_THREADS": str(threads)}) as server:
        asyncio.run(ws_turn(server.ws_url, PROMPT, 4, None))  # loads the model
        yield server.http_url


async def ws_turn(url: str, text: str, max_tokens: int, session_id: str | None) -> Run:
    async with connect(url) as ws:
        return await ws_ask(ws, text, max_tokens, session_id)


async def ws_ask(ws: ClientConnection, text: str, max_tokens: int, session_id: str | None) -> Run:
    """One turn on the socket (a new session unless `session_id`): measurements, text, session."""
    frame: dict[str, Any] = {
        "type": "chat",
        "request_id": f"r{time.monotonic_ns()}",
        "text": text,
        "options": {"max_tokens": max_tokens, "temperature": 0.0, "tools": False},
    }
    if session_id:
        frame["session_id"] = session_id
    watch = Stopwatch()
    await ws.send(json.dumps(frame))
    answer: list[str] = []
    session = session_id
    while True:
        reply: dict[str, Any] = json.loads(await ws.recv())
        status = reply["status"]
        if status == "processing":
            session = reply["chunk"]["metadata"]["session_id"]
        elif status == "chunk" and reply["chunk"]["type"] == "text":
            watch.tick()
            answer.append(reply["chunk"]["data"])
        elif status == "complete":
            tokens = reply["chunk"]["metadata"]["usage"]["completion_tokens"]
            return {"ttft": watch.to_first, "tokens": tokens, "decode": watch.span,
                    "text": "".join(answer), "session_id": session}  # fmt: skip
        elif status == "error":
            raise RuntimeError(f"error frame: {reply}")


def model_servers(profile: Profile) -> tuple[RawPeer, str]:
    """The run's raw llama-cpp-python and `tether serve --engine llamacpp` (shared)."""
    raw = profile.shared.get("raw-llamacpp", lambda: raw_peer(profile.threads))
    return raw, profile.shared.get("tether-llamacpp", lambda: tether_llamacpp(profile.threads))


def sse_turn(
    client: httpx.Client, url: str, model: str, max_tokens: int, prompt: str = PROMPT
) -> Run:
    body = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": SEED,
        "repeat_penalty": 1.0,  # llama_cpp.server's own field (its default is 1.1); Tether's is 1.0
    }
    watch = Stopwatch()
    chunks = 0
    usage: dict[str, Any] | None = None
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            usage = chunk.get("usage") or usage
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                watch.tick()
                chunks += 1
    tokens = usage["completion_tokens"] if usage else chunks
    return {"ttft": watch.to_first, "tokens": tokens, "decode": watch.span}


def rotated(sides: list[str], round_: int) -> list[str]:
    """The round's order: each round starts one side later, so none always goes first (after
    the client's idle time) or last."""
    shift = round_ % len(sides)
    return sides[shift:] + sides[:shift]


def paired_ratio(ours: list[Run], theirs: list[Run]) -> float:
    """The median of the rounds' own decode ratios ours / theirs: a load that comes and goes on
    a shared machine hits both sides of a round alike, so this moves far less than the ratio of
    the medians."""
    ratios = [
        tokens_per_s(mine) / tokens_per_s(peer)
        for mine, peer in zip(ours, theirs, strict=True)
        if tokens_per_s(peer) > 0
    ]
    return median(ratios) if ratios else 0.0


def llamacpp_stream(profile: Profile) -> Outcome:
    need_model()
    rounds, max_tokens = profile.pick(2, 8), profile.pick(64, 200)
    story = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    raw, tether_url = model_servers(profile)
    server_url = profile.shared.get("llama-cpp-server", lambda: llama_server(profile.threads))
    ws_url = tether_url.replace("http", "ws", 1) + "/ws/chat"
    with httpx.Client(timeout=600) as client:
        server_model = client.get(f"{server_url}/v1/models").json()["data"][0]["id"]
        sides: dict[str, Callable[[int], Run]] = {
            "raw": lambda n: raw.ask(story, n),
            "llama_cpp_server": lambda n: sse_turn(client, server_url, server_model, n),
            "ws": lambda n: asyncio.run(ws_turn(ws_url, PROMPT, n, None)),
            "v1": lambda n: sse_turn(client, tether_url, MODEL_ID, n),
        }
        for ask in sides.values():  # a warm-up of every side (full-length unless quick)
            ask(profile.pick(16, max_tokens))
        runs: dict[str, list[Run]] = {side: [] for side in sides}
        for round_ in range(rounds):
            for side in rotated(list(sides), round_):
                runs[side].append(sides[side](max_tokens))
    tps = {side: median([tokens_per_s(r) for r in rs]) for side, rs in runs.items()}
    ttft = {side: median([r["ttft"] for r in rs]) for side, rs in runs.items()}
    figures: dict[str, float | int] = {
        "max_tokens": max_tokens,
        "threads": profile.threads,
        "rounds": rounds,
    }
    for side in runs:
        figures[f"{side}_tokens_per_s"] = round(tps[side], 1)
        figures[f"{side}_ttft_ms"] = ms(ttft[side])
        figures[f"{side}_tokens"] = int(median([r["tokens"] for r in runs[side]]))
    goals = []
    for side in ("ws", "v1"):
        for peer, target in (("raw", 0.97), ("llama_cpp_server", 1.1)):
            ratio = paired_ratio(runs[side], runs[peer])
            figures[f"{side}_vs_{peer}_decode"] = round(ratio, 3)
            figures[f"{side}_vs_{peer}_decode_of_medians"] = round(tps[side] / tps[peer], 3)
            figures[f"{side}_vs_{peer}_ttft"] = round(ttft[side] / ttft[peer], 3)
            goals.append(Goal(f"{side} decode / {peer}", ratio, ">=", target))
    return Outcome(
        figures["ws_vs_raw_decode"],
        "decode tokens/s over /ws/chat / raw llama-cpp-python (median of per-round ratios)",
        figures,
        tuple(goals),
    )


async def _conversation(
    raw: RawPeer, ws_url: str, index: int, turns: int, max_tokens: int
) -> tuple[list[float], list[float]]:
    """One session of `turns` turns on the socket, the same conversation asked of raw
    llama-cpp-python turn by turn: the first-token times of each, by turn."""
    question = "Now tell me fact number {} about the history of painting."
    ours: list[float] = []
    theirs: list[float] = []
    history = [{"role": "system", "content": SYSTEM}]
    session_id: str | None = None
    async with connect(ws_url) as ws:
        for turn in range(1, turns + 1):
            # Turn 1 is a prompt no other benchmark or conversation left in the prompt cache.
            text = f"{index}. {OPENING}" if turn == 1 else question.format(turn)
            run = await ws_ask(ws, text, max_tokens, session_id)
            session_id = run["session_id"]
            ours.append(run["ttft"])
            history.append({"role": "user", "content": text})
            theirs.append(raw.ask(history, max_tokens)["ttft"])
            history.append({"role": "assistant", "content": run["text"]})
    return ours, theirs


def multiturn_ttft(profile: Profile) -> Outcome:
    need_model()
    turns, max_tokens = 20, profile.pick(8, 48)
    raw, tether_url = model_servers(profile)
    ws_url = tether_url.replace("http", "ws", 1) + "/ws/chat"
    runs = [
        asyncio.run(_conversation(raw, ws_url, i, turns, max_tokens))
        for i in range(profile.pick(1, 3))
    ]
    # By turn, the median over the conversations (one a quick run).
    ours = [median([run[0][t] for run in runs]) for t in range(turns)]
    theirs = [median([run[1][t] for run in runs]) for t in range(turns)]
    ratio, raw_ratio = ours[-1] / ours[0], theirs[-1] / theirs[0]
    return Outcome(
        ratio,
        f"first-token time, turn {turns} / turn 1 of one /ws/chat session",
        {"tether_turn1_ttft_ms": ms(ours[0]), f"tether_turn{turns}_ttft_ms": ms(ours[-1]),
         "raw_turn1_ttft_ms": ms(theirs[0]), f"raw_turn{turns}_ttft_ms": ms(theirs[-1]),
         "raw_ratio": round(raw_ratio, 3), "max_tokens": max_tokens,
         "conversations": len(runs)},
        (Goal(f"turn {turns} / turn 1", ratio, "<=", 1.3),),
    )  # fmt: skip
