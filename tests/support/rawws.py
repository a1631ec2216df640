"""A WebSocket client that stops reading: websockets' sans-I/O protocol over a bare TCP socket.

The socket's receive buffer is made tiny and nothing is read unless the test asks, so the
server's frames pile up in its own buffers, as with a client that hangs or reads too slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.support.timeouts import scaled

RECEIVE_BUFFER_BYTES = 2048


@dataclass
class Drained:
    """What a stalled client finds once it reads again: the frames, then how it ended."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None  # the server's close frame, if one arrived
    reset: bool = False  # the connection was reset (the server gave up waiting)


class StalledClient:
    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol

    @classmethod
    async def connect(cls, ws_url: str) -> StalledClient:
        uri = parse_uri(ws_url)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setblocking(False)
        protocol = ClientProtocol(uri)
        client = cls(sock, protocol)
        try:
            async with asyncio.timeout(scaled(10)):
                await loop.sock_connect(sock, (uri.host, uri.port))
                protocol.send_request(protocol.connect())
                await client._flush()
                while protocol.state is State.CONNECTING:
                    data = await loop.sock_recv(sock, 4096)
                    if not data:
                        raise ConnectionError("the server closed during the handshake")
                    protocol.receive_data(data)
                for event in protocol.events_received():
                    if not isinstance(event, Response) or event.status_code != 101:
                        raise ConnectionError(f"handshake refused: {event!r}")
        except BaseException:
            sock.close()
            raise
        return client

    async def send(self, frame: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(frame).encode())
        await self._flush()

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, b"".join(self.protocol.data_to_send()))

    async def drain(self) -> Drained:
        """Read everything until the connection ends (the test's deadline bounds the wait)."""
        loop = asyncio.get_running_loop()
        drained = Drained()
        while True:
            try:
                data = await loop.sock_recv(self.sock, 65536)
            except ConnectionResetError:
                drained.reset = True
                return drained
            if not data:
                return drained
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    drained.frames.append(json.loads(bytes(event.data)))
                elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                    assert self.protocol.close_rcvd is not None
                    drained.close_code = self.protocol.close_rcvd.code
            # The close handshake's reply (and pongs), as a well-behaved client sends them.
            pending = b"".join(self.protocol.data_to_send())
            if pending:
                with contextlib.suppress(OSError):  # the server may be gone already
                    await loop.sock_sendall(self.sock, pending)

    def close(self) -> None:
        self.sock.close()
