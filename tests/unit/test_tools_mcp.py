"""MCP pieces that need no server: config validation, tool naming, result conversion."""

from __future__ import annotations

import mcp_types
import pytest
from pydantic import ValidationError

from tether.config import McpServerConfig
from tether.tools.mcp import McpManager, _content_text, tool_name
from tether.tools.registry import TOOL_NAME_RE, ToolConfigError


@pytest.mark.parametrize(
    ("server", "tool", "expected"),
    [
        ("time", "get_current_time", "time__get_current_time"),
        ("fs", "read.file", "fs__read_file"),
        ("fs", "weird name/ü", "fs__weird_name__"),
        ("s", "x" * 100, "s__" + "x" * 61),
    ],
)
def test_tool_names_are_valid_openai_names(server: str, tool: str, expected: str) -> None:
    assert tool_name(server, tool) == expected
    assert TOOL_NAME_RE.match(expected)


def test_stdio_config() -> None:
    config = McpServerConfig.model_validate(
        {"name": "time", "command": "python", "args": ["-m", "mcp_server_time"], "env": {"A": "1"}}
    )
    assert (config.transport, config.timeout, config.startup_timeout, config.enabled) == (
        "stdio",
        None,
        30.0,
        True,
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x"}, "transport 'stdio' needs a command"),
        ({"name": "x", "transport": "http"}, "transport 'http' needs a url"),
        ({"name": "a.b", "command": "c"}, "should match pattern"),
        ({"name": "", "command": "c"}, "should match pattern"),
        ({"name": "x", "command": "c", "timeout": 0}, "greater than 0"),
        ({"name": "x", "command": "c", "transport": "sse"}, "'stdio' or 'http'"),
        ({"name": "x", "command": "c", "surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_configs(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        McpServerConfig.model_validate(data)


def test_duplicate_server_names() -> None:
    one = McpServerConfig(name="x", command="a")
    with pytest.raises(ToolConfigError, match=r"duplicate server names \['x'\]"):
        McpManager([one, one])


async def test_a_manager_without_servers() -> None:
    manager = McpManager([])
    await manager.start()
    assert manager.tools() == []
    assert manager.status() == {}
    await manager.aclose()


def test_content_text() -> None:
    result = mcp_types.CallToolResult(
        content=[
            mcp_types.TextContent(text="one"),
            mcp_types.ImageContent(data="AAAA", mime_type="image/png"),
            mcp_types.TextContent(text="two"),
        ]
    )
    assert _content_text(result) == "one\n[image content, image/png]\ntwo"
    structured = mcp_types.CallToolResult(content=[], structured_content={"a": 1})
    assert _content_text(structured) == '{"a": 1}'
    assert _content_text(mcp_types.CallToolResult(content=[])) == ""
