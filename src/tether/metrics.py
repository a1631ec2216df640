"""The server's Prometheus metrics (`GET /metrics`), all named `tether_*`.

One `Metrics` per app (`create_app` builds it), with its own `CollectorRegistry`: two apps in
one process never share a counter. Names follow vLLM's and llama.cpp server's where they mean
the same thing (`vllm:time_to_first_token_seconds`, `vllm:inter_token_latency_seconds`,
`vllm:prompt_tokens_total`, `vllm:generation_tokens_total`, `llamacpp:requests_processing`,
`llamacpp:requests_deferred`).

Where the numbers come from:

- A turn's events (`tether.events`), through the sink that `observe_turn(transport, emit)`
  wraps around the transport's (`observe_stateless` for `/v1`'s stateless turns, which have no
  run): requests that ended, by transport (`ws`, `ndjson`, `openai`: whoever runs the turn
  names it) and outcome (`complete`, `cancelled`, `interrupted`,
  `error`); errors by code; prompt and generation tokens (the engine's usage, when the turn
  completes); time to first token and end-to-end latency (the chat core's own timings);
  inter-token latency (the gap between consecutive text or thinking pieces of one generation,
  measured here: a piece is a token, or a few the tool-call detector held back; tool runs
  between two generations are not counted); tool calls and their failures by tool (names the
  server does not know, or calls it could not parse, count as `unknown`: a model can invent any
  name, and a label value each would grow without bound).
- The journal (`journal_committed`): frames per commit (the journal writer's, or a turn's start
  or answer carrying its frames) and the time from handing them over to their commit.
- State read at scrape time (`watch`): running and waiting requests per model, from the run
  registry and the stateless turns in flight (a request waits while it was accepted behind
  others on its model and has no output yet), and open chat sockets. A model has its series
  (0 when idle) once a request was accepted for it.
- Errors told outside a turn (`error`), in `tether_errors_total` too: the HTTP routes' error
  responses, the security middleware's refusals (`count_refusal`, from the ASGI scope), and a
  socket's error frames about no turn of its own (a bad frame, the rate limit, a conflict).

Observing costs a few microseconds a token (one histogram observation); nothing here does I/O.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from tether.events import (
    Accepted,
    ChatEvent,
    Completed,
    Failed,
    Started,
    StatelessEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallFinished,
    ToolCallsRequested,
    ToolCallStarted,
)

if TYPE_CHECKING:
    from tether.chat import EventSink, StatelessSink
    from tether.runs import Run, RunRegistry
    from tether.store.base import JournalAppend
    from tether.tools.registry import Registry
    from tether.transports.ws import SocketHub

Transport = Literal["ws", "ndjson", "openai"]
Clock = Callable[[], float]

UNKNOWN_TOOL = "unknown"
CONTENT_TYPE = CONTENT_TYPE_LATEST

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# How a completed turn's finish_reason counts as an outcome; the rest are `complete`.
_OUTCOMES = {"cancelled": "cancelled", "interrupted": "interrupted", "error": "error"}


class Metrics:
    """The counters and histograms of one server; `render()` is the exposition."""

    def __init__(self, tools: Registry, *, clock: Clock = time.perf_counter) -> None:
        self._tools = tools
        self._clock = clock
        self.models: set[str] = set()  # every model a request was accepted for
        self.stateless: set[_TurnObserver] = set()  # /v1 turns in flight (they have no run)
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "tether_requests_total",
            "Chat requests that ended, by transport and outcome.",
            ["transport", "outcome"],
            registry=registry,
        )
        self.errors = Counter(
            "tether_errors_total",
            "Errors sent (chat requests' and HTTP routes'), by code.",
            ["code"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "tether_prompt_tokens_total",
            "Prompt tokens the engines read.",
            ["model"],
            registry=registry,
        )
        self.generation_tokens = Counter(
            "tether_generation_tokens_total",
            "Tokens the engines generated.",
            ["model"],
            registry=registry,
        )
        self.ttft = Histogram(
            "tether_time_to_first_token_seconds",
            "From the request's start (queue wait included) to its first token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            "tether_inter_token_latency_seconds",
            "Between consecutive output pieces of one generation.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            "tether_e2e_request_latency_seconds",
            "From the request's start to its stored answer.",
            ["model"],
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.tool_calls = Counter(
            "tether_tool_calls_total", "Tool calls run, by tool.", ["tool"], registry=registry
        )
        self.tool_failures = Counter(
            "tether_tool_failures_total",
            "Tool calls that ended in an error, by tool.",
            ["tool"],
            registry=registry,
        )
        self.journal_batch = Histogram(
            "tether_journal_batch_frames",
            "Frames committed per journal group commit.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.journal_commit = Histogram(
            "tether_journal_commit_seconds",
            "Time of one journal group commit.",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        ProcessCollector(namespace="tether", registry=registry)

    def watch(self, runs: RunRegistry, sockets: SocketHub) -> None:
        """Report `runs`' running and waiting requests and the open `sockets` at each scrape."""
        self.registry.register(_ServerState(runs, sockets, self))

    def observe_turn(self, transport: Transport, emit: EventSink) -> EventSink:
        """`emit`, counting the events of one turn run for `transport` on the way through."""
        turn = _TurnObserver(self, transport)

        async def observed(event: ChatEvent) -> None:
            turn.saw(event)
            await emit(event)

        return observed

    async def observe_stateless(
        self, emit: StatelessSink, run: Callable[[StatelessSink], Awaitable[None]]
    ) -> None:
        """`run(sink)`: one stateless turn (`/v1`), its events counted on their way to `emit`
        as the `openai` transport's; until it returns it counts as running (or waiting) on its
        model."""
        turn = _TurnObserver(self, "openai")

        async def observed(event: StatelessEvent) -> None:
            turn.saw(event)
            await emit(event)

        self.stateless.add(turn)
        try:
            await run(observed)
        finally:
            self.stateless.discard(turn)

    def journal_committed(self, appends: Sequence[JournalAppend], seconds: float) -> None:
        if appends:
            self.journal_batch.observe(sum(len(append.frames) for append in appends))
            self.journal_commit.observe(seconds)

    def error(self, code: str) -> None:
        """An error told outside a turn: an HTTP error response, a refusal, an error frame."""
        self.errors.labels(code).inc()

    def tool_label(self, name: str) -> str:
        return name if self._tools.get(name) is not None else UNKNOWN_TOOL

    def now(self) -> float:
        return self._clock()

    def render(self) -> bytes:
        """The exposition in Prometheus' text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _TurnObserver:
    """What one turn's events move: per-turn state (its model, its last token's time)."""

    __slots__ = ("_itl", "_last_piece", "_metrics", "_transport", "model", "waiting")

    def __init__(self, metrics: Metrics, transport: Transport) -> None:
        self._metrics = metrics
        self._transport = transport
        self.model: str | None = None  # known once the turn is accepted
        self.waiting = False  # accepted behind others, no output yet
        self._itl: Histogram | None = None  # the model's child, looked up once
        self._last_piece: float | None = None

    def saw(self, event: ChatEvent | StatelessEvent) -> None:
        metrics = self._metrics
        if not isinstance(event, Accepted | Started):
            self.waiting = False
        if isinstance(event, TextDelta | ThinkingDelta):
            now = metrics.now()
            if self._last_piece is not None and self._itl is not None:
                self._itl.observe(now - self._last_piece)
            self._last_piece = now
        elif isinstance(event, Accepted | Started):
            self.model, self.waiting = event.model, event.queue_position > 0
            self._itl = metrics.itl.labels(event.model)
            metrics.models.add(event.model)
        elif isinstance(event, ToolCallStarted | ToolCallsRequested):
            self._last_piece = None  # the next generation starts after the tools ran
        elif isinstance(event, ToolCallFinished):
            tool = metrics.tool_label(event.name)
            metrics.tool_calls.labels(tool).inc()
            if event.error is not None:
                metrics.tool_failures.labels(tool).inc()
        elif isinstance(event, Completed):
            self._completed(event)
        elif isinstance(event, Failed):
            metrics.requests.labels(self._transport, "error").inc()
            metrics.errors.labels(event.code).inc()

    def _completed(self, event: Completed) -> None:
        metrics = self._metrics
        outcome = _OUTCOMES.get(event.finish_reason, "complete")
        metrics.requests.labels(self._transport, outcome).inc()
        model = self.model
        if model is None:  # a Completed always follows Accepted; nothing to label without it
            return
        metrics.prompt_tokens.labels(model).inc(event.usage.prompt_tokens)
        metrics.generation_tokens.labels(model).inc(event.usage.completion_tokens)
        if event.timings.ttft_ms is not None:
            metrics.ttft.labels(model).observe(event.timings.ttft_ms / 1000)
        metrics.e2e.labels(model).observe(event.timings.total_ms / 1000)


class _ServerState:
    """Gauges read at scrape time: requests per model (running, waiting), open sockets."""

    def __init__(self, runs: RunRegistry, sockets: SocketHub, metrics: Metrics) -> None:
        self._runs = runs
        self._sockets = sockets
        self._metrics = metrics  # every model seen: its series drop to 0, they do not vanish

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "tether_requests_running", "Requests generating or running tools.", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "tether_requests_waiting",
            "Requests accepted behind others on their model, no output yet.",
            labels=["model"],
        )
        generating: collections.Counter[str] = collections.Counter()
        queued: collections.Counter[str] = collections.Counter()
        requests: list[Run | _TurnObserver] = [*self._runs.running(), *self._metrics.stateless]
        for run in requests:
            if run.model is not None:
                (queued if run.waiting else generating)[run.model] += 1
        for model in sorted(self._metrics.models.union(generating, queued)):
            running.add_metric([model], generating[model])
            waiting.add_metric([model], queued[model])
        yield running
        yield waiting
        yield GaugeMetricFamily(
            "tether_sockets_active", "Open /ws/chat connections.", value=len(self._sockets)
        )


def count_refusal(scope: Scope, code: str) -> None:
    """Count an error told before the app's routes (the security middleware's), for the
    Tether app in `scope` (none while it starts: nothing to count)."""
    state = getattr(scope.get("app"), "state", None)
    services = getattr(state, "services", None)
    if services is not None:
        services.metrics.error(code)


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.services.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE)


routes = [Route("/metrics", metrics_endpoint, methods=["GET"])]
