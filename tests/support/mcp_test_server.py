"""A small MCP server for Tether's tests: `python mcp_test_server.py [--http PORT]`."""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server: MCPServer[object] = MCPServer("tether-test")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return text


@server.tool()
def fail(message: str) -> str:
    """Always fails with the message."""
    raise ToolError(message)


@server.tool()
async def hang() -> str:
    """Never returns."""
    await anyio.sleep_forever()
    return ""


@server.tool()
def die() -> str:
    """Kills the server process."""
    os._exit(3)


@server.tool(name="odd.name")
def odd() -> str:
    """A tool whose name is not a valid OpenAI function name."""
    return "odd"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        server.run("streamable-http", port=int(sys.argv[2]))
    else:
        server.run()
