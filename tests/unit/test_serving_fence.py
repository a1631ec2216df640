"""The fence around uvicorn: every name Tether uses that uvicorn does not document is still there.

`tether.serving` subclasses uvicorn's server and protocols; pyproject.toml pins uvicorn's minor
version. This test runs a real `TetherServer` with a real HTTP connection and a real WebSocket,
and checks each name on the live objects, so an upgrade that drops one fails here, by name.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from tests.support.servers import make_settings
from tests.support.timeouts import scaled
from tether.app import create_app
from tether.serving.config import uvicorn_config
from tether.serving.graceful import TetherServer

MODULE_NAMES = {
    "uvicorn._types": ["ASGISendEvent"],
    "uvicorn.protocols.http.h11_impl": ["H11Protocol"],
    "uvicorn.protocols.websockets.websockets_sansio_impl": ["WebSocketsSansIOProtocol"],
}
SERVER_NAMES = ["capture_signals", "shutdown", "servers", "should_exit", "force_exit", "started"]
SERVER_STATE_NAMES = ["connections"]
H11_NAMES = [
    "conn",
    "transport",
    "loop",
    "client",
    "connection_made",
    "connection_lost",
    "data_received",
    "handle_websocket_upgrade",
]
WEBSOCKET_NAMES = [
    "send",
    "shutdown",
    "close_timeout",
    "close_timer",
    "writable",
    "handshake_complete",
    "initial_response",
    "close_sent",
    "disconnected",
    "transport",
    "loop",
    "queue",
    "conn",
    "read_paused",
]


def missing(obj: object, names: list[str]) -> list[str]:
    return [name for name in names if not hasattr(obj, name)]


@pytest.mark.parametrize("module", sorted(MODULE_NAMES))
def test_the_uvicorn_modules_tether_imports_have_its_names(module: str) -> None:
    assert missing(importlib.import_module(module), MODULE_NAMES[module]) == []


async def _start(tmp_path: Path) -> tuple[TetherServer, asyncio.Task[None], int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    settings = make_settings(tmp_path)
    server = TetherServer(uvicorn_config(create_app(settings), settings, port=port))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(scaled(30)):
        while not server.started:
            assert not task.done(), "uvicorn exited during start-up"
            await asyncio.sleep(0.01)  # polling a flag uvicorn sets; bounded by the timeout
    return server, task, port


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[TetherServer, int]]:
    server, task, port = await _start(tmp_path)
    try:
        yield server, port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(30))


async def test_a_live_server_and_its_connections_have_the_names_tether_uses(
    running: tuple[TetherServer, int],
) -> None:
    server, port = running
    assert missing(server, SERVER_NAMES) == []
    assert missing(server.server_state, SERVER_STATE_NAMES) == []
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\n")  # a request whose headers have not ended
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat") as ws:
        await ws.ping()
        kinds: dict[type, object] = {}
        async with asyncio.timeout(scaled(10)):
            while len(kinds) < 2:
                for protocol in list(server.server_state.connections):
                    for kind in (H11Protocol, WebSocketsSansIOProtocol):
                        if isinstance(protocol, kind):
                            kinds[kind] = protocol
                await asyncio.sleep(0.01)  # until uvicorn lists both connections; bounded
    writer.close()
    assert missing(kinds[H11Protocol], H11_NAMES) == []
    assert missing(kinds[WebSocketsSansIOProtocol], WEBSOCKET_NAMES) == []


async def test_sigterm_stops_the_server_without_raising_and_restores_the_handler(
    tmp_path: Path,
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    server, task, _ = await _start(tmp_path)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, scaled(30))  # ended by Tether's handler, not by the signal
    assert server.should_exit
    assert not server.force_exit
    assert signal.getsignal(signal.SIGTERM) == before
