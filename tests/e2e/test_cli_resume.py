"""`tether chat` keeps its answer through a dropped connection and through a server crash."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.support.proxy import TcpProxy
from tests.support.servers import free_port, tether_bin, tether_serve
from tests.support.timeouts import scaled

pytestmark = pytest.mark.e2e

WORDS = " ".join(f"w{i}" for i in range(40))


async def start_chat(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *tether_bin(),
        "chat",
        "--url",
        url,
        "--prompt",
        WORDS,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_until(process: asyncio.subprocess.Process, text: str) -> str:
    """What the CLI printed, read until `text` shows."""
    assert process.stdout is not None
    printed = ""
    async with asyncio.timeout(scaled(30)):
        while text not in printed:
            data = await process.stdout.read(256)
            assert data, f"the CLI ended before printing {text!r}: {printed!r}"
            printed += data.decode()
    return printed


async def finish(process: asyncio.subprocess.Process) -> tuple[str, str]:
    async with asyncio.timeout(scaled(60)):
        out, err = await process.communicate()
    return out.decode(), err.decode()


async def test_a_dropped_connection_resumes_where_the_answer_stopped(tmp_path: Path) -> None:
    with tether_serve(tmp_path, "--engine", "echo", "--db", str(tmp_path / "t.db")) as server:
        async with TcpProxy(server.port) as proxy:
            url = f"ws://127.0.0.1:{proxy.port}/ws/chat"
            chat = await start_chat(url, "-o", "token_delay_ms=20")
            printed = await read_until(chat, "w5 ")
            proxy.cut()  # the server keeps the answer going for the disconnect grace
            out, err = await finish(chat)
    assert chat.returncode == 0, err
    assert printed + out == WORDS + "\n"  # every word once: nothing lost, nothing doubled
    assert "[connection lost; reconnecting]" in err
    assert "[reconnected]" in err
    assert proxy.accepted == 2


async def test_a_server_crash_ends_the_answer_as_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    port = free_port()
    args = ("--engine", "echo", "--db", str(db))
    with tether_serve(tmp_path, *args, port=port) as first:
        chat = await start_chat(first.ws_url, "-o", "token_delay_ms=50")
        printed = await read_until(chat, "w3 ")
        first.process.kill()
        assert first.process.wait(timeout=scaled(30)) == -signal.SIGKILL
    # The CLI keeps trying to reconnect while the server starts again on the same port.
    with tether_serve(tmp_path, *args, port=port):
        out, err = await finish(chat)
    assert chat.returncode == 1
    assert "[the server stopped during this answer" in err
    with contextlib.closing(sqlite3.connect(db)) as conn:
        stored = conn.execute("SELECT content FROM messages WHERE status = 'interrupted'")
        [(content,)] = stored.fetchall()
    # What the CLI printed is what is stored: the text the dead server had sent (and journaled).
    assert printed + out == content + "\n"
    assert content.startswith("w0 w1 w2 w3 ")


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_a_refused_token_stops_at_once_with_the_reason(
    tmp_path: Path, token: str | None
) -> None:
    args = ("--engine", "echo", "--db", str(tmp_path / "t.db"))
    with tether_serve(tmp_path, *args, env={"TETHER_TOKEN": "right-token"}) as server:
        chat = await start_chat(server.ws_url, *(("--token", token) if token else ()))
        out, err = await finish(chat)
    assert chat.returncode == 1
    assert "unauthorized" in err
    assert "--token" in err
    assert "reconnect" not in err
    assert out == ""
