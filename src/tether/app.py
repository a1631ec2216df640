"""create_app(settings) builds the whole server: no global state, everything hangs off the app."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.chat import NO_TOOLS, ChatService, ToolPolicy
from tether.config import Settings
from tether.engines.base import Engine, UnknownModelError
from tether.engines.factory import build_router
from tether.engines.router import EngineRouter
from tether.errors import (
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    TetherError,
)
from tether.http_errors import error_response
from tether.metrics import Metrics
from tether.metrics import routes as metrics_routes
from tether.openapi import Key, Operation, Security, openapi_route
from tether.recovery import keep_recovering, recover
from tether.request_ids import RequestIdMiddleware
from tether.runs import RunRegistry
from tether.security import security_middleware
from tether.store.base import Store
from tether.store.factory import build_store, session_holds
from tether.store.factory import describe as describe_store
from tether.store.lock import DatabaseInUse
from tether.tools.executor import ToolExecutor
from tether.tools.loader import build_registry
from tether.tools.mcp import McpManager
from tether.transports import api_docs, history, ndjson, openai, openai_docs, rest
from tether.transports.ws import SocketHub, chat_endpoint

log = structlog.get_logger("tether.app")

WEB_DIR = Path(__file__).parent / "web"  # the browser UI: / and /ui/*


@dataclass(frozen=True, slots=True)
class Services:
    """What the transports reach through `app.state.services`."""

    settings: Settings
    store: Store
    engine: EngineRouter
    tools: ToolExecutor
    mcp: McpManager  # the MCP servers behind some of the tools, with their states
    chat: ChatService
    runs: RunRegistry  # running chat requests and the frame journal (resume)
    sockets: SocketHub  # open /ws/chat connections
    metrics: Metrics  # what GET /metrics shows


async def drain_app(app: Starlette) -> None:
    """Graceful shutdown, run by `tether.serving.graceful.TetherServer` after it stops accepting
    connections and before uvicorn closes them: running answers may finish for
    `reliability.drain_timeout_sec`, the rest are cancelled and stored, then every chat socket
    is closed with 1001 (going away)."""
    services: Services | None = getattr(app.state, "services", None)
    if services is None:  # start-up did not get that far
        return
    await services.runs.drain()
    await services.sockets.close_all(1001, "server shutting down")


def _count_error(request: Request, code: str) -> None:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is not None:
        services.metrics.error(code)


async def _tether_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TetherError)
    _count_error(request, exc.code)
    return error_response(request.url.path, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals: an unknown route (404), a method the route has not (405)."""
    assert isinstance(exc, HTTPException)
    error: TetherError
    if exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not a method of {request.url.path}")
    elif exc.status_code == 404:
        error = NotFound(f"no route {request.url.path}")
    else:
        error = BadRequest(str(exc.detail))
    _count_error(request, error.code)
    return error_response(request.url.path, error, headers=exc.headers)


