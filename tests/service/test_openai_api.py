"""The OpenAI-compatible API against a real server, driven by the official `openai` SDK.

The echo engine gives exact answers (and "calls" a tool when the user's text is a
`<tool_call>` block, which the detector reads as the model's call); the tiny random-weight GGUF
gives llama.cpp's own paths: a grammar-enforced JSON answer, a hang-up, a full model line.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.timeouts import scaled
from tether.engines.base import EngineBusyError
from tether.engines.llama_model import RunStats
from tether.engines.llamacpp import LlamaCppEngine

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def sdk(server: RunningServer, api_key: str = "unused") -> AsyncOpenAI:
    # No retries: a refusal must surface as the SDK's exception at once.
    return AsyncOpenAI(
        base_url=f"{server.http_url}/v1", api_key=api_key, max_retries=0, timeout=scaled(60)
    )


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[AsyncOpenAI]:
    async with sdk(server) as opened:
        yield opened


# -- chat -------------------------------------------------------------------------------------


async def test_a_chat_completion_in_openais_shape(client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello over openai"}]
    )
    assert answer.id.startswith("chatcmpl-")
    assert answer.object == "chat.completion"
    assert answer.model == "echo"
    assert answer.created > 0
    [choice] = answer.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "hello over openai"
    assert choice.finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 3


async def test_the_model_may_be_left_out_and_content_may_be_text_parts(
    server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=scaled(30)) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={
                "messages": [
                    {"role": "developer", "content": "be brief"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "two "},
                            {"type": "text", "text": "parts"},
                        ],
                    },
                ],
                "some_future_field": {"ignored": True},
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "echo"
    assert body["choices"][0]["message"]["content"] == "two parts"


async def test_a_stream_of_chunks_ends_with_usage_and_done(server: RunningServer) -> None:
    async with (
        sdk(server) as client,
        await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        ) as stream,
    ):
        chunks = [chunk async for chunk in stream]
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert set(finishes[:-1]) == {None}
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 3
    # On the wire: SSE events, the last one `[DONE]`.
    async with httpx.AsyncClient(base_url=server.http_url, timeout=scaled(30)) as http:
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        response = await http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [event for event in response.text.split("\n\n") if event]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    assert "usage" not in json.loads(events[-2][len("data: ") :])


async def test_max_tokens_and_stop(client: AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "a b c d e f"}]
    short = await client.chat.completions.create(model="echo", messages=messages, max_tokens=2)
    assert short.choices[0].message.content == "a b "
    assert short.choices[0].finish_reason == "length"
    newer = await client.chat.completions.create(
        model="echo", messages=messages, max_completion_tokens=3
    )
    assert newer.choices[0].message.content == "a b c "


# -- tools ------------------------------------------------------------------------------------


async def test_a_tool_call_round_trip(client: AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": CALL}]
    first = await client.chat.completions.create(
        model="echo", messages=messages, tools=[WEATHER_TOOL]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments == {"city": "Paris"}
    # The client runs the tool and sends its result back, as the SDK's docs show.
    result = f"sunny in {arguments['city']}"
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    second = await client.chat.completions.create(
        model="echo", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool get_weather returned: sunny in Paris"


async def test_tool_calls_stream_as_deltas(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": CALL}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    [calls] = [delta.tool_calls for delta in deltas if delta.tool_calls]
    assert calls[0].index == 0
    assert calls[0].function is not None
    assert calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_tool_choice_none_offers_no_tools(client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": CALL}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == CALL
    assert answer.choices[0].message.tool_calls is None


async def test_the_servers_tools_loop_at_most_max_tool_loops_rounds(tmp_path: Path) -> None:
    # A file whose text calls read_file on itself: echo says the result, which is the call again.
    call = '<tool_call>{"name": "read_file", "arguments": {"path": "loop.txt"}}</tool_call>'
    (tmp_path / "loop.txt").write_text(call)
    settings = make_settings(
        tmp_path,
        **{
            "openai_api.run_server_tools": True,
            "tools.files_root": str(tmp_path),
            "limits.max_tool_loops": 2,
        },
    )
    async with serve_app(settings) as server, sdk(server) as client:
        answer = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": call}]
        )
    # Three rounds: two ran the call, the third's call was left at the limit.
    assert answer.choices[0].message.content == "Tool read_file returned: " * 2
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].finish_reason == "stop"


async def test_without_tools_call_markup_is_text(client: AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": CALL}]
    )
    assert answer.choices[0].message.content == CALL


# -- errors -----------------------------------------------------------------------------------


async def test_bad_requests_are_openai_errors(client: AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as n:
        await client.chat.completions.create(model="echo", messages=messages, n=2)
    assert n.value.param == "n"
    with pytest.raises(openai.BadRequestError) as temperature:
        await client.chat.completions.create(
            model="echo", messages=messages, extra_body={"temperature": "hot"}
        )
    assert temperature.value.param == "temperature"
    assert temperature.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as role:
        await client.chat.completions.create(
            model="echo",
            messages=[{"role": "wizard", "content": "hi"}],  # type: ignore[misc,list-item]
        )
    assert role.value.param == "messages.0.role"
    with pytest.raises(openai.BadRequestError) as empty:
        await client.chat.completions.create(model="echo", messages=[])
    assert empty.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as tool:
        await client.chat.completions.create(
            model="echo",
            messages=[{"role": "tool", "content": "x"}],  # type: ignore[misc,list-item]
        )
    assert tool.value.param == "messages.0.tool_call_id"


async def test_not_json_is_a_bad_request(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=scaled(30)) as http:
        response = await http.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        untyped = await http.post("/v1/chat/completions", content=b"{}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    # A body that does not say it is JSON (what a form of another site posts) is refused.
    assert untyped.status_code == 415
    assert untyped.json()["error"]["code"] == "unsupported_media_type"


async def test_every_v1_refusal_has_openais_shape(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=scaled(30)) as http:
        unknown = await http.get("/v1/nothing")
        wrong_method = await http.get("/v1/chat/completions")
    for response, status in ((unknown, 404), (wrong_method, 405)):
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_an_unknown_model_is_not_found(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-9")


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
async def test_a_forced_tool_call_on_an_engine_that_cannot_force_one(
    client: AsyncOpenAI, choice: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER_TOOL],
            tool_choice=choice,
        )
    assert "cannot force a tool call" in caught.value.message
    assert "echo" in caught.value.message


async def test_response_format_on_an_engine_that_cannot_enforce_it(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_object"},
        )
    assert "cannot enforce" in caught.value.message


async def test_the_token_is_asked_for_in_openais_shape(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"server.token": "s3cret"})
    async with serve_app(settings) as server:
        async with sdk(server, api_key="wrong") as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.models.list()
        assert caught.value.code == "invalid_api_key"
        assert caught.value.type == "authentication_error"
        async with sdk(server, api_key="s3cret") as client:
            answer = await client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "let in"}]
            )
        assert answer.choices[0].message.content == "let in"


# -- models -----------------------------------------------------------------------------------


async def test_models_in_openais_shape(client: AsyncOpenAI, server: RunningServer) -> None:
    models = await client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in models.data] == [("echo", "model", "echo")]
    echo = await client.models.retrieve("echo")
    assert echo.id == "echo"
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        body = (await http.get("/v1/models")).json()
    assert body["object"] == "list"
    assert set(body["data"][0]) == {"id", "object", "created", "owned_by"}


# -- llama.cpp: grammar, hang-up, queue -------------------------------------------------------


class Runs:
    """The engine's per-generation stats, which arrive from worker threads."""

    def __init__(self) -> None:
        self._queue: queue.Queue[RunStats] = queue.Queue()

    def __call__(self, stats: RunStats) -> None:
        self._queue.put(stats)

    async def next(self) -> RunStats:
        return await asyncio.to_thread(self._queue.get, timeout=scaled(30))


