"""`GET /metrics` against a real server: real socket and NDJSON turns move the right numbers.

The exposition is parsed with prometheus_client's own parser; counters are compared before and
after, and what they should have counted is read off the frames the client got.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.service.test_ws_llamacpp import LONG, llama_settings
from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.timeouts import scaled
from tests.support.wsclient import Frame, ProtocolClient

CALC = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
TELEPORT = '<tool_call>{"name": "teleport", "arguments": {"where": "moon"}}</tool_call>'
SLOW = " ".join(f"w{i}" for i in range(200))


class Scrape:
    """One exposition, as samples by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        """The sample, 0 when the series does not exist yet (a counter never moved)."""
        return self.get(name, **labels) or 0.0


async def scrape(http: httpx.AsyncClient) -> Scrape:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return Scrape(response.text)


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=scaled(30)) as client:
        yield client


def metadata(frames: list[Frame]) -> dict[str, Any]:
    meta: dict[str, Any] = frames[-1]["chunk"]["metadata"]
    return meta


def text_of(chunk: dict[str, Any]) -> str:
    choices = chunk["choices"]
    return str(choices[0]["delta"].get("content") or "") if choices else ""


def inter_token_gaps(frames: list[Frame]) -> int:
    """Gaps between consecutive output pieces of one generation (tool frames split them)."""
    gaps, run = 0, 0
    for frame in frames:
        if frame["status"] == "chunk":
            gaps += run > 0
            run += 1
        elif frame["status"] == "tool":
            run = 0
    return gaps


async def test_turns_move_the_counters(server: RunningServer, http: httpx.AsyncClient) -> None:
    before = await scrape(http)
    async with connect(server.ws_url) as ws:
        client = ProtocolClient(ws)
        plain = await client.chat("plain", "hello there world")
        calc = await client.chat("calc", CALC)
        teleport = await client.chat("teleport", TELEPORT)
        refused = await client.chat("refused", "hi", options={"model": "no-such-model"})
        await client.send(
            {"type": "chat", "request_id": "slow", "text": SLOW, "options": {"token_delay_ms": 50}}
        )
        await client.until("slow", "chunk")
        during = await scrape(http)
        await client.send({"type": "cancel", "request_id": "slow"})
        slow = await client.until("slow")
    async with http.stream("POST", "/chat/stream", json={"text": "over http"}) as response:
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    missing = await http.get("/sessions/no-such-session")
    assert missing.status_code == 404
    after = await scrape(http)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # Requests by transport and outcome; errors by code (the refused turn, the REST 404).
    assert refused[-1]["error"]["code"] == "not_found"
    assert metadata(slow)["finish_reason"] == "cancelled"
    assert moved("tether_requests_total", transport="ws", outcome="complete") == 3
    assert moved("tether_requests_total", transport="ws", outcome="cancelled") == 1
    assert moved("tether_requests_total", transport="ws", outcome="error") == 1
    assert moved("tether_requests_total", transport="ndjson", outcome="complete") == 1
    assert moved("tether_errors_total", code="not_found") == 2

    # Tokens in and out: what the engine reported in each answer's usage.
    answers = [metadata(frames) for frames in (plain, calc, teleport, slow)]
    answers.append(lines[-1]["data"])
    prompt = sum(answer["usage"]["prompt_tokens"] for answer in answers)
    generated = sum(answer["usage"]["completion_tokens"] for answer in answers)
    assert generated > 0
    assert moved("tether_prompt_tokens_total", model="echo") == prompt
    assert moved("tether_generation_tokens_total", model="echo") == generated

    # Latency histograms: one TTFT and end-to-end observation per answer, one inter-token
    # latency per gap between two pieces the engine gave in one generation (pieces that came
    # while the journal was busy share a frame, so frames show at most that many gaps).
    with_ttft = sum(answer["timings"]["ttft_ms"] is not None for answer in answers)
    assert moved("tether_time_to_first_token_seconds_count", model="echo") == with_ttft
    assert moved("tether_e2e_request_latency_seconds_count", model="echo") == len(answers)
    ndjson_gaps = sum(line["type"] == "token" for line in lines) - 1
    gaps = sum(map(inter_token_gaps, (plain, calc, teleport, slow))) + ndjson_gaps
    assert moved("tether_inter_token_latency_seconds_count", model="echo") >= max(gaps, 1)
    assert moved("tether_inter_token_latency_seconds_sum", model="echo") > 0

    # Tool calls and failures by tool; a name the server does not know is `unknown`.
    assert moved("tether_tool_calls_total", tool="calculator") == 1
    assert moved("tether_tool_failures_total", tool="calculator") == 0
    assert moved("tether_tool_calls_total", tool="unknown") == 1
    assert moved("tether_tool_failures_total", tool="unknown") == 1
    assert after.get("tether_tool_calls_total", tool="teleport") is None

    # The journal: every frame of every request committed once, in timed batches.
    frames = sum(map(len, (plain, calc, teleport, refused, slow))) + len(lines)
    batches = moved("tether_journal_batch_frames_count")
    requests = 6  # a batch holds frames, or only the end of a request whose frames are in
    assert 0 < batches <= frames + requests
    assert moved("tether_journal_batch_frames_sum") == frames
    assert moved("tether_journal_commit_seconds_count") == batches
    assert moved("tether_journal_commit_seconds_sum") > 0

    # State at scrape time: the slow answer was generating on its open socket.
    assert during.get("tether_requests_running", model="echo") == 1
    assert during.get("tether_requests_waiting", model="echo") == 0
    assert during.get("tether_sockets_active") == 1
    assert after.get("tether_requests_running", model="echo") == 0
    assert after.families["tether_requests_running"].type == "gauge"
    assert after.families["tether_time_to_first_token_seconds"].type == "histogram"
    assert after.families["tether_requests"].type == "counter"
    assert all(name.startswith("tether_") for name in after.families)


