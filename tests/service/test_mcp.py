"""MCP servers end to end: real server processes over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.servers import free_port
from tests.support.timeouts import scaled
from tether.config import McpServerConfig
from tether.engines.base import ToolCall
from tether.tools.executor import ToolExecutor
from tether.tools.mcp import McpManager
from tether.tools.registry import TOOL_NAME_RE, Registry

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCALE = scaled(1)
TIMEOUT = 30 * SCALE
TEST_SERVER = str(Path(__file__).parent.parent / "support" / "mcp_test_server.py")


def server_config(name: str = "t", **overrides: object) -> McpServerConfig:
    return McpServerConfig.model_validate(
        {"name": name, "command": sys.executable, "args": [TEST_SERVER], **overrides}
    )


def runner(manager: McpManager, timeout_s: float = TIMEOUT) -> ToolExecutor:
    registry = Registry()
    registry.add_source(manager)
    return ToolExecutor(registry, timeout_s=timeout_s)


async def run1(
    executor: ToolExecutor, name: str, **arguments: object
) -> tuple[str | None, str | None]:
    [result] = await executor.run([ToolCall("1", name, dict(arguments))])
    return result.result, result.error


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def manager() -> AsyncIterator[McpManager]:
    """The test server and the real `mcp-server-time`, shared by the read-only tests."""
    time_server = McpServerConfig(
        name="time",
        command=sys.executable,
        args=["-m", "mcp_server_time", "--local-timezone", "UTC"],
        startup_timeout=TIMEOUT,
    )
    started = McpManager([server_config(startup_timeout=TIMEOUT), time_server])
    await started.start()
    yield started
    await started.aclose()


async def test_tools_join_the_registry_namespaced(manager: McpManager) -> None:
    assert manager.status() == {"t": "running", "time": "running"}
    names = [spec.name for spec in runner(manager).specs()]
    assert names == [
        "t__add",
        "t__echo",
        "t__fail",
        "t__hang",
        "t__die",
        "t__odd_name",  # "odd.name" on the server: dots are not valid in OpenAI names
        "time__get_current_time",
        "time__convert_time",
    ]
    assert all(TOOL_NAME_RE.match(name) for name in names)
    add = next(spec for spec in manager.tools() if spec.name == "t__add").spec
    assert add.description == "Add two integers."
    assert add.parameters["properties"] == {"a": {"type": "integer"}, "b": {"type": "integer"}}
    assert add.parameters["required"] == ["a", "b"]


async def test_calls(manager: McpManager) -> None:
    executor = runner(manager)
    results = await executor.run(
        [
            ToolCall("1", "t__add", {"a": 2, "b": 3}),
            ToolCall("2", "t__echo", {"text": "héllo ✓"}),
            ToolCall("3", "t__odd_name", {}),
            ToolCall("4", "time__get_current_time", {"timezone": "Europe/Paris"}),
            ToolCall(
                "5",
                "time__convert_time",
                {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
            ),
        ]
    )
    assert [r.error for r in results] == [None] * 5
    assert [r.result for r in results[:3]] == ["5", "héllo ✓", "odd"]
    assert results[3].result is not None
    assert json.loads(results[3].result)["timezone"] == "Europe/Paris"
    assert results[4].result is not None
    assert json.loads(results[4].result)["target"]["datetime"].endswith("T21:00:00+09:00")
    assert all(r.duration_ms > 0 for r in results)


async def test_errors_go_back_to_the_model(manager: McpManager) -> None:
    executor = runner(manager)
    assert await run1(executor, "t__fail", message="boom") == (
        None,
        "tool 't__fail' failed: Error executing tool fail: boom",
    )
    result, error = await run1(executor, "t__add", a="two")
    assert result is None
    assert error is not None
    assert error.startswith("tool 't__add' failed: ")
    result, error = await run1(executor, "time__get_current_time", timezone="Mars/Base")
    assert error is not None
    assert "Invalid timezone" in error


async def test_timeout_leaves_the_server_usable(manager: McpManager) -> None:
    executor = runner(manager, timeout_s=0.3)
    results = await executor.run(
        [ToolCall("1", "t__hang", {}), ToolCall("2", "t__add", {"a": 1, "b": 1})]
    )
    assert [(r.result, r.error) for r in results] == [
        (None, "tool 't__hang' timed out after 0.3 s"),
        ("2", None),
    ]
    assert await run1(runner(manager), "t__echo", text="still here") == ("still here", None)


async def test_failing_servers_do_not_stop_the_others() -> None:
    # Restarts off: these states are the ends of their first runs (restarts are tested below).
    silent = McpServerConfig(
        name="silent",
        command=sys.executable,
        args=["-c", "import sys; sys.stdin.read()"],
        startup_timeout=0.5,
        restart=False,
    )
    missing = McpServerConfig(name="missing", command="/nonexistent/mcp-server", restart=False)
    quits = McpServerConfig(
        name="quits", command=sys.executable, args=["-c", "raise SystemExit(2)"], restart=False
    )
    off = McpServerConfig(name="off", command="/nonexistent/too", enabled=False)
    manager = McpManager(
        [silent, server_config(startup_timeout=TIMEOUT, restart=False), missing, quits, off]
    )
    await asyncio.wait_for(manager.start(), TIMEOUT)
    try:
        assert manager.status() == {
            "silent": "failed",
            "t": "running",
            "missing": "failed",
            "quits": "failed",
        }
        executor = runner(manager)
        assert await run1(executor, "t__add", a=20, b=22) == ("42", None)

        # The server dies mid-call: the call fails, the server's tools disappear.
        result, error = await run1(executor, "t__die")
        assert result is None
        assert error is not None
        assert error.startswith("tool 't__die' failed: MCP server 't'")
        await asyncio.wait_for(manager.server("t").wait_stopped(), TIMEOUT)
        assert manager.status()["t"] == "exited"
        assert executor.specs() == []
        assert await run1(executor, "t__add", a=1, b=1) == (
            None,
            "unknown tool 't__add'; available tools: none",
        )
    finally:
        await asyncio.wait_for(manager.aclose(), TIMEOUT)
    assert set(manager.status().values()) == {"stopped"}


async def test_a_server_that_dies_is_started_again_with_its_tools() -> None:
    manager = McpManager([server_config(startup_timeout=TIMEOUT, restart_delay=0.05)])
    await asyncio.wait_for(manager.start(), TIMEOUT)
    server = manager.server("t")
    try:
        executor = runner(manager)
        _, error = await run1(executor, "t__die")
        assert error is not None
        # Its tools went with it; the supervisor starts it again and they are back.
        await asyncio.wait_for(server.wait_for("running"), TIMEOUT)
        assert server.restarts == 1
        assert await run1(executor, "t__add", a=20, b=22) == ("42", None)
    finally:
        await asyncio.wait_for(manager.aclose(), TIMEOUT)
    assert manager.status() == {"t": "stopped"}


async def test_a_server_that_keeps_failing_is_retried_with_a_growing_delay() -> None:
    quits = McpServerConfig(
        name="quits",
        command=sys.executable,
        args=["-c", "raise SystemExit(2)"],
        restart_delay=0.05,
        max_restart_delay=0.2,
    )
    manager = McpManager([quits])
    await asyncio.wait_for(manager.start(), TIMEOUT)
    server = manager.server("quits")
    try:
        async with asyncio.timeout(TIMEOUT):
            while server.restarts < 4:  # 0.05 + 0.1 + 0.2 + 0.2 s of waiting
                await server.wait_for("starting")
                await server.wait_for("failed")
        assert manager.tools() == []
    finally:
        await asyncio.wait_for(manager.aclose(), TIMEOUT)  # also from the middle of a wait
    assert manager.status() == {"quits": "stopped"}


async def test_aclose_while_a_server_is_still_starting() -> None:
    silent = McpServerConfig(
        name="silent",
        command=sys.executable,
        args=["-c", "import sys; sys.stdin.read()"],
        startup_timeout=3600,
    )
    manager = McpManager([silent])
    starting = asyncio.create_task(manager.start())
    await asyncio.sleep(0)  # let start() launch the server task
    assert manager.status() == {"silent": "starting"}
    await asyncio.wait_for(manager.aclose(), TIMEOUT)
    await asyncio.wait_for(starting, TIMEOUT)
    assert manager.status() == {"silent": "stopped"}
    assert manager.tools() == []


async def _wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            assert process.returncode is None, "the HTTP test server exited"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # polling a condition, bounded by the timeout above
                continue
            writer.close()
            await writer.wait_closed()
            return


async def test_streamable_http_transport() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        TEST_SERVER,
        "--http",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_listening(port, process)
        config = McpServerConfig(
            name="web",
            transport="http",
            url=f"http://127.0.0.1:{port}/mcp",
            headers={"X-Test": "1"},
            startup_timeout=TIMEOUT,
        )
        manager = McpManager([config])
        await manager.start()
        try:
            assert manager.status() == {"web": "running"}
            executor = runner(manager)
            assert await run1(executor, "web__add", a=1, b=2) == ("3", None)
            assert await run1(executor, "web__fail", message="nope") == (
                None,
                "tool 'web__fail' failed: Error executing tool fail: nope",
            )
        finally:
            await manager.aclose()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), TIMEOUT)