@pytest.fixture
def runs() -> Runs:
    return Runs()


@pytest.fixture
async def llama_engine(tiny_gguf: Path, tmp_path: Path, runs: Runs) -> LlamaCppEngine:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "tiny.gguf").symlink_to(tiny_gguf)
    # No room to wait in the model's line: a second request while one runs is refused.
    return LlamaCppEngine(dist, n_ctx=4096, n_threads=1, max_queue=0, on_run=runs)


@pytest.fixture
async def llama_server(
    tmp_path: Path, llama_engine: LlamaCppEngine
) -> AsyncIterator[RunningServer]:
    settings = make_settings(tmp_path, **{"engine.name": "llamacpp"})
    async with serve_app(settings, engine=llama_engine) as server:
        yield server


async def until_running(engine: LlamaCppEngine) -> None:
    """Until the model's line is taken (polling a public count; bounded by the deadline)."""
    async with asyncio.timeout(scaled(30)):
        while True:
            try:
                engine.queue_position("tiny")
            except EngineBusyError:
                return
            await asyncio.sleep(0.01)


class City(BaseModel):
    city: Literal["Paris", "London", "Rome"]
    population_millions: int
    capital: bool


async def test_a_json_schema_answer_parses_and_validates(llama_server: RunningServer) -> None:
    async with sdk(llama_server) as client:
        answer = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Which city is the capital of France?"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": City.model_json_schema(), "strict": True},
            },
            max_tokens=200,
            temperature=1.0,
            seed=3,
        )
        content = answer.choices[0].message.content
        assert content is not None
        City.model_validate_json(content)  # random weights, yet the grammar holds them to it
        assert answer.choices[0].finish_reason == "stop"
        anything = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Some JSON please"}],
            response_format={"type": "json_object"},
            max_tokens=300,
            temperature=0,
        )
        if anything.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(anything.choices[0].message.content or ""), dict)
        else:  # cut at max_tokens: still JSON's start
            assert (anything.choices[0].message.content or "").lstrip().startswith("{")


