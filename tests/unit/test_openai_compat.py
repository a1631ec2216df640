"""The sans-I/O parts of the `openai` engine: SSE decoding, chunks, errors, message shape."""

from __future__ import annotations

import json

import pytest

from tether.engines.base import (
    ChatMessage,
    EngineBusyError,
    EngineError,
    GenerationOptions,
    GenerationRequest,
    ToolCall,
    UnknownModelError,
    Usage,
)
from tether.engines.openai_compat import (
    OpenAIEngine,
    SSEDecoder,
    StreamState,
    error_message,
    map_finish_reason,
    normalise_base_url,
    to_openai_messages,
    upstream_error,
)


def feed_all(lines: list[str]) -> list[str]:
    decoder = SSEDecoder()
    events = [data for line in lines if (data := decoder.feed(line)) is not None]
    if (rest := decoder.flush()) is not None:
        events.append(rest)
    return events


def test_sse_events_end_at_blank_lines() -> None:
    lines = [": keep-alive", "event: message", 'data: {"a":1}', "", "data:{}", "id: 3", "", ""]
    assert feed_all(lines) == ['{"a":1}', "{}"]


def test_sse_multi_line_data_and_crlf() -> None:
    assert feed_all(["data: one\r", "data: two\r", "\r", "data: [DONE]"]) == ["one\ntwo", "[DONE]"]


def test_chunks_give_text_finish_and_usage() -> None:
    state = StreamState()
    role_only = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    assert state.take(json.dumps(role_only)) == ""
    assert state.take('{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}') == "Hi"
    assert state.take('{"choices":[{"delta":{},"finish_reason":"length"}]}') == ""
    assert state.take('{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}') == ""
    final = state.final(GenerationRequest("r", (ChatMessage("user", "x"),)))
    assert final.finish_reason == "length"
    assert final.usage == Usage(prompt_tokens=5, completion_tokens=1)
    assert final.metadata is None


def test_usage_is_estimated_when_the_server_sends_none() -> None:
    state = StreamState()
    for piece in ("a", "b", "c"):
        state.take(json.dumps({"choices": [{"delta": {"content": piece}}]}))
    state.take('{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}')
    final = state.final(GenerationRequest("r", (ChatMessage("user", "12345678"),)))
    assert final.finish_reason == "stop"
    assert final.usage == Usage(prompt_tokens=2, completion_tokens=3)
    assert final.metadata == {"usage_estimated": True}


@pytest.mark.parametrize("data", ["not json", "[1]", '{"error":{"message":"boom"}}'])
def test_bad_or_error_chunks_raise(data: str) -> None:
    with pytest.raises(EngineError):
        StreamState().take(data)


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
    body = engine.payload(request, "m")
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
