"""`history_load`: what a turn costs at the end of a long session, against a new session's turn.

A database is seeded with two sessions, one of 10,000 messages and one of 3,998 (so its next turn
is its 2,000th), each a chain of 8-word user messages and their echoed answers, written with
`sqlite3` straight into the tables `tether serve` migrated (the FTS index fills by its triggers,
as for messages stored by turns). Then `tether serve --engine echo` on that database answers
8-word turns in rounds: one at the end of each long session and one on a new session (its turn
1), interleaved. The time of a turn is from sending `chat` to `complete` (the answer committed).
Goal: a turn's cost does not grow with its session's length (turn 2,000 / turn 1 ≤ 1.2).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from harness import Goal, Outcome, Profile, median, ms, tether
from websockets.asyncio.client import ClientConnection, connect

from tether.store.records import now_iso
from tether.store.sqlite import SQLiteStore

LONG = 10_000
TURN_2000 = 3_998
WORDS = 8


def text(turn: int) -> str:
    return " ".join(f"t{turn}w{j}" for j in range(WORDS))


async def _migrate(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.close()


def seed(path: Path, messages: int) -> str:
    """A session of `messages` messages (user, assistant, ...) in the database; its id."""
    session_id, stamp = uuid.uuid4().hex, now_iso()
    rows: list[tuple[str, str, str | None, str, str, str]] = []
    parent: str | None = None
    for index in range(messages):
        message_id = uuid.uuid4().hex
        role = "user" if index % 2 == 0 else "assistant"
        rows.append((message_id, session_id, parent, role, text(index // 2), stamp))
        parent = message_id
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO sessions (id, title, created_at, updated_at, active_leaf_id) "
            "VALUES (?, 'long', ?, ?, NULL)",
            (session_id, stamp, stamp),
        )
        db.executemany(
            "INSERT INTO messages (id, session_id, parent_id, role, content, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("UPDATE sessions SET active_leaf_id = ? WHERE id = ?", (parent, session_id))
    return session_id


async def timed_turn(ws: ClientConnection, request_id: str, session_id: str | None) -> float:
    frame: dict[str, Any] = {"type": "chat", "request_id": request_id, "text": text(0)}
    if session_id:
        frame["session_id"] = session_id
    started = time.perf_counter()
    await ws.send(json.dumps(frame))
    while True:
        reply = json.loads(await ws.recv())
        if reply["status"] == "complete":
            return time.perf_counter() - started
        if reply["status"] == "error":
            raise RuntimeError(f"error frame: {reply}")


async def measure(url: str, sessions: dict[str, str | None], turns: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in sessions}
    async with connect(url, max_size=None) as ws:
        for name, session_id in sessions.items():  # warm up
            await timed_turn(ws, f"warm-{name}", session_id)
        for i in range(turns):
            for name, session_id in sessions.items():
                times[name].append(await timed_turn(ws, f"{name}-{i}", session_id))
    return times


def history_load(profile: Profile) -> Outcome:
    turns = profile.pick(20, 150)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "history.db"
        asyncio.run(_migrate(db))
        sessions = {"long": seed(db, LONG), "turn_2000": seed(db, TURN_2000), "new": None}
        with tether(db=db) as server:
            times = asyncio.run(measure(server.ws_url, sessions, turns))
    new, long_, t2000 = (median(times[name]) for name in ("new", "long", "turn_2000"))
    ratio_2000, ratio_long = t2000 / new, long_ / new
    return Outcome(
        ratio_2000,
        "a turn's time (chat to complete): turn 2,000 of one session / turn 1",
        {"new_session_turn_ms": ms(new), "turn_2000_ms": ms(t2000),
         f"after_{LONG}_messages_ms": ms(long_),
         f"after_{LONG}_messages_ratio": round(ratio_long, 3),
         "turns_timed": turns},
        (Goal("turn 2,000 / turn 1", ratio_2000, "<=", 1.2),
         Goal(f"after {LONG:,} messages / turn 1", ratio_long, "<=", 1.2)),
    )  # fmt: skip
