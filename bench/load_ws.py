"""Hold many `/ws/chat` sockets open, keep some streaming, and measure.

Opens `--connections` sockets; `--streaming` of them send chat turns back to back (the echo
engine's words, `--words` a turn, `--token-delay-ms` apart, `--turns-per-session` turns in a
session) for `--duration` seconds while the others send a `ping` every `--ping-every` seconds.
Each answer is checked (its text, a contiguous seq, processing ... complete). Prints the sockets
held at the end, turns/s, and p50/p95/p99 of the time from sending a turn to its `complete`.

Without `--url` it starts `tether serve --engine echo` on a free loopback port with a throwaway
database (and the message rate limit off, since a bench socket sends faster than any person),
as `bench/run.py`'s benchmarks do (`harness.py`). Not one of them: a load run, not a ratio.

    .venv/bin/python bench/load_ws.py --connections 1000 --streaming 100 --duration 30
    .venv/bin/python bench/load_ws.py --url ws://127.0.0.1:8000/ws/chat --connections 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from harness import pct, raise_fd_limit, tether
from websockets.asyncio.client import ClientConnection, connect


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    pings: int = 0
    lost: int = 0


def percentile(values: list[float], q: float) -> float:
    return pct(values, q) if values else float("nan")


@contextlib.contextmanager
def local_server(connections: int, synchronous: str) -> Iterator[str]:
    """`tether serve --engine echo` on a free loopback port; its socket URL."""
    settings = {
        "STORAGE__SYNCHRONOUS": synchronous,
        "SECURITY__MAX_CONNECTIONS": str(connections + 100),
        "SECURITY__MAX_CONNECTIONS_PER_CLIENT": str(connections + 100),
    }
    with tether(settings=settings) as server:
        yield server.ws_url


async def streamer(
    ws: ClientConnection, index: int, args: argparse.Namespace, stop: float, tally: Tally
) -> None:
    session_id: str | None = None
    turn = 0
    while time.monotonic() < stop:
        request_id = f"s{index}-{turn}"
        text = " ".join(f"w{index}.{turn}.{j}" for j in range(args.words))
        frame: dict[str, Any] = {
            "type": "chat",
            "request_id": request_id,
            "text": text,
            "options": {"token_delay_ms": args.token_delay_ms},
        }
        if session_id and turn % args.turns_per_session:
            frame["session_id"] = session_id
        started = time.perf_counter()
        await ws.send(json.dumps(frame))
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["status"] not in ("complete", "error"):
            reply = json.loads(await ws.recv())
            if reply["request_id"] == request_id:
                frames.append(reply)
        elapsed = time.perf_counter() - started
        got = "".join(f["chunk"]["data"] for f in frames if f["status"] == "chunk")
        seqs = [f["seq"] for f in frames]
        if frames[-1]["status"] != "complete" or got != text or seqs != list(range(len(seqs))):
            tally.bad.append(f"{request_id}: {frames[-1]}")
        else:
            tally.latencies.append(elapsed)
        session_id = frames[0].get("chunk", {}).get("metadata", {}).get("session_id")
        turn += 1


async def pinger(ws: ClientConnection, index: int, every: float, stop: float, tally: Tally) -> None:
    await asyncio.sleep(every * (index % 100) / 100)  # spread the pings over the period
    n = 0
    while time.monotonic() < stop:
        await ws.send(json.dumps({"type": "ping", "request_id": f"p{index}-{n}"}))
        if json.loads(await ws.recv()).get("status") == "pong":
            tally.pings += 1
        n += 1
        # The client's own pace, not a wait for the server.
        await asyncio.sleep(max(0.0, min(every, stop - time.monotonic())))


async def run(url: str, args: argparse.Namespace) -> int:
    gate = asyncio.Semaphore(100)

    async def open_one() -> ClientConnection | None:
        async with gate:
            try:
                return await connect(url, open_timeout=60, max_size=None)
            except (OSError, TimeoutError) as exc:
                print(f"connect failed: {exc}", file=sys.stderr)
                return None

    started = time.monotonic()
    opened = await asyncio.gather(*(open_one() for _ in range(args.connections)))
    sockets = [ws for ws in opened if ws is not None]
    print(f"opened {len(sockets)}/{args.connections} sockets in {time.monotonic() - started:.2f} s")
    tally = Tally()
    stop = time.monotonic() + args.duration
    began = time.monotonic()
    streaming, quiet = sockets[: args.streaming], sockets[args.streaming :]
    results = await asyncio.gather(
        *(streamer(ws, i, args, stop, tally) for i, ws in enumerate(streaming)),
        *(pinger(ws, i, args.ping_every, stop, tally) for i, ws in enumerate(quiet)),
        return_exceptions=True,
    )
    ran = time.monotonic() - began
    failures = [r for r in results if isinstance(r, BaseException)]
    held = sum(1 for ws in sockets if ws.close_code is None)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    lat = tally.latencies
    print(f"connections held:  {held}/{args.connections}")
    print(f"turns completed:   {len(lat)} in {ran:.1f} s = {len(lat) / ran:.1f} turns/s")
    print(f"pings answered:    {tally.pings}")
    print(
        "turn latency:      "
        f"p50 {percentile(lat, 0.5) * 1000:.1f} ms, p95 {percentile(lat, 0.95) * 1000:.1f} ms, "
        f"p99 {percentile(lat, 0.99) * 1000:.1f} ms"
        + (f", mean {statistics.fmean(lat) * 1000:.1f} ms" if lat else "")
    )
    print(f"bad answers:       {len(tally.bad)}; socket errors: {len(failures)}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"client CPU:        {usage.ru_utime + usage.ru_stime:.1f} s (this process)")
    for problem in [*tally.bad[:5], *map(repr, failures[:5])]:
        print(f"  {problem}")
    ok = held == args.connections and not tally.bad and not failures
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's socket (default: start one)")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--streaming", type=int, default=100)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--words", type=int, default=20, help="words per turn")
    parser.add_argument("--token-delay-ms", type=int, default=5)
    parser.add_argument(
        "--turns-per-session",
        type=int,
        default=10,
        help="turns before a socket starts a new session (history grows each turn)",
    )
    parser.add_argument("--ping-every", type=float, default=5.0, help="quiet sockets' ping period")
    parser.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="storage.synchronous of the server started here (default FULL, as tether's)",
    )
    args = parser.parse_args()
    args.streaming = min(args.streaming, args.connections)
    raise_fd_limit(args.connections + 200)
    if args.url:
        return asyncio.run(run(args.url, args))
    with local_server(args.connections, args.synchronous) as url:
        status = asyncio.run(run(url, args))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"server CPU:        {usage.ru_utime + usage.ru_stime:.1f} s (tether serve)")
    return status


if __name__ == "__main__":
    sys.exit(main())
