"""MCP through the whole product: config.yaml names the servers, `tether serve` starts them,
the model calls their tools over the socket, and a dead server is started again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.servers import tether_serve
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, text_of

pytestmark = pytest.mark.e2e


def write_config(tmp_path: Path) -> Path:
    config = {
        "engine": {"name": "echo"},
        "mcp": {
            "servers": [
                {
                    "name": "time",
                    "transport": "stdio",
                    "command": sys.executable,
                    "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
                },
                {"name": "broken", "transport": "stdio", "command": "/nonexistent/mcp-server"},
            ]
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def mcp_states(base_url: str) -> dict[str, str]:
    states: dict[str, str] = httpx.get(f"{base_url}/health").json()["mcp"]
    return states


def tool_names(base_url: str) -> set[str]:
    return {tool["name"] for tool in httpx.get(f"{base_url}/tools").json()}


def mcp_server_pids(serve_pid: int) -> list[int]:
    """Child processes of `tether serve` running mcp_server_time (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError, IndexError):
            continue
        if parent == serve_pid and b"mcp_server_time" in command:
            found.append(int(stat.parent.name))
    return found


async def test_mcp_tools_over_the_socket_and_a_dying_server(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with tether_serve(tmp_path, "--config", str(config), "--db", str(tmp_path / "t.db")) as server:
        names = tool_names(server.http_url)
        assert {"time__get_current_time", "time__convert_time", "calculator"} <= names
        assert not any(name.startswith("broken__") for name in names)
        assert "mcp.server_failed" in server.log()  # the broken one is logged, Tether is up

        call = {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}}
        async with connect(server.ws_url) as ws:
            frames = await ProtocolClient(ws).chat(
                "r1", f"<tool_call>{json.dumps(call)}</tool_call>"
            )
        results = [f["chunk"]["data"] for f in frames if f["status"] == "tool"]
        assert results[1]["name"] == "time__get_current_time"
        assert "UTC" in results[1]["result"]
        assert "Tool time__get_current_time returned:" in text_of(frames)

        states = mcp_states(server.http_url)
        assert states["time"] == "running"
        assert states["broken"] in ("failed", "starting")  # retried, with a growing delay

        # The MCP server dies: the rest stays, and it is started again with its tools.
        (pid,) = mcp_server_pids(server.process.pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + scaled(30)
        while (
            mcp_server_pids(server.process.pid) in ([], [pid])
            or mcp_states(server.http_url)["time"] != "running"
        ):
            assert time.monotonic() < deadline, "the dead MCP server was not started again"
            await asyncio.sleep(0.05)  # polling another process's state; bounded by the deadline
        assert "mcp.server_exited" in server.log()
        assert {"time__get_current_time", "calculator"} <= tool_names(server.http_url)
        async with connect(server.ws_url) as ws:
            frames = await ProtocolClient(ws).chat(
                "r2", f"<tool_call>{json.dumps(call)}</tool_call>"
            )
        results = [f["chunk"]["data"] for f in frames if f["status"] == "tool"]
        assert "UTC" in results[1]["result"]
