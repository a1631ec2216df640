"""create_app(settings) builds the whole server: no global state, everything hangs off the app."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from tether.chat import ChatService
from tether.config import Settings
from tether.detector import ToolCallDetector
from tether.engines.base import Engine, UnknownModelError
from tether.engines.factory import build_router
from tether.engines.router import EngineRouter
from tether.errors import TetherError
from tether.recovery import recover
from tether.runs import RunRegistry
from tether.security import security_middleware
from tether.store.base import Store
from tether.store.lock import DatabaseInUse
from tether.store.sqlite import SQLiteStore
from tether.tools.executor import ToolExecutor
from tether.tools.loader import build_registry
from tether.tools.mcp import McpManager
from tether.tools.prompt import tools_prompt
from tether.transports import ndjson, rest
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


async def drain_app(app: Starlette) -> None:
    """Graceful shutdown, run by `tether.graceful.TetherServer` after it stops accepting
    connections and before uvicorn closes them: running answers may finish for
    `reliability.drain_timeout_sec`, the rest are cancelled and stored, then every chat socket
    is closed with 1001 (going away)."""
    services: Services | None = getattr(app.state, "services", None)
    if services is None:  # start-up did not get that far
        return
    await services.runs.drain()
    await services.sockets.close_all(1001, "server shutting down")


def _error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _tether_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TetherError)
    return _error_response(exc.http_status, exc.code, exc.message)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return _error_response(exc.status_code, code, str(exc.detail))


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
    router = (
        EngineRouter([engine], default_model=settings.engine.model)
        if engine is not None
        else build_router(settings)
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = SQLiteStore(settings.storage.path, synchronous=settings.storage.synchronous)
        try:
            await store.open()
        except DatabaseInUse as exc:
            app.state.startup_error = str(exc)  # `tether serve` says it in one line
            raise
        except (OSError, sqlite3.Error) as exc:
            app.state.startup_error = f"storage.path {settings.storage.path}: {exc}"
            raise
        await recover(store)  # turns and journals the last process died in (kill -9)
        await mcp.start()
        tools = ToolExecutor(
            registry,
            timeout_s=settings.limits.tool_timeout_sec,
            max_result_bytes=settings.tools.max_result_bytes,
        )
        chat = ChatService(
            store=store,
            engine=router,
            system_prompt=settings.engine.system_prompt,
            tools=tools,
            tool_prompt=tools_prompt,
            detector_factory=lambda offer_tools: ToolCallDetector(detect_calls=offer_tools),
            max_tool_loops=settings.limits.max_tool_loops,
        )
        runs = RunRegistry(chat, store, settings.reliability)
        await runs.open()
        app.state.services = Services(
            settings=settings,
            store=store,
            engine=router,
            tools=tools,
            mcp=mcp,
            chat=chat,
            runs=runs,
            sockets=SocketHub(),
        )
        try:
            _, default_model = await router.resolve(None)
        except UnknownModelError as exc:
            # Serve anyway (other engines, REST, history), but say why chats will fail.
            log.warning(
                "app.no_default_model",
                engine=router.name,
                dist=str(settings.engine.dist_path),
                error=str(exc),
                hint="run ./setup.sh to put the default model in dist/, or use --engine echo",
            )
        else:
            log.info("app.default_model", engine=router.name, model=default_model.id)
        log.info("app.started", engine=router.name, db=str(settings.storage.path))
        try:
            yield
        finally:
            await runs.aclose()  # without a drain (or after one): cancel, store, journal
            await tools.aclose()  # refuse further calls; hung tool threads are not waited for
            await mcp.aclose()
            await router.aclose()
            await store.close()
            log.info("app.stopped")

    return Starlette(
        routes=[
            *rest.routes,
            *ndjson.routes,
            WebSocketRoute("/ws/chat", chat_endpoint),
            Route("/", _web_index, methods=["GET"]),
            Mount("/ui", StaticFiles(directory=WEB_DIR), name="ui"),
        ],
        lifespan=lifespan,
        middleware=security_middleware(settings),
        exception_handlers={TetherError: _tether_error, HTTPException: _http_error},
    )
