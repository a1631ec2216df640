"""The `echo` engine: no model, deterministic and instant.

It streams the last user message back word by word (each delta is a word with the whitespace that
follows it, so the deltas concatenate to the input exactly); when the last message is a tool
result it answers `Tool <name> returned: <result>`. Tests, benchmarks and UI work use it, and users
use it to check their wiring.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from tether.engines.base import (
    Delta,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    UnknownModelError,
    Usage,
    UsageReport,
)

MAX_TOKEN_DELAY_MS = 1000
# Echo has no context window; it takes a small one's worth of history (about 1k tokens of
# English), so a long session on it costs what one on a real model does, whose history the
# chat core bounds by its window (`ModelInfo.history_bytes`). It trims nothing itself.
HISTORY_BYTES = 4096
_WORD = re.compile(r"\s*\S+\s*|\s+")


def split_words(text: str) -> list[str]:
    """Split into pieces of one word each, keeping every whitespace character."""
    return _WORD.findall(text)


def echo_answer(request: GenerationRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "tool":
            return f"Tool {message.name or 'tool'} returned: {message.content}"
        if message.role == "user":
            return message.content
    return ""


class EchoEngine:
    name = "echo"
    model_id = "echo"

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if request.model not in (None, self.model_id):
            raise UnknownModelError(f"model {request.model!r} is not served by the echo engine")
        delay = min(max(request.options.token_delay_ms, 0), MAX_TOKEN_DELAY_MS) / 1000
        words = split_words(echo_answer(request))
        limit = request.options.max_tokens
        finish: FinishReason = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        prompt_tokens = sum(len(split_words(m.content)) for m in request.messages)
        report = UsageReport(request)
        sent = 0
        try:
            for word in words:
                if delay and sent:
                    await asyncio.sleep(delay)
                sent += 1  # counted before the yield: a close there comes after the word arrived
                yield Delta(text=word)
        except (GeneratorExit, asyncio.CancelledError):
            report(Usage(prompt_tokens=prompt_tokens, completion_tokens=sent))
            raise
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=len(words))
        report(usage)
        yield Delta(finish_reason=finish, usage=usage)

    async def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(id=self.model_id, engine=self.name, loaded=True, history_bytes=HISTORY_BYTES)
        ]

    def queue_position(self, model: str | None, arriving: int = 0) -> int:
        return 0  # no shared model to wait for

    async def aclose(self) -> None:
        return None
