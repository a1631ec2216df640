"""`GET /openapi.json` over a real uvicorn, and schemathesis against it: no 500, no answer that
the document does not describe (status, content type, body schema)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.strategies import SearchStrategy
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from tests.support.servers import make_settings, serve_app
from tether.app import create_app
from tether.openapi import MissingOperation, Operation, Reply, Security, build_document
from tether.protocol import ChatFrame
from tether.transports import api_docs, openai_docs
from tether.transports.history import PATH_FIELDS
from tether.transports.ndjson import NDJSON

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 40  # per operation and pass: ~15 s here; derandomized


def _no_token_delay(case: schemathesis.Case[Any]) -> None:
    """The echo engine waits `options.token_delay_ms` (up to 1 s) between words: 0 here, so an
    example costs milliseconds (every other option is as generated)."""
    body = case.body
    options = body.get("options") if isinstance(body, dict) else None
    if isinstance(options, dict):
        options["token_delay_ms"] = 0


def _fuzz(base_url: str, known: dict[str, str]) -> list[str]:
    """Run every operation's examples against `base_url`, twice: with generated path
    parameters (mostly unknown ids), and with the `known` ones (records that exist, so the
    answers with a body are checked too; DELETE runs last, and not on them); what failed, one
    entry each."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # a part of the document schemathesis cannot read
            failures.append(f"invalid document: {result.err()}")
        else:
            operations.append(result.ok())
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # the records go last
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        passes: list[dict[str, str]] = [{}]
        if names and operation.method.upper() != "DELETE":
            passes.append({name: known[name] for name in names})
        for path_parameters in passes:
            try:
                _examples(operation.as_strategy(path_parameters=path_parameters), base_url)
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup
                failures.append(f"{operation.label} {path_parameters}: {exc}")
    return failures


def _examples(strategy: SearchStrategy[schemathesis.Case[Any]], base_url: str) -> None:
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,  # the same examples on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        _no_token_delay(case)
        case.call_and_validate(base_url=base_url, checks=CHECKS)

    run()


async def _records(http: httpx.AsyncClient) -> dict[str, str]:
    """A session with one turn (a user message and its answer) and an agent, by their ids."""
    answer = await http.post("/chat/stream", json={"text": "hello there"})
    start, *_, done = (json.loads(line) for line in answer.text.splitlines())
    assert done["type"] == "done"
    agent = await http.put("/agents/helper", json={"name": "Helper"})
    assert agent.status_code == 201
    return {
        "session_id": start["data"]["session_id"],
        "message_id": start["data"]["user_message_id"],
        "agent_id": "helper",
        "model": "echo",
    }


async def test_schemathesis_finds_no_error_and_no_violation(tmp_path: Path) -> None:
    async with (
        serve_app(make_settings(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        known = await _records(http)
        failures = await asyncio.to_thread(_fuzz, server.http_url, known)
    assert failures == [], "\n\n".join(failures)


async def test_document_lists_every_route(tmp_path: Path) -> None:
    async with (
        serve_app(make_settings(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        answer = await http.get("/openapi.json")
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) >= {
        "/health",
        "/sessions/{session_id}/messages/{message_id}/regenerate",
        "/chat/stream",
        "/search",
        "/metrics",
        "/openapi.json",
    }
    stream = doc["paths"]["/chat/stream"]["post"]
    assert "application/x-ndjson" in stream["responses"]["200"]["content"]
    assert stream["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    search = {p["name"] for p in doc["paths"]["/search"]["get"]["parameters"]}
    assert search == {"q", "limit", "session_id", "syntax"}
    assert "security" not in stream  # no token set


def test_token_is_documented(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, **{"server.token": "s3cret"}))
    doc = build_document(
        app.routes,
        {**api_docs.operations, **openai_docs.operations},
        Security(token=True, public_paths=["/health"]),
    )
    sessions = doc["paths"]["/sessions"]["get"]
    assert sessions["security"] == [{"bearerAuth": []}, {"tokenQuery": []}]
    assert "401" in sessions["responses"]
    health = doc["paths"]["/health"]["get"]
    assert health["security"] == []
    assert "401" not in health["responses"]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["tokenQuery"] == {"type": "apiKey", "in": "query", "name": "token"}


def test_a_route_without_an_operation_is_refused() -> None:
    async def nothing(_request: Any) -> None:
        raise AssertionError

    routes = [Route("/health", nothing, methods=["GET"]), Route("/new", nothing, methods=["GET"])]
    ops = {("GET", "/health"): api_docs.operations[("GET", "/health")]}
    with_path = [*routes[:1], Route("/files/{name:path}", nothing, methods=["GET"])]
    doc = build_document(
        with_path,
        {**ops, ("GET", "/files/{name:path}"): Operation("A file", {200: Reply("x")}, (404,))},
        Security(token=False),
    )
    assert doc["paths"]["/files/{name}"]["get"]["parameters"][0]["name"] == "name"
    both = Reply(
        "A session, or its lines", api_docs.SessionOut, alternatives=[(NDJSON, api_docs.NdjsonLine)]
    )
    doc = build_document(
        routes[:1], {("GET", "/health"): Operation("Both", {200: both})}, Security(token=False)
    )
    assert set(doc["paths"]["/health"]["get"]["responses"]["200"]["content"]) == {
        "application/json",
        NDJSON,
    }
    ops = {("GET", "/health"): api_docs.operations[("GET", "/health")]}
    with pytest.raises(MissingOperation, match="/new"):
        build_document(routes, ops, Security(token=False))
    stale = {**ops, ("GET", "/gone"): Operation("Gone", {200: Reply("x")})}
    with pytest.raises(MissingOperation, match="/gone"):
        build_document(routes[:1], stale, Security(token=False))


async def test_chat_stream_lines_match_the_documented_line_schema(tmp_path: Path) -> None:
    """schemathesis checks the status and content type of an NDJSON answer, not its lines: each
    line is checked here against the schema the document gives them."""
    async with (
        serve_app(make_settings(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        answer = await http.post("/chat/stream", json={"text": "two words"})
    assert answer.status_code == 200
    lines = [api_docs.NdjsonLine.model_validate_json(line) for line in answer.text.splitlines()]
    types = [line.root.type for line in lines]
    assert (types[0], set(types[1:-1]), types[-1]) == ("start", {"token"}, "done")


async def test_a_request_id_outside_latin_1_is_streamed_not_a_500(tmp_path: Path) -> None:
    """Found by schemathesis: the id went into the X-Request-Id header, which cannot carry it."""
    async with (
        serve_app(make_settings(tmp_path)) as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        answer = await http.post("/chat/stream", json={"text": "hi", "request_id": "ĭd-1"})
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] != "ĭd-1"
    start = api_docs.NdjsonLine.model_validate_json(answer.text.splitlines()[0]).root
    assert isinstance(start, api_docs.StartLine)
    assert start.data.request_id == "ĭd-1"


def test_the_chat_body_documented_has_the_chat_frame_fields() -> None:
    """/chat/stream and edit parse their bodies as a `chat` frame (`ndjson.parse_chat_body`):
    the models that document them keep its fields, seed 002's names beside them."""
    seed_names = {"prompt", "model_name"}
    chat_fields = set(ChatFrame.model_fields) - {"type"}
    assert set(api_docs.ChatStreamBody.model_fields) == chat_fields | seed_names
    assert set(api_docs.EditBody.model_fields) == chat_fields - set(PATH_FIELDS) | seed_names
