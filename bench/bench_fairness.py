"""Fairness: a short turn's latency beside answers that flood the server, as a ratio to solo.

`tether serve --engine echo` runs in its own process. Each round first times `--turns` short
turns (`--short-words` words) on one socket with nothing else running (solo); then a second
process of this script opens `--floods` sockets, each asking for an answer of `--words` words
(the echo engine streams every word back as fast as it can: one frame per word), and while they
stream the same short turns are timed again on the first socket (beside). A short turn's time is
from sending `chat` to its `complete`. The figure is the median beside / the median solo, and
the median of that ratio over `--rounds` rounds; fair scheduling keeps it at a few. The flood
process checks that every flood got every frame, seq contiguous, and reports how long they took.

    .venv/bin/python bench/bench_fairness.py [--rounds 3] [--floods 10] [--words 49000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def tether_server(synchronous: str, send_buffer_frames: int) -> Iterator[str]:
    """`tether serve --engine echo` in its own process; yields its socket URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "MLC_"))}
    env.update(
        TETHER_LOG_LEVEL="warning",
        TETHER_LIMITS__MESSAGES_PER_SEC="0",
        TETHER_STORAGE__SYNCHRONOUS=synchronous,
        TETHER_LIMITS__SEND_BUFFER_FRAMES=str(send_buffer_frames),
    )
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "tether", "serve", "--engine", "echo"]
        command += ["--port", str(port), "--db", str(Path(tmp) / "bench.db")]
        process = subprocess.Popen(command, env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("tether serve did not start") from None
                    time.sleep(0.05)
            yield f"ws://127.0.0.1:{port}/ws/chat"
        finally:
            process.terminate()
            process.wait(30)


def chat(request_id: str, words: int) -> str:
    return json.dumps({"type": "chat", "request_id": request_id, "text": "w " * words})


# -- the floods, in their own process -----------------------------------------------------------


class Flood:
    """One flooding answer: ask for `words` words, read every frame, check them."""

    def __init__(self, ws: ClientConnection, request_id: str, words: int) -> None:
        self.ws, self.request_id, self.words = ws, request_id, words
        self.frames = 0
        self.streaming = asyncio.Event()  # its first chunk came (or it failed)

    async def run(self) -> str:
        """A problem found, or ""."""
        try:
            return await self._read()
        except ConnectionClosed as exc:
            return f"{self.request_id}: closed after {self.frames} frames ({exc})"
        finally:
            self.streaming.set()

    async def _read(self) -> str:
        await self.ws.send(chat(self.request_id, self.words))
        text = 0
        while True:
            frame = json.loads(await self.ws.recv())
            if frame["seq"] != self.frames:
                return f"{self.request_id}: seq {frame['seq']} where {self.frames} was due"
            self.frames += 1
            if frame["status"] == "chunk":
                self.streaming.set()
                text += len(frame["chunk"]["data"])
            elif frame["status"] == "error":
                return f"{self.request_id}: error {frame['error']}"
            elif frame["status"] == "complete":
                if text != 2 * self.words:
                    return f"{self.request_id}: {text} characters where {2 * self.words} were due"
                return ""


async def floods(url: str, count: int, words: int, tag: str) -> int:
    """Run `count` floods; print "streaming" once each sends chunks, then a JSON summary."""
    sockets = [await connect(url, max_size=None) for _ in range(count)]
    runs = [Flood(ws, f"{tag}-flood{i}", words) for i, ws in enumerate(sockets)]
    started = time.perf_counter()
    tasks = [asyncio.create_task(run.run()) for run in runs]
    await asyncio.gather(*(run.streaming.wait() for run in runs))
    print("streaming", flush=True)
    problems = [problem for problem in await asyncio.gather(*tasks) if problem]
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(ws.close() for ws in sockets))
    frames = sum(run.frames for run in runs)
    print(json.dumps({"seconds": elapsed, "frames": frames, "problems": problems}), flush=True)
    return 1 if problems else 0


# -- the short turns ------------------------------------------------------------------------------


async def short_turn(ws: ClientConnection, request_id: str, words: int) -> float:
    started = time.perf_counter()
    await ws.send(chat(request_id, words))
    while True:
        frame = json.loads(await ws.recv())
        if frame["status"] == "complete":
            return time.perf_counter() - started
        if frame["status"] == "error":
            raise RuntimeError(f"short turn failed: {frame}")


async def round_(url: str, args: argparse.Namespace, index: int) -> tuple[float, float, float]:
    """One round: (median solo, median beside the floods, the floods' seconds)."""
    async with connect(url, max_size=None) as ws:
        for i in range(5):  # warm up
            await short_turn(ws, f"r{index}-warm{i}", args.short_words)
        solo = [
            await short_turn(ws, f"r{index}-solo{i}", args.short_words) for i in range(args.turns)
        ]
        command = [sys.executable, __file__, "--run-floods", url]
        command += [str(args.floods), str(args.words), f"r{index}"]
        process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
        assert process.stdout is not None
        if (await process.stdout.readline()).strip() != b"streaming":
            raise RuntimeError("the floods did not start")
        beside: list[float] = []
        waiting = asyncio.create_task(process.stdout.readline())
        while not waiting.done() and len(beside) < args.turns:
            beside.append(await short_turn(ws, f"r{index}-beside{len(beside)}", args.short_words))
        summary: dict[str, Any] = json.loads(await waiting)
        if await process.wait() != 0:
            raise RuntimeError(f"floods incomplete: {summary['problems']}")
    s, b = statistics.median(solo), statistics.median(beside)
    print(
        f"round {index + 1}: solo {s * 1000:.1f} ms, beside {b * 1000:.1f} ms "
        f"(max {max(beside) * 1000:.0f} ms, {len(beside)} turns), ratio {b / s:.1f}; "
        f"floods took {summary['seconds']:.1f} s, {summary['frames']:,} frames",
        file=sys.stderr,
    )
    return s, b, float(summary["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-floods", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floods", type=int, default=10)
    parser.add_argument("--words", type=int, default=49_000)
    parser.add_argument("--short-words", type=int, default=30)
    parser.add_argument("--turns", type=int, default=20, help="short turns timed per phase")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--send-buffer-frames", type=int, default=10_000)
    args = parser.parse_args()
    if args.run_floods:
        url, count, words, tag = args.run_floods
        return asyncio.run(floods(url, int(count), int(words), tag))
    with tether_server(args.synchronous, args.send_buffer_frames) as url:
        results = [asyncio.run(round_(url, args, i)) for i in range(args.rounds)]
    ratios = [beside / solo for solo, beside, _ in results]
    print(
        f"/ws/chat (echo, storage.synchronous={args.synchronous}): a {args.short_words}-word "
        f"turn beside {args.floods} answers of {args.words:,} words, median of {args.rounds} "
        f"rounds: solo {statistics.median(r[0] for r in results) * 1000:.1f} ms, beside "
        f"{statistics.median(r[1] for r in results) * 1000:.1f} ms, ratio "
        f"{statistics.median(ratios):.1f} (floods took "
        f"{statistics.median(r[2] for r in results):.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
