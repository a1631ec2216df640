"""Fuzzing a live server: random and malformed frames down one socket, junk at the REST API.

One `tether serve` process (echo engine) takes every example. After each WebSocket example a
`ping` must come back as `pong` (the socket survived), every frame the server sent must be
well-formed JSON without traceback text, and no request may fail with `internal`; what it
started is cancelled and seen to its end, so examples do not pile up. At the end the server's
log must hold no error and no exception.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.support.fuzz import any_text, client_frames, junk, plain_text
from tests.support.servers import ServerProcess, tether_serve
from tests.support.timeouts import scaled
from tether.jsonsafe import is_unicode

pytestmark = pytest.mark.e2e

MAX_TEXT = 1000
STATUSES = {"queued", "processing", "chunk", "tool", "complete", "error", "pong"}
LEAKS = ("Traceback", 'File "', "Exception", "sqlite3.", "pydantic_core")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {
        "TETHER_LOG_FORMAT": "json",
        "TETHER_LIMITS__MAX_TEXT_CHARS": str(MAX_TEXT),
        "TETHER_LIMITS__MESSAGES_PER_SEC": "0",  # examples come faster than any real client
    }
    with tether_serve(tmp, "--db", str(tmp / "fuzz.db"), "--engine", "echo", env=env) as server:
        yield server


def assert_log_clean(log: str) -> None:
    assert "Traceback" not in log
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            assert record.get("level") not in {"error", "critical"}, line
            assert "exception" not in record, line


class Prober:
    """Sends one example, then proves the socket still answers and nothing is left running."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.running: set[str] = set()

    def read(self) -> dict[str, Any]:
        raw = self.ws.recv(timeout=scaled(30))
        assert isinstance(raw, str), "the server sends text frames only"
        assert not any(leak in raw for leak in LEAKS), raw
        frame = json.loads(raw)
        assert isinstance(frame, dict)
        request_id, status = frame["request_id"], frame["status"]
        assert isinstance(request_id, str)
        assert status in STATUSES
        own = "seq" in frame  # else a reply outside the request's frames: it does not end it
        if own:
            assert isinstance(frame["seq"], int)
            assert frame["seq"] >= 0
        else:
            assert status in {"error", "pong"}, frame
        if status in ("queued", "processing"):  # queued: waits for its session's earlier turn
            self.running.add(request_id)
        elif status == "complete":
            self.running.discard(request_id)
        elif status == "error":
            error = frame["error"]
            assert isinstance(error["code"], str)
            assert error["code"] not in {"internal", "engine_error"}, frame
            assert isinstance(error["message"], str)
            assert error["message"]
            if own:
                self.running.discard(request_id)
        return frame

    def example(self, raw: str | bytes) -> None:
        if isinstance(raw, str) and not is_unicode(raw):
            # A text frame must be UTF-8; lone surrogates can only travel in a binary frame.
            raw = raw.encode("utf-8", "surrogatepass")
        self.ws.send(raw)
        probe = f"probe-{uuid.uuid4().hex}"
        self.ws.send(json.dumps({"type": "ping", "request_id": probe}))
        while True:
            frame = self.read()
            if frame["request_id"] == probe and frame["status"] == "pong":
                break
        for request_id in list(self.running):
            self.ws.send(json.dumps({"type": "cancel", "request_id": request_id}))
        while self.running:
            self.read()


def test_random_frames_never_break_a_socket(fuzz_server: ServerProcess) -> None:
    with connect(fuzz_server.ws_url, max_size=None, open_timeout=scaled(30)) as ws:
        prober = Prober(ws)

        @settings(max_examples=150, deadline=None, database=None)
        @given(client_frames(MAX_TEXT))
        def run(raw: str | bytes) -> None:
            prober.example(raw)

        run()
        # Good frames still work after all that.
        prober.example(json.dumps({"type": "chat", "request_id": "last", "text": "still fine"}))
    assert_log_clean(fuzz_server.log())


PATHS = st.one_of(
    st.sampled_from(
        [
            "/health",
            "/sessions",
            "/agents",
            "/models",
            "/tools",
            "/ws/chat",
            "/",
            "/nope",
            "//",
            "/sessions/",
            "/%00",
            "/%ff%fe",
            "/..%2f..%2fetc/passwd",
        ]
    ),
    st.builds(
        lambda collection, segment, tail: f"/{collection}/{quote(segment, safe='')}{tail}",
        st.sampled_from(["sessions", "agents"]),
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
        st.sampled_from(["", "/messages"]),
    ),
)
QUERIES = st.dictionaries(
    st.sampled_from(["limit", "offset", "token", "q", "x"]),
    st.one_of(st.integers(), st.text(max_size=20), st.just("9" * 5000)),
    max_size=3,
)


def json_body(value: Any) -> bytes:
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except ValueError:
        return b"{}"


BODIES = st.one_of(
    st.none(),
    st.builds(
        json_body,
        st.fixed_dictionaries(
            {},
            optional={
                "title": st.one_of(plain_text, any_text, junk),
                "agent_id": st.one_of(plain_text, junk),
                "name": st.one_of(plain_text, junk),
                "system_prompt": st.one_of(plain_text, junk),
                "markdown_context": st.one_of(plain_text, junk),
                "default_options": junk,
            },
        ),
    ),
    st.builds(json_body, junk),
    st.binary(max_size=100),
    st.builds(lambda n: b"[" * n, st.integers(1, 100_000)),
)


def test_junk_http_requests_never_get_a_500(fuzz_server: ServerProcess) -> None:
    with httpx.Client(base_url=fuzz_server.http_url, timeout=scaled(30)) as http:

        @settings(max_examples=150, deadline=None, database=None)
        @given(
            st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
            PATHS,
            QUERIES,
            BODIES,
        )
        def run(method: str, path: str, query: dict[str, Any], body: bytes | None) -> None:
            response = http.request(
                method,
                path,
                params=query,
                content=body,
                headers={"content-type": "application/json"} if body is not None else None,
            )
            assert response.status_code < 500, (method, path, response.text)
            assert not any(leak in response.text for leak in LEAKS), response.text

        run()
        assert http.get("/health").status_code == 200
    assert_log_clean(fuzz_server.log())


def test_the_log_check_sees_errors(tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        assert_log_clean('{"event": "x", "level": "error"}')
    with pytest.raises(AssertionError):
        assert_log_clean('{"event": "x", "level": "info", "exception": "boom"}')
    assert_log_clean('not json\n{"event": "ws.open", "level": "info"}')
