"""The seeds' own client examples, sent as the seeds show them, against `tether serve`.

Seed 002 (`POST /sessions`, `session["session_id"]`, `/chat/stream` with seed names and an MLC
model of `dist/`), seed 000 (`curl -N .../api/v1/generate/stream` with a session it names) and
seed 004 (`updateAgent({id, ...})`, options `{temperature, maxNewTokens}`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import ServerProcess, tether_serve
from tests.support.timeouts import scaled

FAKE_MLC = Path(__file__).resolve().parents[1] / "support" / "fake_mlc_llm"
SEED_002_MODEL = "Llama-3-8B-Instruct-q4f16_1-MLC"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """`tether serve` with seed 002's model in dist/ (served by the stand-in mlc_llm)."""
    model = tmp_path / "dist" / SEED_002_MODEL
    model.mkdir(parents=True)
    config = {"model_type": "llama", "quantization": "q4f16_1", "conv_template": "llama-3"}
    (model / "mlc-chat-config.json").write_text(json.dumps(config))
    (model / "ndarray-cache.json").write_text("{}")
    env = {"PYTHONPATH": os.pathsep.join([str(FAKE_MLC), os.environ.get("PYTHONPATH", "")])}
    args = ("--db", str(tmp_path / "t.db"), "--engine", "mlc")
    with tether_serve(tmp_path, *args, env={**env, "MLC_DIST_PATH": str(tmp_path / "dist")}) as s:
        yield s


def lines(response: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in response.iter_lines() if line]


def test_seed_002_python_example(server: ServerProcess) -> None:
    base = server.http_url
    response = httpx.post(f"{base}/sessions")
    session = response.json()
    session_id = session["session_id"]
    assert session["id"] == session_id  # Tether's own clients read `id`
    stream_request = {
        "session_id": session_id,
        "prompt": "What's the weather like in Dublin?",
        "model_name": SEED_002_MODEL,
    }
    with httpx.stream(
        "POST", f"{base}/chat/stream", json=stream_request, timeout=scaled(30)
    ) as response:
        events = lines(response)
    assert response.status_code == 200
    assert events[0]["type"] == "start"
    assert any(event["type"] == "token" for event in events)
    assert events[-1]["type"] == "done"


def test_seed_000_curl_smoke_test(server: ServerProcess) -> None:
    # curl -N .../api/v1/generate/stream -H "Content-Type: application/json" -d '{...}'
    body = b'{"session_id":"demo","prompt":"Say hello"}'
    headers = {"Content-Type": "application/json"}
    url = f"{server.http_url}/api/v1/generate/stream"
    for _ in range(2):  # "demo" is made on first use, then continued
        with httpx.stream("POST", url, content=body, headers=headers, timeout=scaled(30)) as r:
            events = lines(r)
        assert r.status_code == 200, events
        kinds = [event["type"] for event in events]
        assert kinds[0] == "start"
        assert kinds[-1] == "done"
        assert "text" in kinds
        assert "token" not in kinds
    messages = httpx.get(f"{server.http_url}/sessions/demo/messages").json()
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "Say hello"


def test_seed_004_update_agent_and_options(server: ServerProcess) -> None:
    base = server.http_url
    agent = {
        "id": "reviewer",
        "name": "Reviewer",
        "system_prompt": "You are Reviewer, a precise PR reviewer.",
        "markdown_context": "- Keep responses focused on regressions.\n",
    }
    assert httpx.put(f"{base}/agents/reviewer", json=agent).status_code == 201
    other = httpx.put(f"{base}/agents/someone-else", json=agent)
    assert other.status_code == 400
    assert "differs" in other.json()["error"]["message"]
    options = {"temperature": 0.2, "maxNewTokens": 400}
    put = httpx.put(f"{base}/agents/reviewer", json={**agent, "default_options": options})
    assert put.status_code == 200, put.text
    assert put.json()["default_options"] == {"temperature": 0.2, "max_tokens": 400}
    body = {"text": "Summarize the latest run.", "agent_id": "reviewer", "options": options}
    with httpx.stream("POST", f"{base}/chat/stream", json=body, timeout=scaled(30)) as response:
        events = lines(response)
    assert response.status_code == 200, events
    assert events[-1]["type"] == "done"
