"""The REST API: health, sessions and their messages, agents, models."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether import __version__, jsonsafe
from tether.errors import BadRequest, NotFound
from tether.protocol import PROTOCOL_VERSION
from tether.store.base import Agent, Message, Session

M = TypeVar("M", bound=BaseModel)


def session_json(session: Session) -> dict[str, Any]:
    return asdict(session)


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
    agent_id: str | None = None


class AgentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    system_prompt: str = ""
    markdown_context: str = ""
    default_options: dict[str, Any] = Field(default_factory=dict)


async def _json_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data = jsonsafe.loads(raw) if raw.strip() else {}
    except jsonsafe.JSONInputError as exc:
        raise BadRequest(f"request body {exc}") from None
    if jsonsafe.has_lone_surrogates(raw, data):
        raise BadRequest(f"request body {jsonsafe.LONE_SURROGATE}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise BadRequest(problems) from None


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


async def health(request: Request) -> Response:
    services = request.app.state.services
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "engine": services.engine.name,
            # Each configured MCP server's state: running, starting, failed or exited (both
            # retried), stopped. A server down is not Tether down: status stays "ok".
            "mcp": services.mcp.status(),
        }
    )


async def list_sessions(request: Request) -> Response:
    limit = _int_param(request, "limit", 100, 1, 1000)
    offset = _int_param(request, "offset", 0, 0, 10**9)
    sessions = await request.app.state.services.store.list_sessions(limit=limit, offset=offset)
    return JSONResponse([session_json(s) for s in sessions])


async def create_session(request: Request) -> Response:
    body = await _json_body(request, NewSessionBody)
    session = await request.app.state.services.store.create_session(body.title, body.agent_id)
    return JSONResponse(session_json(session), status_code=201)


async def get_session(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    session = await request.app.state.services.store.get_session(session_id)
    if session is None:
        raise NotFound(f"session {session_id!r} does not exist")
    return JSONResponse(session_json(session))


async def delete_session(request: Request) -> Response:
    session_id = request.path_params["session_id"]
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
    agent_id = request.path_params["agent_id"]
    agent = await request.app.state.services.store.get_agent(agent_id)
    if agent is None:
        raise NotFound(f"agent {agent_id!r} does not exist")
    return JSONResponse(agent_json(agent))


async def put_agent(request: Request) -> Response:
    body = await _json_body(request, AgentBody)
    agent = Agent(id=request.path_params["agent_id"], **body.model_dump())
    saved = await request.app.state.services.store.put_agent(agent)
    return JSONResponse(agent_json(saved))


async def delete_agent(request: Request) -> Response:
    agent_id = request.path_params["agent_id"]
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
