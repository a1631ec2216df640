"""The OpenAI-compatible API: `POST /v1/chat/completions`, `GET /v1/models[/{id}]`.

What the official SDKs, LangChain, LiteLLM, Open WebUI or curl scripts send, on the same chat core
as the socket: a request becomes a `chat.StatelessTurn` (the whole conversation in the request,
nothing stored, as OpenAI's route is) run by `ChatService.run_stateless_turn`, so it takes its
place in the model's line like a socket's turn (a full line is 429), and a client that hangs up
cancels it within a token.

Request fields (others are ignored, as OpenAI ignores them): `model` (omitted: the default model;
unknown: 404 `model_not_found`), `messages` (system/developer/user/assistant/tool; content a
string or text parts; assistant `tool_calls`, tool `tool_call_id`), `temperature`, `top_p`,
`max_tokens` / `max_completion_tokens`, `stop`, `seed`, `n` (1 only), `stream`,
`stream_options.include_usage`, `tools` + `tool_choice` (`none`: no tools offered, `auto`;
`required` or a named function force the answer to be one call: a grammar of the `<tool_call>`
markup on llamacpp, passed on as `tool_choice` by the openai engine, 400 on engines that cannot),
`response_format` (`text`, `json_object`, `json_schema`:
enforced by a grammar on llamacpp, passed on by the openai engine, 400 on engines that cannot;
a forced call outranks it).
The request's tools are offered to the model as Tether offers its own (`tools/prompt.py`, read
back by the detector); its calls come back as `tool_calls` for the client to run. Tether's own
tools are offered on this route only with `openai_api.run_server_tools`: then the server runs
their calls and answers with what the model says after (`chat._StatelessSteps`).

Every refusal has OpenAI's error body, `{"error": {"message", "type", "param", "code"}}` (built
by `openai_error` and `tether.openai_errors`, also for the app's handlers and the security
middleware under `/v1/`), with the status the SDKs map to their exception types: 400, 401, 404,
413, 429, 500, 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive

from tether.chat import StatelessTurn, TurnControl
from tether.engines.base import ChatMessage, ForcedCall, ModelInfo, ToolCall, Usage
from tether.errors import TetherError
from tether.events import (
    Completed,
    Failed,
    Started,
    StatelessEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallsRequested,
)
from tether.openai_errors import openai_error_body, openai_shape
from tether.protocol import ChatOptions
from tether.tools.base import ToolSpec
from tether.transports.http_body import read_body

PREFIX = "/v1/"
SSE = "text/event-stream"
MAX_STOP_STRINGS = 4

# -- errors -----------------------------------------------------------------------------------


def openai_error(
    status: int,
    message: str,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The one builder of the /v1 routes' error responses."""
    return JSONResponse(
        openai_error_body(message, error_type, param, code), status_code=status, headers=headers
    )


def error_for_code(code: str, message: str) -> JSONResponse:
    """A Tether error code (a `Failed` event's, a TetherError's) as OpenAI's error response."""
    status, body = openai_shape(code, message)
    return JSONResponse(body, status_code=status)


class InvalidRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# -- the request ------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: str


class MessageToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class RequestMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None


class FunctionSpec(_Body):
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class RequestTool(_Body):
    type: Literal["function"]
    function: FunctionSpec


class FunctionName(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_Body):
    name: str = "answer"
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str | None = None
    messages: list[RequestMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    tools: list[RequestTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None


def parse_request(raw: bytes) -> ChatCompletionRequest:
    """The body as a request; raises InvalidRequest naming the first bad field."""
    try:
        request = ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        where = f"{param}: " if param else ""
        raise InvalidRequest(f"{where}{error['msg']}", param) from None
    if request.n not in (None, 1):
        raise InvalidRequest("n: only 1 choice is supported", "n")
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"stop: at most {MAX_STOP_STRINGS} sequences", "stop")
    return request


def _content(message: RequestMessage) -> str:
    if isinstance(message.content, list):
        return "".join(part.text for part in message.content)
    return message.content or ""


def _arguments(call: MessageToolCall, where: str) -> dict[str, Any]:
    try:
        arguments = json.loads(call.function.arguments) if call.function.arguments else {}
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"{where}: must be a JSON object as a string", where)
    return arguments


