"""WebSocket protocol v1: the client frames we accept and the server frames we send.

Client frames are validated with pydantic in strict mode, so a wrong-typed field is refused
rather than coerced (`"3"` or `true` is no `after_seq`, `"yes"` no `tools`; a JSON integer still
passes for a float such as `temperature`), and NaN, Infinity and numbers past the float range are
refused before that (`tether.jsonsafe`). Every way a frame can be wrong becomes a
`ProtocolError` with a stable code and, when the frame named one, its request_id. Server frames
are rendered from the chat core's events with a per-request `seq` by `RequestFrames`.
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from tether import jsonsafe
from tether.engines.base import FinishReason, GenerationOptions, Usage
from tether.events import (
    Accepted,
    ChatEvent,
    Completed,
    Failed,
    Queued,
    TextDelta,
    ThinkingDelta,
    Timings,
    ToolCallFinished,
    ToolCallStarted,
)

PROTOCOL_VERSION = 1
ID_MAX_CHARS = 200


def id_problem(value: str) -> str | None:
    """What is wrong with `value` as an id (of a request, session, agent, message or model), or
    None: 1 to 200 characters, none of them a control character (`\\x00`, a newline, ...) or a
    lone surrogate, so that an id can be logged, stored and sent back as it came."""
    if not 0 < len(value) <= ID_MAX_CHARS:
        return f"must be 1 to {ID_MAX_CHARS} characters"
    if any(unicodedata.category(char) == "Cc" for char in value):
        return "must not contain control characters"
    if not jsonsafe.is_unicode(value):
        return "must not contain lone surrogates"
    return None


def _valid_id(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# What `id_problem` allows, as JSON schema (for tether.openapi; lone surrogates aside).
ID_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": ID_MAX_CHARS,
    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
}
Id = Annotated[str, AfterValidator(_valid_id), WithJsonSchema(ID_SCHEMA)]
RequestId = Id
# Bounds of `options`: llama.cpp and OpenAI-style servers take a 64-bit seed; a few short stop
# strings are what anyone uses (OpenAI allows 4), and each is matched against every token.
SEED_RANGE = (-(2**63), 2**63 - 1)
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 200
MAX_TOKENS = 1_000_000


class _Frame(BaseModel):
    # Unknown top-level fields are ignored so newer clients keep working with older servers.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ChatOptions(BaseModel):
    # Unknown options are refused: a misspelt `temprature` should not be silently ignored.
    # The seeds' names are aliases of ours, here for every way options arrive (socket frames,
    # NDJSON bodies, agents' default_options): seed 004's `maxNewTokens` (and the
    # `max_new_tokens` of Hugging Face) for `max_tokens`. Giving both is refused (extra key).
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Id | None = None
    temperature: float | None = Field(default=None, ge=0, le=5)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOKENS,
        validation_alias=AliasChoices("max_tokens", "maxNewTokens", "max_new_tokens"),
    )
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: list[str] | str | None = None
    tools: bool | None = None  # None: offer tools if the model's template supports them
    show_thoughts: bool = False
    token_delay_ms: int = Field(default=0, ge=0, le=1000)

    @field_validator("stop")
    @classmethod
    def _few_short_stops(cls, stop: list[str] | str | None) -> list[str] | str | None:
        strings = [stop] if isinstance(stop, str) else stop or []
        if len(strings) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, not {len(strings)}")
        if not all(0 < len(string) <= MAX_STOP_CHARS for string in strings):
            raise ValueError(f"each stop string must have 1 to {MAX_STOP_CHARS} characters")
        return stop

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def generation_options(self) -> GenerationOptions:
        """What the engine is told of these options."""
        return GenerationOptions(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
            stop=self.stop_sequences(),
            token_delay_ms=self.token_delay_ms,
        )

    def over(self, defaults: ChatOptions) -> ChatOptions:
        """These options over `defaults` (an agent's), key by key: what these set wins, also
        when set to null; what they leave out comes from `defaults`."""
        return defaults.model_copy(update=self.model_dump(exclude_unset=True))


def parse_options(data: object, *, name: str = "options") -> ChatOptions:
    """`data` (parsed JSON) as chat options, as strictly as a chat frame's; raises
    ProtocolError (bad_request) whose message names each wrong key under `name`."""
    try:
        return ChatOptions.model_validate(data, strict=True)
    except ValidationError as exc:
        raise ProtocolError("bad_request", _describe(exc, prefix=name)) from None


class ChatFrame(_Frame):
    """A new user message, answered: after `parent_id` (a branch), or beside the user message
    `sibling_of` (an edit: same parent, so also of a session's first message, which has none),
    else after the session's active leaf. `sibling_of` needs `session_id` and excludes
    `parent_id`."""

    type: Literal["chat"]
    request_id: RequestId
    text: str
    session_id: Id | None = None
    agent_id: Id | None = None
    parent_id: Id | None = None
    sibling_of: Id | None = None
    options: ChatOptions = ChatOptions()

    def placement_problem(self) -> str | None:
        """What is wrong with where this frame puts its message, or None."""
        if self.sibling_of is None:
            return None
        if self.parent_id is not None:
            return "give parent_id or sibling_of, not both"
        if self.session_id is None:
            return "sibling_of needs the session_id of its message"
        return None


class RegenerateFrame(_Frame):
    """Answer a stored user message again (`message_id`, or any message of its turn): a new
    answer beside the earlier ones, no second copy of the user's message."""

    type: Literal["regenerate"]
    request_id: RequestId
    session_id: str
    message_id: str
    options: ChatOptions = ChatOptions()


# The `resume_token` of the request's `processing` frame; needed from a socket other than the
# one that started the request (see tether.runs).
ResumeToken = Annotated[str, Field(min_length=1, max_length=200)]


class CancelFrame(_Frame):
    type: Literal["cancel"]
    request_id: RequestId
    token: ResumeToken | None = None


class ResumeFrame(_Frame):
    type: Literal["resume"]
    request_id: RequestId
    after_seq: int = Field(default=-1, ge=-1)
    token: ResumeToken | None = None


class PingFrame(_Frame):
    type: Literal["ping"]
    request_id: RequestId


AnyClientFrame = ChatFrame | RegenerateFrame | CancelFrame | ResumeFrame | PingFrame
ClientFrame = Annotated[AnyClientFrame, Field(discriminator="type")]
_CLIENT_FRAME: TypeAdapter[AnyClientFrame] = TypeAdapter(ClientFrame)
CLIENT_TYPES = ("chat", "regenerate", "cancel", "resume", "ping")
# Frames about an earlier request: without its id they cannot mean anything (chat and ping get
# a fresh id from the server instead).
NEEDS_REQUEST_ID = {
    "cancel": "cancel needs the request_id of the request to stop",
    "resume": "resume needs the request_id of the request to resume",
}


@dataclass(frozen=True, slots=True)
class ProtocolError(Exception):
    code: str
    message: str
    request_id: str | None = None


def _describe(exc: ValidationError, *, prefix: str | None = None) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        # Drop the discriminator tag pydantic puts first in the location.
        loc = [str(p) for p in error["loc"] if p not in CLIENT_TYPES]
        if prefix is not None:
            loc.insert(0, prefix)
        parts.append(f"{'.'.join(loc) or 'frame'}: {error['msg']}")
    return "; ".join(parts)


def usable_request_id(value: object) -> bool:
    """A string that can be a request id and be sent back (see `id_problem`)."""
    return isinstance(value, str) and id_problem(value) is None


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    """Accept the seed-003 form `{"action": "chat", "payload": {"text": ...}}` as `chat`."""
    if "type" not in data and "action" in data:
        data = dict(data)
        data["type"] = data.pop("action")
        payload = data.pop("payload", None)
        if isinstance(payload, dict):
            data = {**payload, **data}
    return data


def parse_client_frame(raw: str | bytes, *, max_text_chars: int) -> AnyClientFrame:
    """Parse one client frame or raise ProtocolError (bad_request, too_large)."""
    try:
        data = jsonsafe.loads(raw, finite=False)  # refused below, under the request's id
    except jsonsafe.JSONInputError as exc:
        raise ProtocolError("bad_request", f"frame {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", "frame must be a JSON object")
    data = _normalise(data)
    kind = data.get("type")
    request_id = data.get("request_id")
    if request_id is None:
        if isinstance(kind, str) and kind in NEEDS_REQUEST_ID:
            raise ProtocolError("bad_request", NEEDS_REQUEST_ID[kind])
        data["request_id"] = request_id = uuid.uuid4().hex
    elif not usable_request_id(request_id):
        raise ProtocolError(
            "bad_request",
            "request_id must be a string of 1 to 200 characters, without control characters",
        )
    if jsonsafe.has_lone_surrogates(raw, data):
        raise ProtocolError("bad_request", f"frame {jsonsafe.LONE_SURROGATE}", request_id)
    if jsonsafe.has_non_finite(data):
        raise ProtocolError("bad_request", f"frame {jsonsafe.NON_FINITE}", request_id)
    if kind is None:
        raise ProtocolError("bad_request", "frame has no type", request_id)
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "bad_request",
            f"unknown frame type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}",
            request_id,
        )
    text = data.get("text")
    if kind == "chat" and isinstance(text, str) and len(text) > max_text_chars:
        raise ProtocolError(
            "too_large",
            f"text has {len(text)} characters; the limit is {max_text_chars}",
            request_id,
        )
    try:
        frame = _CLIENT_FRAME.validate_python(data, strict=True)
    except ValidationError as exc:
        raise ProtocolError("bad_request", _describe(exc), request_id) from None
    if isinstance(frame, ChatFrame):
        problem = "text must not be empty" if not frame.text.strip() else frame.placement_problem()
        if problem is not None:
            raise ProtocolError("bad_request", problem, request_id)
    return frame


# -- server frames --------------------------------------------------------------------------


def _usage(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}


@dataclass(frozen=True, slots=True)
class QueuedBody:
    queue_position: int
    waiting_for: str

    def wire(self) -> dict[str, Any]:
        metadata = {"queue_position": self.queue_position, "waiting_for": self.waiting_for}
        return {"status": "queued", "chunk": {"metadata": metadata}}


@dataclass(frozen=True, slots=True)
class ProcessingBody:
    """The request was accepted: its user message is stored (`user_message_id`, in
    `session_id`, which `created_session` says is new), `queue_position` requests go before it
    on `model`'s line; `resume_token` lets another socket resume or cancel it (a run's
    `processing` frame always has one; None: not sent)."""

    session_id: str
    user_message_id: str
    model: str
    queue_position: int
    created_session: bool
    resume_token: str | None = None

    def metadata(self) -> dict[str, Any]:
        """The frame's `metadata` object (and the NDJSON `start` line's data)."""
        metadata: dict[str, Any] = {
            "session_id": self.session_id,
            "user_message_id": self.user_message_id,
            "model": self.model,
            "queue_position": self.queue_position,
            "created_session": self.created_session,
        }
        if self.resume_token is not None:
            metadata["resume_token"] = self.resume_token
        return metadata

    def wire(self) -> dict[str, Any]:
        return {"status": "processing", "chunk": {"metadata": self.metadata()}}


@dataclass(frozen=True, slots=True)
class ChunkBody:
    kind: Literal["text", "thinking"]
    text: str

    def wire(self) -> dict[str, Any]:
        return {"status": "chunk", "chunk": {"type": self.kind, "data": self.text}}


@dataclass(frozen=True, slots=True)
class ToolCallBody:
    """A tool call began: `arguments` as the model gave them (any JSON object)."""

    call_id: str
    name: str
    arguments: dict[str, Any]

    def data(self) -> dict[str, Any]:
        return {"id": self.call_id, "name": self.name, "arguments": self.arguments}

    def wire(self) -> dict[str, Any]:
        return {"status": "tool", "chunk": {"type": "tool_call", "data": self.data()}}


@dataclass(frozen=True, slots=True)
class ToolResultBody:
    """A tool call ended: its `result`, or its `error` (then `result` is not sent)."""

    call_id: str
    name: str
    result: str | None
    error: str | None
    duration_ms: float

    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.call_id, "name": self.name}
        if self.error is None:
            data["result"] = self.result
        else:
            data["error"] = self.error
        data["duration_ms"] = self.duration_ms
        return data

    def wire(self) -> dict[str, Any]:
        return {"status": "tool", "chunk": {"type": "tool_result", "data": self.data()}}


