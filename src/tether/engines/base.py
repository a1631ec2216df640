"""The Engine protocol: the one seam between the chat core and any model runtime.

An engine turns a `GenerationRequest` into an async stream of `Delta`s: zero or more text deltas,
then exactly one final delta carrying `finish_reason` and `usage`. Cancellation is
`task.cancel()` of the consumer; an engine must stop its work (worker thread, HTTP stream, MLC
request) within one token of being cancelled.

A consumer that leaves early never sees the final delta (a closed generator cannot yield), yet
the prompt was read and tokens were made. So a request may carry a `usage_sink`, which the
engine calls once, on the event loop, with the usage of the generation:

- when it ends normally, with the final delta's usage, just before yielding that delta;
- when the consumer leaves early (its task cancelled, or `aclose()`), with what was done until
  the work stopped, while the stream closes (an engine with a worker waits the token or so that
  takes), so once the cancellation has come out of the consumer's `async for`, or `aclose()` has
  returned, the sink has been called. Engines that only estimate usage estimate this one too.

It is not called when the stream fails with an error, nor when the request is refused or left
before any work started (e.g. while it waits in a model's line): zero usage is the truth then.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import structlog

from tether.detector import MalformedCall

log = structlog.get_logger(__name__)

Role = Literal["system", "user", "assistant", "tool"]
# "interrupted": the server stopped the turn (a shutdown that outlasted its grace, or a crash
# found at the next start-up); engines never report it.
FinishReason = Literal["stop", "length", "cancelled", "tool_loop_limit", "error", "interrupted"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: `arguments` is the decoded JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What the model (and `GET /tools`) is told about a tool."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


@dataclass(frozen=True, slots=True)
class ForcedCall:
    """The answer must be a call (OpenAI's `tool_choice` `required` or a named function): of
    the request's tool `name`, or of any of its tools (None). Only engines whose models say
    `forced_calls` force one; the chat core refuses the request for the others."""

    name: str | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the prompt, in the shape OpenAI-style chat templates expect."""

    role: Role
    content: str
    name: str | None = None  # the tool's name, on role "tool"
    tool_call_id: str | None = None  # on role "tool": which call this answers
    tool_calls: tuple[ToolCall, ...] = ()  # on role "assistant": the calls it made


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """Sampling options of one request; None means the engine's (or model's) default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    token_delay_ms: int = 0  # echo engine only: pause between words
    # The answer must be JSON valid against this schema (`{"type": "object"}`: any object).
    # Only engines whose models say `structured_output` enforce it; the chat core refuses the
    # request for the others.
    json_schema: dict[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


UsageSink = Callable[[Usage], None]
QueuePositionSink = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    messages: tuple[ChatMessage, ...]
    model: str | None = None
    options: GenerationOptions = field(default_factory=GenerationOptions)
    # The tools offered this turn, for engines whose runtime takes them as data (the `openai`
    # engine's upstream); every engine also gets them described in the system message.
    tools: tuple[ToolSpec, ...] = ()
    # The answer must be a call of one of `tools` (None: the model chooses).
    forced_call: ForcedCall | None = None
    # Who asks (the chat core: the session): a local model's line serves clients in turn.
    client: str | None = None
    # Told the final usage once, also when the consumer leaves early (see the module docstring).
    usage_sink: UsageSink | None = field(default=None, compare=False, repr=False)
    # Told each new place while the request waits in a model's line (engines with a line:
    # `llamacpp`); awaited in the consumer's task, so it may send the place on at once.
    on_queue_position: QueuePositionSink | None = field(default=None, compare=False, repr=False)
    # The place its client was told last (the `processing` frame's), None: none. A line that
    # seats the request at another place tells `on_queue_position` at once.
    queue_position: int | None = None


class UsageReport:
    """An engine's side of `usage_sink`: tells the sink at most once, and survives a broken one.

    A failing sink is logged, not raised: it is called while a stream is being cancelled or
    closed, where raising would replace the cancellation.
    """

    __slots__ = ("_sink", "sent")

    def __init__(self, request: GenerationRequest) -> None:
        self._sink = request.usage_sink
        self.sent = False

    @property
    def wanted(self) -> bool:
        """Whether anyone listens (an engine may skip waiting for a usage nobody hears)."""
        return self._sink is not None

    def __call__(self, usage: Usage) -> None:
        if self.sent:
            return
        self.sent = True
        if self._sink is not None:
            try:
                self._sink(usage)
            except Exception:
                log.exception("engine.usage_sink_failed")


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the answer. The last delta of a stream has `finish_reason` set."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    # Calls the runtime parsed itself (an upstream's native `tool_calls`), on the final delta;
    # a call whose arguments are not a JSON object comes as a MalformedCall.
    tool_calls: tuple[ToolCall | MalformedCall, ...] = ()
    # Engine-specific facts for `complete` metadata (e.g. trimmed turns).
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    engine: str
    loaded: bool = False
    path: str | None = None
    # Whether the model's chat template declares tool support: tools are offered to it by default
    # (a turn can still force them on or off with `options.tools`).
    tools: bool = True
    # Whether the engine can constrain the answer to `GenerationOptions.json_schema`.
    structured_output: bool = False
    # Whether the engine can force the answer to be a call (`GenerationRequest.forced_call`).
    forced_calls: bool = False
    # How much history the model can read, in UTF-8 bytes of message content: a history's newest
    # messages holding this many bytes hold more tokens than its context window, so the engine
    # trims whatever is older; the chat core loads no more of a session than that
    # (`Store.branch(covering_bytes=...)`). None: no bound is known, the whole branch goes.
    history_bytes: int | None = None


class EngineError(Exception):
    """The engine failed in a way the client should hear about (code `engine_error`)."""


class UnknownModelError(EngineError):
    """The request named a model this engine does not have (code `not_found`)."""


class EngineBusyError(EngineError):
    """The model's request queue is full (code `busy`); the client may retry later."""


@runtime_checkable
class Engine(Protocol):
    name: str

    def stream(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Generate the answer to `request.messages` as text deltas, then one final delta.

        An async generator, so a consumer that stops early can `aclose()` it and release the
        engine's work at once rather than at garbage collection.
        """
        ...

    async def models(self) -> list[ModelInfo]:
        """The models this engine can serve, with whether each is loaded now."""
        ...

    def queue_position(self, model: str | None, arriving: int = 0) -> int:
        """How many requests a new request for `model` would wait behind (0: starts at once).

        Raises EngineBusyError when the model's queue is full, counting `arriving` more
        requests already accepted for it that have not reached it yet (they store their
        question first), so the chat core can refuse the turn before it stores anything
        (`stream` still refuses then too).
        """
        ...

    async def aclose(self) -> None:
        """Release models, threads and connections."""
        ...
