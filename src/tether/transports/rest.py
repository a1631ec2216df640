"""The REST API: health, sessions and their messages, agents, models.

Bodies are read by `tether.transports.http_body` (JSON only, at most `limits.max_body_bytes`)
and checked by a pydantic model: ids (in paths and bodies) as `tether.protocol.id_problem`
says, a title of at most 500 characters, an agent's name of at most 200, its `system_prompt`
and `markdown_context` of at most `limits.max_text_chars` each (413 past it, as a chat text),
and its `default_options` as a chat's `options` (with a model the engines serve).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether import __version__
from tether.engines.base import UnknownModelError
from tether.errors import BadRequest, NotFound, TooLarge
from tether.protocol import (
    PROTOCOL_VERSION,
    Id,
    ProtocolError,
    parse_options,
)
from tether.store.base import Agent, Message, Session
from tether.transports.http_body import path_id, read_json

M = TypeVar("M", bound=BaseModel)


def session_json(session: Session) -> dict[str, Any]:
    # `session_id` beside `id`: seed 002's clients read `session["session_id"]`.
    return {**asdict(session), "session_id": session.id}


def message_json(message: Message) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": message.id,
        "session_id": message.session_id,
        "parent_id": message.parent_id,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "created_at": message.created_at,
    }
    if message.role == "tool":
        body["name"] = message.name
        body["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        body["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
        ]
    if message.role == "assistant":
        body["model"] = message.model
        body["finish_reason"] = message.finish_reason
        body["usage"] = {
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
        }
    return body


def agent_json(agent: Agent) -> dict[str, Any]:
    return asdict(agent)


class NewSessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(default="", max_length=500)
    agent_id: Id | None = None


class AgentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Seed 004's `updateAgent({id, ...})` repeats the path's id in the body: taken when equal.
    id: Id | None = None
    name: str = Field(min_length=1, max_length=200)
    system_prompt: str = ""
    markdown_context: str = ""
    default_options: dict[str, Any] = Field(default_factory=dict)


class SessionsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")  # other parameters are ignored, as they were
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=10**9)


def validation_problems(exc: ValidationError, where: str) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or where}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


async def _json_body(request: Request, model: type[M]) -> M:
    data = await read_json(request, request.app.state.services.settings.limits.max_body_bytes)
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise BadRequest(validation_problems(exc, "body")) from None


def query_model(request: Request, model: type[M]) -> M:
    """The query parameters as `model`; raises BadRequest."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise BadRequest(validation_problems(exc, "query")) from None


def _check_agent_texts(request: Request, body: AgentBody) -> None:
    """`system_prompt` and `markdown_context` within `limits.max_text_chars`; raises TooLarge."""
    limit = request.app.state.services.settings.limits.max_text_chars
    for name in ("system_prompt", "markdown_context"):
        chars = len(getattr(body, name))
        if chars > limit:
            raise TooLarge(f"{name} has {chars} characters; the limit is {limit}")


async def _checked_defaults(request: Request, body: AgentBody) -> dict[str, Any]:
    """An agent's `default_options` checked as a chat's `options`, with a model the engines
    serve, as they will be stored (the keys given); raises BadRequest."""
    try:
        options = parse_options(body.default_options, name="default_options")
    except ProtocolError as exc:
        raise BadRequest(exc.message) from None
    if options.model is not None:
        try:
            await request.app.state.services.engine.resolve(options.model)
        except UnknownModelError as exc:
            raise BadRequest(f"default_options.model: {exc}") from None
    return options.model_dump(exclude_unset=True)


async def health(request: Request) -> Response:
    """200 "ok"; 503 "degraded" when a chat that names no model cannot be answered (the
    default engine has no model, or the default model is gone): other models may still be."""
    services = request.app.state.services
    engines = await services.engine.health()
    return JSONResponse(
        {
            "status": "ok" if engines.ready else "degraded",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "engine": services.engine.name,
            "default_model": services.engine.default_model,
            # Each engine's state: ready, no_model, unavailable (with its error).
            "engines": {
                name: {k: v for k, v in asdict(state).items() if v is not None}
                for name, state in engines.engines.items()
            },
            # Each configured MCP server's state: running, starting, failed or exited (both
            # retried), stopped. A server down is not Tether down: status stays "ok".
            "mcp": services.mcp.status(),
        },
        status_code=200 if engines.ready else 503,
    )


