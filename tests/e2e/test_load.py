"""Load: 1000 WebSockets held on one `tether serve` (echo engine), 100 of them streaming at once.

Bounded so it stays in the default run (a few seconds here, well under a minute on two cores):
every socket must open and answer a ping, every streamed answer must be exact (its text, a
contiguous seq, one `processing`, one `complete`), and concurrent turns must never meet
"database is locked", in frames or in the server's log. The client runs in this process and the
server in its own, so neither starves the other's event loop. `bench/load_ws.py` is the same
for longer runs.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.servers import tether_serve
from tests.support.timeouts import scaled

pytestmark = [pytest.mark.e2e, pytest.mark.load]

CONNECTIONS = 1000
STREAMING = 100
TURNS = 2  # per streaming socket, in one session
WORDS = 12
FD_HEADROOM = 200  # the interpreter, the log, the store, httpx


def raise_fd_limit(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE (the server process inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def stream_turns(ws: ClientConnection, index: int) -> list[str]:
    """TURNS chat turns on one socket, one session; problems found (none expected)."""
    problems: list[str] = []
    session_id: str | None = None
    for turn in range(TURNS):
        request_id = f"s{index}-t{turn}"
        text = " ".join(f"w{index}.{turn}.{j}" for j in range(WORDS))
        frame: dict[str, Any] = {
            "type": "chat",
            "request_id": request_id,
            "text": text,
            "options": {"token_delay_ms": 2},
        }
        if session_id is not None:
            frame["session_id"] = session_id
        await ws.send(json.dumps(frame))
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["status"] not in ("complete", "error"):
            reply = await recv_json(ws)
            if reply["request_id"] == request_id:
                frames.append(reply)
        statuses = [f["status"] for f in frames]
        got = "".join(f["chunk"]["data"] for f in frames if f["status"] == "chunk")
        # Text deltas that came while the journal committed share a frame: 1 to WORDS chunks.
        chunks = statuses[1:-1]
        if statuses[0] != "processing" or statuses[-1] != "complete" or set(chunks) != {"chunk"}:
            problems.append(f"{request_id}: statuses {statuses} {frames[-1]}")
        elif got != text:
            problems.append(f"{request_id}: text {got!r}")
        elif [f["seq"] for f in frames] != list(range(len(frames))):
            problems.append(f"{request_id}: seq {[f['seq'] for f in frames]}")
        session_id = frames[0].get("chunk", {}).get("metadata", {}).get("session_id")
    return problems


async def ping(ws: ClientConnection, index: int) -> bool:
    await ws.send(json.dumps({"type": "ping", "request_id": f"p{index}"}))
    reply = await recv_json(ws)
    return reply == {"request_id": f"p{index}", "seq": 0, "status": "pong"}


async def test_a_thousand_sockets_a_hundred_streaming(tmp_path: Path) -> None:
    raise_fd_limit(CONNECTIONS + FD_HEADROOM)
    env = {
        "TETHER_LOG_FORMAT": "json",
        "TETHER_LOG_LEVEL": "warning",  # thousands of open/close lines are not the point
        "TETHER_SECURITY__MAX_CONNECTIONS": str(CONNECTIONS + 100),
        "TETHER_SECURITY__MAX_CONNECTIONS_PER_CLIENT": str(CONNECTIONS + 100),
    }
    db = tmp_path / "load.db"
    with tether_serve(tmp_path, "--db", str(db), "--engine", "echo", env=env) as server:
        sockets: list[ClientConnection] = []
        gate = asyncio.Semaphore(100)  # connects in flight: a crowd, not a SYN flood

        async def open_one() -> ClientConnection:
            async with gate:
                return await connect(server.ws_url, open_timeout=scaled(60), max_size=None)

        started = time.monotonic()
        try:
            async with asyncio.timeout(scaled(120)):
                sockets = list(await asyncio.gather(*(open_one() for _ in range(CONNECTIONS))))
                opened = time.monotonic() - started
                # Every socket answers while 100 of them stream, concurrently.
                quiet = sockets[STREAMING:]
                results = await asyncio.gather(
                    asyncio.gather(
                        *(stream_turns(ws, i) for i, ws in enumerate(sockets[:STREAMING]))
                    ),
                    asyncio.gather(*(ping(ws, i) for i, ws in enumerate(quiet))),
                )
                streamed, pongs = results
                # And the streaming ones still answer pings afterwards.
                after = await asyncio.gather(
                    *(ping(ws, i) for i, ws in enumerate(sockets[:STREAMING]))
                )
            total = time.monotonic() - started
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        problems = [p for per_socket in streamed for p in per_socket]
        assert problems == []
        assert all(pongs), f"{pongs.count(False)} quiet sockets did not answer"
        assert all(after)
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            assert (await http.get("/health")).status_code == 200
            sessions = (await http.get("/sessions", params={"limit": 1000})).json()
        assert len(sessions) == STREAMING
        log = server.log()
    print(  # shown with -s: the figures behind the bound
        f"\nload: {CONNECTIONS} sockets open in {opened:.2f} s, "
        f"{STREAMING * TURNS} turns streamed, {total:.2f} s in all"
    )
    assert "database is locked" not in log
    assert "Traceback" not in log
    for line in log.splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        assert record.get("level") not in {"error", "critical"}, line
