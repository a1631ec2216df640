"""A stand-in for MLC-LLM's `mlc_llm` package with the slice of its API Tether uses.

`AsyncMLCEngine(model, device, *, model_lib, mode)` checks the model folder like MLC does;
`await engine.chat.completions.create(..., stream=True)` streams OpenAI-style chunk objects
(pydantic models, like MLC's `ChatCompletionStreamResponse`) that
answer `echo: <last user text>` word by word, then a usage-only chunk when
`stream_options.include_usage` is set; `await engine.abort(request_id)` stops that stream before
its next chunk and is recorded; `engine.terminate()` is recorded. Message validation follows
MLC's: a system message only first, no `tool` role, no assistant `tool_calls`.

Tests steer it through module attributes: `PAUSE_AFTER = n` makes a stream wait after `n` text
chunks until it is aborted, `FAIL_LOAD = True` makes construction fail. `ENGINES` lists every
engine built.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ENGINES: list[AsyncMLCEngine] = []
PAUSE_AFTER: int | None = None
FAIL_LOAD = False

_WORD = re.compile(r"\s*\S+\s*")


class DeltaMessage(BaseModel):
    content: str | None = None
    role: str | None = "assistant"


class StreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    extra: dict[str, Any] | None = None


class ChatCompletionStreamResponse(BaseModel):
    id: str
    choices: list[StreamChoice] = []
    usage: CompletionUsage | None = None
    object: str = "chat.completion.chunk"


class BadRequestError(ValueError):
    pass


def _validate(messages: list[dict[str, Any]]) -> None:
    for index, message in enumerate(messages):
        if message["role"] == "system" and index != 0:
            raise BadRequestError(f"System prompt at position {index} is invalid.")
        if message["role"] == "tool":
            raise BadRequestError("Tool as a message author is not yet supported.")
        if message["role"] == "assistant" and message.get("tool_calls"):
            raise BadRequestError("Function calls as message authors are not yet supported.")


class _Completions:
    def __init__(self, engine: AsyncMLCEngine) -> None:
        self._engine = engine

    async def create(
        self,
        *,
        messages: list[dict[str, Any]],
        stream: bool = False,
        stream_options: dict[str, Any] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        request_id: str | None = None,
        **extra: Any,
    ) -> AsyncIterator[ChatCompletionStreamResponse]:
        if not stream:
            raise NotImplementedError("the stand-in only streams")
        _validate(messages)
        request_id = request_id or f"chatcmpl-{len(self._engine.requests)}"
        self._engine.requests.append(
            {
                "request_id": request_id,
                "messages": messages,
                "temperature": temperature,
                "top_p": top_p,
                "max_tokens": max_tokens,
                "seed": seed,
                "stop": stop,
                "stream_options": stream_options,
                **extra,
            }
        )
        self._engine.stopped[request_id] = asyncio.Event()
        include_usage = bool(stream_options and stream_options.get("include_usage"))
        return self._engine._generate(request_id, messages, max_tokens, include_usage)


class _Chat:
    def __init__(self, engine: AsyncMLCEngine) -> None:
        self.completions = _Completions(engine)


class AsyncMLCEngine:
    def __init__(
        self,
        model: str,
        device: str = "auto",
        *,
        model_lib: str | None = None,
        mode: str = "local",
        engine_config: Any = None,
        enable_tracing: bool = False,
    ) -> None:
        if FAIL_LOAD:
            raise RuntimeError("cannot allocate device memory")
        if not (Path(model) / "mlc-chat-config.json").is_file():
            raise ValueError(f"no mlc-chat-config.json in {model}")
        self.model = model
        self.device = device
        self.model_lib = model_lib
        self.mode = mode
        self.chat = _Chat(self)
        self.requests: list[dict[str, Any]] = []
        self.stopped: dict[str, asyncio.Event] = {}
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self.terminated = False
        ENGINES.append(self)

    async def _generate(
        self,
        request_id: str,
        messages: list[dict[str, Any]],
        max_tokens: int | None,
        include_usage: bool,
    ) -> AsyncIterator[ChatCompletionStreamResponse]:
        user = [m["content"] for m in messages if m["role"] == "user"]
        words = _WORD.findall("echo: " + (user[-1] if user else ""))
        finish = "stop"
        if max_tokens is not None and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        stopped = self.stopped[request_id]
        for index, word in enumerate(words):
            if PAUSE_AFTER is not None and index == PAUSE_AFTER:
                await stopped.wait()
            if stopped.is_set():
                return
            await asyncio.sleep(0)  # a decode step: let other tasks run
            yield ChatCompletionStreamResponse(
                id=request_id, choices=[StreamChoice(index=0, delta=DeltaMessage(content=word))]
            )
        yield ChatCompletionStreamResponse(
            id=request_id,
            choices=[StreamChoice(index=0, delta=DeltaMessage(content=""), finish_reason=finish)],
        )
        self.finished.append(request_id)
        if include_usage:
            prompt = sum(len(_WORD.findall(str(m["content"]))) for m in messages)
            usage = CompletionUsage(
                prompt_tokens=prompt,
                completion_tokens=len(words),
                total_tokens=prompt + len(words),
            )
            yield ChatCompletionStreamResponse(id=request_id, choices=[], usage=usage)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        if request_id in self.stopped:
            self.stopped[request_id].set()

    def terminate(self) -> None:
        self.terminated = True
