"""History over HTTP: a session's branches, editing and regenerating, titles, search.

Messages form a tree by `parent_id`; nothing is overwritten. An edit stores a new user message
beside the edited one (same parent) and answers it; a regeneration stores a new answer beside the
earlier ones under the same user message (the one named, or the user message of the named
message's turn; it is not stored again). Both run as
turns of the chat core on the server's RunRegistry, as `POST /chat/stream` does, and answer the
same NDJSON lines (tether.transports.ndjson): journaled, resumable on /ws/chat by the `start`
line's request_id, refused with an HTTP error status before they start.

    POST  /sessions/{id}/messages/{message_id}/edit        {text, options?, request_id?}
    POST  /sessions/{id}/messages/{message_id}/regenerate  {options?, request_id?}
    GET   /sessions/{id}/messages[?tree=true]
    PUT   /sessions/{id}/active                            {message_id}
    PATCH /sessions/{id}                                   {title}
    GET   /search?q=...[&limit=20][&session_id=...][&syntax=words|fts5|websearch]

Each session keeps an active leaf: every message stored moves it there (so a new turn, an edit,
a regeneration is what the session shows next), `PUT .../active` moves it to the newest leaf
under any message. `GET .../messages` returns the path from the root to the active leaf;
`?tree=true` every message of the session, oldest first. Each message carries `children` (its
children's ids) and `siblings` (the ids of the messages under its parent, itself included,
oldest first), which is what a "2/3" branch switcher needs.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.errors import BadRequest, NotFound
from tether.protocol import ChatFrame, ChatOptions, RegenerateFrame, RequestId
from tether.store.base import Message, SearchSyntax, Session, SessionStore
from tether.transports.http_body import path_id, read_body, read_json
from tether.transports.ndjson import parse_chat_body, stream_turn
from tether.transports.rest import message_json, query_model, session_json, validation_problems
from tether.transports.ws import turn_from_frame

M = TypeVar("M", bound=BaseModel)

TITLE_MAX_CHARS = 500
# Fields of a `chat` body that the path decides for an edit.
PATH_FIELDS = ("session_id", "parent_id", "sibling_of", "agent_id")


class TitleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=TITLE_MAX_CHARS)


class ActiveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: str = Field(min_length=1, max_length=200)


class RegenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    options: ChatOptions = ChatOptions()
    request_id: RequestId = Field(default_factory=lambda: uuid.uuid4().hex)


class MessagesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tree: bool = False


class SearchQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    q: str = Field(max_length=1000)
    limit: int = Field(default=20, ge=1, le=100)
    session_id: str | None = None
    syntax: SearchSyntax = "words"


async def _body(request: Request, model: type[M]) -> M:
    data = await read_json(request, request.app.state.services.settings.limits.max_body_bytes)
    try:
        return model.model_validate({} if data is None else data, strict=True)
    except ValidationError as exc:
        raise BadRequest(validation_problems(exc, "body")) from None


async def _edit_body(request: Request) -> ChatFrame:
    """The body as a `chat` frame without the fields the path decides; raises BadRequest or
    TooLarge."""
    limits = request.app.state.services.settings.limits
    raw = await read_body(request, limits.max_frame_bytes)
    frame = parse_chat_body(raw, max_text_chars=limits.max_text_chars)
    decided = [name for name in PATH_FIELDS if getattr(frame, name) is not None]
    if decided:
        raise BadRequest(f"{', '.join(decided)}: not a field here (the path names the message)")
    return frame


async def _session(store: SessionStore, session_id: str) -> Session:
    session = await store.get_session(session_id)
    if session is None:
        raise NotFound(f"session {session_id!r} does not exist")
    return session


class MessageTree:
    """A session's messages as a tree (pure: built from `list_messages`)."""

    def __init__(self, messages: Sequence[Message]) -> None:
        self.by_id = {m.id: m for m in messages}
        self.children: defaultdict[str | None, list[str]] = defaultdict(list)
        for message in messages:  # oldest first, so children are too
            self.children[message.parent_id].append(message.id)

    def path(self, leaf_id: str | None) -> list[Message]:
        """The messages from the root down to `leaf_id` (none for None)."""
        path = []
        current = self.by_id.get(leaf_id) if leaf_id is not None else None
        while current is not None:
            path.append(current)
            current = self.by_id.get(current.parent_id) if current.parent_id else None
        return path[::-1]

    def json(self, message: Message) -> dict[str, Any]:
        return {
            **message_json(message),
            "children": list(self.children.get(message.id, ())),
            "siblings": list(self.children[message.parent_id]),
        }


async def list_messages(request: Request) -> Response:
    store = request.app.state.services.store
    session_id = path_id(request, "session_id")
    query = query_model(request, MessagesQuery)
    session = await _session(store, session_id)
    tree = MessageTree(await store.list_messages(session_id))
    messages = list(tree.by_id.values()) if query.tree else tree.path(session.active_leaf_id)
    return JSONResponse([tree.json(m) for m in messages])


async def edit_message(request: Request) -> Response:
    placed = {
        "session_id": path_id(request, "session_id"),
        "sibling_of": path_id(request, "message_id"),
    }
    frame = (await _edit_body(request)).model_copy(update=placed)
    return await stream_turn(request, turn_from_frame(frame))


async def regenerate(request: Request) -> Response:
    session_id = path_id(request, "session_id")
    message_id = path_id(request, "message_id")
    body = await _body(request, RegenerateBody)
    frame = RegenerateFrame(
        type="regenerate",
        request_id=body.request_id,
        session_id=session_id,
        message_id=message_id,
        options=body.options,
    )
    return await stream_turn(request, turn_from_frame(frame))


async def set_active(request: Request) -> Response:
    store = request.app.state.services.store
    session_id = path_id(request, "session_id")
    body = await _body(request, ActiveBody)
    session = await _session(store, session_id)
    leaf = await store.set_active_leaf(session_id, body.message_id)
    return JSONResponse(session_json(replace(session, active_leaf_id=leaf.id)))


async def update_session(request: Request) -> Response:
    session_id = path_id(request, "session_id")
    body = await _body(request, TitleBody)
    session = await request.app.state.services.store.update_session(session_id, title=body.title)
    if session is None:
        raise NotFound(f"session {session_id!r} does not exist")
    return JSONResponse(session_json(session))


async def search(request: Request) -> Response:
    query = query_model(request, SearchQuery)
    hits = await request.app.state.services.store.search(
        query.q, limit=query.limit, session_id=query.session_id, syntax=query.syntax
    )
    return JSONResponse({"results": [asdict(hit) for hit in hits]})


routes = [
    Route("/sessions/{session_id}", update_session, methods=["PATCH"]),
    Route("/sessions/{session_id}/messages", list_messages, methods=["GET"]),
    Route("/sessions/{session_id}/messages/{message_id}/edit", edit_message, methods=["POST"]),
    Route("/sessions/{session_id}/messages/{message_id}/regenerate", regenerate, methods=["POST"]),
    Route("/sessions/{session_id}/active", set_active, methods=["PUT"]),
    Route("/search", search, methods=["GET"]),
]
