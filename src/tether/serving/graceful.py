"""Graceful shutdown under uvicorn: `TetherServer`.

uvicorn (0.54) shuts down in this order: stop the main loop (once `should_exit` is set), close
the listening sockets, call `shutdown()` on every connection (which closes an open WebSocket with
1012 "service restart" at once and tells the app it disconnected), wait up to
`timeout_graceful_shutdown` for the ASGI tasks, cancel them, and only then run the lifespan
shutdown. So an app that waits for the lifespan shutdown learns of it after its sockets are gone.

`TetherServer` adds one step in front: once the listening sockets are closed (no new
connections), it awaits `drain()` (`tether.app.drain_app`: running answers finish or are
cancelled and stored, chat sockets are closed with 1001 "going away") before uvicorn's own
shutdown, which then finds nothing left to cut.

Signals are Tether's own: in place of uvicorn's handlers (which re-raise every signal they
caught once the server has stopped), `capture_signals` installs handlers on the running loop. The
first SIGINT or SIGTERM sets `should_exit`; a SIGINT after that sets `force_exit` (a second
Ctrl-C stops waiting for the drain). A SIGTERM has been fully handled by the drain, so
`tether serve` exits 0; a SIGINT is raised again once the previous handlers are back, so Ctrl-C
ends the process as Ctrl-C does (KeyboardInterrupt, 130).

uvicorn names used (checked by tests/unit/test_serving_fence.py): `Server.capture_signals`,
`shutdown`, `servers`, `should_exit`, `force_exit`, `started`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Generator

import structlog
import uvicorn

log = structlog.get_logger("tether.server")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TetherServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, *, drain: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._interrupted = False

    def on_signal(self, sig: signal.Signals) -> None:
        """The first SIGINT/SIGTERM starts the shutdown; a SIGINT during it forces it."""
        if sig == signal.SIGINT:
            self._interrupted = True
            if self.should_exit:
                self.force_exit = True
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Tether's SIGINT/SIGTERM handlers on the running loop while the server serves."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; whoever runs us there handles them
            return
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self.on_signal, sig)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                if handler is not None:
                    signal.signal(sig, handler)
        if self._interrupted:
            signal.raise_signal(signal.SIGINT)  # to the handler in place before us

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
