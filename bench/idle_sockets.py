"""`idle_sockets_rss`: the resident memory 1,000 idle `/ws/chat` sockets add to `tether serve`,
against the same sockets on the bare `websockets` peer (goal: < 100 MB added).

Loopback only, bounded: the sockets are opened (100 at a time), each answers one `ping`, and the
server's RSS (`/proc/PID/status`) is read before and once every socket is open and quiet.
"""

from __future__ import annotations

import asyncio
import json

from harness import (
    IDLE_SOCKETS,
    Goal,
    Outcome,
    Profile,
    Server,
    echo_servers,
    median,
)
from websockets.asyncio.client import ClientConnection, connect

SOCKETS = IDLE_SOCKETS
MB = 1024 * 1024


async def _open_idle(url: str, count: int) -> list[ClientConnection]:
    gate = asyncio.Semaphore(100)

    async def open_one(index: int) -> ClientConnection:
        async with gate:
            ws = await connect(url, open_timeout=60, max_size=None)
            await ws.send(json.dumps({"type": "ping", "request_id": f"p{index}"}))
            if json.loads(await ws.recv()).get("status") != "pong":
                raise RuntimeError("a socket's ping was not answered")
            return ws

    return list(await asyncio.gather(*(open_one(i) for i in range(count))))


async def _added_rss(server: Server, url: str, count: int) -> int:
    warm = await _open_idle(url, 20)  # the first sockets load code paths, not per-socket state
    await asyncio.gather(*(ws.close() for ws in warm))
    before = server.rss_bytes()
    sockets = await _open_idle(url, count)
    try:
        return server.rss_bytes() - before
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))


def idle_sockets_rss(profile: Profile) -> Outcome:
    rounds = profile.pick(1, 3)
    peer, ours = echo_servers(profile)
    peer_runs, tether_runs = [], []
    for _ in range(rounds):
        peer_runs.append(asyncio.run(_added_rss(peer, peer.peer_url, SOCKETS)))
        tether_runs.append(asyncio.run(_added_rss(ours, ours.ws_url, SOCKETS)))
    peer_mb, tether_mb = median(peer_runs) / MB, median(tether_runs) / MB
    return Outcome(
        tether_mb / peer_mb if peer_mb > 0 else float("inf"),
        f"RSS added by {SOCKETS:,} idle sockets: tether / bare websockets",
        {"tether_added_mb": round(tether_mb, 1), "peer_added_mb": round(peer_mb, 1),
         "sockets": SOCKETS},
        (Goal("tether MB added", tether_mb, "<", 100.0),),
    )  # fmt: skip
