"""Benchmark `/ws/chat` (echo engine) against a raw `websockets` server speaking the same frames.

The peer, started by this script in its own process like `tether serve`, is the least any server
of protocol v1 must do: parse each JSON frame and answer `ping` with `pong` and `chat` with
`processing`, one `chunk` per word and `complete`, rendered the same way (compact JSON, same
fields and sizes). Tether does that plus what it is for: validation, limits, the run registry,
and committing each turn to SQLite before it says so. Both are driven by the same client code,
the same messages, permessage-deflate negotiated by both, runs interleaved (peer, tether, peer,
tether, ...) so that machine noise hits both alike; the median of the rounds is reported.

1. ping: one socket, `ping` -> `pong` back to back: messages/s, round trip p50/p99.
2. turn: one socket, a chat of `--words` words -> processing, chunks, complete, back to back:
   turns/s, frames/s, time to the first frame and to `complete`, p50/p99.
3. concurrent: `--sockets` sockets doing turns at once for `--seconds`: turns/s, frames/s.

Each figure is printed with the ratio tether / peer. Tether runs with its rate limit off (a bench
socket sends faster than a person) and `--synchronous` (default FULL, tether's default: an fsync
per commit, which is most of a turn's cost on a slow disk; NORMAL shows the rest).

    .venv/bin/python bench/bench_ws.py [--rounds 3] [--words 8] [--sockets 50] [--synchronous FULL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

_WORD = re.compile(r"\s*\S+\s*|\s+")  # the echo engine's split: words keep their whitespace


# -- the peer: a raw websockets server speaking protocol v1's frames -----------------------------


def _render(request_id: str, seq: int, body: dict[str, Any]) -> str:
    frame = {"request_id": request_id, "seq": seq, **body}
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


async def _peer_handler(ws: ServerConnection) -> None:
    async for raw in ws:
        frame = json.loads(raw)
        request_id = frame.get("request_id", "")
        if frame.get("type") == "ping":
            await ws.send(_render(request_id, 0, {"status": "pong"}))
            continue
        started = time.perf_counter()
        words = _WORD.findall(frame["text"])
        meta = {"session_id": "s", "user_message_id": "u", "model": "echo", "queue_position": 0}
        await ws.send(
            _render(
                request_id,
                0,
                {"status": "processing", "chunk": {"metadata": {**meta, "created_session": True}}},
            )
        )
        for seq, word in enumerate(words, 1):
            await ws.send(
                _render(
                    request_id, seq, {"status": "chunk", "chunk": {"type": "text", "data": word}}
                )
            )
        total_ms = round((time.perf_counter() - started) * 1000, 3)
        done = {
            "message_id": "0123456789abcdef0123456789abcdef",
            "finish_reason": "stop",
            "usage": {"prompt_tokens": len(words), "completion_tokens": len(words)},
            "timings": {"ttft_ms": total_ms, "tokens_per_s": 1000.0, "total_ms": total_ms},
        }
        await ws.send(
            _render(request_id, len(words) + 1, {"status": "complete", "chunk": {"metadata": done}})
        )


async def _serve_peer(port: int) -> None:
    async with serve(_peer_handler, "127.0.0.1", port, max_size=None):
        await asyncio.Future()  # until terminated


# -- servers as processes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if path:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
                    return
            else:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("a bench server did not start") from None
            time.sleep(0.05)


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], port: int, path: str) -> Iterator[None]:
    process = subprocess.Popen(command, env=env)
    try:
        _wait_listening(port, process, path)
        yield
    finally:
        process.terminate()
        process.wait(30)


@contextlib.contextmanager
def servers(synchronous: str) -> Iterator[dict[str, str]]:
    """The peer and `tether serve --engine echo`, each in its own process: name -> socket URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "MLC_"))}
    peer_port, tether_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        tether_env = {
            **env,
            "TETHER_LOG_LEVEL": "warning",
            "TETHER_LIMITS__MESSAGES_PER_SEC": "0",
            "TETHER_STORAGE__SYNCHRONOUS": synchronous,
        }
        tether = [sys.executable, "-m", "tether", "serve", "--engine", "echo"]
        tether += ["--port", str(tether_port), "--db", str(Path(tmp) / "bench.db")]
        peer = [sys.executable, __file__, "--serve-peer", str(peer_port)]
        with (
            running(peer, env, peer_port, ""),
            running(tether, tether_env, tether_port, "/health"),
        ):
            yield {
                "peer": f"ws://127.0.0.1:{peer_port}/",
                "tether": f"ws://127.0.0.1:{tether_port}/ws/chat",
            }


# -- the client, the same for both -------------------------------------------------------------


@dataclass
class Result:
    rate: float  # messages (ping) or turns per second
    frames_per_s: float
    first_p50: float  # seconds to the first reply frame
    first_p99: float
    done_p50: float  # seconds to the last reply frame of the exchange
    done_p99: float


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def exchange(
    ws: ClientConnection, frame: dict[str, Any], last: str
) -> tuple[float, float, int]:
    """Send `frame`; read until a frame with status `last`: (to first, to last, frames)."""
    started = time.perf_counter()
    await ws.send(json.dumps(frame))
    first = 0.0
    count = 0
    while True:
        reply = json.loads(await ws.recv())
        count += 1
        if count == 1:
            first = time.perf_counter() - started
        if reply["status"] == last:
            return first, time.perf_counter() - started, count
        if reply["status"] == "error":
            raise RuntimeError(f"error frame: {reply}")


