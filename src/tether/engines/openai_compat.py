"""The `openai` engine: any OpenAI-compatible `/v1/chat/completions` server, streamed with httpx.

Works with `mlc_llm serve`, Ollama, vLLM, llama.cpp's server and `python -m llama_cpp.server`.
The base URL is the one the OpenAI SDK takes (`http://127.0.0.1:8000/v1`); a URL without a path
gets `/v1` appended. Usage is requested with `stream_options.include_usage`; a server that does
not send it gets an estimate (prompt: characters / 4, completion: one token per streamed chunk),
flagged with `usage_estimated` in the final delta's metadata. Upstream queueing is invisible from
here, so `queue_position` is always 0.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from tether.engines.base import (
    ChatMessage,
    Delta,
    EngineBusyError,
    EngineError,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    UnknownModelError,
    Usage,
    UsageReport,
)

log = structlog.get_logger(__name__)

DONE = "[DONE]"
_MAX_ERROR_CHARS = 500


def to_openai_messages(messages: Iterable[ChatMessage]) -> list[dict[str, Any]]:
    """Chat messages in the OpenAI wire format, tool calls and tool results included."""
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.role == "assistant" and message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": json.dumps(call.arguments, ensure_ascii=False),
                    },
                }
                for call in message.tool_calls
            ]
        if message.role == "tool" and message.tool_call_id is not None:
            item["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            item["name"] = message.name
        out.append(item)
    return out


class SSEDecoder:
    """Server-sent events, line by line: returns each event's data when its blank line arrives.

    Only `data:` fields matter here; comments (`:`), `event:`, `id:` and `retry:` are skipped.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith("data:"):
            value = line[5:]
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """The pending event's data, if any (a stream may end without the final blank line)."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


def map_finish_reason(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"


def error_message(body: bytes, fallback: str) -> str:
    """The human part of an upstream error body (OpenAI, FastAPI, Ollama and vLLM shapes)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        decoded: Any = json.loads(text)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        error = decoded.get("error", decoded)
        if isinstance(error, str):
            return error[:_MAX_ERROR_CHARS]
        if isinstance(error, dict):
            for key in ("message", "detail"):
                if isinstance(error.get(key), str):
                    return str(error[key])[:_MAX_ERROR_CHARS]
            if "detail" in error:
                return json.dumps(error["detail"])[:_MAX_ERROR_CHARS]
    return text[:_MAX_ERROR_CHARS] or fallback


def upstream_error(status: int, body: bytes, url: str) -> EngineError:
    message = error_message(body, httpx.codes.get_reason_phrase(status))
    if status == 404 and "model" in message.lower():
        return UnknownModelError(f"upstream {status}: {message}")
    if status == 404:
        return EngineError(f"upstream {status} at {url}: {message} (does the base URL end in /v1?)")
    if status in (429, 503):
        return EngineBusyError(f"upstream {status}: {message}")
    return EngineError(f"upstream {status}: {message}")


