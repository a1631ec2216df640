"""The typed metadata of `processing`, `tool` and `complete` frames: what a journaled or received
frame reads back as, and what it refuses (the wire itself: tests/unit/test_protocol.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether.engines.base import Usage
from tether.events import Accepted, Completed, Timings
from tether.protocol import (
    AnswerFacts,
    CompleteBody,
    FrameError,
    ProcessingBody,
    RequestFrames,
    ToolResultBody,
    decode_frame,
    frame_body,
    processing_body,
)
from tether.transports.api_docs import DoneData


def frame_text(status: str, chunk: dict[str, Any]) -> str:
    return json.dumps({"request_id": "r", "seq": 0, "status": status, "chunk": chunk})


def test_a_runs_processing_frame_carries_its_token_and_reads_back_typed() -> None:
    body = processing_body(Accepted("s", "u", "echo", 1, False), "tok")
    assert body == ProcessingBody("s", "u", "echo", 1, False, resume_token="tok")
    assert body.metadata()["resume_token"] == "tok"
    back = decode_frame(RequestFrames("r").next(body).text).body
    assert isinstance(back, ProcessingBody)
    assert (back.session_id, back.user_message_id, back.resume_token) == ("s", "u", "tok")


def test_engine_facts_become_typed_facts_and_only_the_set_ones_are_sent() -> None:
    event = Completed("m", "stop", Usage(5, 6), Timings(1.0, 2.0, 3.0), {"cached_tokens": 4})
    body = frame_body(event)
    assert body == CompleteBody(
        "m", "stop", Usage(5, 6), Timings(1.0, 2.0, 3.0), AnswerFacts(cached_tokens=4)
    )
    metadata = body.metadata()
    assert metadata["cached_tokens"] == 4
    assert "trimmed_messages" not in metadata
    assert "recovered" not in metadata


def test_a_fact_no_field_names_is_a_type_error_at_once() -> None:
    # A new engine fact needs its field in AnswerFacts, or it would vanish from the wire.
    event = Completed("m", "stop", Usage(), Timings(None, None, 0.0), {"gpu_layers": 3})
    with pytest.raises(TypeError, match="gpu_layers"):
        frame_body(event)


def test_a_complete_frame_from_a_newer_server_keeps_the_facts_it_knows() -> None:
    metadata = {
        "message_id": "m",
        "finish_reason": "length",
        "usage": {"prompt_tokens": 1, "completion_tokens": 2},
        "timings": {"ttft_ms": None, "tokens_per_s": None, "total_ms": 0.5},
        "usage_estimated": True,
        "from_the_future": 1,
    }
    body = decode_frame(frame_text("complete", {"metadata": metadata})).body
    assert body == CompleteBody(
        "m", "length", Usage(1, 2), Timings(None, None, 0.5), AnswerFacts(usage_estimated=True)
    )


def test_a_tool_result_without_a_result_reads_back_as_its_error() -> None:
    data = {"id": "c", "name": "calc", "error": "boom", "duration_ms": 2}
    body = decode_frame(frame_text("tool", {"type": "tool_result", "data": data})).body
    assert body == ToolResultBody("c", "calc", None, "boom", 2.0)


@pytest.mark.parametrize(
    ("status", "chunk"),
    [
        ("processing", {"metadata": {"user_message_id": "u"}}),  # no session, model, ...
        (
            "processing",
            {"metadata": {**ProcessingBody("s", "u", "m", 0, True).metadata(), "model": 3}},
        ),
        ("complete", {"metadata": {"message_id": "m"}}),
        (
            "complete",
            {"metadata": {"message_id": "m", "finish_reason": "bored", "usage": {}, "timings": {}}},
        ),
        ("tool", {"type": "tool_call", "data": {"id": "c", "name": "n"}}),  # no arguments
        ("tool", {"type": "tool_result", "data": {"id": "c", "name": "n", "result": "x"}}),
    ],
)
def test_a_body_missing_or_mistyping_a_field_is_no_frame(
    status: str, chunk: dict[str, Any]
) -> None:
    with pytest.raises(FrameError):
        decode_frame(frame_text(status, chunk))


def test_the_api_docs_name_every_fact_of_a_done_line() -> None:
    assert set(AnswerFacts.__dataclass_fields__) <= set(DoneData.model_fields)
