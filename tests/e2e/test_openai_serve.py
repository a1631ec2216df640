"""The OpenAI-compatible API of a real `tether serve` (the repository's config: SmolLM2 in dist/,
echo beside it), driven by the official SDK, and the README's examples run as they are written.

The README's `python` and `bash` blocks of its "OpenAI-compatible API" section are run verbatim
with `OPENAI_BASE_URL` and `OPENAI_API_KEY` set (what its `sh` block exports); the `sh` block
itself, which starts a server on the default port, is shown, not run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.support.servers import ServerProcess, tether_serve
from tests.support.timeouts import scaled

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct.Q4_1"
TOKEN = "e2e-token"


def readme_blocks(section: str) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks of the README's `## {section}`."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else None]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.DOTALL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("openai-serve")
    args = ("--config", str(ROOT / "config.yaml"), "--db", str(tmp / "t.db"))
    with tether_serve(tmp, *args, env={"TETHER_TOKEN": TOKEN}) as running:
        yield running


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{server.http_url}/v1", api_key=TOKEN, max_retries=0, timeout=scaled(120)
    ) as opened:
        yield opened


def run_block(server: ServerProcess, language: str, code: str) -> str:
    env = {
        **os.environ,
        "OPENAI_BASE_URL": f"{server.http_url}/v1",
        "OPENAI_API_KEY": TOKEN,
    }
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-c", code]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=scaled(180), check=False
    )
    assert result.returncode == 0, f"{language} block failed:\n{code}\n{result.stderr}"
    return result.stdout


def test_the_readme_examples_run_as_written(server: ServerProcess) -> None:
    blocks = [(lang, code) for lang, code in readme_blocks("OpenAI-compatible API")]
    assert [lang for lang, _ in blocks] == ["sh", "python", "python", "bash"]
    chat = run_block(server, *blocks[1])
    assert "Paris" in chat
    assert re.search(r"\[\d+ tokens\]", chat)
    structured = run_block(server, *blocks[2])
    assert "city='Paris'" in structured
    events = run_block(server, *blocks[3]).strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    text = "".join(
        json.loads(event.removeprefix("data: "))["choices"][0]["delta"].get("content") or ""
        for event in events[:-1]
    )
    assert text == "hello"


def test_a_tool_call_round_trip_through_tether_serve(client: openai.OpenAI) -> None:
    tool: Any = {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
    # The echo model says what it is told: here, a call of the client's tool.
    call_text = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 40}}</tool_call>'
    messages: list[Any] = [{"role": "user", "content": call_text}]
    first = client.chat.completions.create(model="echo", messages=messages, tools=[tool])
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls or []
    assert call.type == "function"
    arguments = json.loads(call.function.arguments)
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": str(arguments["a"] + arguments["b"])},
    ]
    second = client.chat.completions.create(model="echo", messages=messages, tools=[tool])
    assert second.choices[0].message.content == "Tool add returned: 42"


class Answer(BaseModel):
    answer: int
    sure: bool


def test_json_schema_on_the_embedded_model(client: openai.OpenAI) -> None:
    parsed = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "What is 2 + 2?"}],
        response_format=Answer,
        temperature=0,
    )
    message = parsed.choices[0].message
    assert isinstance(message.parsed, Answer)
    assert Answer.model_validate_json(message.content or "") == message.parsed


def test_errors_are_the_sdks_exceptions(server: ServerProcess, client: openai.OpenAI) -> None:
    with (
        openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hi"}], n=3
        )
    ids = {model.id for model in client.models.list()}
    assert {MODEL, "echo"} <= ids