def chat_messages(messages: Sequence[RequestMessage]) -> tuple[ChatMessage, ...]:
    """The request's messages as the engines' `ChatMessage`s (a tool result gets the name of
    the call it answers)."""
    names: dict[str, str] = {}
    out: list[ChatMessage] = []
    for index, message in enumerate(messages):
        if message.role == "tool":
            if not message.tool_call_id:
                raise InvalidRequest(
                    f"messages.{index}.tool_call_id: required on a tool message",
                    f"messages.{index}.tool_call_id",
                )
            call_id = message.tool_call_id
            out.append(
                ChatMessage("tool", _content(message), names.get(call_id), tool_call_id=call_id)
            )
            continue
        calls = tuple(
            ToolCall(
                call.id,
                call.function.name,
                _arguments(call, f"messages.{index}.tool_calls.{number}.function.arguments"),
            )
            for number, call in enumerate(message.tool_calls or ())
        )
        names.update((call.id, call.name) for call in calls)
        role = "system" if message.role == "developer" else message.role
        out.append(ChatMessage(role, _content(message), tool_calls=calls))
    return tuple(out)


def _offered_tools(
    request: ChatCompletionRequest,
) -> tuple[tuple[ToolSpec, ...], ForcedCall | None]:
    """The tools offered to the model, and the call `tool_choice` forces (None: it chooses)."""
    specs = tuple(
        ToolSpec(tool.function.name, tool.function.description, tool.function.parameters)
        for tool in request.tools or ()
    )
    choice = request.tool_choice
    if choice in (None, "auto"):
        return specs, None
    if choice == "none":
        return (), None
    if not specs:
        raise InvalidRequest("tool_choice: forcing a tool call needs tools", "tool_choice")
    if choice == "required":
        return specs, ForcedCall()
    assert isinstance(choice, NamedToolChoice)
    if not any(spec.name == choice.function.name for spec in specs):
        raise InvalidRequest(
            f"tool_choice: no tool named {choice.function.name!r} in tools", "tool_choice"
        )
    return specs, ForcedCall(choice.function.name)


def _json_schema(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    if response_format.json_schema is None:
        raise InvalidRequest(
            "response_format.json_schema: required with type json_schema",
            "response_format.json_schema",
        )
    return response_format.json_schema.json_schema or {"type": "object"}


def stateless_turn(request: ChatCompletionRequest, request_id: str) -> StatelessTurn:
    """The one mapping of OpenAI's parameters onto Tether's turn and generation options."""
    try:
        options = ChatOptions(
            model=request.model or None,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_completion_tokens or request.max_tokens,
            seed=request.seed,
            stop=request.stop,
            # "none": no tools at all, the server's (`openai_api.run_server_tools`) included.
            tools=False if request.tool_choice == "none" else None,
        )
    except ValidationError as exc:  # Tether's bounds of a chat's options (seed, stop, ...)
        error = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in error["loc"])
        raise InvalidRequest(f"{param}: {error['msg']}", param) from None
    tools, forced_call = _offered_tools(request)
    return StatelessTurn(
        request_id=request_id,
        messages=chat_messages(request.messages),
        options=options,
        tools=tools,
        json_schema=_json_schema(request.response_format),
        forced_call=forced_call,
    )


# -- the answer -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Completion:
    """What every chunk of one answer repeats."""

    id: str
    created: int
    model: str
    # The SSE event of a text delta around its JSON string, rendered once: a token then costs
    # one string's encoding, not a whole chunk's (the bytes are the same).
    _text_event: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # JSON escapes a control character, so its rendering is found only where it was put.
        placeholder = json.dumps("\x00").encode()
        head, _, tail = self.delta({"content": "\x00"}).rpartition(placeholder)
        object.__setattr__(self, "_text_event", (head, tail))

    def text(self, text: str) -> bytes:
        """The SSE event of a text delta (as `delta({"content": text})`)."""
        head, tail = self._text_event
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse(self.chunk([choice]))


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def openai_usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def openai_tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": json.dumps(call.arguments, ensure_ascii=False),
            },
        }
        for call in calls
    ]


def finish_reason(completed: Completed, calls: Sequence[ToolCall]) -> str:
    if calls:
        return "tool_calls"
    return "length" if completed.finish_reason == "length" else "stop"