@dataclass(frozen=True, slots=True)
class AnswerFacts:
    """How an answer came about, beside its usage in the `complete` metadata (a fact left None
    is not sent). From the engine's final delta (`Completed.extra`, whose keys are these
    names), or from recovery."""

    trimmed_messages: int | None = None  # llamacpp: older messages left out of the window
    cached_tokens: int | None = None  # llamacpp: prompt tokens reused, not evaluated
    truncated_messages: int | None = None  # llamacpp: messages shortened to fit
    usage_estimated: bool | None = None  # openai, mlc: the upstream sent no usage
    recovered: bool | None = None  # closed at start-up after a crash (`tether.recovery`)

    def wire(self) -> dict[str, Any]:
        return {name: value for name in _FACT_NAMES if (value := getattr(self, name)) is not None}


_FACT_NAMES = tuple(AnswerFacts.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class CompleteBody:
    """The answer is stored as `message_id`."""

    message_id: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    facts: AnswerFacts = field(default_factory=AnswerFacts)

    def metadata(self) -> dict[str, Any]:
        """The frame's `metadata` object (and the NDJSON `done` line's data)."""
        timings = self.timings
        return {
            "message_id": self.message_id,
            "finish_reason": self.finish_reason,
            "usage": _usage(self.usage),
            "timings": {
                "ttft_ms": timings.ttft_ms,
                "tokens_per_s": timings.tokens_per_s,
                "total_ms": timings.total_ms,
            },
            **self.facts.wire(),
        }

    def wire(self) -> dict[str, Any]:
        return {"status": "complete", "chunk": {"metadata": self.metadata()}}


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """`code`, `message` and, rarely, more (`details`, sent beside them in `error`)."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        error = {"code": self.code, "message": self.message, **self.details}
        return {"status": "error", "error": error}


@dataclass(frozen=True, slots=True)
class PongBody:
    def wire(self) -> dict[str, Any]:
        return {"status": "pong"}


FrameBody = (
    QueuedBody
    | ProcessingBody
    | ChunkBody
    | ToolCallBody
    | ToolResultBody
    | CompleteBody
    | ErrorBody
    | PongBody
)
FINAL_BODIES = (CompleteBody, ErrorBody)  # a request's last frame is one of these


@dataclass(frozen=True, slots=True)
class ServerFrame:
    """One server frame: its request, its `seq`, its typed body and its JSON text (rendered
    once, or as read from the journal), which is what sockets and the journal get.

    `seq` None: a frame about the request that is not one of its own (a refusal of a frame the
    client sent about it, a pong); never journaled, so the request's seq stays its own."""

    request_id: str
    seq: int | None
    body: FrameBody
    text: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.text:
            head: dict[str, Any] = {"request_id": self.request_id}
            if self.seq is not None:
                head["seq"] = self.seq
            object.__setattr__(self, "text", render_frame({**head, **self.body.wire()}))

    def encode(self) -> str:
        return self.text

    @property
    def final(self) -> bool:
        return isinstance(self.body, FINAL_BODIES)


def frame_body(event: ChatEvent) -> FrameBody:
    """The typed body of the frame for `event`."""
    match event:
        case Queued():
            return QueuedBody(event.queue_position, event.waiting_for)
        case TextDelta(text=text):
            return ChunkBody("text", text)
        case ThinkingDelta(text=text):
            return ChunkBody("thinking", text)
        case Accepted():
            return ProcessingBody(
                event.session_id,
                event.user_message_id,
                event.model,
                event.queue_position,
                event.created_session,
            )
        case ToolCallStarted():
            return ToolCallBody(event.call_id, event.name, event.arguments)
        case ToolCallFinished():
            return ToolResultBody(
                event.call_id, event.name, event.result, event.error, event.duration_ms
            )
        case Completed():
            facts = AnswerFacts(**event.extra)  # an engine's new fact needs its field there
            return CompleteBody(
                event.message_id, event.finish_reason, event.usage, event.timings, facts
            )
        case Failed(code=code, message=message):
            return ErrorBody(code, message)
    raise TypeError(f"not a chat event: {event!r}")


def processing_body(event: Accepted, resume_token: str) -> ProcessingBody:
    """The `processing` frame of a run: the event's metadata and the request's resume token."""
    body = frame_body(event)
    assert isinstance(body, ProcessingBody)
    return replace(body, resume_token=resume_token)


class FrameError(ValueError):
    """A text (journaled, or received by a client) that is not a server frame of this
    protocol."""


def decode_frame(text: str) -> ServerFrame:
    """A frame's text (as journaled, as sent) back into its typed frame, keeping `text`;
    raises FrameError for anything else (a missing or wrong-typed field of a body included).
    Facts of a `complete` frame this version does not know are left out."""
    try:
        frame = json.loads(text)
        request_id, seq, body = frame["request_id"], frame.get("seq"), _decode_body(frame)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, FrameError):
            raise
        raise FrameError(f"not a server frame ({exc!r}): {text[:200]!r}") from None
    return ServerFrame(request_id, seq, body, text)


