"""A lock served round-robin by client: one client's many requests do not starve another's one.

`FairLine` is what a local model's line needs: one holder at a time (a llama.cpp context runs
one stream), and waiters served in turn by their `key` (the session, or whatever the request
names as its client): the first waiter of the client served least recently goes next, each
client's own requests in their arrival order. Without a key each request is its own client,
which is plain FIFO. Cancelling a waiter (`acquire` cancelled) takes it out of the line.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from collections.abc import Hashable

_anonymous = itertools.count()


class FairLine:
    def __init__(self) -> None:
        self.held = False
        # Clients with waiters, in the order they are served; each one's waiters in order.
        self._waiting: OrderedDict[Hashable, deque[asyncio.Future[None]]] = OrderedDict()

    def ahead(self, key: Hashable | None) -> int:
        """How many would be served before a request of `key` arriving now (the holder too)."""
        own = len(self._waiting.get(key, ())) if key is not None else 0
        others = sum(min(len(waiters), own + 1) for k, waiters in self._waiting.items() if k != key)
        return int(self.held) + own + others

    async def acquire(self, key: Hashable | None = None) -> None:
        if not self.held and not self._waiting:
            self.held = True
            return
        key = ("anonymous", next(_anonymous)) if key is None else key
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(ready)
        try:
            await ready
        except asyncio.CancelledError:
            if ready.done() and not ready.cancelled():
                self.release()  # handed over just as it was cancelled: pass it on
            else:
                self._forget(key, ready)
            raise

    def release(self) -> None:
        """The holder is done: the next client's first waiter holds the line."""
        while self._waiting:
            key, waiters = next(iter(self._waiting.items()))
            ready = waiters.popleft()
            if waiters:
                self._waiting.move_to_end(key)  # its next request waits for the others' turns
            else:
                del self._waiting[key]
            if not ready.done():
                ready.set_result(None)
                return
        self.held = False

    def _forget(self, key: Hashable, ready: asyncio.Future[None]) -> None:
        waiters = self._waiting.get(key)
        if waiters is not None and ready in waiters:
            waiters.remove(ready)
            if not waiters:
                del self._waiting[key]
