"""What every benchmark of `bench/run.py` shares: servers as processes, timing, goals, results.

A benchmark is a function `(Profile) -> Outcome`. It starts the processes it measures (Tether
and its peer, each in its own process like a real deployment, on loopback ports), runs them in
interleaved rounds so that machine noise hits both alike, and returns its figures: one headline
`ratio` (Tether against the peer) and the `Goal`s it is held to, each met or missed.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MODEL = ROOT / "dist" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PYTHON = sys.executable
START_TIMEOUT_S = 120.0
IDLE_SOCKETS = 1000
# The echo server the benchmarks share: room for the idle sockets.
ECHO_SETTINGS = {
    "SECURITY__MAX_CONNECTIONS": str(IDLE_SOCKETS + 200),
    "SECURITY__MAX_CONNECTIONS_PER_CLIENT": str(IDLE_SOCKETS + 200),
}
_T = TypeVar("_T")


class Shared:
    """The servers the benchmarks of one run share: each started on first use, all stopped by
    `close` (a quick run cannot afford a model load per benchmark)."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._started: dict[str, object] = {}

    def get(self, key: str, start: Callable[[], contextlib.AbstractContextManager[_T]]) -> _T:
        if key not in self._started:
            self._started[key] = self._stack.enter_context(start())
        return cast(_T, self._started[key])

    def close(self) -> None:
        self._stack.close()
        self._started.clear()


@dataclass(frozen=True, slots=True)
class Profile:
    """How long to measure (`quick`: the whole run in under a minute), llama.cpp's threads, and
    the servers shared by the run's benchmarks."""

    quick: bool
    threads: int = os.cpu_count() or 1
    shared: Shared = field(default_factory=Shared, compare=False)

    def pick(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def pick_s(self, quick: float, full: float) -> float:
        return quick if self.quick else full


@dataclass(frozen=True, slots=True)
class Goal:
    """`value` (named `label`) must be `op` `target`."""

    label: str
    value: float
    op: Literal["<=", ">=", "<"]
    target: float

    @property
    def met(self) -> bool:
        if self.op == "<=":
            return self.value <= self.target
        if self.op == "<":
            return self.value < self.target
        return self.value >= self.target

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "value": round(self.value, 4), "op": self.op,
                "target": self.target, "met": self.met}  # fmt: skip

    def describe(self) -> str:
        mark = "met" if self.met else "MISSED"
        return f"{self.label} {self.value:.3g} (goal {self.op} {self.target:g}): {mark}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A benchmark's result: the headline `ratio` (what it says in one number, explained by
    `summary`), its raw figures, and its goals."""

    ratio: float
    summary: str
    figures: Mapping[str, float | int | str]
    goals: tuple[Goal, ...] = ()

    @property
    def met(self) -> bool:
        return all(goal.met for goal in self.goals)

    def as_json(self) -> dict[str, Any]:
        return {
            "ratio": round(self.ratio, 4),
            "summary": self.summary,
            "met": self.met,
            "goals": [goal.as_json() for goal in self.goals],
            "figures": dict(self.figures),
        }


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    what: str  # one line: what is measured against what
    run: Callable[[Profile], Outcome]
    needs_model: bool = False


# -- numbers --------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The `q` quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass
class Stopwatch:
    """Times from `start` to the first and the last event."""

    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now

    @property
    def to_first(self) -> float:
        return (self.first or time.perf_counter()) - self.start

    @property
    def span(self) -> float:
        """From the first event to the last."""
        return (self.last or 0.0) - (self.first or 0.0)


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE of this process (and the servers it starts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any TETHER_/MLC_ setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "MLC_"))}
    env.update(extra)
    return env


def _wait_ready(port: int, process: subprocess.Popen[bytes], path: str | None) -> None:
    """Until `GET path` answers 200 (or, without a path, the port accepts), bounded."""
    command = " ".join(map(str, process.args))  # type: ignore[arg-type]
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if path is None:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            else:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2):
                    return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"a bench server exited in start-up: {command}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"a bench server did not start: {command}") from None
            time.sleep(0.05)  # polling another process's readiness, bounded by the deadline


@dataclass(frozen=True, slots=True)
class Server:
    port: int
    pid: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"

    @property
    def peer_url(self) -> str:
        """The bare peer's socket (it serves every path)."""
        return f"ws://127.0.0.1:{self.port}/"

    def rss_bytes(self) -> int:
        """The process's resident set size now."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {self.pid}")


@contextlib.contextmanager
def process(
    command: list[str],
    port: int,
    *,
    env: Mapping[str, str],
    ready_path: str | None,
    stderr: int | None = None,
) -> Iterator[Server]:
    """`command` as a process listening on `port`, until the block ends (then terminated);
    its output is dropped, its errors shown unless `stderr` says otherwise."""
    proc = subprocess.Popen(command, env=dict(env), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_ready(port, proc, ready_path)
        yield Server(port, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@contextlib.contextmanager
def tether(
    engine: str = "echo", *, db: Path | None = None, settings: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """`tether serve --engine ENGINE` on a free port with a throwaway database (or `db`), its
    message rate limit off (a bench socket sends faster than a person), plus `settings`
    (`TETHER_` variables without the prefix, e.g. `STORAGE__SYNCHRONOUS="NORMAL"`)."""
    env = clean_env(
        TETHER_LOG_LEVEL="warning",
        TETHER_LIMITS__MESSAGES_PER_SEC="0",
        **{f"TETHER_{name}": value for name, value in (settings or {}).items()},
    )
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        command = [PYTHON, "-m", "tether", "serve", "--config", str(ROOT / "config.yaml")]
        command += ["--engine", engine, "--port", str(port)]
        command += ["--db", str(db or Path(tmp) / "bench.db")]
        with process(command, port, env=env, ready_path="/health") as server:
            yield server


@contextlib.contextmanager
def ws_peer() -> Iterator[Server]:
    """The bare `websockets` peer (`peer_ws.py`) in its own process."""
    port = free_port()
    command = [PYTHON, str(BENCH / "peer_ws.py"), str(port)]
    with process(command, port, env=clean_env(), ready_path=None) as server:
        yield server


def need_model() -> None:
    if not MODEL.is_file():
        raise FileNotFoundError(f"{MODEL} is missing: run ./setup.sh")


def echo_servers(profile: Profile) -> tuple[Server, Server]:
    """The run's bare websockets peer and `tether serve --engine echo` (shared)."""
    raise_fd_limit(IDLE_SOCKETS * 2 + 400)  # before they start: they inherit it
    peer = profile.shared.get("ws-peer", ws_peer)
    ours = profile.shared.get("tether-echo", lambda: tether(settings=ECHO_SETTINGS))
    return peer, ours
