"""Tool calls on `/v1` of a real `tether serve`, driven by the official `openai` SDK.

A forced call (`tool_choice` `required` or a named function) on the tiny random-weight GGUF:
its nonsense weights make any call that parses and validates the grammar's doing, not the
model's. Tether's own tools on `/v1` (`openai_api.run_server_tools`) on the echo model, which
calls what the user writes and then says the tool's result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.support.servers import ServerProcess, tether_serve
from tests.support.timeouts import scaled
from tether.engines.echo import split_words

pytestmark = pytest.mark.e2e


class Place(BaseModel):
    city: Literal["Paris", "Rome", "Oslo"]
    district: str = Field(max_length=12)


class Weather(BaseModel):
    """The weather at a place."""

    place: Place  # a nested model: the schema's `$defs`
    unit: Literal["c", "f"]
    days: Literal[1, 3, 7]  # (bounds, `minimum`/`maximum`, are not held by llama.cpp's grammar)


class Add(BaseModel):
    """Add two integers."""

    a: int
    b: int


TOOLS: list[Any] = [openai.pydantic_function_tool(Weather), openai.pydantic_function_tool(Add)]
MODELS: dict[str, type[BaseModel]] = {"Weather": Weather, "Add": Add}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris this week?"}]


@pytest.fixture(scope="module")
def tiny_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("openai-tools")
    (tmp / "dist").mkdir()
    (tmp / "dist" / "tiny.gguf").symlink_to(tiny_gguf)
    env = {"TETHER_ENGINE__DIST_PATH": str(tmp / "dist"), "TETHER_ENGINE__LLAMACPP__N_THREADS": "1"}
    args = ("--engine", "llamacpp", "--model", "tiny", "--db", str(tmp / "t.db"))
    with tether_serve(tmp, *args, env=env) as running:
        yield running


@pytest.fixture
def tiny(tiny_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{tiny_server.http_url}/v1", api_key="unused", max_retries=0, timeout=scaled(120)
    ) as opened:
        yield opened


def the_call(completion: Any) -> tuple[str, BaseModel]:
    """The completion's one call: its tool's name and its arguments, validated."""
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id
    return call.function.name, MODELS[call.function.name].model_validate_json(
        call.function.arguments
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_named_tool_is_called_with_valid_arguments(tiny: openai.OpenAI, seed: int) -> None:
    completion = tiny.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "Weather"}},
        temperature=1.0,
        seed=seed,
        max_tokens=300,
    )
    name, arguments = the_call(completion)
    assert name == "Weather"
    assert isinstance(arguments, Weather)
    assert completion.choices[0].message.content is None  # the answer is the call, nothing else


def test_required_calls_one_of_the_tools(tiny: openai.OpenAI) -> None:
    for seed in range(6):
        completion = tiny.chat.completions.create(
            model="tiny",
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            temperature=1.0,
            seed=seed,
            max_tokens=300,
        )
        name, arguments = the_call(completion)
        assert isinstance(arguments, MODELS[name])


def test_a_forced_call_streams_as_a_tool_call_delta(tiny: openai.OpenAI) -> None:
    stream = tiny.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "Add"}},
        temperature=0,
        max_tokens=300,
        stream=True,
    )
    calls: list[Any] = []
    finish: list[str | None] = []
    text = ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        calls += delta.tool_calls or []
        text += delta.content or ""
        finish.append(chunk.choices[0].finish_reason)
    assert finish[-1] == "tool_calls"
    assert text == ""
    [call] = calls
    assert call.function
    assert call.function.name == "Add"
    Add.model_validate(json.loads(call.function.arguments or ""))


def test_a_forced_call_outranks_response_format(tiny: openai.OpenAI) -> None:
    completion = tiny.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "Add"}},
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=300,
    )
    name, arguments = the_call(completion)
    assert name == "Add"
    assert isinstance(arguments, Add)


def test_forcing_a_call_without_tools_is_a_bad_request(tiny: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        tiny.chat.completions.create(model="tiny", messages=ASK, tool_choice="required")
    assert caught.value.param == "tool_choice"


# -- Tether's own tools on /v1 (openai_api.run_server_tools) ----------------------------------

SERVER_CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "6 * 7"}}</tool_call>'
ADD_TOOL: Any = openai.pydantic_function_tool(Add)


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("openai-server-tools")
    env = {"TETHER_OPENAI_API__RUN_SERVER_TOOLS": "true"}
    with tether_serve(tmp, "--engine", "echo", "--db", str(tmp / "t.db"), env=env) as running:
        yield running


@pytest.fixture
def with_tools(tools_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{tools_server.http_url}/v1", api_key="unused", max_retries=0, timeout=scaled(60)
    ) as opened:
        yield opened


def test_the_server_runs_its_own_tool_and_the_client_gets_the_answer(
    with_tools: openai.OpenAI,
) -> None:
    # The echo model calls the server's calculator (what the user wrote), then answers from its
    # result: the client sees only that answer.
    messages: list[Any] = [{"role": "user", "content": SERVER_CALL}]
    answer = with_tools.chat.completions.create(model="echo", messages=messages)
    choice = answer.choices[0]
    assert choice.message.content == "Tool calculator returned: 42"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert answer.usage is not None  # both rounds: echo makes a token of each word it says
    said = split_words(SERVER_CALL) + split_words("Tool calculator returned: 42")
    assert answer.usage.completion_tokens == len(said)
    stream = with_tools.chat.completions.create(model="echo", messages=messages, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_calls_of_the_requests_own_tools_still_go_to_the_client(
    with_tools: openai.OpenAI,
) -> None:
    call = '<tool_call>{"name": "Add", "arguments": {"a": 2, "b": 40}}</tool_call>'
    messages: list[Any] = [{"role": "user", "content": call}]
    answer = with_tools.chat.completions.create(model="echo", messages=messages, tools=[ADD_TOOL])
    assert answer.choices[0].finish_reason == "tool_calls"
    [sent] = answer.choices[0].message.tool_calls or []
    assert sent.type == "function"
    assert sent.function.name == "Add"
    assert json.loads(sent.function.arguments) == {"a": 2, "b": 40}


def test_tool_choice_none_offers_the_servers_tools_neither(with_tools: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": SERVER_CALL}]
    answer = with_tools.chat.completions.create(
        model="echo", messages=messages, tools=[ADD_TOOL], tool_choice="none"
    )
    assert answer.choices[0].message.content == SERVER_CALL  # text: no tool was offered


def test_by_default_the_servers_tools_are_not_offered(tiny_server: ServerProcess) -> None:
    with openai.OpenAI(
        base_url=f"{tiny_server.http_url}/v1", api_key="unused", max_retries=0, timeout=scaled(60)
    ) as client:
        messages: list[Any] = [{"role": "user", "content": SERVER_CALL}]
        answer = client.chat.completions.create(model="echo", messages=messages)
    assert answer.choices[0].message.content == SERVER_CALL
    assert answer.choices[0].finish_reason == "stop"
