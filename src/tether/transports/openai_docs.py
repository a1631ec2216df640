"""The OpenAPI operations of the OpenAI-compatible routes (`/v1/`), for `tether.openapi`.

The request body is the model the route validates with (`ChatCompletionRequest`); the answers
are described by the models below, in OpenAI's shapes, and every refusal by OpenAI's error body
(`tether.openai_errors`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tether.openapi import Key, Operation, Reply
from tether.transports.openai import SSE, ChatCompletionRequest


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAIErrorDetail(_Out):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(_Out):
    error: OpenAIErrorDetail


class FunctionCall(_Out):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallOut(_Out):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AnswerMessage(_Out):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    refusal: str | None = None


class UsageOut(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(_Out):
    index: int
    message: AnswerMessage
    logprobs: None = None
    finish_reason: str


class Completion(_Out):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut


class CompletionChunk(BaseModel):
    """One `data:` event of the stream (`chat.completion.chunk`), ended by `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[dict[str, Any]]


class ModelOut(_Out):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Out):
    object: Literal["list"]
    data: list[ModelOut]


operations: dict[Key, Operation] = {
    ("POST", "/v1/chat/completions"): Operation(
        "A chat completion (OpenAI's API), one JSON body or, with stream, server-sent events",
        {200: Reply("The answer", Completion, alternatives=[(SSE, CompletionChunk)])},
        (400, 404, 413, 415, 429, 502),
        body=ChatCompletionRequest,
        error_model=OpenAIErrorBody,
        tags=("openai",),
    ),
    ("GET", "/v1/models"): Operation(
        "Every engine's models (OpenAI's API)",
        {200: Reply("The models", ModelList)},
        error_model=OpenAIErrorBody,
        tags=("openai",),
    ),
    ("GET", "/v1/models/{model:path}"): Operation(
        "One model (OpenAI's API)",
        {200: Reply("The model", ModelOut)},
        (404,),
        error_model=OpenAIErrorBody,
        tags=("openai",),
    ),
}
