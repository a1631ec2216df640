"""The README's wscat walkthrough, sent to a real `tether serve --engine echo`.

The first `text` block under "## The protocol, with wscat" is read as a script: a `> ` line is a
frame the user types (sent as typed, a placeholder such as `5b0e…` replaced by the value the
server gave for it), a `< ` line a reply the server must send, a line `…` marks replies left out
(the rest of the request above it). Placeholders (strings with `…`) match any string, a frame
ending in `,…}` may carry more fields, and timings are not compared. Text deltas the server
joins into fewer `chunk` frames compare by their text, so after a request's first text chunk
`seq` is not compared either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.support.servers import tether_serve
from tests.support.wsclient import Frame, ProtocolClient

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
ELIDED = "…"
UNCOMPARED = frozenset({"timings", "duration_ms"})
PARTIAL = "(may carry more fields)"


@dataclass
class Step:
    """One typed line and the replies the README shows for it."""

    sent: str
    replies: list[Frame] = field(default_factory=list)
    truncated: bool = False


def walkthrough() -> list[Step]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## The protocol, with wscat", 1)[1]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    steps: list[Step] = []
    for line in block.splitlines():
        if line.startswith("> "):
            steps.append(Step(line[2:]))
        elif line.startswith("< "):
            body = line[2:]
            partial = body.endswith(f",{ELIDED}}}")
            if partial:
                body = body[: -len(f",{ELIDED}}}")] + "}"
            steps[-1].replies.append({**json.loads(body), PARTIAL: partial})
        elif line.strip() == ELIDED and steps:
            steps[-1].truncated = True
    return steps


def matches(expected: Any, actual: Any, names: dict[str, str]) -> bool:
    """Whether `actual` is what `expected` shows; learns what each placeholder stands for."""
    if isinstance(expected, str) and ELIDED in expected:
        if not isinstance(actual, str):
            return False
        names.setdefault(expected, actual)
        return True
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        keys = set(expected) - UNCOMPARED - {PARTIAL}
        if not expected.get(PARTIAL) and keys != set(actual) - UNCOMPARED:
            return False
        return all(k in actual and matches(expected[k], actual[k], names) for k in keys)
    return bool(expected == actual)


def is_text(frame: Frame) -> bool:
    chunk = frame.get("chunk")
    return frame["status"] == "chunk" and isinstance(chunk, dict) and chunk.get("type") == "text"


def joined(frames: list[Frame]) -> list[Frame]:
    """Consecutive text chunks of a request as one; no `seq` after a request's first text."""
    out: list[Frame] = []
    texted: set[str] = set()
    for frame in frames:
        frame = dict(frame)
        rid = frame["request_id"]
        if rid in texted:
            frame.pop("seq", None)
        if is_text(frame):
            previous = next((f for f in reversed(out) if f["request_id"] == rid), None)
            if previous is not None and is_text(previous) and previous is out[-1]:
                data = previous["chunk"]["data"] + frame["chunk"]["data"]
                out[-1] = {**previous, "chunk": {"type": "text", "data": data}}
                continue
            texted.add(rid)
        out.append(frame)
    return out


def is_last(expected: Frame, actual: Frame) -> bool:
    return bool(
        expected["request_id"] == actual["request_id"] and expected["status"] == actual["status"]
    )


def typed(line: str, names: dict[str, str]) -> str:
    for placeholder, value in names.items():
        line = line.replace(placeholder, value)
    return line


async def test_readme_wscat_walkthrough_is_what_the_server_sends(tmp_path: Path) -> None:
    steps = walkthrough()
    assert len(steps) >= 5, "the README's wscat block was not found"
    names: dict[str, str] = {}
    elided: set[str] = set()  # requests whose further frames the README leaves out
    with tether_serve(tmp_path, "--db", str(tmp_path / "t.db"), "--engine", "echo") as server:
        async with connect(server.ws_url) as ws:
            client = ProtocolClient(ws)
            for step in steps:
                await client.send(typed(step.sent, names))
                last = step.replies[-1]
                got: list[Frame] = []
                while not got or not is_last(last, got[-1]):
                    frame = await client.next_frame()
                    if frame["request_id"] in elided and "seq" in frame:
                        continue
                    got.append(frame)
                want = joined(step.replies)
                have = joined(got)
                assert len(have) == len(want), (step.sent, have)
                for expected, actual in zip(want, have, strict=True):
                    if step.truncated and is_text(expected) and is_text(actual):
                        assert actual["chunk"]["data"].startswith(expected["chunk"]["data"])
                        continue
                    assert matches(expected, actual, names), (step.sent, expected, actual)
                if step.truncated:
                    elided |= {reply["request_id"] for reply in step.replies}
