"""The OpenAI chat-completions wire format, shared by the `openai` and `mlc` engines (sans-I/O).

Request side: `to_openai_messages` (history, tool calls and results included), `stream_fields`
(streaming with usage, the sampling options), `tool_fields` (the turn's tools in OpenAI's
function format, with a `tool_choice`), `forced_tool_choice` (a forced call as `tool_choice`).

Response side: a `ChunkReader` takes the stream's chunks as decoded JSON objects (`decode` turns
an SSE data payload into one; the `mlc` engine dumps MLC's pydantic chunks) and returns each
chunk's text. Along the way it keeps:

* the finish reason of the first choice (`map_finish_reason`: `length` stays, anything else,
  `tool_calls` included, is `stop`: a calling answer is told apart by its calls);
* the usage, if the server sends one (`stream_options.include_usage`); otherwise `usage_so_far`
  estimates it (prompt: characters / 4, completion: one token per chunk that carried text or a
  call fragment) and the final delta's metadata says `usage_estimated`;
* native tool calls: `delta.tool_calls` entries, keyed by `index`, whose `id` and
  `function.name` arrive whole (OpenAI and vLLM send them once, llama_cpp.server repeats them on
  every chunk: the first is kept) and whose `function.arguments` arrive as fragments to be
  concatenated. An entry without an `index` is a call of its own (Ollama sends whole calls).

Failures: a payload that is not a JSON object, or a chunk carrying `error` (how vLLM and
llama.cpp report a failure mid-stream), raise EngineError. A call whose arguments are not a JSON
object, or that has no name, becomes a `MalformedCall` (the tool loop tells the model why); a
call without an `id` gets one.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tether.detector import MalformedCall
from tether.engines.base import (
    ChatMessage,
    Delta,
    EngineError,
    FinishReason,
    ForcedCall,
    GenerationOptions,
    GenerationRequest,
    ToolCall,
    ToolSpec,
    Usage,
)
from tether.tool_markup import call_json

DONE: Final = "[DONE]"  # the data of the SSE event that ends an OpenAI stream
MAX_ERROR_CHARS: Final = 500
_SAMPLING: Final = ("temperature", "top_p", "max_tokens", "seed")
_TOOL_CHOICE_WORDS: Final = frozenset({"auto", "required", "none"})


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


def stream_fields(options: GenerationOptions) -> dict[str, Any]:
    """Streaming with usage asked for, and the sampling options the request sets."""
    body: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
    for key in _SAMPLING:
        value = getattr(options, key)
        if value is not None:
            body[key] = value
    if options.stop:
        body["stop"] = list(options.stop)
    return body


def openai_tools(specs: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Specs as OpenAI `tools` entries."""
    return [
        {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": spec.parameters,
            },
        }
        for spec in specs
    ]


def tool_choice(choice: str) -> str | dict[str, Any]:
    """`auto`, `required` and `none` as they are; any other word names the function to call."""
    if choice in _TOOL_CHOICE_WORDS:
        return choice
    return {"type": "function", "function": {"name": choice}}


def forced_tool_choice(forced: ForcedCall) -> str | dict[str, Any]:
    """A forced call as OpenAI's `tool_choice`: `required`, or the named function."""
    if forced.name is None:
        return "required"
    return {"type": "function", "function": {"name": forced.name}}


def tool_fields(specs: Sequence[ToolSpec], choice: str | None) -> dict[str, Any]:
    """`tools`, and `tool_choice` unless None (the server's default, "auto" in OpenAI's API),
    for a request offering `specs` (nothing when there are none)."""
    if not specs:
        return {}
    fields: dict[str, Any] = {"tools": openai_tools(specs)}
    if choice is not None:
        fields["tool_choice"] = tool_choice(choice)
    return fields


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
            return error[:MAX_ERROR_CHARS]
        if isinstance(error, dict):
            for key in ("message", "detail"):
                if isinstance(error.get(key), str):
                    return str(error[key])[:MAX_ERROR_CHARS]
            if "detail" in error:
                return json.dumps(error["detail"])[:MAX_ERROR_CHARS]
    return text[:MAX_ERROR_CHARS] or fallback