async def _crash(request: Request, _exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware calls this and then re-raises, so the server logs it.
    _count_error(request, "internal")
    return error_response(
        request.url.path, InternalError("internal error; the server log has the details")
    )


class StartupRefused(Exception):
    """The configuration asks for something that is not there; the message says what."""


def _no_model_hint(settings: Settings) -> str:
    if settings.engine.name == "openai":
        return "start the upstream server at engine.openai.base_url, or fix that URL"
    if settings.engine.name == "llamacpp":
        return "run ./setup.sh to put the default model in dist/, or use --engine echo"
    return f"put a model in {settings.engine.dist_path}, or use --engine echo"


async def _check_default_model(router: EngineRouter, settings: Settings) -> str | None:
    """Log the default model; why start-up must stop (a model named but not found), or None."""
    try:
        _, default_model = await router.resolve(None)
    except UnknownModelError as exc:
        if settings.engine.model is not None:
            return f"engine.model {settings.engine.model!r}: {exc}"
        # Serve anyway (other engines, REST, history), but say why chats will fail; /health
        # answers 503 "degraded".
        log.warning(
            "app.no_default_model",
            engine=router.name,
            dist=str(settings.engine.dist_path),
            error=str(exc),
            hint=_no_model_hint(settings),
        )
        return None
    log.info("app.default_model", engine=router.name, model=default_model.id)
    return None


class QuietStartupRefusals:
    """ASGI middleware: a start-up refused for a reason the lifespan recorded in
    `app.state.startup_error` (database in use, model not found) is reported to the server
    without starlette's traceback, so that `tether serve` stops with that one line; any other
    start-up failure (a bug) keeps its traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def report(message: Message) -> None:
            refused = getattr(scope["app"].state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and refused:
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, report)


def _documented(settings: Settings, operations: Mapping[Key, Operation]) -> dict[Key, Operation]:
    """The operations of the routes this configuration mounts."""
    dropped = set() if settings.metrics.enabled else {("GET", "/metrics")}
    return {key: op for key, op in operations.items() if key not in dropped}


def _security(settings: Settings) -> Security:
    return Security(
        token=settings.server.token is not None, public_paths=settings.security.public_paths
    )


async def _web_index(_request: Request) -> Response:
    return FileResponse(WEB_DIR / "index.html")


def create_app(settings: Settings, *, engine: Engine | None = None) -> Starlette:
    """The ASGI app. `engine` overrides the configured one (tests, embedding).

    What can refuse the configuration (tools, engine) is built here, at once, so that `tether
    serve` can say what is wrong before it binds; what does I/O opens in the lifespan.
    Raises ToolConfigError or EngineUnavailable.
    """
    registry = build_registry(
        settings.tools.enabled,
        files_root=settings.tools.files_root,
        max_read_bytes=settings.tools.max_read_bytes,
    )
    mcp = McpManager(settings.mcp.servers)
    registry.add_source(mcp)
    metrics = Metrics(registry)
    router = (
        EngineRouter([engine], default_model=settings.engine.model)
        if engine is not None
        else build_router(settings)
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        refusal = await _check_default_model(router, settings)
        if refusal is not None:
            app.state.startup_error = refusal  # `tether serve` says it in one line
            raise StartupRefused(refusal)
        store = build_store(settings.storage, settings.server)
        try:
            await store.open()
        except DatabaseInUse as exc:
            app.state.startup_error = str(exc)  # `tether serve` says it in one line
            raise
        except (OSError, sqlite3.Error, asyncpg.PostgresError) as exc:
            app.state.startup_error = f"storage {describe_store(settings.storage)}: {exc}"
            raise
        await recover(store)  # turns and journals dead processes left (kill -9)
        holding = contextlib.AsyncExitStack()
        holds = await holding.enter_async_context(session_holds(store))
        recovering = (
            asyncio.create_task(keep_recovering(store, store.recovery_interval_sec))
            if store.recovery_interval_sec is not None
            else None
        )
        await mcp.start()
        tools = ToolExecutor(
            registry,
            timeout_s=settings.limits.tool_timeout_sec,
            max_result_bytes=settings.tools.max_result_bytes,
        )
        server_tools = ToolPolicy(runner=tools)
        chat = ChatService(
            store=store,
            engine=router,
            system_prompt=settings.engine.system_prompt,
            tool_policy=server_tools,
            stateless_tools=server_tools if settings.openai_api.run_server_tools else NO_TOOLS,
            max_tool_loops=settings.limits.max_tool_loops,
            session_holds=holds,
        )
        runs = RunRegistry(chat, store, settings.reliability, metrics)
        await runs.open()
        sockets = SocketHub()
        metrics.watch(runs, sockets)
        app.state.services = Services(
            settings=settings,
            store=store,
            engine=router,
            tools=tools,
            mcp=mcp,
            chat=chat,
            runs=runs,
            sockets=sockets,
            metrics=metrics,
        )
        log.info("app.started", engine=router.name, db=describe_store(settings.storage))
        try:
            yield
        finally:
            await runs.aclose()  # without a drain (or after one): cancel, store, journal
            if recovering is not None:
                recovering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recovering
            await tools.aclose()  # refuse further calls; hung tool threads are not waited for
            await mcp.aclose()
            await router.aclose()
            await holding.aclose()
            await store.close()
            log.info("app.stopped")

    return Starlette(
        routes=[
            *rest.routes,
            *history.routes,
            *ndjson.routes,
            *openai.routes,
            *(metrics_routes if settings.metrics.enabled else []),
            # Every HTTP route above has its entry in the operations given here (a route family
            # with schemas of its own, e.g. /v1, adds `**its.operations`).
            openapi_route(
                _documented(settings, {**api_docs.operations, **openai_docs.operations}),
                _security(settings),
            ),
            WebSocketRoute("/ws/chat", chat_endpoint),
            Route("/", _web_index, methods=["GET"]),
            Mount("/ui", StaticFiles(directory=WEB_DIR), name="ui"),
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(QuietStartupRefusals),
            Middleware(RequestIdMiddleware),
            *security_middleware(settings),
        ],
        exception_handlers={
            TetherError: _tether_error,
            HTTPException: _http_error,
            Exception: _crash,
        },
    )
