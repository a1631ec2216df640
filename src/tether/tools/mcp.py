"""MCP servers as a tool source: their tools join the registry while the server runs.

Naming: an MCP tool `get_current_time` of the server `time` is called `time__get_current_time`.
The separator is a double underscore because OpenAI function names (and so llama.cpp chat
templates) allow only `^[a-zA-Z0-9_-]{1,64}$`: no dots. Other characters in the tool's own name
become `_`, and the whole name is cut at 64 characters.

Lifecycle: each server is owned by one long-lived asyncio task that enters the transport and the
`ClientSession`, lists the tools, then waits for a stop request or the connection's end, and
exits its contexts itself: anyio cancel scopes must be entered and exited in the same task.
Calls come from other tasks through the session, which is safe. A server that fails to start
or dies is logged and its tools disappear at once; Tether carries on, and the same task starts
the server again after `restart_delay` (doubling while it keeps failing, back to the first
delay once a run lasted `max_restart_delay`), unless `restart` is off. `/health` shows each
server's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, Literal

import anyio
import httpx2
import mcp_types
import structlog
from anyio.streams.memory import MemoryObjectSendStream
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage
from mcp_types import CONNECTION_CLOSED

from tether import __version__
from tether.config import McpServerConfig
from tether.tools.base import ToolSpec
from tether.tools.registry import Tool, ToolConfigError, ToolError, clean_schema

SEPARATOR: Final = "__"
_MAX_TOOL_PAGES: Final = 50
# How long aclose() waits for a server's task to wind down before cancelling it (the SDK's
# stdio shutdown is itself bounded: stdin close, SIGTERM, SIGKILL, 2 s each at most).
_CLOSE_GRACE_S: Final = 10.0

log = structlog.get_logger("tether.mcp")

# failed: could not start; exited: was running and went away; either is followed by "starting"
# again after the restart delay, unless restarts are off or the server is stopped.
ServerState = Literal["idle", "starting", "running", "failed", "exited", "stopped"]


def tool_name(server: str, tool: str) -> str:
    """The registry name of `tool` from `server`: `server__tool`, valid as an OpenAI name."""
    return f"{server}{SEPARATOR}{re.sub(r'[^a-zA-Z0-9_-]', '_', tool)}"[:64]


class McpManager:
    """Starts the configured MCP servers and offers their tools (a registry `ToolSource`)."""

    def __init__(self, servers: Sequence[McpServerConfig]) -> None:
        names = [s.name for s in servers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ToolConfigError(f"mcp.servers: duplicate server names {duplicates}")
        self._servers = [McpServer(s) for s in servers if s.enabled]

    async def start(self) -> None:
        """Start every server and wait until each is running or has failed. Never raises."""
        for server in self._servers:
            server.start()
        if self._servers:
            # Each server bounds its own start-up; the extra wait covers spawning.
            limit = max(s.config.startup_timeout for s in self._servers) + 5
            waits = [asyncio.ensure_future(s.ready.wait()) for s in self._servers]
            _, pending = await asyncio.wait(waits, timeout=limit)
            for w in pending:
                w.cancel()

    async def aclose(self) -> None:
        """Stop every server (closing its session and process)."""
        await asyncio.gather(*(s.aclose() for s in self._servers))

    def tools(self) -> list[Tool]:
        return [t for s in self._servers for t in s.tools]

    def server(self, name: str) -> McpServer:
        for s in self._servers:
            if s.name == name:
                return s
        raise KeyError(name)

    def status(self) -> dict[str, ServerState]:
        return {s.name: s.state for s in self._servers}


class McpServer:
    """One configured server: its owner task, session and current tools."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self.name = config.name
        self.state: ServerState = "idle"
        self.tools: list[Tool] = []
        self.ready = asyncio.Event()  # the first start ended: running, or failed
        self.restarts = 0
        self._changed = asyncio.Condition()  # notified on every state change
        self._wake = asyncio.Event()  # stop requested, or the connection ended
        self._stop = asyncio.Event()  # stop requested
        self._stopping = False
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self.state = "starting"
            self._task = asyncio.create_task(self._supervise(), name=f"mcp-server-{self.name}")

    async def aclose(self) -> None:
        task = self._task
        if task is None:
            return
        self._stopping = True
        self._stop.set()
        self._wake.set()
        if self.state == "starting":
            task.cancel()  # nothing to close gracefully
        _, pending = await asyncio.wait({task}, timeout=_CLOSE_GRACE_S)
        if pending:
            task.cancel()
            await asyncio.wait({task}, timeout=_CLOSE_GRACE_S)
        await self._set_state("stopped")

    async def wait_stopped(self) -> None:
        """Return once the server's task has ended (stopped, or failed or exited for good)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def wait_for(self, *states: ServerState) -> None:
        """Return once the server is in one of `states`."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.state in states)

    async def _set_state(self, state: ServerState) -> None:
        async with self._changed:
            self.state = state
            self._changed.notify_all()

    async def _supervise(self) -> None:
        """Run the server; while it is wanted, start it again after each failure or exit."""
        delay = self.config.restart_delay
        try:
            while True:
                started = time.monotonic()
                await self._run()
                self.ready.set()
                if self._stopping or not self.config.restart:
                    return
                if time.monotonic() - started >= self.config.max_restart_delay:
                    delay = self.config.restart_delay  # it ran a good while: a fresh failure
                log.info("mcp.server_restarting", server=self.name, in_sec=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stopping:
                    return
                delay = min(delay * 2, self.config.max_restart_delay)
                self.restarts += 1
                self._wake = asyncio.Event()
                await self._set_state("starting")
        finally:
            self.ready.set()  # also when cancelled while starting: start() must not wait on

    async def _run(self) -> None:
        """One run of the server: connect, list its tools, serve until it ends or is stopped."""
        running = False
        try:
            async with self._connect() as session:
                with anyio.fail_after(self.config.startup_timeout):
                    await session.initialize()
                    listed = await _list_tools(session)
                self.tools = self._make_tools(listed)
                self._session = session
                running = True
                await self._set_state("running")
                self.ready.set()
                log.info(
                    "mcp.server_started",
                    server=self.name,
                    tools=[t.name for t in self.tools],
                    restarts=self.restarts,
                )
                await self._wake.wait()
                # Withdraw the tools now, not after the (bounded but slower) transport shutdown.
                self.tools, self._session = [], None
                if not self._stopping:
                    await self._set_state("exited")
                    log.warning("mcp.server_exited", server=self.name)
        except Exception as exc:
            if self._stopping:
                log.debug("mcp.server_close_error", server=self.name, error=_describe(exc))
            else:
                await self._set_state("exited" if running else "failed")
                log.warning(
                    "mcp.server_exited" if running else "mcp.server_failed",
                    server=self.name,
                    error=_describe(exc),
                )
        finally:
            self._session = None
            self.tools = []

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[ClientSession]:
        """Transport + session, with the server's messages relayed so that its end is seen.

        The SDK session does not report a closed connection until a request fails; relaying the
        read stream through our own lets us drop the tools as soon as the server goes away.
        """
        async with contextlib.AsyncExitStack() as stack:
            if self.config.transport == "stdio":
                assert self.config.command is not None
                params = StdioServerParameters(
                    command=self.config.command,
                    args=list(self.config.args),
                    env=dict(self.config.env) or None,
                    cwd=self.config.cwd,
                )
                read, write = await stack.enter_async_context(stdio_client(params))
            else:
                assert self.config.url is not None
                http = httpx2.AsyncClient(
                    headers=self.config.headers,
                    timeout=httpx2.Timeout(self.config.startup_timeout, read=300.0),
                )
                await stack.enter_async_context(http)
                read, write = await stack.enter_async_context(
                    streamable_http_client(self.config.url, http_client=http)
                )
            send, receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
            # Closed by the relay and the session; also here, in case neither ever ran.
            await stack.enter_async_context(send)
            await stack.enter_async_context(receive)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tasks.cancel_scope.cancel)  # runs before the group's exit

            ended = self._wake  # this run's: a late relay must not end the next run

            async def relay(out: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
                async with out:
                    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                        async for item in read:
                            await out.send(item)
                ended.set()

            tasks.start_soon(relay, send)
            session = ClientSession(
                receive,
                write,
                client_info=mcp_types.Implementation(name="tether", version=__version__),
            )
            yield await stack.enter_async_context(session)

    def _make_tools(self, listed: list[mcp_types.Tool]) -> list[Tool]:
        tools: dict[str, Tool] = {}
        for remote in listed:
            name = tool_name(self.name, remote.name)
            if name in tools:
                log.warning("mcp.tool_name_clash", server=self.name, tool=remote.name, as_name=name)
                continue
            spec = ToolSpec(
                name=name,
                description=(remote.description or remote.title or "").strip(),
                parameters=clean_schema(remote.input_schema),
            )
            tools[name] = Tool(
                spec=spec,
                fn=_Caller(self, remote.name),
                model=None,  # the server validates its own arguments
                is_async=True,
                timeout_s=self.config.timeout,
            )
        return list(tools.values())

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        session = self._session
        if session is None:
            raise ToolError(f"MCP server {self.name!r} is not running")
        try:
            result = await session.call_tool(tool, arguments)
        except MCPError as exc:
            raise ToolError(f"MCP server {self.name!r}: {exc.message}") from None
        text = _content_text(result)
        if result.is_error:
            raise ToolError(text or "the tool reported an error")
        return text


class _Caller:
    """The `fn` of an MCP tool: forwards the raw arguments to its server."""

    def __init__(self, server: McpServer, tool: str) -> None:
        self._server = server
        self._tool = tool

    async def __call__(self, arguments: dict[str, Any]) -> str:
        return await self._server.call(self._tool, arguments)


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_TOOL_PAGES):
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _content_text(result: mcp_types.CallToolResult) -> str:
    """A tool result as text for the model: text blocks as they are, others summarised."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.EmbeddedResource):
            text = getattr(block.resource, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {block.resource.uri}]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
        else:
            parts.append(f"[{block.type} content, {block.mime_type}]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


def _describe(exc: BaseException) -> str:
    """One line for a failure, flattening the exception groups anyio task groups raise."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED:
        return "the server closed the connection (did it exit? its stderr may say why)"
    if isinstance(exc, MCPError):
        return f"MCPError: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "timed out during start-up"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
