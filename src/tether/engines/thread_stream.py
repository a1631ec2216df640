"""Run blocking, item-producing work on a worker thread and consume the items from asyncio.

The worker gets an `emit` callback and a `threading.Event`; every `emit` hops onto the event loop
with `call_soon_threadsafe`, so the loop never blocks on the worker and other sockets keep being
served. Leaving the consumer early (task cancelled, `aclose()`, `break`) sets the event; the worker
checks it between items, so it stops within one item. `done` resolves when the work has really
finished, which is when a shared resource it used (a llama.cpp context) is free again.

What the worker emits after a cancel (at most an item, plus whatever it emits on its way out,
such as a summary) is still queued: the owner can `drain` it once the consumer has left.

The thread comes from the caller's executor: llama.cpp's OpenMP build keeps a team of compute
threads per calling thread, and once a process has more of those than cores they stop spinning
and decoding runs at half speed, so each model is driven from one long-lived thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor
from functools import partial
from typing import Generic, TypeVar

T = TypeVar("T")

Work = Callable[[Callable[[T], None], threading.Event], None]


class _End:
    """Sentinel: the worker returned."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ThreadStream(Generic[T]):
    """One run of `work` on `executor`, iterated once with `async for`."""

    def __init__(
        self,
        work: Work[T],
        executor: Executor,
        *,
        on_cancel: Callable[[], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """`on_cancel` runs when the consumer leaves early; `on_done` (on the loop) when the work
        has finished, before the consumer can see the end of the stream."""
        self._work = work
        self._executor = executor
        self._on_cancel = on_cancel
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        # What the worker emitted and the consumer has not taken yet; `_waiter` is the
        # consumer's wake-up while it waits for more (a deque and one future: cheaper per item
        # than an asyncio.Queue, whose getter machinery a single consumer does not need).
        self._items: deque[T | _End | _Failed] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False  # the end (or the failure) has been taken from the queue
        self.cancelled = threading.Event()
        self.done: asyncio.Future[None] = self._loop.create_future()

    def start(self) -> None:
        self._executor.submit(self._run)

    def cancel(self) -> None:
        """Ask the worker to stop; it sees this before producing its next item."""
        if not self.cancelled.is_set():
            if self._on_cancel is not None:
                self._on_cancel()  # before the worker can see the flag
            self.cancelled.set()

    async def __aiter__(self) -> AsyncGenerator[T, None]:
        try:
            while True:
                item = await self._next()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            self.cancel()

    async def drain(self, until: Callable[[T], bool] | None = None) -> list[T]:
        """Once the consumer has left: cancel, then the items the worker emits until it returns,
        or up to the first item `until` accepts (what comes after that is not waited for).

        Waits as long as the worker takes to see the cancel (one item). A failure of the worker
        ends the list: the consumer it was meant for is gone. Not for use while iterating.
        """
        self.cancel()
        items: list[T] = []
        while not self._ended:
            item = await self._next()
            if not isinstance(item, _End | _Failed):
                items.append(item)
                if until is not None and until(item):
                    break
        return items

    async def _next(self) -> T | _End | _Failed:
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if isinstance(item, _End | _Failed):
            self._ended = True
        return item

    def _put(self, item: T | _End | _Failed) -> None:
        """On the loop: queue `item` and wake the consumer if it waits."""
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- worker thread side --------------------------------------------------------------------

    def _post(self, callback: Callable[[], None]) -> None:
        # RuntimeError: the loop is closed (process shutdown), nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback)

    def _emit(self, item: T) -> None:
        self._post(partial(self._put, item))

    def _run(self) -> None:
        outcome: _End | _Failed = _End()
        try:
            self._work(self._emit, self.cancelled)
        except BaseException as error:  # handed to the consumer, which re-raises it
            outcome = _Failed(error)
        finally:
            self._post(lambda: self._finish(outcome))

    def _finish(self, outcome: _End | _Failed) -> None:
        try:
            if self._on_done is not None:
                self._on_done()  # directly: a consumer that saw the end finds resources freed
        finally:
            self.done.set_result(None)
            self._put(outcome)
