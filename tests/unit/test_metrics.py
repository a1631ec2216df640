"""`Metrics.observe_turn` on a made-up event stream, with an injected clock: exact numbers."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tether.engines.base import FinishReason, Usage
from tether.events import (
    Accepted,
    ChatEvent,
    Completed,
    Failed,
    TextDelta,
    ThinkingDelta,
    Timings,
    ToolCallFinished,
    ToolCallStarted,
)
from tether.metrics import Metrics
from tether.store.base import JournalAppend
from tether.tools.loader import build_registry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def run_events(metrics: Metrics, clock: Clock, timed: list[tuple[float, ChatEvent]]) -> None:
    seen: list[ChatEvent] = []

    async def sink(event: ChatEvent) -> None:
        seen.append(event)

    emit = metrics.observe_turn("ws", sink)
    for at, event in timed:
        clock.now = at
        await emit(event)
    assert seen == [event for _, event in timed]  # passed on, unchanged and in order


def accepted(model: str = "m") -> Accepted:
    return Accepted("s", "u", model, 0, True)


def completed(finish: FinishReason = "stop", ttft_ms: float | None = 250.0) -> Completed:
    return Completed("a", finish, Usage(7, 3), Timings(ttft_ms, 10.0, 2000.0))


async def test_inter_token_gaps_skip_the_tools_between_generations() -> None:
    clock = Clock()
    metrics = Metrics(build_registry(["builtin"]), clock=clock)
    await run_events(
        metrics,
        clock,
        [
            (100.0, accepted()),
            (100.5, TextDelta("a")),
            (100.6, ThinkingDelta("b")),  # gap 0.1
            (100.8, ToolCallStarted("c1", "calculator", {"expression": "1+1"})),
            (105.0, ToolCallFinished("c1", "calculator", "2", None, 3.0)),
            (105.1, ToolCallStarted("c2", "teleport", {})),
            (105.2, ToolCallFinished("c2", "teleport", None, "unknown tool", 0.1)),
            (106.0, TextDelta("c")),  # first piece of the next generation: no gap
            (106.3, TextDelta("d")),  # gap 0.3
            (107.0, completed()),
        ],
    )
    got = samples(metrics)
    model = (("model", "m"),)
    assert got["tether_inter_token_latency_seconds_count", model] == 2
    assert abs(got["tether_inter_token_latency_seconds_sum", model] - 0.4) < 1e-9
    assert got["tether_time_to_first_token_seconds_sum", model] == 0.25
    assert got["tether_e2e_request_latency_seconds_sum", model] == 2.0
    assert got["tether_prompt_tokens_total", model] == 7
    assert got["tether_generation_tokens_total", model] == 3
    assert got["tether_tool_calls_total", (("tool", "calculator"),)] == 1
    assert ("tether_tool_failures_total", (("tool", "calculator"),)) not in got
    assert got["tether_tool_calls_total", (("tool", "unknown"),)] == 1
    assert got["tether_tool_failures_total", (("tool", "unknown"),)] == 1
    assert got["tether_requests_total", (("outcome", "complete"), ("transport", "ws"))] == 1


async def test_outcomes_and_error_codes() -> None:
    clock = Clock()
    metrics = Metrics(build_registry(["builtin"]), clock=clock)
    for finish in ("length", "cancelled", "interrupted", "tool_loop_limit"):
        await run_events(metrics, clock, [(1.0, accepted()), (2.0, completed(finish, None))])
    await run_events(metrics, clock, [(1.0, Failed("busy", "the model is busy"))])
    got = samples(metrics)

    def requests(outcome: str) -> float:
        return got.get(("tether_requests_total", (("outcome", outcome), ("transport", "ws"))), 0)

    assert [requests(o) for o in ("complete", "cancelled", "interrupted", "error")] == [2, 1, 1, 1]
    assert got["tether_errors_total", (("code", "busy"),)] == 1
    # No token came in any of them: no TTFT observed, the end-to-end latency for each.
    assert ("tether_time_to_first_token_seconds_count", (("model", "m"),)) not in got
    assert got["tether_e2e_request_latency_seconds_count", (("model", "m"),)] == 4
    assert metrics.models == {"m"}


def test_journal_batches() -> None:
    metrics = Metrics(build_registry([]))
    metrics.journal_committed([], 1.0)  # nothing was written: not a batch
    metrics.journal_committed(
        [JournalAppend("a", 0, ["f0", "f1"], False), JournalAppend("b", 3, ["f3"], True)], 0.002
    )
    got = samples(metrics)
    assert got["tether_journal_batch_frames_count", ()] == 1
    assert got["tether_journal_batch_frames_sum", ()] == 3
    assert got["tether_journal_commit_seconds_sum", ()] == 0.002
