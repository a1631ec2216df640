"""`tether serve` and `tether chat` as real processes, the way users run them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.servers import tether_bin, tether_serve
from tests.support.timeouts import scaled
from tests.support.wsclient import ProtocolClient, text_of

pytestmark = pytest.mark.e2e


async def test_serve_chat_restart_and_history_survives(tmp_path: Path) -> None:
    db = tmp_path / "data" / "tether.db"
    with tether_serve(tmp_path, "--db", str(db), "--engine", "echo") as server:
        async with connect(server.ws_url) as ws:
            client = ProtocolClient(ws)
            frames = await client.chat("r1", "remember this")
            assert text_of(frames) == "remember this"
            session_id = frames[0]["chunk"]["metadata"]["session_id"]
        log = server.log()
    # One JSON object per log line, each line of the turn carrying its ids.
    turn_lines = [json.loads(line) for line in log.splitlines() if '"turn.' in line]
    assert turn_lines
    assert all(
        line["request_id"] == "r1" and line["session_id"] == session_id for line in turn_lines
    )
    with tether_serve(tmp_path, "--db", str(db), "--engine", "echo") as server:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            messages = (await http.get(f"/sessions/{session_id}/messages")).json()
        assert [m["content"] for m in messages] == ["remember this", "remember this"]
        async with connect(server.ws_url) as ws:
            frames = await ProtocolClient(ws).chat("r2", "and this", session_id=session_id)
            assert text_of(frames) == "and this"


def test_cli_one_shot_chat(tmp_path: Path) -> None:
    with tether_serve(tmp_path, "--db", str(tmp_path / "t.db"), "--engine", "echo") as server:
        result = subprocess.run(
            [*tether_bin(), "chat", "--url", server.ws_url, "--prompt", "one shot please"],
            capture_output=True,
            text=True,
            timeout=scaled(60),
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "one shot please"
        session_id = httpx.get(f"{server.http_url}/sessions").json()[0]["id"]
        again = subprocess.run(
            [
                *tether_bin(),
                "chat",
                "--url",
                server.ws_url,
                "--session",
                session_id,
                "--prompt",
                "more",
            ],
            capture_output=True,
            text=True,
            timeout=scaled(60),
            check=False,
        )
        assert again.returncode == 0, again.stderr
        listed = subprocess.run(
            [*tether_bin(), "sessions", "--url", server.ws_url, "--show", session_id],
            capture_output=True,
            text=True,
            timeout=scaled(60),
            check=False,
        )
        assert listed.stdout.split() == [
            "user:",
            "one",
            "shot",
            "please",
            "assistant:",
            "one",
            "shot",
            "please",
            "user:",
            "more",
            "assistant:",
            "more",
        ]


def test_cli_interactive_chat(tmp_path: Path) -> None:
    with tether_serve(tmp_path, "--db", str(tmp_path / "t.db"), "--engine", "echo") as server:
        result = subprocess.run(
            [*tether_bin(), "chat", "--url", server.ws_url],
            input="first line\nsecond line\n",
            capture_output=True,
            text=True,
            timeout=scaled(60),
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "first line" in result.stdout
        assert "second line" in result.stdout
        sessions = httpx.get(f"{server.http_url}/sessions").json()
        assert len(sessions) == 1  # the whole conversation is one session


def test_cli_chat_reports_an_unreachable_server(tmp_path: Path) -> None:
    result = subprocess.run(
        [*tether_bin(), "chat", "--url", "ws://127.0.0.1:9/ws/chat", "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 1
    assert "cannot talk to ws://127.0.0.1:9/ws/chat" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--port", "70000"], {}, "server.port"),
        (["--engine", "gpt9"], {}, "engine.name"),
        ([], {"TETHER_LIMITS__MAX_TEXT_CHARS": "-1"}, "limits.max_text_chars"),
    ],
)
def test_bad_settings_stop_start_up_naming_the_key(
    tmp_path: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    result = subprocess.run(
        [*tether_bin(), "serve", "--db", str(tmp_path / "t.db"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=scaled(60),
        check=False,
    )
    assert result.returncode == 2
    assert says in result.stderr


def test_the_default_setup_answers_with_the_embedded_model(tmp_path: Path) -> None:
    """`./setup.sh && tether serve` with the repository's config: SmolLM2, offline, knows Paris."""
    repo = Path(__file__).resolve().parents[2]
    args = ("--config", str(repo / "config.yaml"), "--db", str(tmp_path / "t.db"))
    with tether_serve(tmp_path, *args) as server:
        health = httpx.get(f"{server.http_url}/health").json()
        assert health["engine"] == "llamacpp"
        result = subprocess.run(
            [
                *tether_bin(),
                "chat",
                "--url",
                server.ws_url,
                "--prompt",
                "What is the capital of France?",
            ],
            capture_output=True,
            text=True,
            timeout=scaled(120),
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


async def test_no_model_in_dist_is_said_at_start_and_on_chat(tmp_path: Path) -> None:
    empty = {"TETHER_DIST_PATH": str(tmp_path / "dist")}
    with tether_serve(tmp_path, "--db", str(tmp_path / "t.db"), env=empty) as server:
        assert "app.no_default_model" in server.log()
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            health = await http.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "degraded"
        assert health.json()["engines"]["llamacpp"] == {"state": "no_model", "models": 0}
        assert health.json()["engines"]["echo"] == {"state": "ready", "models": 1}
        async with connect(server.ws_url) as ws:
            frames = await ProtocolClient(ws).chat("r1", "hello")
        assert frames[-1]["error"]["code"] == "not_found"
        assert "no model" in frames[-1]["error"]["message"]
        # The echo engine is still there for a wiring check.
        async with connect(server.ws_url) as ws:
            frames = await ProtocolClient(ws).chat("r2", "hello", options={"model": "echo"})
        assert text_of(frames) == "hello"