async def list_sessions(request: Request) -> Response:
    query = query_model(request, SessionsQuery)
    sessions = await request.app.state.services.store.list_sessions(
        limit=query.limit, offset=query.offset
    )
    return JSONResponse([session_json(s) for s in sessions])


async def create_session(request: Request) -> Response:
    body = await _json_body(request, NewSessionBody)
    session = await request.app.state.services.store.create_session(body.title, body.agent_id)
    return JSONResponse(session_json(session), status_code=201)


async def get_session(request: Request) -> Response:
    session_id = path_id(request, "session_id")
    session = await request.app.state.services.store.get_session(session_id)
    if session is None:
        raise NotFound(f"session {session_id!r} does not exist")
    return JSONResponse(session_json(session))


async def delete_session(request: Request) -> Response:
    session_id = path_id(request, "session_id")
    if not await request.app.state.services.store.delete_session(session_id):
        raise NotFound(f"session {session_id!r} does not exist")
    return Response(status_code=204)


async def delete_all_sessions(request: Request) -> Response:
    deleted = await request.app.state.services.store.delete_all_sessions()
    return JSONResponse({"deleted": deleted})


async def list_agents(request: Request) -> Response:
    agents = await request.app.state.services.store.list_agents()
    return JSONResponse([agent_json(a) for a in agents])


async def get_agent(request: Request) -> Response:
    agent_id = path_id(request, "agent_id")
    agent = await request.app.state.services.store.get_agent(agent_id)
    if agent is None:
        raise NotFound(f"agent {agent_id!r} does not exist")
    return JSONResponse(agent_json(agent))


async def put_agent(request: Request) -> Response:
    agent_id = path_id(request, "agent_id")
    body = await _json_body(request, AgentBody)
    if body.id is not None and body.id != agent_id:
        raise BadRequest(f"id: {body.id!r} in the body differs from {agent_id!r} in the path")
    _check_agent_texts(request, body)
    agent = Agent(
        id=agent_id,
        name=body.name,
        system_prompt=body.system_prompt,
        markdown_context=body.markdown_context,
        default_options=await _checked_defaults(request, body),
    )
    saved = await request.app.state.services.store.put_agent(agent)
    # One transaction stamps both on a create; an update keeps created_at.
    created = saved.created_at == saved.updated_at
    return JSONResponse(agent_json(saved), status_code=201 if created else 200)


async def delete_agent(request: Request) -> Response:
    agent_id = path_id(request, "agent_id")
    if not await request.app.state.services.store.delete_agent(agent_id):
        raise NotFound(f"agent {agent_id!r} does not exist")
    return Response(status_code=204)


async def list_models(request: Request) -> Response:
    models = await request.app.state.services.engine.models()
    return JSONResponse([asdict(m) for m in models])


async def list_tools(request: Request) -> Response:
    specs = request.app.state.services.tools.specs()
    return JSONResponse([asdict(spec) for spec in specs])


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/sessions", list_sessions, methods=["GET"]),
    Route("/sessions", create_session, methods=["POST"]),
    Route("/sessions", delete_all_sessions, methods=["DELETE"]),
    Route("/sessions/{session_id}", get_session, methods=["GET"]),
    Route("/sessions/{session_id}", delete_session, methods=["DELETE"]),
    Route("/agents", list_agents, methods=["GET"]),
    Route("/agents/{agent_id}", get_agent, methods=["GET"]),
    Route("/agents/{agent_id}", put_agent, methods=["PUT"]),
    Route("/agents/{agent_id}", delete_agent, methods=["DELETE"]),
    Route("/models", list_models, methods=["GET"]),
    Route("/tools", list_tools, methods=["GET"]),
]