async def test_open_sockets_are_counted(server: RunningServer, http: httpx.AsyncClient) -> None:
    async with connect(server.ws_url) as first, connect(server.ws_url) as second:
        for ws in (first, second):  # a pong proves the server holds the socket
            client = ProtocolClient(ws)
            await client.send({"type": "ping", "request_id": "p"})
            await client.until("p", "pong")
        assert (await scrape(http)).get("tether_sockets_active") == 2
    async with asyncio.timeout(scaled(10)):
        while True:
            if (await scrape(http)).get("tether_sockets_active") == 0:
                break
            await asyncio.sleep(0.01)  # polling the server's count until it sees the close


async def test_a_request_queued_behind_another_is_waiting(tmp_path: Path, tiny_gguf: Path) -> None:
    async with (
        serve_app(llama_settings(tmp_path, tiny_gguf, max_queue=1)) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=scaled(30)) as http,
        connect(server.ws_url) as ws,
    ):
        client = ProtocolClient(ws)
        await client.send({"type": "chat", "request_id": "a", "text": "Story.", "options": LONG})
        await client.until("a", "chunk")  # a holds the model
        await client.send({"type": "chat", "request_id": "b", "text": "Hi", "options": LONG})
        (processing,) = await client.until("b", "processing")
        assert processing["chunk"]["metadata"]["queue_position"] == 1
        queued = await scrape(http)
        for request_id in ("a", "b"):
            await client.send({"type": "cancel", "request_id": request_id})
            await client.until(request_id)
        idle = await scrape(http)
    assert queued.get("tether_requests_running", model="tiny") == 1
    assert queued.get("tether_requests_waiting", model="tiny") == 1
    assert idle.get("tether_requests_running", model="tiny") == 0
    assert idle.get("tether_requests_waiting", model="tiny") == 0


async def test_two_servers_in_one_process_count_their_own(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    async with (
        serve_app(make_settings(tmp_path / "one")) as one,
        serve_app(make_settings(tmp_path / "two")) as two,
        httpx.AsyncClient(base_url=one.http_url) as http_one,
        httpx.AsyncClient(base_url=two.http_url) as http_two,
    ):
        async with connect(one.ws_url) as ws:
            await ProtocolClient(ws).chat("r", "only on one")
        counted = {"transport": "ws", "outcome": "complete"}
        on_one, on_two = await scrape(http_one), await scrape(http_two)
    assert on_one.get("tether_requests_total", **counted) == 1
    assert on_two.get("tether_requests_total", **counted) is None
    # A model a request was accepted for has its gauges, at 0 once it is idle.
    assert on_one.get("tether_requests_running", model="echo") == 0
    assert on_one.get("tether_requests_waiting", model="echo") == 0
    assert on_two.get("tether_requests_running", model="echo") is None


async def test_metrics_need_the_token(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"server.token": "s3cret"})
    async with serve_app(settings) as server, httpx.AsyncClient(base_url=server.http_url) as http:
        refused = await http.get("/metrics")
        allowed = await http.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert "tether_requests_running" in allowed.text