def _decode_body(frame: dict[str, Any]) -> FrameBody:
    status = frame["status"]
    chunk = frame.get("chunk") or {}
    match status, chunk.get("type"):
        case "queued", _:
            metadata = chunk["metadata"]
            return QueuedBody(metadata["queue_position"], metadata["waiting_for"])
        case "processing", _:
            return _PROCESSING.validate_python(chunk["metadata"])
        case "chunk", ("text" | "thinking") as kind:
            return ChunkBody(kind, chunk["data"])
        case "tool", "tool_call":
            call = chunk["data"]
            return _TOOL_CALL.validate_python({**call, "call_id": call["id"]})
        case "tool", "tool_result":
            outcome = chunk["data"]
            fields = {"result": None, "error": None, **outcome, "call_id": outcome["id"]}
            return _TOOL_RESULT.validate_python(fields)
        case "complete", _:
            metadata = chunk["metadata"]
            facts = {name: metadata[name] for name in _FACT_NAMES if name in metadata}
            return _COMPLETE.validate_python({**metadata, "facts": facts})
        case "error", _:
            details = dict(frame["error"])
            return ErrorBody(details.pop("code"), details.pop("message"), details)
        case "pong", _:
            return PongBody()
    raise FrameError(f"unknown frame: status {status!r}, chunk type {chunk.get('type')!r}")


# Lax (`"3"` is a queue position): these read Tether's own frames back, not a client's.
_PROCESSING = TypeAdapter(ProcessingBody)
_TOOL_CALL = TypeAdapter(ToolCallBody)
_TOOL_RESULT = TypeAdapter(ToolResultBody)
_COMPLETE = TypeAdapter(CompleteBody)


class RequestFrames:
    """Numbers the frames of one request: `seq` starts at 0 and rises by one."""

    __slots__ = ("next_seq", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.next_seq = 0

    def next(self, body: FrameBody) -> ServerFrame:
        """`body` as this request's next frame."""
        frame = ServerFrame(self.request_id, self.next_seq, body)
        self.next_seq += 1
        return frame


def render_frame(frame: dict[str, Any]) -> str:
    text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
    if not jsonsafe.is_unicode(text):
        # A lone surrogate (from a tool result, an echoed key) cannot go out as UTF-8;
        # JSON's \u escapes carry it.
        text = json.dumps(frame, separators=(",", ":"))
    return text
