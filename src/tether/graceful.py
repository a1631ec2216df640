"""Graceful shutdown under uvicorn: `TetherServer`.

uvicorn (0.54) shuts down in this order: stop the main loop (SIGINT/SIGTERM set `should_exit`),
close the listening sockets, call `shutdown()` on every connection (which closes an open
WebSocket with 1012 "service restart" at once and tells the app it disconnected), wait up to
`timeout_graceful_shutdown` for the ASGI tasks, cancel them, and only then run the lifespan
shutdown. So an app that waits for the lifespan shutdown learns of it after its sockets are gone,
and uvicorn then re-raises the signal it caught, so SIGTERM ends the process *by* SIGTERM, not
with status 0.

`TetherServer` adds one step in front: once the listening sockets are closed (no new
connections), it awaits `drain()` (`tether.app.drain_app`: running answers finish or are
cancelled and stored, chat sockets are closed with 1001 "going away") before uvicorn's own
shutdown, which then finds nothing left to cut. A SIGTERM that led to that shutdown is not
re-raised, so `tether serve` exits 0; SIGINT still is (Ctrl-C ends with KeyboardInterrupt, 130).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Awaitable, Callable, Generator

import structlog
import uvicorn

log = structlog.get_logger("tether.server")


class TetherServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, *, drain: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        super().__init__(config)
        self._drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in getattr(self, "servers", ()):
            server.close()  # stop accepting; uvicorn closes them again, harmlessly
        if self._drain is not None and not self.force_exit:
            log.info("server.draining")
            await self._drain_unless_forced(self._drain)
        await super().shutdown(sockets)

    async def _drain_unless_forced(self, drain: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.ensure_future(drain())
        while not task.done():
            await asyncio.wait({task}, timeout=0.1)
            if self.force_exit and not task.done():  # a second Ctrl-C: stop waiting
                log.warning("server.drain_abandoned")
                task.cancel()
                break
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are cancelled ourselves, not just the abandoned drain
        except Exception:
            log.exception("server.drain_failed")

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn re-raises the signals it caught once its handlers are restored; a
                # SIGTERM has been fully handled by the drain, so the process exits normally.
                captured: list[int] = getattr(self, "_captured_signals", [])
                captured[:] = [sig for sig in captured if sig != signal.SIGTERM]
