"""What `GET /openapi.json` says of Tether's own HTTP routes (`tether.openapi.Operation`s).

Request models are the ones the routes validate with (`rest`, `history`, `protocol.ChatOptions`);
records the routes answer with `dataclasses.asdict` (sessions, agents, models, tools, search hits)
are described by those very dataclasses. The rest describe JSON built by hand (a message, health,
the NDJSON lines of `tether.transports.ndjson`); the schemathesis test checks them against what
the server answers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from tether.engines.base import ModelInfo, Role, ToolCall
from tether.openapi import Key, Operation, Reply
from tether.protocol import ChatOptions, Id, RequestId
from tether.store.base import Agent, MessageStatus, SearchHit, Session
from tether.tools.base import ToolSpec
from tether.tools.mcp import ServerState
from tether.transports.history import (
    ActiveBody,
    MessagesQuery,
    RegenerateBody,
    SearchQuery,
    TitleBody,
)
from tether.transports.ndjson import NDJSON
from tether.transports.rest import AgentBody, NewSessionBody, SessionsQuery

# -- answers --------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionOut(RootModel[Session]):
    pass


class Sessions(RootModel[list[Session]]):
    pass


class AgentOut(RootModel[Agent]):
    pass


class Agents(RootModel[list[Agent]]):
    pass


class Models(RootModel[list[ModelInfo]]):
    pass


class Tools(RootModel[list[ToolSpec]]):
    pass


class Deleted(_Out):
    deleted: int


class SearchResults(_Out):
    results: list[SearchHit]


class MessageUsage(_Out):
    prompt_tokens: int | None
    completion_tokens: int | None


class MessageOut(_Out):
    """`rest.message_json`: `name` and `tool_call_id` on tool messages, `tool_calls` when the
    model made some, `model`, `finish_reason` and `usage` on assistant messages."""

    id: str
    session_id: str
    parent_id: str | None
    role: Role
    content: str
    status: MessageStatus
    created_at: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    model: str | None = None
    finish_reason: str | None = None
    usage: MessageUsage | None = None


class MessageNode(MessageOut):
    children: list[str]  # the ids of the messages under this one
    siblings: list[str]  # the ids of the messages under its parent, itself included


class MessageNodes(RootModel[list[MessageNode]]):
    pass


class EngineState(_Out):
    state: Literal["ready", "no_model", "unavailable"]
    models: int
    error: str | None = None


class Health(_Out):
    status: Literal["ok", "degraded"]
    version: str
    protocol: int
    engine: str
    default_model: str | None
    engines: dict[str, EngineState]
    mcp: dict[str, ServerState]


class MetricsText(RootModel[str]):
    """Prometheus' text exposition format."""


class OpenApiDocument(RootModel[dict[str, Any]]):
    pass


# -- NDJSON lines (`tether.transports.ndjson.ndjson_line`) -----------------------------------


class StartData(_Out):
    request_id: str
    session_id: str
    user_message_id: str
    model: str
    queue_position: int
    created_session: bool
    resume_token: str  # what `resume` and `cancel` from another socket need


class QueuedData(_Out):
    queue_position: int
    waiting_for: str


class TextData(_Out):
    text: str


class ToolCallData(_Out):
    id: str
    name: str
    arguments: dict[str, Any]


class ToolResultData(_Out):
    id: str
    name: str
    tool_name: str  # `name` again, as seed 002 calls it
    result: Any = None
    error: str | None = None
    duration_ms: float


class Timings(_Out):
    ttft_ms: float | None
    tokens_per_s: float | None
    total_ms: float | None


class DoneData(_Out):
    message_id: str
    finish_reason: str
    usage: MessageUsage
    timings: Timings
    # `protocol.AnswerFacts`: each sent only when known.
    trimmed_messages: int | None = None
    cached_tokens: int | None = None
    truncated_messages: int | None = None
    usage_estimated: bool | None = None
    recovered: bool | None = None


class LineError(_Out):
    code: str
    message: str


class _Line(_Out):
    seq: int


class StartLine(_Line):
    type: Literal["start"]
    data: StartData


class QueuedLine(_Line):
    type: Literal["queued"]
    data: QueuedData


class TokenLine(_Line):
    type: Literal["token", "thinking"]
    data: TextData


class ToolCallLine(_Line):
    type: Literal["tool_call"]
    data: ToolCallData


class ToolResultLine(_Line):
    type: Literal["tool_result"]
    data: ToolResultData


class DoneLine(_Line):
    type: Literal["done"]
    data: DoneData


class ErrorLine(_Line):
    type: Literal["error"]
    data: LineError


class NdjsonLine(
    RootModel[
        Annotated[
            QueuedLine
            | StartLine
            | TokenLine
            | ToolCallLine
            | ToolResultLine
            | DoneLine
            | ErrorLine,
            Field(discriminator="type"),
        ]
    ]
):
    """One line of an `application/x-ndjson` answer: `start` first, `done` or `error` last."""


# -- request bodies that the routes parse by hand (`ndjson.parse_chat_body`) ------------------


class ChatStreamBody(BaseModel):
    """A `chat` frame without `type` (tether.protocol.ChatFrame); `prompt` may stand for
    `text` and `model_name` for `options.model` (seed 002's names)."""

    model_config = ConfigDict(extra="allow")  # unknown fields are ignored, as on the socket
    text: str = Field(pattern=r"\S", description="the user's message; `prompt` may stand for it")
    prompt: str | None = Field(default=None, deprecated=True)
    session_id: Id | None = None
    agent_id: Id | None = None
    parent_id: Id | None = None
    sibling_of: Id | None = Field(
        default=None,
        description="a user message of `session_id` to put this one beside (an edit); "
        "not with `parent_id`",
    )
    options: ChatOptions = ChatOptions()
    request_id: RequestId | None = None
    model_name: Id | None = Field(default=None, deprecated=True)


