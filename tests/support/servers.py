"""Real servers for tests: the app under uvicorn in this process, or `tether serve` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from tests.support.timeouts import scaled
from tether.app import create_app, drain_app
from tether.config import Settings, load_settings
from tether.engines.base import Engine
from tether.serving.config import listen_socket, uvicorn_config
from tether.serving.graceful import TetherServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test server: echo engine, a fresh SQLite file, no config file, no env."""
    values: dict[str, Any] = {
        "storage.path": str(tmp_path / "tether.db"),
        "engine.dist_path": str(tmp_path / "dist"),  # no model but those a test puts there
        "engine.name": "echo",
        "log.format": "json",
    }
    values.update(overrides)
    return load_settings(overrides=values, environ={}, cwd=tmp_path)


class LoopbackUrls:
    """The addresses of a server listening on 127.0.0.1:`port`."""

    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"


@dataclass(frozen=True)
class RunningServer(LoopbackUrls):
    settings: Settings
    port: int
    app: Starlette | None = None  # for tests that look at what the server holds


@contextlib.asynccontextmanager
async def serve_app(
    settings: Settings, *, engine: Engine | None = None
) -> AsyncIterator[RunningServer]:
    """Run `create_app(settings)` under a real uvicorn on a free loopback port, in this loop."""
    # Bound here and handed to uvicorn, so no other process can take the port in between.
    sock = listen_socket("127.0.0.1", 0)  # as `tether serve` makes it (TCP_NODELAY)
    port: int = sock.getsockname()[1]
    app = create_app(settings, engine=engine)
    server = TetherServer(
        uvicorn_config(app, settings, host="127.0.0.1", port=port), drain=lambda: drain_app(app)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(scaled(30)):
            while not server.started:
                if task.done():
                    task.result()  # start-up failed: raise its error here
                    raise RuntimeError("uvicorn exited during start-up")
                await asyncio.sleep(0.01)  # polling a flag uvicorn sets; bounded by the timeout
        yield RunningServer(settings, port, app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(30))
        sock.close()


@dataclass
class ServerProcess(LoopbackUrls):
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def tether_bin() -> list[str]:
    return [sys.executable, "-m", "tether"]


@contextlib.contextmanager
def tether_serve(
    tmp_path: Path, *args: str, env: Mapping[str, str] | None = None, port: int | None = None
) -> Iterator[ServerProcess]:
    """Start `tether serve` as a real process and wait until /health answers."""
    port = port or free_port()
    log_path = tmp_path / f"serve-{port}-{time.monotonic_ns()}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "MLC_"))}
    # The per-user data folder (the default database) of this test alone, never the user's.
    full_env["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")
    full_env.update(env or {})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*tether_bin(), "serve", "--port", str(port), *args],
            cwd=tmp_path,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, port, log_path)
    try:
        deadline = time.monotonic() + scaled(60)
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"tether serve exited with {process.returncode}:\n{server.log()}"
                )
            try:
                # Up: "ok", or 503 "degraded" (no default model; a test may want that).
                if httpx.get(f"{server.http_url}/health", timeout=1).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"tether serve did not come up:\n{server.log()}")
            time.sleep(0.05)  # polling readiness of another process; bounded by the deadline
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=scaled(30))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def stored_answer(server: LoopbackUrls, session_id: str) -> dict[str, Any]:
    """The session's newest assistant message, once the server has stored it."""
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        async with asyncio.timeout(scaled(20)):
            while True:
                messages = (await http.get(f"/sessions/{session_id}/messages")).json()
                if messages and messages[-1]["role"] == "assistant":
                    answer: dict[str, Any] = messages[-1]
                    return answer
                await asyncio.sleep(0.05)  # polling for the server to store it; bounded
