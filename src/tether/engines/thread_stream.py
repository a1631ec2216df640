"""Items made on a worker thread, consumed from asyncio: one `ThreadStream` per generation.

The thread side calls `emit(item)` for each item and `end()` (or `end(error)`) once; each hops
onto the event loop with `call_soon_threadsafe`, so the loop never blocks on the worker and other
sockets keep being served. Leaving the consumer early (task cancelled, `aclose()`, `break`) sets
`cancelled`; the worker checks it between items, so it stops within one item. `done` resolves
when the worker has ended the stream, which is when what it used for it (a llama.cpp sequence)
is free again.

What the worker emits after a cancel (at most an item, plus whatever it emits on its way out,
such as a summary) is still queued: the owner can `drain` it once the consumer has left.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from functools import partial
from typing import Generic, TypeVar

T = TypeVar("T")


class _End:
    """Sentinel: the worker ended the stream."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ThreadStream(Generic[T]):
    """Fed from one worker thread, iterated once with `async for` on the loop that made it."""

    def __init__(
        self,
        *,
        on_cancel: Callable[[], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """`on_cancel` runs when the consumer leaves early; `on_done` (on the loop) when the
        worker has ended the stream, before the consumer can see that end."""
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
        """Once the consumer has left: cancel, then the items the worker emits until it ends
        the stream, or up to the first item `until` accepts (what comes after is not waited for).

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

    def emit(self, item: T) -> None:
        self._post(partial(self._put, item))

    def end(self, error: BaseException | None = None) -> None:
        """The last call of the worker: the stream is over (failed with `error` if given)."""
        outcome: _End | _Failed = _End() if error is None else _Failed(error)
        self._post(lambda: self._finish(outcome))

    def _finish(self, outcome: _End | _Failed) -> None:
        if self.done.done():
            return  # ended twice: the first end counts
        try:
            if self._on_done is not None:
                self._on_done()  # directly: a consumer that saw the end finds resources freed
        finally:
            self.done.set_result(None)
            self._put(outcome)
