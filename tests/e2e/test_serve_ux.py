"""`tether serve` as a new user meets it: what it logs, where it finds models, how it fails."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.servers import free_port, tether_bin, tether_serve
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, text_of

pytestmark = pytest.mark.e2e

TOKEN = "tok-0123456789-abcdefghij"
OTHER = "someone-elses-token-42"


async def test_the_token_never_reaches_the_debug_log(tmp_path: Path) -> None:
    args = ("--db", str(tmp_path / "t.db"), "--engine", "echo", "--log-level", "debug")
    with tether_serve(tmp_path, *args, env={"TETHER_TOKEN": TOKEN}) as server:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with connect(server.ws_url, additional_headers=headers) as ws:
            assert text_of(await ProtocolClient(ws).chat("r1", "by header")) == "by header"
        async with connect(f"{server.ws_url}?token={TOKEN}") as ws:
            assert text_of(await ProtocolClient(ws).chat("r2", "by query")) == "by query"
        # A wrong token is a secret too (someone else's, perhaps).
        wrong = {"Authorization": f"Bearer {OTHER}"}
        async with connect(server.ws_url, additional_headers=wrong) as ws:
            await ws.wait_closed()
        assert ws.close_code == 4401
        log = server.log()
    assert log.count("authorization: Bearer [redacted]") == 2  # the handshakes were logged
    assert "token=[redacted]" in log
    assert TOKEN not in log
    assert OTHER not in log


def serve_once(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`tether serve` that is expected to stop at start-up, from `tmp_path`, without TETHER_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "MLC_"))}
    return subprocess.run(
        [*tether_bin(), "serve", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=scaled(60),
        check=False,
    )


def test_serve_started_elsewhere_finds_the_checkouts_model(tmp_path: Path) -> None:
    # No config file, a working directory without dist/: the model setup.sh installed is found.
    with tether_serve(tmp_path, "--db", str(tmp_path / "t.db")) as server:
        health = httpx.get(f"{server.http_url}/health")
        models = httpx.get(f"{server.http_url}/models").json()
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["engines"]["llamacpp"]["state"] == "ready"
    assert any(m["engine"] == "llamacpp" and "SmolLM2" in m["id"] for m in models)


def test_a_named_model_that_is_not_there_stops_start_up_in_one_line(tmp_path: Path) -> None:
    port = str(free_port())
    result = serve_once(tmp_path, "--db", str(tmp_path / "t.db"), "--port", port, "--model", "nope")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tether serve: start-up failed: engine.model 'nope'")
    assert "is not available" in last
    assert "Traceback" not in result.stderr


def test_a_database_in_use_stops_start_up_in_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    with tether_serve(tmp_path, "--db", db, "--engine", "echo") as first:
        result = serve_once(tmp_path, "--db", db, "--engine", "echo", "--port", str(free_port()))
        assert httpx.get(f"{first.http_url}/health").status_code == 200  # untouched
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tether serve: start-up failed:")
    assert "in use by another Tether server" in last
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_once(tmp_path, "--db", str(tmp_path / "t.db"), "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"tether serve: cannot listen on 127.0.0.1:{port}: port {port} is in use "
        "(is another server running?); stop it or pick another with --port"
    ]


async def test_tool_calls_and_http_requests_are_logged_with_their_request_id(
    tmp_path: Path,
) -> None:
    with tether_serve(tmp_path, "--db", str(tmp_path / "t.db"), "--engine", "echo") as server:
        call = json.dumps({"name": "calculator", "arguments": {"expression": "6*7"}})
        async with connect(server.ws_url) as ws:
            frames = await ProtocolClient(ws).chat("calc-1", f"<tool_call>{call}</tool_call>")
        assert "returned: 42" in text_of(frames)
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            traced = await http.get("/sessions", headers={"X-Request-ID": "trace-7.a:b"})
            fresh = await http.get("/tools")
            hostile = await http.get("/models", headers={"X-Request-ID": "x\x01" * 40})
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    done = [line for line in lines if line["event"] == "tools.call_done"]
    assert len(done) == 1
    assert done[0]["level"] == "info"
    assert (done[0]["tool"], done[0]["request_id"]) == ("calculator", "calc-1")
    assert done[0]["call_id"]
    assert done[0]["duration_ms"] >= 0
    assert traced.headers["X-Request-ID"] == "trace-7.a:b"
    generated = fresh.headers["X-Request-ID"]
    assert re.fullmatch("[0-9a-f]{32}", generated)
    assert re.fullmatch("[0-9a-f]{32}", hostile.headers["X-Request-ID"])
    access = {
        line["event"].split('"')[1]: line.get("request_id")
        for line in lines
        if line["logger"] == "uvicorn.access"
    }
    assert access["GET /sessions HTTP/1.1"] == "trace-7.a:b"
    assert access["GET /tools HTTP/1.1"] == generated


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tether_bin(), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=scaled(60),
        check=False,
    )


def test_tools_and_agents_commands(tmp_path: Path) -> None:
    context = tmp_path / "context.md"
    context.write_text("- be brief\n", encoding="utf-8")
    with tether_serve(tmp_path, "--db", str(tmp_path / "t.db"), "--engine", "echo") as server:
        url = ("--url", server.http_url)
        tools = cli("tools", *url)
        assert tools.returncode == 0, tools.stderr
        names = {line.split()[0]: line for line in tools.stdout.splitlines()}
        assert "Evaluate an arithmetic expression." in names["calculator"]
        put = [*url, "--put", "rev", "--name", "Reviewer", "--system-prompt", "Be precise."]
        saved = cli("agents", *put, "--context", str(context), "-o", "temperature=0.2")
        assert saved.returncode == 0, saved.stderr
        assert json.loads(saved.stdout)["default_options"] == {"temperature": 0.2}
        listed = cli("agents", *url)
        assert listed.stdout.split()[0] == "rev"
        assert listed.stdout.split()[-1] == "Reviewer"
        shown = json.loads(cli("agents", *url, "--show", "rev").stdout)
        assert (shown["system_prompt"], shown["markdown_context"]) == (
            "Be precise.",
            "- be brief\n",
        )
        # sessions takes the same http address (and still the socket's ws:// URL)
        assert cli("sessions", *url).returncode == 0
        assert cli("agents", *url, "--delete", "rev").stdout.strip() == "deleted rev"
        missing = cli("agents", *url, "--show", "rev")
        assert missing.returncode == 1
        assert missing.stderr.startswith("error (not_found):")
        assert (
            cli("agents", *url, "--put", "x").stderr.strip() == "tether agents: --put needs --name"
        )
    # No server there: the tools this configuration enables.
    config = tmp_path / "config.yaml"
    config.write_text("tools:\n  enabled: [calculator]\n", encoding="utf-8")
    local = cli("tools", "--url", server.http_url, "--config", str(config))
    assert local.returncode == 0, local.stderr
    assert [line.split()[0] for line in local.stdout.splitlines()] == ["calculator"]
    assert "no server at" in local.stderr
