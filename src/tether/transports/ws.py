"""`/ws/chat`: protocol v1 over one WebSocket, many interleaved requests.

Each chat request runs in its own asyncio task; frames of all requests share the socket through
one send lock, each request numbering its own frames. The socket only renders the chat core's
events: it knows nothing of engines, tools or SQL.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import structlog
from starlette.websockets import WebSocket

from tether.chat import ChatService, Turn, TurnControl, TurnOptions
from tether.config import LimitsSettings
from tether.engines.base import GenerationOptions
from tether.events import ChatEvent
from tether.protocol import (
    PONG_BODY,
    CancelFrame,
    ChatFrame,
    PingFrame,
    ProtocolError,
    RequestFrames,
    ResumeFrame,
    error_body,
    event_body,
    parse_client_frame,
)

log = structlog.get_logger("tether.ws")

# Finished requests remembered per socket, so a late `cancel` continues their seq quietly.
FINISHED_MEMORY = 256


def turn_from_frame(frame: ChatFrame) -> Turn:
    options = frame.options
    return Turn(
        request_id=frame.request_id,
        text=frame.text,
        session_id=frame.session_id,
        agent_id=frame.agent_id,
        parent_id=frame.parent_id,
        options=TurnOptions(
            model=options.model,
            generation=GenerationOptions(
                temperature=options.temperature,
                top_p=options.top_p,
                max_tokens=options.max_tokens,
                seed=options.seed,
                stop=options.stop_sequences(),
                token_delay_ms=options.token_delay_ms,
            ),
            show_thoughts=options.show_thoughts,
            tools=options.tools,
        ),
    )


class _Running:
    __slots__ = ("control", "frames", "task")

    def __init__(self, frames: RequestFrames, control: TurnControl) -> None:
        self.frames = frames
        self.control = control
        self.task: asyncio.Task[None] | None = None


class ChatSocket:
    """One client connection."""

    def __init__(self, websocket: WebSocket, chat: ChatService, limits: LimitsSettings) -> None:
        self.websocket = websocket
        self.chat = chat
        self.limits = limits
        self.running: dict[str, _Running] = {}
        self.finished: OrderedDict[str, RequestFrames] = OrderedDict()
        self._send_lock = asyncio.Lock()
        self._open = True

    async def serve(self) -> None:
        await self.websocket.accept()
        client = self.websocket.client
        log.info("ws.open", client=f"{client.host}:{client.port}" if client else None)
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                if raw is None:
                    raw = message.get("bytes") or b""
                await self.handle(raw)
        finally:
            self._open = False
            await self._stop_all()
            log.info("ws.close")

    async def _stop_all(self) -> None:
        # The client is gone: stop its turns; each stores what it had produced.
        tasks = [r.task for r in self.running.values() if r.task is not None]
        for running in self.running.values():
            running.control.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def send(self, text: str) -> None:
        if not self._open:
            return
        async with self._send_lock:
            try:
                await self.websocket.send_text(text)
            except Exception:  # the peer went away mid-send; the receive loop will see it
                self._open = False

    async def send_body(self, request_id: str, body: dict[str, Any]) -> None:
        frames = self._frames_for(request_id)
        await self.send(frames.render(body))

    def _frames_for(self, request_id: str) -> RequestFrames:
        if request_id in self.running:
            return self.running[request_id].frames
        return self.finished.get(request_id) or RequestFrames(request_id)

    async def handle(self, raw: str | bytes) -> None:
        try:
            frame = parse_client_frame(raw, max_text_chars=self.limits.max_text_chars)
        except ProtocolError as exc:
            await self.send_body(exc.request_id or "", error_body(exc.code, exc.message))
            return
        if isinstance(frame, ChatFrame):
            await self._start(frame)
        elif isinstance(frame, CancelFrame):
            await self._cancel(frame)
        elif isinstance(frame, PingFrame):
            await self.send_body(frame.request_id, PONG_BODY)
        elif isinstance(frame, ResumeFrame):
            await self.send_body(
                frame.request_id,
                error_body("not_implemented", "resume is not implemented by this server yet"),
            )

    async def _start(self, frame: ChatFrame) -> None:
        request_id = frame.request_id
        if request_id in self.running:
            await self.send_body(
                request_id,
                error_body("conflict", f"request {request_id!r} is already running"),
            )
            return
        if len(self.running) >= self.limits.max_requests_per_socket:
            await self.send_body(
                request_id,
                error_body(
                    "busy",
                    f"this socket already runs {len(self.running)} requests "
                    f"(limit {self.limits.max_requests_per_socket}); wait for one to complete",
                ),
            )
            return
        self.finished.pop(request_id, None)
        running = _Running(RequestFrames(request_id), TurnControl())
        self.running[request_id] = running
        running.task = asyncio.create_task(self._run(turn_from_frame(frame), running))

    async def _run(self, turn: Turn, running: _Running) -> None:
        async def emit(event: ChatEvent) -> None:
            await self.send(running.frames.render(event_body(event)))

        try:
            await self.chat.run_turn(turn, emit, running.control)
        except Exception:
            log.exception("ws.turn_crashed", request_id=turn.request_id)
            await self.send(
                running.frames.render(
                    error_body("internal", "internal error; the server log has the details")
                )
            )
        finally:
            del self.running[turn.request_id]
            self.finished[turn.request_id] = running.frames
            while len(self.finished) > FINISHED_MEMORY:
                self.finished.popitem(last=False)

    async def _cancel(self, frame: CancelFrame) -> None:
        running = self.running.get(frame.request_id)
        if running is not None:
            running.control.cancel()
        elif frame.request_id not in self.finished:
            await self.send_body(
                frame.request_id,
                error_body("not_found", f"no request {frame.request_id!r} on this socket"),
            )
        # A cancel that raced the request's completion needs no answer: `complete` said it all.


async def chat_endpoint(websocket: WebSocket) -> None:
    services = websocket.app.state.services
    await ChatSocket(websocket, services.chat, services.settings.limits).serve()
