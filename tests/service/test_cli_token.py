"""The client commands read the bearer token from TETHER_TOKEN, as the server does."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.support.servers import make_settings, serve_app
from tether.cli import main

TOKEN = "a-test-token-that-is-long-enough-0123456789"


@pytest.mark.parametrize("command", ["sessions", "models", "tools", "agents"])
async def test_client_commands_send_tether_token(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    async with serve_app(make_settings(tmp_path, **{"server.token": TOKEN})) as server:
        monkeypatch.delenv("TETHER_TOKEN", raising=False)
        assert await asyncio.to_thread(main, [command, "--url", server.http_url]) == 1
        assert "unauthorized" in capsys.readouterr().err
        monkeypatch.setenv("TETHER_TOKEN", TOKEN)
        assert await asyncio.to_thread(main, [command, "--url", server.http_url]) == 0


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[[a-z ]+\][^\n]*\n")


async def test_chat_sends_tether_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve_app(make_settings(tmp_path, **{"server.token": TOKEN})) as server:
        monkeypatch.setenv("TETHER_TOKEN", TOKEN)
        args = ["chat", "--url", server.ws_url, "--prompt", "hello there", "--model", "echo"]
        assert await asyncio.to_thread(main, args) == 0
        # The server runs in this process: its log lines share stdout with the client's text
        # and may land inside it (the answer's last chunk goes out with its commit).
        said = LOG_LINE.sub("", capsys.readouterr().out)
        assert "hello there" in said