@dataclass(slots=True)
class StreamState:
    """What the chunks so far said: the finish reason, the usage, how many text pieces came."""

    finish: str | None = None
    usage: Usage | None = None
    pieces: int = 0

    def take(self, data: str) -> str:
        """Absorb one SSE data payload (a JSON chunk) and return its text."""
        try:
            chunk: Any = json.loads(data)
        except ValueError as exc:
            raise EngineError(f"upstream sent a chunk that is not JSON: {data[:100]!r}") from exc
        if not isinstance(chunk, dict):
            raise EngineError(f"upstream sent an unexpected chunk: {data[:100]!r}")
        if "error" in chunk:  # vLLM and llama.cpp report mid-stream failures this way
            raise EngineError(f"upstream error: {error_message(data.encode(), 'unknown')}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish = str(choice["finish_reason"])
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(text, str) and text:
            self.pieces += 1
            return text
        return ""

    def usage_so_far(self, request: GenerationRequest) -> Usage:
        """The upstream's usage if it sent one, else the estimate (see the module docstring)."""
        if self.usage is not None:
            return self.usage
        prompt_chars = sum(len(m.content) for m in request.messages)
        return Usage(prompt_tokens=math.ceil(prompt_chars / 4), completion_tokens=self.pieces)

    def final(self, request: GenerationRequest) -> Delta:
        metadata = None if self.usage is not None else {"usage_estimated": True}
        return Delta(
            finish_reason=map_finish_reason(self.finish),
            usage=self.usage_so_far(request),
            metadata=metadata,
        )


def normalise_base_url(base_url: str) -> httpx.URL:
    url = httpx.URL(base_url.rstrip("/"))
    if url.path in ("", "/"):
        url = url.copy_with(path="/v1")
    return url


class OpenAIEngine:
    """A client of one OpenAI-compatible server.

    `default_model` is sent when a request names none; without it the first model the server
    lists is used.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        default_model: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.default_model = default_model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        )

    def payload(self, request: GenerationRequest, model: str) -> dict[str, Any]:
        options = request.options
        body: dict[str, Any] = {
            "model": model,
            "messages": to_openai_messages(request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for key in ("temperature", "top_p", "max_tokens", "seed"):
            value = getattr(options, key)
            if value is not None:
                body[key] = value
        if options.stop:
            body["stop"] = list(options.stop)
        return body

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        model = request.model or self.default_model or await self._first_model()
        url = f"{self.base_url}/chat/completions"
        state = StreamState()
        report = UsageReport(request)
        try:
            # Leaving this block, also by cancellation or aclose(), closes the upstream stream,
            # which tells the server to stop generating.
            async with self._client.stream(
                "POST",
                "chat/completions",
                json=self.payload(request, model),
                headers={"Accept": "text/event-stream"},
            ) as response:
                if response.status_code >= 400:
                    raise upstream_error(response.status_code, await response.aread(), url)
                decoder = SSEDecoder()
                async for line in response.aiter_lines():
                    data = decoder.feed(line)
                    if data == DONE:
                        break
                    if data is not None and (text := state.take(data)):
                        yield Delta(text=text)
                else:  # no [DONE]: the last event may lack its closing blank line
                    data = decoder.flush()
                    if data is not None and data != DONE and (text := state.take(data)):
                        yield Delta(text=text)
        except (GeneratorExit, asyncio.CancelledError):
            # Left early: the sink hears what came so far (the server may have made a token more).
            report(state.usage_so_far(request))
            raise
        except httpx.ConnectError as exc:
            raise EngineError(f"cannot connect to the OpenAI-compatible server at {url}") from exc
        except httpx.TimeoutException as exc:
            raise EngineError(f"the OpenAI-compatible server at {url} timed out") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"talking to {url} failed: {exc!r}") from exc
        report(state.usage_so_far(request))
        yield state.final(request)

    async def models(self) -> list[ModelInfo]:
        try:
            response = await self._client.get("models")
            response.raise_for_status()
            data = response.json().get("data", [])
            return [
                ModelInfo(id=str(item["id"]), engine=self.name, loaded=True)
                for item in data
                if isinstance(item, dict) and "id" in item
            ]
        except (httpx.HTTPError, ValueError, AttributeError, TypeError) as exc:
            # Which URL and why: the router shows it (/health, a chat's error, start-up's log).
            reason = str(exc) or type(exc).__name__
            url = f"{self.base_url}/models"
            raise EngineError(f"cannot list the models at {url}: {reason}") from exc

    async def _first_model(self) -> str:
        models = await self.models()
        if not models:
            raise EngineError(
                f"no model named and {self.base_url}/models lists none: set a default model"
            )
        return models[0].id

    def queue_position(self, model: str | None) -> int:
        return 0  # the upstream server's queue is not visible from here

    async def aclose(self) -> None:
        await self._client.aclose()
