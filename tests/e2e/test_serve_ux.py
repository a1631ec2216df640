"""`tether serve` as a new user meets it: what it logs, where it finds models, how it fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.support.servers import tether_serve
from tests.support.wsclient import ProtocolClient, text_of

pytestmark = pytest.mark.e2e

TOKEN = "tok-0123456789-abcdefghij"
OTHER = "someone-elses-token-42"


async def test_the_token_never_reaches_the_debug_log(tmp_path: Path) -> None:
    args = ("--db", str(tmp_path / "t.db"), "--engine", "echo", "--log-level", "debug")
    with tether_serve(tmp_path, *args, env={"TETHER_TOKEN": TOKEN}) as server:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(server.ws_url, additional_headers=headers) as ws:
            assert text_of(await ProtocolClient(ws).chat("r1", "by header")) == "by header"
        async with connect(f"{server.ws_url}?token={TOKEN}") as ws:
            assert text_of(await ProtocolClient(ws).chat("r2", "by query")) == "by query"
        # A wrong token is a secret too (someone else's, perhaps).
        wrong = {"Authorization": f"Bearer {OTHER}"}
        async with connect(server.ws_url, additional_headers=wrong) as ws:
            await ws.wait_closed()
        assert ws.close_code == 4401
        log = server.log()
    assert log.count("authorization: Bearer [redacted]") == 2  # the handshakes were logged
    assert "token=[redacted]" in log
    assert TOKEN not in log
    assert OTHER not in log