async def test_metrics_can_be_public(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, **{"server.token": "s3cret", "security.public_paths": ["/health", "/metrics"]}
    )
    async with serve_app(settings) as server, httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/metrics")).status_code == 200


async def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"metrics.enabled": False})
    async with serve_app(settings) as server, httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/metrics")).status_code == 404


async def test_openai_requests_are_counted(server: RunningServer, http: httpx.AsyncClient) -> None:
    before = await scrape(http)
    body = {"model": "echo", "messages": [{"role": "user", "content": "count me please"}]}
    plain = (await http.post("/v1/chat/completions", json=body)).json()
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with http.stream("POST", "/v1/chat/completions", json=streamed) as response:
        events = [line for line in [line async for line in response.aiter_lines()] if line]
    usage = json.loads(events[-2].removeprefix("data: "))["usage"]
    unknown = await http.post("/v1/chat/completions", json={**body, "model": "nope"})
    after = await scrape(http)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert unknown.status_code == 404
    assert moved("tether_requests_total", transport="openai", outcome="complete") == 2
    assert moved("tether_requests_total", transport="openai", outcome="error") == 1
    assert moved("tether_errors_total", code="not_found") == 1
    generated = plain["usage"]["completion_tokens"] + usage["completion_tokens"]
    assert moved("tether_generation_tokens_total", model="echo") == generated
    prompt = plain["usage"]["prompt_tokens"] + usage["prompt_tokens"]
    assert moved("tether_prompt_tokens_total", model="echo") == prompt
    assert moved("tether_time_to_first_token_seconds_count", model="echo") == 2
    assert moved("tether_e2e_request_latency_seconds_count", model="echo") == 2
    assert after.get("tether_requests_running", model="echo") == 0


async def test_openai_requests_running_and_waiting(tmp_path: Path, tiny_gguf: Path) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Story."}],
        "max_tokens": 4000,  # seconds of tokens: still running while the test looks
        "temperature": 1.0,
        "seed": 1,
        "stream": True,
    }
    settings = llama_settings(tmp_path, tiny_gguf, max_queue=1, n_ctx=4096)
    async with (
        serve_app(settings) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=scaled(30)) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as first,
    ):
        lines = first.aiter_lines()  # (held: a dropped iterator would close the response)
        async for line in lines:  # until the first holds the model: its text
            if line.startswith("data: {") and text_of(json.loads(line.removeprefix("data: "))):
                break
        running = await scrape(http)
        async with http.stream("POST", "/v1/chat/completions", json=body) as second:
            assert second.status_code == 200  # admitted (behind the first): its role chunk
            waiting = await scrape(http)
    assert running.get("tether_requests_running", model="tiny") == 1
    assert waiting.get("tether_requests_running", model="tiny") == 1
    assert waiting.get("tether_requests_waiting", model="tiny") == 1


async def test_refusals_outside_a_turn_are_counted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"server.token": "s3cret-s3cret-s3cret"})
    auth = {"Authorization": "Bearer s3cret-s3cret-s3cret"}
    async with (
        serve_app(settings) as server,
        httpx.AsyncClient(base_url=server.http_url, headers=auth) as http,
    ):
        before = await scrape(http)
        assert (await http.get("/sessions", headers={"Authorization": ""})).status_code == 401
        bad_host = await http.get("/sessions", headers={"Host": "evil.example"})
        assert bad_host.status_code in (400, 403, 421)
        async with connect(server.ws_url, additional_headers=auth) as ws:
            client = ProtocolClient(ws)
            await client.send({"type": "chat", "request_id": "x"})  # no text
            (refused,) = await client.until("x", "error")
        after = await scrape(http)

    def moved(code: str) -> float:
        return after.value("tether_errors_total", code=code) - before.value(
            "tether_errors_total", code=code
        )

    assert moved("unauthorized") == 1
    assert moved(bad_host.json()["error"]["code"]) == 1
    assert moved(refused["error"]["code"]) == 1
