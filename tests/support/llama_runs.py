"""What the llamacpp engine's `on_run` hook hears, for tests to wait on."""

from __future__ import annotations

import asyncio
import queue

from tests.support.timeouts import scaled
from tether.engines.llama_model import RunStats


class Runs:
    """Collects the engine's per-generation stats, which arrive from its decode threads."""

    def __init__(self) -> None:
        self._queue: queue.Queue[RunStats] = queue.Queue()

    def __call__(self, stats: RunStats) -> None:
        self._queue.put(stats)

    async def next(self) -> RunStats:
        return await asyncio.to_thread(self._queue.get, timeout=scaled(30))
