"""uvicorn's WebSocket protocol, with closes that never wait for a peer that does not read.

uvicorn (websockets-sansio, 0.54) sends every ASGI message, `websocket.close` included, only once
the transport is writable again: a client that stops reading fills the write buffer, and from
then on the app can neither send to it nor close it (the close waits with the rest), while the
disconnect is never reported because the peer never goes away. The app bounds its own sends
(`tether.transports.ws_outbox`) and then closes such a socket; `CloseNowProtocol` makes that
close work: when the transport is paused, the close frame is written behind the unread data at
once (a client that reads again soon still finds the close code) and the app is told the socket
is disconnected. Whenever a close (the app's, or a server shutdown's) has not been answered
within `close_timeout`, the transport is aborted, dropping what is still buffered for the peer:
uvicorn would `transport.close()`, which waits for a flush that never comes.

uvicorn internals used (checked by tests/unit/test_serving_fence.py): `uvicorn._types`'s
`ASGISendEvent`; `WebSocketsSansIOProtocol` and its `send`, `shutdown`, `close_timeout`,
`close_timer`, `writable`, `handshake_complete`, `initial_response`, `close_sent`,
`disconnected`, `transport`, `loop`, `queue`, `conn`, `read_paused`.
"""

from __future__ import annotations

from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

DEFAULT_CLOSE_TIMEOUT_SEC = 10.0  # uvicorn's


class CloseNowProtocol(WebSocketsSansIOProtocol):
    close_after: float = DEFAULT_CLOSE_TIMEOUT_SEC

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = self.close_after

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "websocket.close" and self._stuck():
            self._close_now(message.get("code", 1000), message.get("reason") or "")
            return
        await super().send(message)
        if message["type"] == "websocket.close" and self.close_timer is not None:
            # Past the timeout, abort: `transport.close()` would wait for the peer to read.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def shutdown(self) -> None:
        super().shutdown()  # a close frame, then `transport.close()`: waits for the peer to read
        if self.transport.get_write_buffer_size():
            self.loop.call_later(self.close_timeout, self.transport.abort)

    def _stuck(self) -> bool:
        """An open socket whose peer is not taking what was sent (writing is paused)."""
        return (
            not self.writable.is_set()
            and self.handshake_complete
            and self.initial_response is None
            and not self.close_sent
            and not self.disconnected
            and not self.transport.is_closing()
        )

    def _close_now(self, code: int, reason: str) -> None:
        # What uvicorn does for `websocket.close`, without waiting to be writable.
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)


def close_now_protocol(close_timeout: float) -> type[CloseNowProtocol]:
    """The protocol class with `close_timeout` seconds for the peer to take a close (0: 10 s)."""

    class Configured(CloseNowProtocol):
        close_after = close_timeout if close_timeout > 0 else DEFAULT_CLOSE_TIMEOUT_SEC

    return Configured
