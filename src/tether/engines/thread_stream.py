"""Run blocking, item-producing work in its own thread and consume the items from asyncio.

The worker gets an `emit` callback and a `threading.Event`; every `emit` hops onto the event loop
with `call_soon_threadsafe`, so the loop never blocks on the worker and other sockets keep being
served. Leaving the consumer early (task cancelled, `aclose()`, `break`) sets the event; the worker
checks it between items, so it stops within one item. `done` resolves when the worker thread has
really finished, which is when a shared resource it used (a llama.cpp context) is free again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

Work = Callable[[Callable[[T], None], threading.Event], None]


class _End:
    """Sentinel: the worker returned."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ThreadStream(Generic[T]):
    """One run of `work` in a dedicated daemon thread, iterated once with `async for`."""

    def __init__(
        self,
        work: Work[T],
        *,
        name: str = "tether-worker",
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        self._work = work
        self._name = name
        self._on_cancel = on_cancel
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[T | _End | _Failed] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Ask the worker to stop; it sees this before producing its next item."""
        if not self.cancelled.is_set():
            if self._on_cancel is not None:
                self._on_cancel()  # before the worker can see the flag
            self.cancelled.set()

    def join(self, timeout: float | None = None) -> bool:
        """Block until the thread ended (for shutdown paths without a loop); True if it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    async def __aiter__(self) -> AsyncGenerator[T, None]:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            self.cancel()

    # -- worker thread side --------------------------------------------------------------------

    def _post(self, callback: Callable[[], None]) -> None:
        # RuntimeError: the loop is closed (process shutdown), nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback)

    def _emit(self, item: T) -> None:
        if not self.cancelled.is_set():
            self._post(lambda: self._queue.put_nowait(item))

    def _run(self) -> None:
        outcome: _End | _Failed = _End()
        try:
            self._work(self._emit, self.cancelled)
        except BaseException as error:  # handed to the consumer, which re-raises it
            outcome = _Failed(error)
        finally:
            self._post(lambda: self._finish(outcome))

    def _finish(self, outcome: _End | _Failed) -> None:
        # `done` first: its callbacks (which free the worker's resources) are then scheduled
        # ahead of the consumer's wake-up, so a consumer that saw the end finds them freed.
        if not self.done.done():
            self.done.set_result(None)
        self._queue.put_nowait(outcome)