def decode(data: str) -> Mapping[str, Any]:
    """One SSE data payload as a chunk object; raises EngineError for non-chunks and errors."""
    try:
        chunk: Any = json.loads(data)
    except ValueError as exc:
        raise EngineError(f"upstream sent a chunk that is not JSON: {data[:100]!r}") from exc
    if not isinstance(chunk, dict):
        raise EngineError(f"upstream sent an unexpected chunk: {data[:100]!r}")
    if "error" in chunk:
        raise EngineError(f"upstream error: {error_message(data.encode(), 'unknown')}")
    return chunk


@dataclass(slots=True)
class _CallBuffer:
    """One native call as its fragments arrive."""

    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)

    def add(self, entry: Mapping[str, Any]) -> None:
        if self.id is None and isinstance(entry.get("id"), str) and entry["id"]:
            self.id = entry["id"]
        function = entry.get("function")
        if not isinstance(function, Mapping):
            return
        name = function.get("name")
        if self.name is None and isinstance(name, str) and name:
            self.name = name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            self.arguments.append(arguments)
        elif isinstance(arguments, Mapping):  # some servers send the object itself
            self.arguments.append(json.dumps(arguments, ensure_ascii=False))

    def call(self) -> ToolCall | MalformedCall:
        text = "".join(self.arguments)
        raw = json.dumps({"name": self.name, "arguments": text}, ensure_ascii=False)
        if not self.name:
            return MalformedCall(raw, "the tool call has no function name")
        try:
            arguments: Any = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            return MalformedCall(raw, f"the arguments are not valid JSON: {exc}")
        if not isinstance(arguments, dict):
            return MalformedCall(call_json(self.name, {}), "the arguments are not a JSON object")
        return ToolCall(self.id or f"call_{uuid.uuid4().hex[:16]}", self.name, arguments)


@dataclass(slots=True)
class ChunkReader:
    """What the chunks so far said: text (returned), finish reason, usage, native tool calls."""

    finish: str | None = None
    usage: Usage | None = None
    pieces: int = 0
    _calls: dict[int, _CallBuffer] = field(default_factory=dict)

    def take(self, chunk: Mapping[str, Any]) -> str:
        """Absorb one chunk object and return its text."""
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self.usage = Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish = str(choice["finish_reason"])
        delta = choice.get("delta")
        if not isinstance(delta, Mapping):
            return ""
        took_calls = self._take_calls(delta.get("tool_calls"))
        text = delta.get("content")
        if isinstance(text, str) and text:
            self.pieces += 1
            return text
        self.pieces += took_calls
        return ""

    def _take_calls(self, entries: Any) -> bool:
        if not isinstance(entries, list):
            return False
        took = False
        for entry in entries:
            if not isinstance(entry, Mapping):
                continue
            index = entry.get("index")
            key = index if isinstance(index, int) else -1 - len(self._calls)
            self._calls.setdefault(key, _CallBuffer()).add(entry)
            took = True
        return took

    def calls(self) -> tuple[ToolCall | MalformedCall, ...]:
        """The native calls, in the order the server numbered them."""
        return tuple(self._calls[key].call() for key in sorted(self._calls, key=_call_order))

    def usage_so_far(self, request: GenerationRequest) -> Usage:
        """The server's usage if it sent one, else the estimate (see the module docstring)."""
        if self.usage is not None:
            return self.usage
        prompt_chars = sum(len(m.content) for m in request.messages)
        return Usage(prompt_tokens=math.ceil(prompt_chars / 4), completion_tokens=self.pieces)

    def final(self, request: GenerationRequest) -> Delta:
        metadata = None if self.usage is not None else {"usage_estimated": True}
        return Delta(
            finish_reason=map_finish_reason(self.finish),
            usage=self.usage_so_far(request),
            tool_calls=self.calls(),
            metadata=metadata,
        )


def _call_order(key: int) -> tuple[int, int]:
    """Numbered calls first by number, then unnumbered ones as they came (keys -1, -2, ...)."""
    return (0, key) if key >= 0 else (1, -key)
