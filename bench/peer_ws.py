"""The bare `websockets` peer: the least any server of protocol v1 must do, and no more.

It parses each JSON frame and answers `ping` with `pong` and `chat` with `processing`, one
`chunk` per word (the echo engine's split: words keep their whitespace) and `complete`, rendered
like Tether's (compact JSON, the same fields and sizes). No validation, no limits, no store.
Tether does that plus what it is for; the benchmarks drive both with the same client code.

    .venv/bin/python bench/peer_ws.py PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

_WORD = re.compile(r"\s*\S+\s*|\s+")


def _render(request_id: str, seq: int, body: dict[str, Any]) -> str:
    frame = {"request_id": request_id, "seq": seq, **body}
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


async def _answer(ws: ServerConnection, request_id: str, text: str) -> None:
    started = time.perf_counter()
    words = _WORD.findall(text)
    meta = {"session_id": "s", "user_message_id": "u", "model": "echo", "queue_position": 0}
    processing = {"status": "processing", "chunk": {"metadata": {**meta, "created_session": True}}}
    await ws.send(_render(request_id, 0, processing))
    for seq, word in enumerate(words, 1):
        chunk = {"status": "chunk", "chunk": {"type": "text", "data": word}}
        await ws.send(_render(request_id, seq, chunk))
    total_ms = round((time.perf_counter() - started) * 1000, 3)
    done = {
        "message_id": "0123456789abcdef0123456789abcdef",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": len(words), "completion_tokens": len(words)},
        "timings": {"ttft_ms": total_ms, "tokens_per_s": 1000.0, "total_ms": total_ms},
    }
    complete = {"status": "complete", "chunk": {"metadata": done}}
    await ws.send(_render(request_id, len(words) + 1, complete))


async def _handler(ws: ServerConnection) -> None:
    async for raw in ws:
        frame = json.loads(raw)
        request_id = frame.get("request_id", "")
        if frame.get("type") == "ping":
            await ws.send(_render(request_id, 0, {"status": "pong"}))
        else:
            await _answer(ws, request_id, frame["text"])


async def _serve(port: int) -> None:
    async with serve(_handler, "127.0.0.1", port, max_size=None):
        await asyncio.Future()  # until terminated


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(int(sys.argv[1])))
