"""A small protocol-v1 client for tests: send frames, collect a request's frames in order."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from websockets.asyncio.client import ClientConnection

from tests.support.timeouts import scaled

Frame = dict[str, Any]


class ProtocolClient:
    """Reads every frame off the socket and files it under its request_id."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: dict[str, list[Frame]] = defaultdict(list)
        self.order: list[Frame] = []

    async def send(self, frame: Frame | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def next_frame(self) -> Frame:
        async with asyncio.timeout(scaled(30)):
            frame: Frame = json.loads(await self.ws.recv())
        self.frames[frame["request_id"]].append(frame)
        self.order.append(frame)
        return frame

    async def until(self, request_id: str, *statuses: str) -> list[Frame]:
        """Read until `request_id` gets a frame with one of `statuses`; return its frames."""
        wanted = statuses or ("complete", "error")
        while not any(f["status"] in wanted for f in self.frames[request_id]):
            await self.next_frame()
        return self.frames[request_id]

    async def chat(self, request_id: str, text: str, **fields: Any) -> list[Frame]:
        await self.send({"type": "chat", "request_id": request_id, "text": text, **fields})
        return await self.until(request_id)


def resume_token(frames: list[Frame]) -> str:
    """The resume token of a request, from its `processing` frame."""
    token: str = next(f for f in frames if f["status"] == "processing")["chunk"]["metadata"][
        "resume_token"
    ]
    return token


def resume_frame(request_id: str, after_seq: int, token: str | None) -> Frame:
    frame: Frame = {"type": "resume", "request_id": request_id, "after_seq": after_seq}
    if token is not None:
        frame["token"] = token
    return frame


def text_of(frames: list[Frame]) -> str:
    return "".join(
        f["chunk"]["data"]
        for f in frames
        if f["status"] == "chunk" and f["chunk"]["type"] == "text"
    )