class EditBody(BaseModel):
    """The edited user message's new text: a `chat` body without the fields the path decides
    (`session_id`, `parent_id`, `sibling_of`, `agent_id`)."""

    model_config = ConfigDict(extra="allow")
    text: str = Field(pattern=r"\S", description="the new text; `prompt` may stand for it")
    prompt: str | None = Field(default=None, deprecated=True)
    options: ChatOptions = ChatOptions()
    request_id: RequestId | None = None
    model_name: Id | None = Field(default=None, deprecated=True)


# -- the operations ----------------------------------------------------------------------------

BODY_ERRORS = (400, 413, 415)  # not JSON, too large, not valid
TURN_ERRORS = (*BODY_ERRORS, 404, 409, 503)  # + unknown session/model, request_id taken, queue


class Seed000Line(_Line):
    """A line of seed 000's route: `/chat/stream`'s lines with its names of three types
    (`text` for `token`, `tool_started` for `tool_call`, `tool_complete` for `tool_result`)."""

    type: Literal[
        "queued", "start", "text", "thinking", "tool_started", "tool_complete", "done", "error"
    ]
    data: dict[str, Any]


class WebPage(RootModel[str]):
    """The browser UI's HTML page."""


STREAM = Reply("NDJSON lines, one frame each", NdjsonLine, NDJSON)

operations: dict[Key, Operation] = {
    ("GET", "/health"): Operation(
        "Liveness and each engine's state",
        {200: Reply("Ready", Health), 503: Reply("Degraded: the default model is missing", Health)},
    ),
    ("GET", "/sessions"): Operation(
        "Sessions, newest first", {200: Reply("Sessions", Sessions)}, (400,), query=SessionsQuery
    ),
    ("POST", "/sessions"): Operation(
        "Create a session",
        {201: Reply("Created", SessionOut)},
        (*BODY_ERRORS, 404),
        body=NewSessionBody,
    ),
    ("DELETE", "/sessions"): Operation("Delete every session", {200: Reply("Deleted", Deleted)}),
    ("GET", "/sessions/{session_id}"): Operation(
        "A session", {200: Reply("The session", SessionOut)}, (400, 404)
    ),
    ("DELETE", "/sessions/{session_id}"): Operation(
        "Delete a session", {204: Reply("Deleted")}, (400, 404)
    ),
    ("PATCH", "/sessions/{session_id}"): Operation(
        "Set a session's title",
        {200: Reply("The session", SessionOut)},
        (*BODY_ERRORS, 404),
        body=TitleBody,
    ),
    ("GET", "/sessions/{session_id}/messages"): Operation(
        "The active branch (or, with tree=true, every message)",
        {200: Reply("Messages, root first", MessageNodes)},
        (400, 404),
        query=MessagesQuery,
    ),
    ("POST", "/sessions/{session_id}/messages/{message_id}/edit"): Operation(
        "Edit a user message (a new branch) and answer it",
        {200: STREAM},
        TURN_ERRORS,
        body=EditBody,
    ),
    ("POST", "/sessions/{session_id}/messages/{message_id}/regenerate"): Operation(
        "Answer a user message again (a new branch)",
        {200: STREAM},
        TURN_ERRORS,
        body=RegenerateBody,
    ),
    ("PUT", "/sessions/{session_id}/active"): Operation(
        "Show the newest leaf under a message",
        {200: Reply("The session", SessionOut)},
        (*BODY_ERRORS, 404),
        body=ActiveBody,
    ),
    ("GET", "/search"): Operation(
        "Full-text search over every message",
        {200: Reply("Hits, best first", SearchResults)},
        (400,),
        query=SearchQuery,
    ),
    ("GET", "/agents"): Operation("Agents", {200: Reply("Agents", Agents)}),
    ("GET", "/agents/{agent_id}"): Operation(
        "An agent", {200: Reply("The agent", AgentOut)}, (400, 404)
    ),
    ("PUT", "/agents/{agent_id}"): Operation(
        "Create or replace an agent",
        {200: Reply("Replaced", AgentOut), 201: Reply("Created", AgentOut)},
        BODY_ERRORS,
        body=AgentBody,
    ),
    ("DELETE", "/agents/{agent_id}"): Operation(
        "Delete an agent", {204: Reply("Deleted")}, (400, 404)
    ),
    ("GET", "/models"): Operation("Every engine's models", {200: Reply("Models", Models)}),
    ("GET", "/tools"): Operation("The tools offered to models", {200: Reply("Tools", Tools)}),
    ("POST", "/chat/stream"): Operation(
        "One chat turn, streamed", {200: STREAM}, TURN_ERRORS, body=ChatStreamBody
    ),
    ("POST", "/api/v1/generate/stream"): Operation(
        "Seed 000's name of /chat/stream (a named session is made on first use)",
        {200: Reply("NDJSON lines, one frame each", Seed000Line, NDJSON)},
        TURN_ERRORS,
        body=ChatStreamBody,
    ),
    ("GET", "/"): Operation("The browser UI", {200: Reply("The page", WebPage, "text/html")}),
    ("GET", "/metrics"): Operation(
        "Prometheus metrics", {200: Reply("Metrics", MetricsText, "text/plain")}
    ),
    ("GET", "/openapi.json"): Operation(
        "This document", {200: Reply("OpenAPI 3.1", OpenApiDocument)}
    ),
}