async def _sse_stream(
    completion: Completion,
    events: asyncio.Queue[StatelessEvent],
    include_usage: bool,
    task: asyncio.Task[None],
    control: TurnControl,
) -> AsyncIterator[bytes]:
    calls: Sequence[ToolCall] = ()
    try:
        yield completion.delta({"role": "assistant", "content": ""})
        while True:
            event = await events.get()
            if isinstance(event, TextDelta):
                yield completion.text(event.text)
            elif isinstance(event, ToolCallsRequested):
                calls = event.calls
                indexed = [{"index": i, **call} for i, call in enumerate(openai_tool_calls(calls))]
                yield completion.delta({"tool_calls": indexed})
            elif isinstance(event, Completed):
                yield completion.delta({}, finish_reason(event, calls))
                if include_usage:
                    yield sse(completion.chunk([], usage=openai_usage(event.usage)))
                break
            elif isinstance(event, Failed):  # after the stream began: said in the stream
                _status, body = openai_shape(event.code, event.message)
                yield sse(body)
                break
        yield b"data: [DONE]\n\n"
    finally:
        await _finish(task, control)  # the client went away: the answer stops within a token


async def _finish(task: asyncio.Task[None], control: TurnControl) -> None:
    if not task.done():
        control.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _collect(
    completion: Completion,
    events: asyncio.Queue[StatelessEvent],
    task: asyncio.Task[None],
    control: TurnControl,
    receive: Receive,
) -> Response:
    """The whole answer as one `chat.completion`; a client that hangs up cancels it."""
    text: list[str] = []
    calls: Sequence[ToolCall] = ()
    watch = asyncio.create_task(_until_disconnect(receive))
    try:
        while True:
            get = asyncio.create_task(events.get())
            done, _ = await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                return Response(status_code=499)  # nobody is there to read it
            event = get.result()
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, ToolCallsRequested):
                calls = event.calls
            elif isinstance(event, Failed):
                return error_for_code(event.code, event.message)
            elif isinstance(event, Completed):
                break
    finally:
        watch.cancel()
        await _finish(task, control)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = openai_tool_calls(calls)
    message["refusal"] = None
    return JSONResponse(
        {
            "id": completion.id,
            "object": "chat.completion",
            "created": completion.created,
            "model": completion.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason(event, calls),
                }
            ],
            "usage": openai_usage(event.usage),
        },
        headers={"X-Request-Id": completion.id},
    )


async def chat_completions(request: Request) -> Response:
    services = request.app.state.services
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    try:
        raw = await read_body(request, services.settings.limits.max_frame_bytes)
        body = parse_request(raw)
        turn = stateless_turn(body, completion_id)
    except InvalidRequest as exc:
        return openai_error(400, exc.message, param=exc.param)
    except TetherError as exc:
        return error_for_code(exc.code, exc.message)
    events: asyncio.Queue[StatelessEvent] = asyncio.Queue()
    control = TurnControl()

    async def emit(event: StatelessEvent) -> None:
        if not isinstance(event, ThinkingDelta):
            events.put_nowait(event)

    task = asyncio.create_task(
        services.metrics.observe_stateless(
            emit, lambda sink: services.chat.run_stateless_turn(turn, sink, control)
        )
    )
    try:
        first = await events.get()
    except BaseException:  # the handler was cancelled before the turn began
        await _finish(task, control)
        raise
    if isinstance(first, Failed):  # refused before it started
        await task
        return error_for_code(first.code, first.message)
    assert isinstance(first, Started)
    completion = Completion(completion_id, int(time.time()), first.model)
    if not body.stream:
        return await _collect(completion, events, task, control, request.receive)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _sse_stream(completion, events, include_usage, task, control),
        media_type=SSE,
        headers={"Cache-Control": "no-store", "X-Request-Id": completion_id},
    )


# -- models -----------------------------------------------------------------------------------


def openai_model(info: ModelInfo) -> dict[str, Any]:
    created = 0
    if info.path is not None:
        with contextlib.suppress(OSError):
            created = int(Path(info.path).stat().st_mtime)
    return {"id": info.id, "object": "model", "created": created, "owned_by": info.engine}


async def list_models(request: Request) -> Response:
    models = await request.app.state.services.engine.models()
    return JSONResponse({"object": "list", "data": [openai_model(info) for info in models]})


async def get_model(request: Request) -> Response:
    wanted = request.path_params["model"]
    for info in await request.app.state.services.engine.models():
        if info.id == wanted:
            return JSONResponse(openai_model(info))
    return openai_error(
        404, f"the model {wanted!r} does not exist", param="model", code="model_not_found"
    )


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