async def test_a_client_that_hangs_up_stops_the_answer_within_a_token(
    llama_server: RunningServer, runs: Runs
) -> None:
    long: Any = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]}
    async with sdk(llama_server) as client:
        stream = await client.chat.completions.create(**long, temperature=0, stream=True)
        received = 0
        async for chunk in stream:
            received += bool(chunk.choices and chunk.choices[0].delta.content)
            if received == 5:
                break
        # While the first answer runs, the model's line (max_queue=0) is full: 429.
        with pytest.raises(openai.RateLimitError) as busy:
            await client.chat.completions.create(**long, max_tokens=2)
        assert busy.value.code == "model_busy"
        await stream.close()  # hang up
        stats = await runs.next()
    assert stats.finish_reason == "cancelled"
    assert stats.tokens_after_cancel is not None
    assert stats.tokens_after_cancel <= 1
    assert stats.completion_tokens < 3000
    # The line moved on.
    async with sdk(llama_server) as client:
        after = await client.chat.completions.create(**long, max_tokens=2)
    assert after.choices[0].finish_reason == "length"


async def test_a_non_streamed_request_whose_client_leaves_is_cancelled(
    llama_server: RunningServer, llama_engine: LlamaCppEngine, runs: Runs
) -> None:
    message: Any = {"role": "user", "content": "Hello"}
    async with sdk(llama_server) as client:  # the model loaded, so the answer starts at once
        await client.chat.completions.create(model="tiny", messages=[message], max_tokens=1)
    assert (await runs.next()).finish_reason == "length"
    body = json.dumps({"model": "tiny", "messages": [message], "temperature": 0}).encode()
    _reader, writer = await asyncio.open_connection("127.0.0.1", llama_server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    await until_running(llama_engine)
    writer.close()  # hang up before the answer
    await writer.wait_closed()
    stats = await runs.next()
    assert stats.finish_reason == "cancelled"
    assert stats.tokens_after_cancel is not None
    assert stats.tokens_after_cancel <= 1
    assert stats.completion_tokens < 3000
