"""`POST /chat/stream`: one chat turn over plain HTTP, streamed as NDJSON (seed 002's API).

The request body is a `chat` frame of the WebSocket protocol without `type` (`text`, optional
`session_id`, `agent_id`, `parent_id`, `options`, `request_id`), checked by the same parser,
with seed 002's names accepted too: `prompt` for `text`, `model_name` for `options.model`.

The turn runs as a `Run` of the server's `RunRegistry`, like a socket's: its frames are journaled
before they are written, a client that goes away leaves the answer to the disconnect policy (and
`resume` on /ws/chat picks it up by the `request_id` and `resume_token` of the `start` line), and
a shutdown drains it. A body sent again with the `request_id` and `text` of an ended request (its
client never learned the outcome) streams that request's journal instead of asking again. Each
line is one frame rendered as `{"type", "seq", "data"}`:

    queued       queue_position, waiting_for (a turn waiting for its session or its model)
    start        request_id, session_id, user_message_id, model, queue_position, created_session,
                 resume_token
    token        text
    thinking     text (with options.show_thoughts)
    tool_call    id, name, arguments
    tool_result  id, name (and tool_name, seed 002's), result or error, duration_ms
    done         finish_reason, message_id, usage, timings (the answer is stored)
    error        code, message

`POST /api/v1/generate/stream` is seed 000's name for the same turn on the same core: the same
body (its `{"session_id": "demo", "prompt": "Say hello"}`), a `session_id` that names no session
yet creates that session (seed 000's clients name their sessions), and the lines seed 000's
names: `text` for `token`, `tool_started` for `tool_call`, `tool_complete` for `tool_result`
(the other types, and every line's `data`, as above).

The body is read by `tether.transports.http_body` (JSON only, at most `limits.max_frame_bytes`).
A turn refused before it starts (bad body, unknown session or model, a full queue) is answered
with an HTTP error status and `{"error": {"code", "message"}}` instead of a stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tether import jsonsafe
from tether.chat import Turn
from tether.errors import BadRequest, TooLarge
from tether.http_errors import error_body
from tether.protocol import (
    ChatFrame,
    ChunkBody,
    CompleteBody,
    ErrorBody,
    ProcessingBody,
    ProtocolError,
    QueuedBody,
    ServerFrame,
    ToolCallBody,
    ToolResultBody,
    parse_client_frame,
)
from tether.runs import Run, Watcher
from tether.transports.http_body import read_body
from tether.transports.ws import turn_from_frame

NDJSON = "application/x-ndjson"
# Seed 000's names of the line types that differ from ours (`/api/v1/generate/stream`).
SEED_000_TYPES: Mapping[str, str] = {
    "token": "text",
    "tool_call": "tool_started",
    "tool_result": "tool_complete",
}
LineRenderer = Callable[[ServerFrame], bytes]


class StreamSink:
    """A run's frames for one HTTP response, in order; `None` once the final one is in."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[ServerFrame | None] = asyncio.Queue()

    def put(self, frame: ServerFrame) -> None:
        self.frames.put_nowait(frame)

    async def room(self) -> bool:
        return True  # a new run has nothing to replay

    def end(self, _watcher: Watcher) -> None:
        self.frames.put_nowait(None)


async def _chat_body(request: Request) -> ChatFrame:
    services = request.app.state.services
    return parse_chat_body(
        await read_body(request, services.settings.limits.max_frame_bytes),
        max_text_chars=services.settings.limits.max_text_chars,
    )


async def chat_stream(request: Request) -> Response:
    return await _answer(request, await _chat_body(request), ndjson_line)


async def generate_stream(request: Request) -> Response:
    """Seed 000's `/api/v1/generate/stream`: a named session is made on first use."""
    frame = await _chat_body(request)
    if frame.session_id is not None:
        await request.app.state.services.store.ensure_session(frame.session_id)
    return await _answer(request, frame, seed_000_line)


async def _answer(request: Request, frame: ChatFrame, render: LineRenderer) -> Response:
    # Sent again after it ended, the same question gets what became of it, as a resume would
    # send (the run finds out in its first transaction: tether.runs).
    return await stream_turn(request, turn_from_frame(frame), render=render)


async def stream_turn(request: Request, turn: Turn, render: LineRenderer | None = None) -> Response:
    """Run `turn` on the server's RunRegistry and answer its frames as NDJSON lines (rendered
    by `render`, `ndjson_line` by default), or an HTTP error status when it is refused before
    it starts."""
    sink = StreamSink()
    services = request.app.state.services
    watcher = services.runs.start(turn, sink, sink.end, transport="ndjson")  # Conflict, Busy
    first = await sink.frames.get()
    assert first is not None  # a run's last frame is `complete` or `error`
    if isinstance(first.body, ErrorBody):  # refused before it started: say so with the status
        watcher.run.unwatch(watcher)
        status, error = error_body(request.url.path, first.body.code, first.body.message)
        return JSONResponse(error, status_code=status)
    return StreamingResponse(
        _lines(first, sink, watcher.run, watcher, render or ndjson_line),
        media_type=NDJSON,
        headers=_stream_headers(turn.request_id),
    )


