"""Property tests of the wire contract: near-valid and hostile client frames, any server text.

Whatever comes in (`tests.support.fuzz`), parsing either gives a frame whose strings can go back
out as UTF-8, or a ProtocolError whose error frame can.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from tests.support.fuzz import any_text, client_frames, junk
from tether.protocol import (
    ChatFrame,
    ErrorBody,
    FrameBody,
    ProtocolError,
    RequestFrames,
    ResumeFrame,
    ToolCallBody,
    parse_client_frame,
    usable_request_id,
)

LIMIT = 1000


raw_frames = client_frames(LIMIT)


def assert_sendable(request_id: str, body: FrameBody) -> None:
    """What the server would send: valid UTF-8 JSON that reads back to the same frame."""
    text = RequestFrames(request_id).next(body).text
    text.encode("utf-8")
    back = json.loads(text)
    assert back["request_id"] == request_id
    assert back["seq"] == 0
    assert "Traceback" not in text


def assert_strings_sendable(value: Any) -> None:
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_strings_sendable(key)
            assert_strings_sendable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            assert_strings_sendable(item)


@settings(max_examples=400, deadline=None)
@given(raw_frames)
@example('{"type": "chat", "request_id": "\\ud800", "text": "hi"}')
@example('{"type": "chat", "request_id": "r", "text": "hi", "options": {"\\udfff": 1}}')
@example('{"type": "chat", "request_id": "r", "text": "\\ud800"}')
@example('{"type": "ping", "request_id": "r", "n": ' + "9" * 5000 + "}")
@example("[" * 100_000)
@example('{"action": "chat", "payload": {"text": "\ud800"}, "request_id": "0"}')  # not escaped
@example('{"type": "chat", "request_id": "r", "text": "x", "options": {"temperature": NaN}}')
@example('{"type": "chat", "request_id": "r", "text": "x", "options": {"max_tokens": 1e999}}')
def test_near_valid_frames_parse_or_fail_cleanly(raw: str | bytes) -> None:
    try:
        frame = parse_client_frame(raw, max_text_chars=LIMIT)
    except ProtocolError as caught:
        error = caught
    else:
        event(f"parsed: {frame.type}")
        assert usable_request_id(frame.request_id)
        assert_strings_sendable(frame.model_dump())
        if isinstance(frame, ChatFrame):
            assert 0 < len(frame.text) <= LIMIT
            assert frame.text.strip()
        return
    event(f"refused: {error.code} {error.message.partition(':')[0][:30]}")
    assert error.code in {"bad_request", "too_large"}
    assert error.message
    assert error.request_id is None or usable_request_id(error.request_id)
    assert_sendable(error.request_id or "", ErrorBody(error.code, error.message))


def sent_fields(raw: str | bytes) -> dict[str, Any]:
    """The fields of a frame as the client wrote them (the seed-003 payload merged in)."""
    data: dict[str, Any] = json.loads(raw)
    payload = data.get("payload")
    if "type" not in data and isinstance(payload, dict):
        data = {**payload, **data}
    return data


INTS = ("max_tokens", "seed", "token_delay_ms")
BOOLS = ("tools", "show_thoughts")
FLOATS = ("temperature", "top_p")


@settings(max_examples=400, deadline=None)
@given(raw_frames)
@example('{"type": "resume", "request_id": "r", "after_seq": true}')
@example('{"type": "resume", "request_id": "r", "after_seq": "3"}')
@example('{"type": "chat", "request_id": "r", "text": "x", "options": {"tools": "yes"}}')
@example('{"type": "chat", "request_id": "r", "text": "x", "options": {"max_tokens": true}}')
@example('{"type": "chat", "request_id": "r", "text": "x", "options": {"top_p": Infinity}}')
def test_a_frame_that_parses_had_the_right_types(raw: str | bytes) -> None:
    """Strict validation: what parses was sent with exactly the documented JSON types (an
    integer for a float field is the one widening), and every number in it is finite."""
    try:
        frame = parse_client_frame(raw, max_text_chars=LIMIT)
    except ProtocolError:
        return
    sent = sent_fields(raw)
    if isinstance(frame, ResumeFrame) and "after_seq" in sent:
        assert type(sent["after_seq"]) is int
    if not isinstance(frame, ChatFrame):
        return
    for key in ("text", "session_id", "agent_id", "parent_id", "sibling_of"):
        assert sent.get(key) is None or type(sent[key]) is str
    options = sent.get("options") or {}
    for key in INTS:
        assert options.get(key) is None or type(options[key]) is int
    for key in BOOLS:
        assert options.get(key) is None or type(options[key]) is bool
    for key in FLOATS:
        value = options.get(key)
        assert value is None or (type(value) in (int, float) and math.isfinite(value))


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=200), any_text, junk)
def test_any_server_frame_goes_out_as_utf8(request_id: str, text: str, data: Any) -> None:
    # A tool call's arguments: whatever JSON the model wrote, lone surrogates included.
    body = ToolCallBody("c", "n", {"text": text, "x": data})
    try:
        json.dumps(data)
    except ValueError:  # integers past the digit limit never reach a frame
        return
    rendered = RequestFrames(request_id).next(body).text
    rendered.encode("utf-8")
    assert json.loads(rendered)["chunk"]["data"]["arguments"]["text"] == text
