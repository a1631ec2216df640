"""`bench_fairness` (issue 14): a short turn's latency beside answers that flood the server.

`tether serve --engine echo` runs in its own process. Each round first times short turns (30
words) on one socket with nothing else running (alone); then a second process of this script
opens ten sockets, each asking for a long answer (the echo engine streams every word back as fast
as it can), and while they stream the same short turns are timed again (beside). A short turn's
time is from sending `chat` to its `complete`. The ratio is the median beside / the median
alone, the median over the rounds; fair scheduling keeps it at a few (goal ≤ 15: issue 14 asks
for "a few times" its solo latency, measured 41 before the fix). The flood process checks that
every flood got every frame, seq contiguous.

    .venv/bin/python bench/fairness.py --run-floods URL COUNT WORDS TAG   # the floods' process
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from harness import PYTHON, Goal, Outcome, Profile, echo_servers, median, ms
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

FLOODS = 10
SHORT_WORDS = 30


def chat(request_id: str, words: int) -> str:
    return json.dumps({"type": "chat", "request_id": request_id, "text": "w " * words})


# -- the floods, in their own process -------------------------------------------------------------


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


async def short_turn(ws: ClientConnection, request_id: str) -> float:
    started = time.perf_counter()
    await ws.send(chat(request_id, SHORT_WORDS))
    while True:
        frame = json.loads(await ws.recv())
        if frame["status"] == "complete":
            return time.perf_counter() - started
        if frame["status"] == "error":
            raise RuntimeError(f"short turn failed: {frame}")


async def one_round(url: str, index: int, turns: int, words: int) -> tuple[float, float, float]:
    """(median alone, median beside the floods, the floods' seconds)."""
    async with connect(url, max_size=None) as ws:
        for i in range(5):  # warm up
            await short_turn(ws, f"r{index}-warm{i}")
        alone = [await short_turn(ws, f"r{index}-alone{i}") for i in range(turns)]
        command = [PYTHON, __file__, "--run-floods", url, str(FLOODS), str(words), f"r{index}"]
        process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
        assert process.stdout is not None
        if (await process.stdout.readline()).strip() != b"streaming":
            raise RuntimeError("the floods did not start")
        beside: list[float] = []
        waiting = asyncio.create_task(process.stdout.readline())
        while not waiting.done() and len(beside) < turns:
            beside.append(await short_turn(ws, f"r{index}-beside{len(beside)}"))
        summary: dict[str, Any] = json.loads(await waiting)
        if await process.wait() != 0:
            raise RuntimeError(f"floods incomplete: {summary['problems']}")
    return median(alone), median(beside), float(summary["seconds"])


def bench_fairness(profile: Profile) -> Outcome:
    rounds, turns = profile.pick(1, 3), profile.pick(10, 20)
    words = profile.pick(10_000, 49_000)
    _, server = echo_servers(profile)
    results = [asyncio.run(one_round(server.ws_url, i, turns, words)) for i in range(rounds)]
    ratio = median([beside / alone for alone, beside, _ in results])
    return Outcome(
        ratio,
        f"a {SHORT_WORDS}-word turn beside {FLOODS} answers of {words:,} words / alone",
        {
            "alone_ms": ms(median([r[0] for r in results])),
            "beside_ms": ms(median([r[1] for r in results])),
            "floods_s": round(median([r[2] for r in results]), 2),
            "flood_words": words,
        },
        (Goal("beside / alone", ratio, "<=", 15.0),),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--run-floods", nargs=4, required=True, metavar=("URL", "N", "WORDS", "TAG")
    )
    args = parser.parse_args()
    url, count, words, tag = args.run_floods
    return asyncio.run(floods(url, int(count), int(words), tag))


if __name__ == "__main__":
    sys.exit(main())
