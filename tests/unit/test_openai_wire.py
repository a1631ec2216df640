"""The OpenAI wire format (`openai_wire`) and the `openai` engine's sans-I/O parts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether.config import EngineSettings, OpenAISettings, Settings
from tether.detector import MalformedCall
from tether.engines.base import (
    ChatMessage,
    EngineBusyError,
    EngineError,
    GenerationOptions,
    GenerationRequest,
    ToolCall,
    ToolSpec,
    UnknownModelError,
    Usage,
)
from tether.engines.factory import build_engine
from tether.engines.openai_compat import OpenAIEngine, normalise_base_url, upstream_error
from tether.engines.openai_wire import (
    ChunkReader,
    decode,
    error_message,
    map_finish_reason,
    openai_tools,
    to_openai_messages,
    tool_choice,
)

ADD = ToolSpec("add", "Add two numbers.", {"type": "object", "properties": {"a": {}, "b": {}}})


def take(state: ChunkReader, data: str) -> str:
    return state.take(decode(data))


def call_chunk(index: int | None, **fields: object) -> dict[str, Any]:
    """A chunk carrying one `tool_calls` delta entry (no `index` key when it is None)."""
    entry: dict[str, object] = {} if index is None else {"index": index}
    function = {k: fields.pop(k) for k in ("name", "arguments") if k in fields}
    entry |= fields
    if function:
        entry["function"] = function
    return {"choices": [{"index": 0, "delta": {"tool_calls": [entry]}}]}


def test_chunks_give_text_finish_and_usage() -> None:
    state = ChunkReader()
    role_only = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    assert take(state, json.dumps(role_only)) == ""
    assert take(state, '{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}') == "Hi"
    assert take(state, '{"choices":[{"delta":{},"finish_reason":"length"}]}') == ""
    assert take(state, '{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}') == ""
    final = state.final(GenerationRequest("r", (ChatMessage("user", "x"),)))
    assert final.finish_reason == "length"
    assert final.usage == Usage(prompt_tokens=5, completion_tokens=1)
    assert final.metadata is None


def test_usage_is_estimated_when_the_server_sends_none() -> None:
    state = ChunkReader()
    for piece in ("a", "b", "c"):
        take(state, json.dumps({"choices": [{"delta": {"content": piece}}]}))
    take(state, '{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}')
    final = state.final(GenerationRequest("r", (ChatMessage("user", "12345678"),)))
    assert final.finish_reason == "stop"
    assert final.usage == Usage(prompt_tokens=2, completion_tokens=3)
    assert final.metadata == {"usage_estimated": True}


@pytest.mark.parametrize("data", ["not json", "[1]", '{"error":{"message":"boom"}}'])
def test_bad_or_error_chunks_raise(data: str) -> None:
    with pytest.raises(EngineError):
        decode(data)


@pytest.mark.parametrize(
    ("reason", "mapped"),
    [("stop", "stop"), ("length", "length"), ("tool_calls", "stop"), (None, "stop")],
)
def test_finish_reasons(reason: str | None, mapped: str) -> None:
    assert map_finish_reason(reason) == mapped


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error":{"message":"no model \\"x\\"","type":"api_error"}}', 'no model "x"'),
        (b'{"message":"Model `x` does not exist.","code":404}', "Model `x` does not exist."),
        (b'{"detail":"Not Found"}', "Not Found"),
        (b'{"error":"bad key"}', "bad key"),
        (b'{"detail":[{"loc":["body","messages"]}]}', '[{"loc": ["body", "messages"]}]'),
        (b"plain text", "plain text"),
        (b"", "fallback"),
    ],
)
def test_error_messages(body: bytes, message: str) -> None:
    assert error_message(body, "fallback") == message


def test_upstream_errors_map_to_engine_errors() -> None:
    url = "http://127.0.0.1:1/v1/chat/completions"
    missing = upstream_error(404, b'{"error":{"message":"model \\"x\\" not found"}}', url)
    assert isinstance(missing, UnknownModelError)
    wrong_path = upstream_error(404, b'{"detail":"Not Found"}', url)
    assert type(wrong_path) is EngineError
    assert url in str(wrong_path)
    assert isinstance(upstream_error(429, b"", url), EngineBusyError)
    failed = upstream_error(500, b'{"error":{"message":"oops"}}', url)
    assert str(failed) == "upstream 500: oops"
    assert "Unauthorized" in str(upstream_error(401, b"", url))


def test_messages_in_openai_shape() -> None:
    call = ToolCall(id="call_1", name="add", arguments={"a": 1, "b": "é"})
    messages = (
        ChatMessage("system", "sys"),
        ChatMessage("user", "add"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "3", name="add", tool_call_id="call_1"),
        ChatMessage("assistant", "It is 3."),
    )
    assert to_openai_messages(messages) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "add"},
        {
            "role": "assistant",
            "content": "",  # not null: llama-cpp-python's server rejects null content
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": "é"}'},
                }
            ],
        },
        {"role": "tool", "content": "3", "tool_call_id": "call_1", "name": "add"},
        {"role": "assistant", "content": "It is 3."},
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:11434/v1/", "http://127.0.0.1:11434/v1"),
        ("http://host/api/v1", "http://host/api/v1"),
    ],
)
def test_base_url(given: str, expected: str) -> None:
    assert str(normalise_base_url(given)) == expected


async def test_payload_carries_options_and_asks_for_usage() -> None:
    engine = OpenAIEngine("http://127.0.0.1:9", api_key="k")
    options = GenerationOptions(temperature=0.0, max_tokens=8, seed=1, stop=("\n",))
    request = GenerationRequest("r", (ChatMessage("user", "hi"),), options=options)
    body = engine.payload(request, "m")  # no tools in the request: none in the body
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
        "max_tokens": 8,
        "seed": 1,
        "stop": ["\n"],
    }
    assert engine.queue_position("m") == 0
    await engine.aclose()


def test_a_native_call_split_into_fragments_is_put_together() -> None:
    state = ChunkReader()
    chunks: list[dict[str, Any]] = [
        call_chunk(0, id="call_a", type="function", name="add", arguments=""),
        call_chunk(0, arguments='{"a": '),
        call_chunk(0, arguments="1, "),
        call_chunk(0, arguments='"b": "é"}'),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    assert [state.take(chunk) for chunk in chunks] == [""] * 5
    final = state.final(GenerationRequest("r", (ChatMessage("user", "add"),)))
    assert final.tool_calls == (ToolCall("call_a", "add", {"a": 1, "b": "é"}),)
    assert final.finish_reason == "stop"
    assert final.usage == Usage(prompt_tokens=1, completion_tokens=4)  # 4 fragment chunks


def test_several_calls_in_index_order_with_repeated_names() -> None:
    state = ChunkReader()
    # llama_cpp.server repeats id and name on every chunk; interleaved indexes stay apart.
    for chunk in (
        call_chunk(1, id="c1", name="now", arguments="{"),
        call_chunk(0, id="c0", name="add", arguments='{"a": 2'),
        call_chunk(1, id="c1", name="now", arguments="}"),
        call_chunk(0, id="c0", name="add", arguments="}"),
    ):
        state.take(chunk)
    assert state.calls() == (ToolCall("c0", "add", {"a": 2}), ToolCall("c1", "now", {}))


def test_calls_without_index_or_id_are_calls_of_their_own() -> None:
    state = ChunkReader()
    state.take(call_chunk(None, name="now", arguments={}))  # Ollama: whole calls, object args
    state.take(call_chunk(None, id="x", name="add", arguments='{"a": 1}'))
    first, second = state.calls()
    assert isinstance(first, ToolCall)
    assert (first.name, first.arguments) == ("now", {})
    assert first.id.startswith("call_")
    assert second == ToolCall("x", "add", {"a": 1})


def test_text_and_calls_in_one_answer() -> None:
    state = ChunkReader()
    text = state.take({"choices": [{"delta": {"content": "Let me add.", "tool_calls": None}}]})
    state.take(call_chunk(0, id="c", name="add", arguments="{}"))
    assert text == "Let me add."
    assert state.calls() == (ToolCall("c", "add", {}),)
    assert state.pieces == 2


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"name": "add", "arguments": '{"a": '}, "not valid JSON"),
        ({"name": "add", "arguments": "[1]"}, "not a JSON object"),
        ({"arguments": "{}"}, "no function name"),
    ],
)
def test_bad_native_calls_are_malformed(fields: dict[str, object], error: str) -> None:
    state = ChunkReader()
    state.take(call_chunk(0, id="c", **fields))
    [call] = state.calls()
    assert isinstance(call, MalformedCall)
    assert error in call.error


def test_no_calls_means_an_empty_tuple_and_no_tools_field() -> None:
    state = ChunkReader()
    state.take({"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]})
    assert state.final(GenerationRequest("r", ())).tool_calls == ()


def test_tools_in_openai_function_format() -> None:
    assert openai_tools([ADD]) == [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two numbers.",
                "parameters": {"type": "object", "properties": {"a": {}, "b": {}}},
            },
        }
    ]
    assert tool_choice("auto") == "auto"
    assert tool_choice("required") == "required"
    assert tool_choice("add") == {"type": "function", "function": {"name": "add"}}


async def test_payload_offers_tools_and_forces_no_choice_after_results() -> None:
    engine = OpenAIEngine("http://127.0.0.1:9", tool_choice="add")
    asking = GenerationRequest("r", (ChatMessage("user", "add"),), tools=(ADD,))
    body = engine.payload(asking, "m")
    assert body["tools"] == openai_tools([ADD])
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    call = ToolCall("c", "add", {"a": 1, "b": 2})
    answering = GenerationRequest(
        "r",
        (
            *asking.messages,
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", "3", tool_call_id="c"),
        ),
        tools=(ADD,),
    )
    answer_body = engine.payload(answering, "m")
    assert answer_body["tools"] == openai_tools([ADD])
    assert "tool_choice" not in answer_body  # the server's default: no forced call loop
    await engine.aclose()
    never = OpenAIEngine("http://127.0.0.1:9", native_tools=False)
    assert "tools" not in never.payload(asking, "m")
    await never.aclose()


async def test_the_upstream_tool_settings_reach_the_engine() -> None:
    openai = OpenAISettings(base_url="http://127.0.0.1:9/v1", native_tools=False, tool_choice="add")
    settings = Settings(engine=EngineSettings(name="openai", openai=openai))
    engine = build_engine("openai", settings)
    assert isinstance(engine, OpenAIEngine)
    assert (engine.native_tools, engine.tool_choice) == (False, "add")
    await engine.aclose()
