"""The `openai` engine: any OpenAI-compatible `/v1/chat/completions` server, streamed with httpx.

Works with `mlc_llm serve`, Ollama, vLLM, llama.cpp's server and `python -m llama_cpp.server`.
The base URL is the one the OpenAI SDK takes (`http://127.0.0.1:8000/v1`); a URL without a path
gets `/v1` appended. The stream is read with `httpx-sse`, its chunks by `openai_wire` (usage, or
its estimate flagged `usage_estimated`; finish reasons; native tool calls). Upstream queueing is
invisible from here, so `queue_position` is always 0.

Tools: with `native_tools` "auto" (the default) or True, a turn's tools go to the upstream as
`tools` with the configured `tool_choice` (default "auto"; sent explicitly, as llama_cpp.server
ignores tools without it), except on a round that answers tool results: that one leaves
`tool_choice` out (OpenAI's default, "auto"; llama_cpp.server answers in text), so a forcing
choice cannot loop. Then the upstream's native
`tool_calls` come back on the final delta for the chat core's tool loop. "auto" falls back to
no `tools` for a model whose upstream refuses them with a 400 (Ollama for models without tool
support, vLLM without `--enable-auto-tool-choice`), remembered per model until restart; True
makes that 400 the turn's error; False never sends them. Either way the system prompt describes
the tools, so an upstream that writes calls as text still gets them found by the detector.

A forced call (`GenerationRequest.forced_call`, from `/v1`'s `tool_choice` `required` or a named
function) is passed on as that `tool_choice`, for the upstream to enforce; it is never retried
without `tools` (a 400 to them is the turn's error), and a model whose tools are not sent
(`native_tools` false, or refused before) does not say `forced_calls`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

import httpx
import httpx_sse
import structlog

from tether.engines.base import (
    Delta,
    EngineBusyError,
    EngineError,
    GenerationRequest,
    ModelInfo,
    UnknownModelError,
    UsageReport,
)
from tether.engines.openai_wire import (
    DONE,
    ChunkReader,
    decode,
    error_message,
    forced_tool_choice,
    stream_fields,
    to_openai_messages,
    tool_fields,
)

log = structlog.get_logger(__name__)

NativeTools = bool | Literal["auto"]


def upstream_error(status: int, body: bytes, url: str) -> EngineError:
    message = error_message(body, httpx.codes.get_reason_phrase(status))
    if status == 404 and "model" in message.lower():
        return UnknownModelError(f"upstream {status}: {message}")
    if status == 404:
        return EngineError(f"upstream {status} at {url}: {message} (does the base URL end in /v1?)")
    if status in (429, 503):
        return EngineBusyError(f"upstream {status}: {message}")
    return EngineError(f"upstream {status}: {message}")


def normalise_base_url(base_url: str) -> httpx.URL:
    url = httpx.URL(base_url.rstrip("/"))
    if url.path in ("", "/"):
        url = url.copy_with(path="/v1")
    return url


class OpenAIEngine:
    """A client of one OpenAI-compatible server.

    `default_model` is sent when a request names none; without it the first model the server
    lists is used. `native_tools` and `tool_choice`: see the module docstring.
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
        native_tools: NativeTools = "auto",
        tool_choice: str = "auto",
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self.default_model = default_model
        self.native_tools = native_tools
        self.tool_choice = tool_choice
        self._refuse_tools: set[str] = set()  # models whose upstream said 400 to `tools`
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        )

    def payload(self, request: GenerationRequest, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": to_openai_messages(request.messages),
            **stream_fields(request.options),
        }
        if request.options.json_schema is not None:  # passed on: the upstream enforces it
            schema = request.options.json_schema
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        if not self.sends_tools(model):
            if request.forced_call is not None:
                raise EngineError(f"tool_choice: tools are not sent to the upstream for {model!r}")
            return body
        answers_results = bool(request.messages) and request.messages[-1].role == "tool"
        body |= tool_fields(request.tools, None if answers_results else self.tool_choice)
        if request.forced_call is not None and request.tools:  # the upstream forces it
            body["tool_choice"] = forced_tool_choice(request.forced_call)
        return body

    def sends_tools(self, model: str) -> bool:
        """Whether a request's tools go to the upstream as `tools` for `model`."""
        return self.native_tools is not False and model not in self._refuse_tools

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        model = request.model or self.default_model or await self._first_model()
        url = f"{self.base_url}/chat/completions"
        state = ChunkReader()
        report = UsageReport(request)
        try:
            # Leaving this block, also by cancellation or aclose(), closes the upstream stream,
            # which tells the server to stop generating.
            async with self._events(request, model, url) as events:
                async for event in events.aiter_sse():
                    if event.data == DONE:
                        break
                    if event.data and (text := state.take(decode(event.data))):
                        yield Delta(text=text)
        except (GeneratorExit, asyncio.CancelledError):
            # Left early: the sink hears what came so far (the server may have made a token more).
            report(state.usage_so_far(request))
            raise
        except httpx.ConnectError as exc:
            raise EngineError(f"cannot connect to the OpenAI-compatible server at {url}") from exc
        except httpx.TimeoutException as exc:
            raise EngineError(f"the OpenAI-compatible server at {url} timed out") from exc
        except httpx_sse.SSEError as exc:
            raise EngineError(f"{url} did not answer with an event stream: {exc}") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"talking to {url} failed: {exc!r}") from exc
        report(state.usage_so_far(request))
        yield state.final(request)

    @contextlib.asynccontextmanager
    async def _events(
        self, request: GenerationRequest, model: str, url: str
    ) -> AsyncIterator[httpx_sse.EventSource]:
        """The upstream's event stream; under "auto", once more without `tools` if refused."""
        body = self.payload(request, model)
        async with httpx_sse.aconnect_sse(
            self._client, "POST", "chat/completions", json=body
        ) as events:
            status = events.response.status_code
            if status < 400:
                yield events
                return
            error = await events.response.aread()
            # Without `tools` a forced call would not be forced: that 400 is the turn's error.
            fallback = self.native_tools == "auto" and request.forced_call is None
            if not (status == 400 and "tools" in body and fallback):
                raise upstream_error(status, error, url)
        log.warning("openai_tools_refused", model=model, error=error_message(error, "400"))
        self._refuse_tools.add(model)
        async with httpx_sse.aconnect_sse(
            self._client, "POST", "chat/completions", json=self.payload(request, model)
        ) as events:
            if events.response.status_code >= 400:
                raise upstream_error(
                    events.response.status_code, await events.response.aread(), url
                )
            yield events

    async def models(self) -> list[ModelInfo]:
        try:
            response = await self._client.get("models")
            response.raise_for_status()
            data = response.json().get("data", [])
            return [
                ModelInfo(
                    id=str(item["id"]),
                    engine=self.name,
                    loaded=True,
                    structured_output=True,
                    forced_calls=self.sends_tools(str(item["id"])),  # passed on as tool_choice
                )
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

    def queue_position(self, model: str | None, arriving: int = 0) -> int:
        return 0  # the upstream server's queue is not visible from here

    async def aclose(self) -> None:
        await self._client.aclose()