def _stream_headers(request_id: str) -> dict[str, str]:
    headers = {"Cache-Control": "no-store"}
    if request_id.isascii():  # a header is latin-1; other ids are in the `start` line only
        headers["X-Request-Id"] = request_id
    return headers


async def _lines(
    first: ServerFrame, sink: StreamSink, run: Run, watcher: Watcher, render: LineRenderer
) -> AsyncIterator[bytes]:
    try:
        yield render(first)
        while (frame := await sink.frames.get()) is not None:
            yield render(frame)
    finally:
        # The answer ended, or the client went away (the response is cancelled): in that case
        # the run goes on under the disconnect policy, resumable on /ws/chat.
        run.unwatch(watcher)


def parse_chat_body(raw: bytes, *, max_text_chars: int) -> ChatFrame:
    """The body as a `chat` frame, seed 002's names mapped; raises BadRequest or TooLarge."""
    try:
        data = jsonsafe.loads(raw, finite=False) if raw.strip() else None
    except jsonsafe.JSONInputError as exc:
        raise BadRequest(f"request body {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object with `text` (or `prompt`)")
    if "type" in data:
        raise BadRequest("type: not a field of /chat/stream (the body is one chat turn)")
    for seed_name, name in (("prompt", "text"), ("model_name", "model")):
        if seed_name not in data:
            continue
        value = data.pop(seed_name)
        if name == "text":
            if "text" in data:
                raise BadRequest("give `text` or `prompt`, not both")
            data["text"] = value
        else:
            options = data.setdefault("options", {})
            if not isinstance(options, dict) or "model" in options:
                raise BadRequest("give `options.model` or `model_name`, not both")
            options["model"] = value
    try:
        frame = parse_client_frame(
            json.dumps({**data, "type": "chat"}), max_text_chars=max_text_chars
        )
    except ProtocolError as exc:
        error = TooLarge if exc.code == "too_large" else BadRequest
        raise error(exc.message) from None
    assert isinstance(frame, ChatFrame)
    return frame


def ndjson_line(frame: ServerFrame) -> bytes:
    """One protocol frame as an NDJSON line."""
    return _encode(ndjson_event(frame))


def seed_000_line(frame: ServerFrame) -> bytes:
    """One protocol frame as a line of `/api/v1/generate/stream` (seed 000's type names)."""
    line = ndjson_event(frame)
    line["type"] = SEED_000_TYPES.get(line["type"], line["type"])
    return _encode(line)


def ndjson_event(frame: ServerFrame) -> dict[str, Any]:
    """One protocol frame as the `{"type", "seq", "data"}` object of its NDJSON line."""
    kind: str
    data: dict[str, Any]
    match frame.body:
        case QueuedBody(queue_position=position, waiting_for=waiting_for):
            kind, data = "queued", {"queue_position": position, "waiting_for": waiting_for}
        case ProcessingBody():
            kind, data = "start", {"request_id": frame.request_id, **frame.body.metadata()}
        case ChunkBody(kind=chunk_kind, text=text):
            kind, data = ("token" if chunk_kind == "text" else chunk_kind), {"text": text}
        case ToolCallBody():
            kind, data = "tool_call", frame.body.data()
        case ToolResultBody(call_id=call_id, name=name):
            # `name` as on the socket; `tool_name` as seed 002 has it.
            outcome = {"id": call_id, "name": name, "tool_name": name}
            kind, data = "tool_result", outcome | frame.body.data()
        case CompleteBody():
            kind, data = "done", frame.body.metadata()
        case ErrorBody():
            kind, data = "error", frame.body.wire()["error"]
        case _:  # a pong is never one of a run's frames
            raise ValueError(f"no NDJSON line for {frame.body!r}")
    return {"type": kind, "seq": frame.seq, "data": data}


def _encode(line: dict[str, Any]) -> bytes:
    text = json.dumps(line, ensure_ascii=False)
    if not jsonsafe.is_unicode(text):  # a lone surrogate: JSON's \u escapes carry it
        text = json.dumps(line)
    return (text + "\n").encode()


routes = [
    Route("/chat/stream", chat_stream, methods=["POST"]),
    Route("/api/v1/generate/stream", generate_stream, methods=["POST"]),
]
