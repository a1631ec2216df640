"""One huge answer must not starve the others (issue 14, item 8).

Floods of long answers stream at full speed from a real `tether serve` while a short turn is
timed on its own socket; its latency beside the floods is compared with its latency alone,
measured in the same test against the same server (a ratio, never an absolute time). Before
text deltas were merged while the journal commits and runs kept pace with their journal, the
audit measured a 30-word turn beside ten 49,000-word answers at 6-10 s
(`bench/run.py --only bench_fairness`: ratio ~41; now ~11 at that size).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.support.servers import tether_serve
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, text_of

pytestmark = pytest.mark.e2e

FLOODS = 4
FLOOD_WORDS = 100_000  # twice the audit's 49,000 (a text limit raised to send it)
SHORT = " ".join(f"s{i}" for i in range(30))
# Generous: a short turn beside the floods may take this many times its solo latency (it
# measured ~3-12x here; one frame per word took it past 40x).
MAX_RATIO = 30.0


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


async def short_turn_ms(client: ProtocolClient, request_id: str) -> float:
    started = time.perf_counter()
    frames = await client.chat(request_id, SHORT)
    elapsed = (time.perf_counter() - started) * 1000
    assert text_of(frames) == SHORT
    return elapsed


async def flood(url: str, request_id: str, started: asyncio.Event) -> list[dict[str, Any]]:
    """One long answer read at full speed; its frames."""
    async with connect(url, max_size=None) as ws:
        await ws.send(
            json.dumps({"type": "chat", "request_id": request_id, "text": words(FLOOD_WORDS)})
        )
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(scaled(120)):
            while not frames or frames[-1]["status"] not in ("complete", "error"):
                frames.append(json.loads(await ws.recv()))
                if frames[-1]["status"] == "chunk":
                    started.set()
        return frames


async def test_a_short_turn_is_not_starved_by_floods(tmp_path: Path) -> None:
    limit = {"TETHER_LIMITS__MAX_TEXT_CHARS": "1000000"}
    db = str(tmp_path / "fair.db")
    with tether_serve(tmp_path, "--engine", "echo", "--db", db, env=limit) as server:
        async with connect(server.ws_url) as ws:
            client = ProtocolClient(ws)
            await short_turn_ms(client, "warm-up")
            solo = statistics.median([await short_turn_ms(client, f"solo{i}") for i in range(5)])
            flowing = [asyncio.Event() for _ in range(FLOODS)]
            floods = [
                asyncio.create_task(flood(server.ws_url, f"flood{i}", flowing[i]))
                for i in range(FLOODS)
            ]
            async with asyncio.timeout(scaled(60)):
                await asyncio.gather(*(event.wait() for event in flowing))
            beside: list[float] = []
            # Short turns one after another for as long as every flood streams.
            while all(not task.done() for task in floods) and len(beside) < 20:
                beside.append(await short_turn_ms(client, f"beside{len(beside)}"))
            results = await asyncio.gather(*floods)
    ends = [frames[-1] for frames in results]
    assert len(beside) >= 3, f"the floods ended before three short turns ({beside} ms): {ends}"
    ratio = statistics.median(beside) / solo
    assert ratio < MAX_RATIO, f"solo {solo:.1f} ms, beside floods {beside} ms: {ratio:.1f}x"
    for frames in results:  # the floods lost nothing to the short turns
        assert frames[-1]["status"] == "complete"
        assert [f["seq"] for f in frames] == list(range(len(frames)))
        assert text_of(frames) == words(FLOOD_WORDS)
