"""`/ws/chat` on the echo engine against the bare `websockets` peer (`peer_ws.py`).

Both servers run as processes; the same client code drives them, rounds interleaved (peer,
tether, peer, tether, ...), medians reported. Tether runs at its defaults (`synchronous=FULL`:
an fsync per committed turn) with its message rate limit off.

- `stream_overhead`: one socket asks for a 5,000-word answer (the echo engine streams one word
  per delta): words/s from sending `chat` to `complete`, and frames/s (Tether joins the deltas
  that come while its journal commits, so it may send fewer, larger frames).
- `turn_overhead`: 8-word turns back to back on one socket, then on 50 sockets at once:
  turns/s, and the time from sending `chat` to the first chunk, p50/p99.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from harness import Goal, Outcome, Profile, Stopwatch, echo_servers, median, ms, pct
from websockets.asyncio.client import ClientConnection, connect

ANSWER_WORDS = 5000
TURN_WORDS = 8
CLIENTS = 50


def fresh(prefix: str) -> str:
    """A request_id no earlier round used: a repeated id would be answered from the journal (a
    replay), not as a turn."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def chat_frame(request_id: str, words: int) -> str:
    text = " ".join(f"w{j:04d}" for j in range(words))
    return json.dumps({"type": "chat", "request_id": request_id, "text": text})


async def turn(ws: ClientConnection, request_id: str, words: int) -> tuple[float, float, int]:
    """One chat turn: (seconds to the first chunk, seconds to `complete`, frames received)."""
    watch = Stopwatch()
    await ws.send(chat_frame(request_id, words))
    frames = 0
    while True:
        reply: dict[str, Any] = json.loads(await ws.recv())
        frames += 1
        status = reply["status"]
        if status == "chunk" and watch.first is None:
            watch.tick()
        elif status == "complete":
            return watch.to_first, time.perf_counter() - watch.start, frames
        elif status == "error":
            raise RuntimeError(f"error frame: {reply}")


# -- stream_overhead ------------------------------------------------------------------------------


async def _stream_round(url: str, answers: int) -> dict[str, float]:
    async with connect(url, max_size=None) as ws:
        await turn(ws, fresh("warm"), 100)
        seconds, frames = [], []
        for i in range(answers):
            _, done, count = await turn(ws, fresh(f"a{i}"), ANSWER_WORDS)
            seconds.append(done)
            frames.append(count / done)
    return {"words_per_s": ANSWER_WORDS / median(seconds), "frames_per_s": median(frames)}


def stream_overhead(profile: Profile) -> Outcome:
    rounds, answers = profile.pick(2, 5), profile.pick(1, 3)
    peer_runs: list[dict[str, float]] = []
    tether_runs: list[dict[str, float]] = []
    peer, ours = echo_servers(profile)
    for _ in range(rounds):
        peer_runs.append(asyncio.run(_stream_round(peer.peer_url, answers)))
        tether_runs.append(asyncio.run(_stream_round(ours.ws_url, answers)))
    figures = {
        f"{side}_{key}": round(median([r[key] for r in runs]), 1)
        for side, runs in (("peer", peer_runs), ("tether", tether_runs))
        for key in ("words_per_s", "frames_per_s")
    }
    ratio = figures["tether_words_per_s"] / figures["peer_words_per_s"]
    return Outcome(
        ratio,
        f"{ANSWER_WORDS:,}-word answer, words/s: tether / bare websockets",
        figures,
        (Goal("words/s ratio", ratio, ">=", 0.8),),
    )


# -- turn_overhead --------------------------------------------------------------------------------


async def _sequential(url: str, turns: int) -> dict[str, float]:
    async with connect(url, max_size=None) as ws:
        for i in range(20):
            await turn(ws, fresh(f"warm{i}"), TURN_WORDS)
        firsts = []
        started = time.perf_counter()
        for i in range(turns):
            first, _, _ = await turn(ws, fresh(f"t{i}"), TURN_WORDS)
            firsts.append(first)
        elapsed = time.perf_counter() - started
    return {"turns_per_s": turns / elapsed, "p50": pct(firsts, 0.5), "p99": pct(firsts, 0.99)}


async def _concurrent(url: str, seconds: float) -> dict[str, float]:
    sockets = [await connect(url, max_size=None) for _ in range(CLIENTS)]
    firsts: list[float] = []

    async def client(index: int, ws: ClientConnection, stop: float) -> None:
        n = 0
        while time.perf_counter() < stop:
            first, _, _ = await turn(ws, fresh(f"c{index}-{n}"), TURN_WORDS)
            firsts.append(first)
            n += 1

    try:
        started = time.perf_counter()
        stop = started + seconds
        await asyncio.gather(*(client(i, ws, stop) for i, ws in enumerate(sockets)))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    return {"turns_per_s": len(firsts) / elapsed, "p50": pct(firsts, 0.5), "p99": pct(firsts, 0.99)}


async def _turn_round(url: str, turns: int, seconds: float) -> dict[str, float]:
    one = await _sequential(url, turns)
    many = await _concurrent(url, seconds)
    return {**{f"1_{k}": v for k, v in one.items()}, **{f"50_{k}": v for k, v in many.items()}}


def turn_overhead(profile: Profile) -> Outcome:
    rounds, turns = profile.pick(2, 5), profile.pick(40, 500)
    seconds = profile.pick_s(1.0, 5.0)
    runs: dict[str, list[dict[str, float]]] = {"peer": [], "tether": []}
    peer, ours = echo_servers(profile)
    urls = {"peer": peer.peer_url, "tether": ours.ws_url}
    for _ in range(rounds):
        for side, url in urls.items():
            runs[side].append(asyncio.run(_turn_round(url, turns, seconds)))
    med = {side: {k: median([r[k] for r in rs]) for k in rs[0]} for side, rs in runs.items()}
    peer_med, ours_ = med["peer"], med["tether"]
    figures: dict[str, float] = {}
    for clients in ("1", "50"):
        figures[f"{clients}_client_peer_turns_per_s"] = round(peer_med[f"{clients}_turns_per_s"], 1)
        figures[f"{clients}_client_tether_turns_per_s"] = round(ours_[f"{clients}_turns_per_s"], 1)
        for q in ("p50", "p99"):
            figures[f"{clients}_client_peer_first_chunk_{q}_ms"] = ms(peer_med[f"{clients}_{q}"])
            figures[f"{clients}_client_tether_first_chunk_{q}_ms"] = ms(ours_[f"{clients}_{q}"])
            figures[f"{clients}_client_added_first_chunk_{q}_ms"] = ms(
                ours_[f"{clients}_{q}"] - peer_med[f"{clients}_{q}"]
            )
    one = ours_["1_turns_per_s"] / peer_med["1_turns_per_s"]
    many = ours_["50_turns_per_s"] / peer_med["50_turns_per_s"]
    figures["1_client_ratio"] = round(one, 3)
    figures["50_client_ratio"] = round(many, 3)
    return Outcome(
        min(one, many),
        f"{TURN_WORDS}-word turns/s: tether / bare websockets, the lower of 1 and {CLIENTS} "
        "clients",
        figures,
        (
            Goal("turns/s ratio, 1 client", one, ">=", 0.5),
            Goal(f"turns/s ratio, {CLIENTS} clients", many, ">=", 0.5),
            Goal(
                "added first-chunk p50 ms, 1 client",
                figures["1_client_added_first_chunk_p50_ms"],
                "<=",
                1.0,
            ),
        ),
    )
