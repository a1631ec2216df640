"""A semaphore served round-robin by client: one client's many requests do not starve another's.

`FairLine` is what a local model's line needs: up to `capacity` holders at once (the sequences a
llama.cpp context decodes together), and waiters served in turn by their `key` (the session, or
whatever the request names as its client): the first waiter of the client served least recently
goes next, each client's own requests in their arrival order. Without a key each request is its
own client, which is plain FIFO. Cancelling a waiter (`acquire` cancelled) takes it out of the
line.

A waiter's place (`ahead`, and what `acquire` reports to `on_place`) counts the requests that
go before it plus one for the holder it waits to see leave: 0 only when it would start at once.
Places change as holders leave, waiters give up and other clients' requests arrive (a new
client's first request goes before a busy client's tenth); `acquire` reports each change.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable

_anonymous = itertools.count()

PlaceSink = Callable[[int], Awaitable[None]]


class FairLine:
    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError("a line needs room for one holder")
        self.capacity = capacity
        self.holders = 0
        # Clients with waiters, in the order they are served; each one's waiters in order.
        self._waiting: OrderedDict[Hashable, deque[asyncio.Future[None]]] = OrderedDict()
        self._changed: asyncio.Future[None] | None = None

    @property
    def held(self) -> bool:
        return self.holders > 0

    @property
    def full(self) -> bool:
        return self.holders >= self.capacity

    def ahead(self, key: Hashable | None) -> int:
        """The place of a request of `key` arriving now (0: it starts at once)."""
        own = len(self._waiting.get(key, ())) if key is not None else 0
        return self._place(own, key)

    def _place(self, index: int, key: Hashable | None) -> int:
        """The place of the `index`-th waiter of `key` (from 0; `index` = how many it has in
        line: one arriving now): the waiters served before it in the round-robin order (each
        client's first, then each one's second, ...), plus the holder it waits for."""
        if not self.full and not self._waiting:
            return 0
        served = 0
        reached = False
        for k, waiters in self._waiting.items():
            if k == key:
                reached = True
                served += index
            else:  # clients after `key` in the order go after it in its round
                served += min(len(waiters), index if reached else index + 1)
        return 1 + served

    async def acquire(
        self,
        key: Hashable | None = None,
        on_place: PlaceSink | None = None,
        told: int | None = None,
    ) -> None:
        """Wait for a place among the holders; tell `on_place` each new place while waiting:
        the first one too when it is not `told` (the place the caller last said; None: the
        first one is `ahead` just before, not told)."""
        if not self.full and not self._waiting:
            self.holders += 1
            return
        key = ("anonymous", next(_anonymous)) if key is None else key
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(ready)
        self._touch()
        try:
            if told is None:
                told = self._place_of(key, ready)
            while not ready.done():
                place = self._place_of(key, ready)
                if on_place is not None and place != told:
                    told = place
                    await on_place(place)
                    continue  # (the line may have moved meanwhile)
                changed = self._changes()
                await asyncio.wait((ready, changed), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if ready.done() and not ready.cancelled():
                self.release()  # handed over just as it was cancelled: pass it on
            else:
                self._forget(key, ready)
            raise

    def release(self) -> None:
        """A holder is done: the next client's first waiter holds its place."""
        while self._waiting:
            key, waiters = next(iter(self._waiting.items()))
            ready = waiters.popleft()
            if waiters:
                self._waiting.move_to_end(key)  # its next request waits for the others' turns
            else:
                del self._waiting[key]
            if not ready.done():
                ready.set_result(None)
                self._touch()
                return
        self.holders -= 1
        self._touch()

    def _place_of(self, key: Hashable, ready: asyncio.Future[None]) -> int:
        waiters = self._waiting.get(key)
        if waiters is None or ready not in waiters:
            return 0
        return self._place(waiters.index(ready), key)

    def _changes(self) -> asyncio.Future[None]:
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def _touch(self) -> None:
        """Places may have changed: wake the waiters to look."""
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def _forget(self, key: Hashable, ready: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(key)
        if waiters is not None and ready in waiters:
            waiters.remove(ready)
            if not waiters:
                del self._waiting[key]
            self._touch()
