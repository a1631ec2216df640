"""Protocol v1: parsing every client frame, and rendering every server frame."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.engines.base import Usage
from tether.events import (
    Accepted,
    ChatEvent,
    Completed,
    Failed,
    Queued,
    TextDelta,
    ThinkingDelta,
    Timings,
    ToolCallFinished,
    ToolCallStarted,
)
from tether.protocol import (
    CancelFrame,
    ChatFrame,
    ChatOptions,
    ErrorBody,
    FrameError,
    PingFrame,
    PongBody,
    ProtocolError,
    RegenerateFrame,
    RequestFrames,
    ResumeFrame,
    ServerFrame,
    decode_frame,
    frame_body,
    parse_client_frame,
    parse_options,
)

LIMIT = 1000


def parse(data: object) -> object:
    return parse_client_frame(json.dumps(data), max_text_chars=LIMIT)


def parse_error(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(raw, max_text_chars=LIMIT)
    return caught.value


def test_regenerate_frame_names_a_session_and_a_message() -> None:
    frame = parse(
        {"type": "regenerate", "session_id": "s", "message_id": "m", "options": {"seed": 3}}
    )
    assert isinstance(frame, RegenerateFrame)
    assert (frame.session_id, frame.message_id, frame.options.seed) == ("s", "m", 3)
    assert frame.request_id  # given by the server, as for chat
    for missing in ({"session_id": "s"}, {"message_id": "m"}):
        error = parse_error(json.dumps({"type": "regenerate", "request_id": "r", **missing}))
        assert (error.code, error.request_id) == ("bad_request", "r")
    error = parse_error(
        json.dumps({"type": "regenerate", "session_id": "s", "message_id": 5, "request_id": "r"})
    )
    assert "message_id" in error.message


def test_chat_frame_with_every_field() -> None:
    frame = parse(
        {
            "type": "chat",
            "request_id": "r1",
            "text": "hi",
            "session_id": "s",
            "agent_id": "a",
            "parent_id": "p",
            "options": {
                "model": "m",
                "temperature": 0.2,
                "top_p": 0.9,
                "max_tokens": 5,
                "seed": 7,
                "stop": ["\n"],
                "tools": False,
                "show_thoughts": True,
                "token_delay_ms": 10,
            },
        }
    )
    assert isinstance(frame, ChatFrame)
    assert (frame.session_id, frame.agent_id, frame.parent_id) == ("s", "a", "p")
    assert frame.options.max_tokens == 5
    assert frame.options.stop_sequences() == ("\n",)
    assert frame.options.tools is False


def test_seed_003_action_payload_alias() -> None:
    frame = parse({"action": "chat", "payload": {"text": "hello"}, "request_id": "x"})
    assert isinstance(frame, ChatFrame)
    assert (frame.text, frame.request_id) == ("hello", "x")


def test_missing_request_id_is_filled_in() -> None:
    frame = parse({"type": "ping"})
    assert isinstance(frame, PingFrame)
    assert len(frame.request_id) == 32


def test_cancel_resume_ping() -> None:
    assert isinstance(parse({"type": "cancel", "request_id": "a"}), CancelFrame)
    resume = parse({"type": "resume", "request_id": "a", "after_seq": 3})
    assert isinstance(resume, ResumeFrame)
    assert (resume.after_seq, resume.token) == (3, None)
    for kind in ("resume", "cancel"):
        with_token = parse({"type": kind, "request_id": "a", "token": "t0k"})
        assert isinstance(with_token, ResumeFrame | CancelFrame)
        assert with_token.token == "t0k"


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("cancel", "cancel needs the request_id of the request to stop"),
        ("resume", "resume needs the request_id of the request to resume"),
    ],
)
def test_cancel_and_resume_need_a_request_id(kind: str, says: str) -> None:
    # A server-made id would name no request: the client gets told what is missing instead.
    error = parse_error(json.dumps({"type": kind, "after_seq": 0}))
    assert (error.code, error.request_id, error.message) == ("bad_request", None, says)
    legacy = parse_error(json.dumps({"action": kind, "payload": {}}))
    assert (legacy.code, legacy.message) == ("bad_request", says)


def test_a_json_integer_is_a_float() -> None:
    frame = parse({"type": "chat", "request_id": "r", "text": "x", "options": {"temperature": 1}})
    assert isinstance(frame, ChatFrame)
    assert frame.options.temperature == 1.0
    assert isinstance(frame.options.temperature, float)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"type": "resume", "after_seq": "3"}, "after_seq: Input should be a valid integer"),
        ({"type": "resume", "after_seq": True}, "after_seq: Input should be a valid integer"),
        ({"type": "resume", "after_seq": 3.0}, "after_seq: Input should be a valid integer"),
        ({"type": "resume", "token": 7}, "token: Input should be a valid string"),
        ({"type": "cancel", "token": ""}, "token: String should have at least 1 character"),
        ({"type": "cancel", "token": "t" * 201}, "token: String should have at most 200"),
        ({"type": "chat", "text": "x", "options": {"tools": "yes"}}, "options.tools"),
        ({"type": "chat", "text": "x", "options": {"tools": 1}}, "options.tools"),
        ({"type": "chat", "text": "x", "options": {"max_tokens": True}}, "options.max_tokens"),
        ({"type": "chat", "text": "x", "options": {"max_tokens": "5"}}, "options.max_tokens"),
        ({"type": "chat", "text": "x", "options": {"seed": 1.5}}, "options.seed"),
        ({"type": "chat", "text": "x", "options": {"temperature": "0.5"}}, "options.temperature"),
        ({"type": "chat", "text": "x", "options": {"temperature": False}}, "options.temperature"),
        ({"type": "chat", "text": "x", "options": {"show_thoughts": 0}}, "options.show_thoughts"),
        ({"type": "chat", "text": "x", "options": {"token_delay_ms": 5.0}}, "token_delay_ms"),
        ({"type": "chat", "text": "x", "session_id": 5}, "session_id"),
    ],
)
def test_wrong_types_are_refused_not_coerced(fields: dict[str, object], says: str) -> None:
    error = parse_error(json.dumps({"request_id": "r", **fields}))
    assert (error.code, error.request_id) == ("bad_request", "r")
    assert says in error.message


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "[1, -1e400]"])
def test_numbers_json_does_not_have_are_refused(number: str) -> None:
    raw = '{"type": "chat", "request_id": "r", "text": "x", "options": {"stop": %s}}'
    error = parse_error(raw % number)
    assert (error.code, error.request_id) == ("bad_request", "r")
    assert error.message == (
        "frame holds NaN, Infinity or a number too large for a float, which JSON does not allow"
    )


def test_bytes_frames_are_json_too() -> None:
    frame = parse_client_frame(b'{"type": "ping", "request_id": "b"}', max_text_chars=LIMIT)
    assert isinstance(frame, PingFrame)


@pytest.mark.parametrize(
    ("raw", "code", "request_id", "says"),
    [
        ("not json", "bad_request", None, "not valid JSON"),
        (b"\xff\xfe", "bad_request", None, "not valid JSON"),
        ("[1, 2]", "bad_request", None, "JSON object"),
        ('{"request_id": "r"}', "bad_request", "r", "no type"),
        ('{"type": "shout", "request_id": "r"}', "bad_request", "r", "unknown frame type 'shout'"),
        ('{"type": "chat", "request_id": "r"}', "bad_request", "r", "text: Field required"),
        ('{"type": "chat", "request_id": "r", "text": 5}', "bad_request", "r", "text"),
        ('{"type": "chat", "request_id": "r", "text": "  "}', "bad_request", "r", "empty"),
        ('{"type": "chat", "request_id": 5, "text": "x"}', "bad_request", None, "request_id"),
        (
            '{"type": "chat", "request_id": "r", "text": "x", "options": {"temprature": 1}}',
            "bad_request",
            "r",
            "options.temprature",
        ),
        (
            '{"type": "chat", "request_id": "r", "text": "x", "options": {"max_tokens": 0}}',
            "bad_request",
            "r",
            "options.max_tokens",
        ),
        (
            '{"type": "resume", "request_id": "r", "after_seq": "x"}',
            "bad_request",
            "r",
            "after_seq",
        ),
    ],
)
def test_bad_frames_name_the_problem(
    raw: str | bytes, code: str, request_id: str | None, says: str
) -> None:
    error = parse_error(raw)
    assert error.code == code
    assert error.request_id == request_id
    assert says in error.message


def test_text_over_the_limit_is_too_large() -> None:
    error = parse_error(json.dumps({"type": "chat", "request_id": "r", "text": "x" * (LIMIT + 1)}))
    assert (error.code, error.request_id) == ("too_large", "r")
    assert str(LIMIT) in error.message


def test_text_at_the_limit_is_fine() -> None:
    assert isinstance(parse({"type": "chat", "request_id": "r", "text": "x" * LIMIT}), ChatFrame)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.binary(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
            max_leaves=10,
        ).map(json.dumps),
    )
)
def test_any_input_parses_or_fails_cleanly(raw: str | bytes) -> None:
    failure: ProtocolError | None = None
    try:
        parse_client_frame(raw, max_text_chars=LIMIT)
    except ProtocolError as error:
        failure = error
    if failure is not None:
        assert failure.code in {"bad_request", "too_large"}
        assert failure.message


def test_seq_rises_by_one_per_request() -> None:
    frames = RequestFrames("r")
    rendered = [json.loads(frames.next(PongBody()).text) for _ in range(3)]
    assert [f["seq"] for f in rendered] == [0, 1, 2]
    assert {f["request_id"] for f in rendered} == {"r"}


def wire_of(event: ChatEvent) -> dict[str, Any]:
    """What the frame of `event` says beside its request_id and seq, as the socket sends it."""
    frame = json.loads(RequestFrames("r").next(frame_body(event)).text)
    del frame["request_id"], frame["seq"]
    return dict(frame)


def test_event_bodies() -> None:
    assert wire_of(TextDelta("hi")) == {
        "status": "chunk",
        "chunk": {"type": "text", "data": "hi"},
    }
    assert wire_of(ThinkingDelta("hm"))["chunk"]["type"] == "thinking"
    processing = wire_of(Accepted("s", "u", "echo", 2, True))
    assert processing["status"] == "processing"
    assert processing["chunk"]["metadata"] == {
        "session_id": "s",
        "user_message_id": "u",
        "model": "echo",
        "queue_position": 2,
        "created_session": True,
    }
    call = wire_of(ToolCallStarted("c", "calculator", {"expression": "1"}))
    assert call["chunk"] == {
        "type": "tool_call",
        "data": {"id": "c", "name": "calculator", "arguments": {"expression": "1"}},
    }
    ok = wire_of(ToolCallFinished("c", "calculator", "1", None, 1.5))["chunk"]["data"]
    assert ok == {"id": "c", "name": "calculator", "result": "1", "duration_ms": 1.5}
    bad = wire_of(ToolCallFinished("c", "calculator", None, "boom", 1.5))["chunk"]["data"]
    assert "result" not in bad
    assert bad["error"] == "boom"
    complete = wire_of(
        Completed("m", "length", Usage(3, 4), Timings(1.0, 2.0, 3.0), {"trimmed_messages": 2})
    )
    assert complete["chunk"]["metadata"] == {
        "message_id": "m",
        "finish_reason": "length",
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        "timings": {"ttft_ms": 1.0, "tokens_per_s": 2.0, "total_ms": 3.0},
        "trimmed_messages": 2,
    }
    assert wire_of(Failed("not_found", "nope")) == {
        "status": "error",
        "error": {"code": "not_found", "message": "nope"},
    }


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"seed": 2**200}, "options.seed: Input should be less than or equal to"),
        ({"seed": -(2**64)}, "options.seed: Input should be greater than or equal to"),
        ({"stop": ["x"] * 50_000}, "options.stop: Value error, at most 16 stop strings, not 50000"),
        ({"stop": ["x" * 201]}, "options.stop: Value error, each stop string must have 1 to 200"),
        ({"stop": "x" * 201}, "options.stop: Value error, each stop string must have 1 to 200"),
        ({"stop": [""]}, "options.stop: Value error, each stop string must have 1 to 200"),
        ({"max_tokens": 10**12}, "options.max_tokens: Input should be less than or equal to"),
        ({"model": "m\x00"}, "options.model: Value error, must not contain control characters"),
    ],
)
def test_options_are_bounded(options: dict[str, object], says: str) -> None:
    error = parse_error(
        json.dumps({"type": "chat", "request_id": "r", "text": "x", "options": options})
    )
    assert error.code == "bad_request"
    assert error.request_id == "r"
    assert says in error.message


def test_options_at_their_bounds_pass() -> None:
    frame = parse(
        {
            "type": "chat",
            "request_id": "r",
            "text": "x",
            "options": {"seed": 2**63 - 1, "stop": ["y" * 200] * 16},
        }
    )
    assert isinstance(frame, ChatFrame)
    assert frame.options.seed == 2**63 - 1
    assert len(frame.options.stop_sequences()) == 16


@pytest.mark.parametrize("field", ["session_id", "agent_id", "parent_id", "sibling_of"])
@pytest.mark.parametrize("bad", ["a\x00b", "\n", "tab\there", "del\x7f", "c1\x85", "x" * 201, ""])
def test_ids_without_control_characters(field: str, bad: str) -> None:
    error = parse_error(json.dumps({"type": "chat", "request_id": "r", "text": "x", field: bad}))
    assert (error.code, error.request_id) == ("bad_request", "r")
    assert error.message.startswith(f"{field}: ")


def test_a_request_id_with_a_control_character_is_refused() -> None:
    error = parse_error(json.dumps({"type": "ping", "request_id": "r\x00"}))
    assert error.code == "bad_request"
    assert "control characters" in error.message


def test_an_integer_past_the_digit_limit_is_named() -> None:
    raw = (
        '{"type": "chat", "request_id": "r", "text": "x", "options": {"seed": ' + "9" * 5000 + "}}"
    )
    error = parse_error(raw)
    assert error.message == "frame holds an integer of more than 4300 digits"


def test_options_over_defaults_key_by_key() -> None:
    defaults = parse_options({"temperature": 0.3, "max_tokens": 2, "stop": ["x"]})
    frame = parse(
        {"type": "chat", "request_id": "r", "text": "x", "options": {"max_tokens": 5, "stop": None}}
    )
    assert isinstance(frame, ChatFrame)
    merged = frame.options.over(defaults)
    assert (merged.temperature, merged.max_tokens, merged.stop) == (0.3, 5, None)
    assert ChatOptions().over(defaults) == defaults


@pytest.mark.parametrize(
    ("defaults", "says"),
    [
        ({"evil": 1}, "default_options.evil: Extra inputs are not permitted"),
        ({"temperature": "hot"}, "default_options.temperature: Input should be a valid number"),
        ({"tools": "yes"}, "default_options.tools: Input should be a valid boolean"),
    ],
)
def test_parse_options_refuses_what_a_chat_frame_refuses(
    defaults: dict[str, object], says: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_options(defaults, name="default_options")
    assert says in caught.value.message


EVENTS = [
    Queued(1, "session"),
    Accepted("s", "u", "echo", 0, False),
    TextDelta("hi \ud800"),
    ThinkingDelta("hm"),
    ToolCallStarted("c", "calculator", {"expression": "1"}),
    ToolCallFinished("c", "calculator", "1", None, 1.5),
    ToolCallFinished("c", "calculator", None, "boom", 1.5),
    Completed("m", "stop", Usage(1, 2), Timings(None, None, 0.0), {"recovered": True}),
    Failed("internal", "oops"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: type(event).__name__)
def test_a_typed_frame_reads_back_from_its_text(event: ChatEvent) -> None:
    frame = RequestFrames("r").next(frame_body(event))
    assert json.loads(frame.encode()) == {"request_id": "r", "seq": 0, **wire_of(event)}
    back = decode_frame(frame.text)
    assert (back, back.text) == (frame, frame.text)
    assert back.final == isinstance(event, Completed | Failed)


def test_frames_outside_a_request_have_no_seq() -> None:
    pong = ServerFrame("r", None, PongBody())
    assert json.loads(pong.text) == {"request_id": "r", "status": "pong"}
    refusal = ServerFrame("r", None, ErrorBody("busy", "later", {"retry": 1}))
    assert json.loads(refusal.text)["error"] == {"code": "busy", "message": "later", "retry": 1}
    assert decode_frame(refusal.text) == refusal


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"status": "chunk"}',
        '{"request_id": "r", "seq": 0}',
        '{"request_id": "r", "seq": 0, "status": "later"}',
        '{"request_id": "r", "seq": 0, "status": "chunk", "chunk": {"type": "audio"}}',
        '{"request_id": "r", "seq": 0, "status": "error", "error": {"code": "x"}}',
    ],
)
def test_a_text_that_is_no_server_frame_is_refused(text: str) -> None:
    with pytest.raises(FrameError):
        decode_frame(text)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sibling_of": "m"}, "sibling_of needs the session_id of its message"),
        ({"sibling_of": "m", "session_id": "s", "parent_id": "p"}, "give parent_id or sibling_of"),
    ],
)
def test_sibling_of_needs_a_session_and_excludes_parent_id(
    fields: dict[str, str], message: str
) -> None:
    error = parse_error(json.dumps({"type": "chat", "request_id": "r", "text": "x", **fields}))
    assert (error.code, error.request_id) == ("bad_request", "r")
    assert error.message.startswith(message)


def test_sibling_of_with_its_session_is_an_edit() -> None:
    frame = parse(
        {"type": "chat", "request_id": "r", "text": "x", "session_id": "s", "sibling_of": "m"}
    )
    assert isinstance(frame, ChatFrame)
    assert (frame.session_id, frame.sibling_of, frame.parent_id) == ("s", "m", None)