def chat_frame(request_id: str, words: int) -> dict[str, Any]:
    text = " ".join(f"word{j:03d}" for j in range(words))
    return {"type": "chat", "request_id": request_id, "text": text}


async def sequential(
    url: str, count: int, make: Callable[[int], dict[str, Any]], last: str
) -> Result:
    async with connect(url, max_size=None) as ws:
        for i in range(min(50, count)):  # warm up
            await exchange(ws, make(-i - 1), last)
        firsts, dones, frames = [], [], 0
        started = time.perf_counter()
        for i in range(count):
            first, done, n = await exchange(ws, make(i), last)
            firsts.append(first)
            dones.append(done)
            frames += n
        elapsed = time.perf_counter() - started
    return Result(
        count / elapsed,
        frames / elapsed,
        pct(firsts, 0.5),
        pct(firsts, 0.99),
        pct(dones, 0.5),
        pct(dones, 0.99),
    )


async def concurrent(url: str, sockets: int, seconds: float, words: int) -> Result:
    connections = [await connect(url, max_size=None) for _ in range(sockets)]
    firsts: list[float] = []
    dones: list[float] = []
    frames = 0

    async def worker(index: int, ws: ClientConnection, stop: float) -> None:
        nonlocal frames
        turn = 0
        while time.perf_counter() < stop:
            first, done, n = await exchange(ws, chat_frame(f"c{index}-{turn}", words), "complete")
            firsts.append(first)
            dones.append(done)
            frames += n
            turn += 1

    try:
        started = time.perf_counter()
        stop = started + seconds
        await asyncio.gather(*(worker(i, ws, stop) for i, ws in enumerate(connections)))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(ws.close() for ws in connections))
    return Result(
        len(dones) / elapsed,
        frames / elapsed,
        pct(firsts, 0.5),
        pct(firsts, 0.99),
        pct(dones, 0.5),
        pct(dones, 0.99),
    )


async def workloads(url: str, args: argparse.Namespace) -> dict[str, Result]:
    return {
        "ping": await sequential(
            url, args.pings, lambda i: {"type": "ping", "request_id": f"p{i}"}, "pong"
        ),
        "turn": await sequential(
            url, args.turns, lambda i: chat_frame(f"t{i}", args.words), "complete"
        ),
        "concurrent": await concurrent(url, args.sockets, args.seconds, args.words),
    }


def median_result(results: list[Result]) -> Result:
    fields = Result.__dataclass_fields__
    return Result(**{name: statistics.median(getattr(r, name) for r in results) for name in fields})


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report(peer: dict[str, Result], tether: dict[str, Result], args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, str, str]] = []
    for name, unit in (("ping", "msgs/s"), ("turn", "turns/s"), ("concurrent", "turns/s")):
        p, t = peer[name], tether[name]
        rows.append(
            (f"{name}: {unit}", f"{p.rate:,.0f}", f"{t.rate:,.0f}", f"{t.rate / p.rate:.2f}")
        )
        if name != "ping":
            rows.append(
                (
                    f"{name}: frames/s",
                    f"{p.frames_per_s:,.0f}",
                    f"{t.frames_per_s:,.0f}",
                    f"{t.frames_per_s / p.frames_per_s:.2f}",
                )
            )
        rows.append(
            (
                f"{name}: first frame p50",
                ms(p.first_p50),
                ms(t.first_p50),
                f"{t.first_p50 / p.first_p50:.2f}",
            )
        )
        rows.append(
            (
                f"{name}: first frame p99",
                ms(p.first_p99),
                ms(t.first_p99),
                f"{t.first_p99 / p.first_p99:.2f}",
            )
        )
        if name != "ping":
            rows.append(
                (
                    f"{name}: complete p50",
                    ms(p.done_p50),
                    ms(t.done_p50),
                    f"{t.done_p50 / p.done_p50:.2f}",
                )
            )
            rows.append(
                (
                    f"{name}: complete p99",
                    ms(p.done_p99),
                    ms(t.done_p99),
                    f"{t.done_p99 / p.done_p99:.2f}",
                )
            )
    print(
        f"\n/ws/chat (echo, storage.synchronous={args.synchronous}) against a raw websockets peer; "
        f"{args.words}-word turns ({args.words + 2} frames), {args.sockets} sockets for the "
        f"concurrent run, median of {args.rounds} rounds; ratio = tether / peer "
        "(rates: < 1 is slower; latencies: > 1 is slower)\n"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'peer':>12}  {'tether':>12}  {'ratio':>6}")
    for label, p_value, t_value, ratio in rows:
        print(f"{label:{width}}  {p_value:>12}  {t_value:>12}  {ratio:>6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-peer", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pings", type=int, default=3000)
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--words", type=int, default=8)
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    args = parser.parse_args()
    if args.serve_peer:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_peer(args.serve_peer))
        return 0
    peer: list[dict[str, Result]] = []
    tether: list[dict[str, Result]] = []
    with servers(args.synchronous) as urls:
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds} ...", file=sys.stderr)
            peer.append(asyncio.run(workloads(urls["peer"], args)))
            tether.append(asyncio.run(workloads(urls["tether"], args)))
    names = ("ping", "turn", "concurrent")
    report(
        {n: median_result([r[n] for r in peer]) for n in names},
        {n: median_result([r[n] for r in tether]) for n in names},
        args,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
