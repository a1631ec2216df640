"""`replica_scaling` (issue 13): chat turns/s through nginx on two replicas vs one replica direct.

One PostgreSQL server (fsync and synchronous commit on, as in production) and one database;
two `tether serve --engine echo` replicas on it; deploy/'s nginx config (rendered and run by
`deploy/run.sh nginx`, tests/support/nginx.py) twice: once in front of replica A alone, once in
front of both. Each round drives the same load at three setups, in turn: A direct, A through
nginx, A and B through nginx. The load: `CLIENTS` sockets, each doing 8-word turns one after
another (a new session each, as `turn_overhead`), for the round's seconds; the figure is turns/s,
the median over the rounds.

The ratio is two replicas through nginx / one replica direct. Everything (PostgreSQL, nginx, both
replicas, this client) shares the machine's cores, so on 2 cores a second replica adds little
CPU: the figure says how much of a replica's time the store and the proxy leave to scale, not
how a second machine would. No goal is set on it. To explain it, each setup's CPU time per turn
is measured by process (from /proc: the replicas, PostgreSQL's server and backends, nginx's
master and worker, this client), e.g. `nginx_x2_cpu_ms_postgres`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

from echo_ws import TURN_WORDS, turn
from harness import Outcome, Profile, median, tether
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.nginx import nginx_in_front
from tests.support.postgres import postgres_server

CLIENTS = 20
SETUPS = ("direct_x1", "nginx_x1", "nginx_x2")
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU seconds of process `pid` and its living descendants (and the reaped ones it waited
    for), from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    total = sum(int(value) for value in fields[11:15]) * TICK_S  # utime stime cutime cstime
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):  # it ended (its time went up)
                total += cpu_s(int(child))
    return total


def cpu_now(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree, and of this client."""
    usage = {name: cpu_s(pid) for name, pid in pids.items()}
    usage["client"] = time.process_time()
    return usage


async def _drive(url: str, seconds: float, tag: str) -> float:
    """Turns/s of `CLIENTS` sockets to `url` for `seconds`."""
    sockets = [await connect(url, max_size=None) for _ in range(CLIENTS)]
    done = 0

    async def client(index: int, ws: ClientConnection, stop: float) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < stop:
            await turn(ws, f"{tag}-{index}-{n}", TURN_WORDS)
            n += 1
            done += 1

    try:
        started = time.perf_counter()
        stop = started + seconds
        await asyncio.gather(*(client(i, ws, stop) for i, ws in enumerate(sockets)))
        return done / (time.perf_counter() - started)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))


def replica_scaling(profile: Profile) -> Outcome:
    rounds = profile.pick(1, 3)
    seconds = profile.pick_s(1.0, 5.0)
    rates: dict[str, list[float]] = {name: [] for name in SETUPS}
    cpu: dict[str, dict[str, float]] = {name: {} for name in SETUPS}  # CPU s by process
    turns = dict.fromkeys(SETUPS, 0.0)
    with ExitStack() as stack:
        server = stack.enter_context(postgres_server(durable=True))
        url = asyncio.run(server.create_database())
        a = stack.enter_context(tether(settings={"STORAGE__URL": url}))
        b = stack.enter_context(tether(settings={"STORAGE__URL": url}))
        one = stack.enter_context(nginx_in_front([a.port]))
        two = stack.enter_context(nginx_in_front([a.port, b.port]))
        urls = {"direct_x1": a.ws_url, "nginx_x1": one.ws_url, "nginx_x2": two.ws_url}
        postmaster = int((server.folder / "data" / "postmaster.pid").read_text().split()[0])
        pids = {
            "direct_x1": {"replica": a.pid, "postgres": postmaster},
            "nginx_x1": {"replica": a.pid, "postgres": postmaster, "nginx": one.process.pid},
            "nginx_x2": {
                "replica": a.pid,
                "replica_b": b.pid,
                "postgres": postmaster,
                "nginx": two.process.pid,
            },
        }
        for name, ws_url in urls.items():  # warm up: connections, caches
            asyncio.run(_drive(ws_url, profile.pick_s(0.25, 0.5), f"warm-{name}"))
        for n in range(rounds):
            for name in SETUPS[n % 3 :] + SETUPS[: n % 3]:  # each setup first in turn
                before = cpu_now(pids[name])
                rate = asyncio.run(_drive(urls[name], seconds, f"{name}-{n}"))
                after = cpu_now(pids[name])
                rates[name].append(rate)
                turns[name] += rate * seconds
                for process, used in after.items():
                    cpu[name][process] = cpu[name].get(process, 0.0) + used - before[process]
    medians = {name: median(values) for name, values in rates.items()}
    ratio = medians["nginx_x2"] / medians["direct_x1"]
    per_turn = {
        f"{name}_cpu_ms_{process}": round(1000 * used / turns[name], 3)
        for name, usage in cpu.items()
        for process, used in usage.items()
    }
    return Outcome(
        ratio=ratio,
        summary=(
            f"turns/s, {CLIENTS} clients, echo on PostgreSQL: two replicas through nginx / one "
            f"direct (nginx x1 / direct: {medians['nginx_x1'] / medians['direct_x1']:.2f})"
        ),
        figures={
            **{f"{name}_turns_per_s": round(value, 1) for name, value in medians.items()},
            **per_turn,
            "clients": CLIENTS,
            "rounds": rounds,
        },
    )
