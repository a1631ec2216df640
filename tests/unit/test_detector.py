"""Tests of the streaming tool-call / thought detector."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tether.detector import (
    FUNCTION_MARKER,
    MAX_TAG_HOLD,
    THINK_CLOSE,
    THINK_OPEN,
    CallPiece,
    DetectorEvent,
    MalformedCall,
    PassthroughDetector,
    StreamDetector,
    TextPiece,
    ThoughtPiece,
    ToolCallDetector,
)
from tether.tool_markup import TOOL_CLOSE, TOOL_OPEN

PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def merge(events: Iterable[DetectorEvent]) -> list[DetectorEvent]:
    """Join adjacent text (and adjacent thought) pieces: chunking may split them anywhere."""
    out: list[DetectorEvent] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, TextPiece) and isinstance(last, TextPiece):
            out[-1] = TextPiece(last.text + event.text)
        elif isinstance(event, ThoughtPiece) and isinstance(last, ThoughtPiece):
            out[-1] = ThoughtPiece(last.text + event.text)
        else:
            out.append(event)
    return out


def run(chunks: Iterable[str], **options: bool) -> list[DetectorEvent]:
    det = ToolCallDetector(**options)
    events: list[DetectorEvent] = []
    for chunk in chunks:
        events += det.feed(chunk)
    events += det.flush()
    return merge(events)


def whole(text: str, **options: bool) -> list[DetectorEvent]:
    return run([text], **options)


def by_char(text: str, **options: bool) -> list[DetectorEvent]:
    return run(list(text), **options)


def both(text: str, **options: bool) -> list[DetectorEvent]:
    """Events of `text` fed whole, checked to be the same when fed one character at a time."""
    events = whole(text, **options)
    assert by_char(text, **options) == events
    return events


def split(text: str, cuts: Iterable[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}
WEATHER_CALL = CallPiece("get_weather", {"city": "Paris", "days": 3})


def test_protocol_is_satisfied() -> None:
    detectors: list[StreamDetector] = [ToolCallDetector(), PassthroughDetector()]
    assert all(d.flush() == [] for d in detectors)


# -- formats ----------------------------------------------------------------------------------


def test_plain_text_is_released_at_once() -> None:
    det = ToolCallDetector()
    assert det.feed("Hello, ") == [TextPiece("Hello, ")]
    assert det.feed("world}") == [TextPiece("world}")]
    assert det.pending == 0
    assert det.flush() == []


def test_hermes_tool_call() -> None:
    text = f"Let me check.\n{TOOL_OPEN}\n{json.dumps(WEATHER)}\n{TOOL_CLOSE}"
    assert both(text) == [TextPiece("Let me check.\n"), WEATHER_CALL]


def test_function_call_marker() -> None:
    text = f"{FUNCTION_MARKER} {json.dumps(WEATHER)} Done."
    assert both(text) == [WEATHER_CALL, TextPiece(" Done.")]
    assert both(f"{FUNCTION_MARKER}{json.dumps(WEATHER)}") == [WEATHER_CALL]
    assert both(f"Sure.{FUNCTION_MARKER}\n\n{json.dumps(WEATHER)}") == [
        TextPiece("Sure."),
        WEATHER_CALL,
    ]


def test_function_call_object_ends_where_braces_balance_outside_strings() -> None:
    call = {"name": "echo", "arguments": {"s": 'a}{"}\\"} </tool_call> <think>'}}
    assert both(f"{FUNCTION_MARKER} {json.dumps(call)}}}") == [
        CallPiece("echo", {"s": 'a}{"}\\"} </tool_call> <think>'}),
        TextPiece("}"),
    ]


def test_bare_leading_llama_call() -> None:
    call = {"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}
    assert both(json.dumps(call)) == [WEATHER_CALL]
    # Whitespace is text, never dropped; it does not stop the object from being leading.
    assert both("\n  " + json.dumps(call) + "\n") == [
        TextPiece("\n  "),
        WEATHER_CALL,
        TextPiece("\n"),
    ]


def test_bare_call_after_thoughts_is_still_leading() -> None:
    text = f"{THINK_OPEN}need weather{THINK_CLOSE}\n\n{json.dumps(WEATHER)}"
    assert both(text) == [ThoughtPiece("need weather"), TextPiece("\n\n"), WEATHER_CALL]


def test_bare_object_is_a_call_only_when_leading() -> None:
    text = "Here: " + json.dumps(WEATHER)
    assert both(text) == [TextPiece(text)]


def test_bare_object_that_is_not_a_call_is_text() -> None:
    for text in [
        '{"name": "Bob"}',  # data: a call needs arguments
        '{"name": "Bob", "arguments": [1]}',
        '{"name": 3, "arguments": {}}',
        '{"name": "f", "arguments": {}',  # still open at the end
        '{"name": "f" "arguments": {}}',  # not JSON
        "{}",
        "{ not json }",
        '{"result": {"name": "f", "arguments": {}}}',
        '{"na\\u006de": "f", "arguments": {}}',
    ]:
        assert both(text) == [TextPiece(text)], text


def test_json_answer_is_released_as_soon_as_a_key_rules_out_a_call() -> None:
    det = ToolCallDetector()
    assert det.feed('{"nam') == []
    assert det.pending == 5
    assert merge(det.feed('es": [')) == [TextPiece('{"names": [')]
    assert det.pending == 0
    assert det.feed('"a"]}') == [TextPiece('"a"]}')]


@pytest.mark.parametrize(
    "start",
    [
        '{"na"',  # a proper prefix of an allowed key, then the key ends
        '{"name": "Bob", "age"',  # the second top-level key rules it out
        '{"name": "f", "arguments": {"x": 1}, 3',  # a top-level non-key
        '{ "x',
        "{ 1",
    ],
)
def test_bare_object_is_given_up_at_the_first_impossible_key(start: str) -> None:
    det = ToolCallDetector()
    assert merge(det.feed(start)) == [TextPiece(start)]
    assert det.pending == 0


def test_bare_object_keys_nested_deeper_are_not_checked() -> None:
    det = ToolCallDetector()
    start = '{"name": "f", "arguments": {"city": "Paris", "x": '
    assert det.feed(start) == []
    assert det.pending == len(start)
    assert det.feed("1}}") == [CallPiece("f", {"city": "Paris", "x": 1})]


def test_arguments_as_json_string_are_decoded() -> None:
    call = {"name": "get_weather", "arguments": json.dumps(WEATHER["arguments"])}
    assert both(f"{TOOL_OPEN}{json.dumps(call)}{TOOL_CLOSE}") == [WEATHER_CALL]
    assert both(f"{FUNCTION_MARKER} {json.dumps(call)}") == [WEATHER_CALL]
    assert both(json.dumps(call)) == [WEATHER_CALL]


def test_missing_or_null_arguments_in_markup_mean_no_arguments() -> None:
    missing = f'{TOOL_OPEN}{{"name": "now"}}{TOOL_CLOSE}'
    null = f'{TOOL_OPEN}{{"name": "now", "arguments": null}}{TOOL_CLOSE}'
    text = missing + null
    assert both(text) == [CallPiece("now", {}), CallPiece("now", {})]


def test_several_calls_with_text_between() -> None:
    second = {"name": "add", "arguments": {"a": 1, "b": 2}}
    text = (
        f"{TOOL_OPEN}{json.dumps(WEATHER)}{TOOL_CLOSE}\nand < then\n"
        f"{TOOL_OPEN}{json.dumps(second)}{TOOL_CLOSE} between "
        f"{FUNCTION_MARKER} {json.dumps(second)} end"
    )
    assert both(text) == [
        WEATHER_CALL,
        TextPiece("\nand < then\n"),
        CallPiece("add", {"a": 1, "b": 2}),
        TextPiece(" between "),
        CallPiece("add", {"a": 1, "b": 2}),
        TextPiece(" end"),
    ]


def test_consecutive_bare_calls_at_the_start() -> None:
    text = json.dumps(WEATHER) + "\n" + json.dumps(WEATHER)
    assert both(text) == [WEATHER_CALL, TextPiece("\n"), WEATHER_CALL]


# -- thoughts ---------------------------------------------------------------------------------


def test_think_block_is_thought_streamed_incrementally() -> None:
    det = ToolCallDetector()
    assert det.feed("<thi") == []
    assert det.feed("nk>Let me") == [ThoughtPiece("Let me")]
    assert det.feed(" see</th") == [ThoughtPiece(" see")]
    assert det.pending == len("</th")
    assert det.feed("ink>\nAnswer: 42") == [TextPiece("\nAnswer: 42")]
    assert det.flush() == []


def test_unclosed_think_block_at_flush_is_thought() -> None:
    assert both(f"{THINK_OPEN}still thinking </thi") == [ThoughtPiece("still thinking </thi")]


def test_markup_inside_thoughts_is_thought() -> None:
    text = f"{THINK_OPEN}maybe {TOOL_OPEN}{json.dumps(WEATHER)}{TOOL_CLOSE}?{THINK_CLOSE}No."
    inner = f"maybe {TOOL_OPEN}{json.dumps(WEATHER)}{TOOL_CLOSE}?"
    assert both(text) == [ThoughtPiece(inner), TextPiece("No.")]


def test_start_in_thought_for_templates_that_open_the_think_block() -> None:
    text = f"hmm{THINK_CLOSE}Hi"
    assert both(text, start_in_thought=True) == [ThoughtPiece("hmm"), TextPiece("Hi")]


def test_without_call_detection_only_thoughts_are_recognised() -> None:
    text = f"{THINK_OPEN}t{THINK_CLOSE}{json.dumps(WEATHER)} {TOOL_OPEN}{{}}{TOOL_CLOSE}"
    rest = f"{json.dumps(WEATHER)} {TOOL_OPEN}{{}}{TOOL_CLOSE}"
    assert both(text, detect_calls=False) == [ThoughtPiece("t"), TextPiece(rest)]


# -- hold-back --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a < b", "x<y", "<<>>", "<a href>", "</p>", "<t", "1 <= 2"])
def test_less_than_is_released_once_no_tag_can_follow(text: str) -> None:
    det = ToolCallDetector()
    released = merge(det.feed(text + "!"))
    assert released == [TextPiece(text + "!")]
    assert det.pending == 0


def test_partial_tag_is_held_then_released_at_the_end() -> None:
    det = ToolCallDetector()
    assert det.feed("see <tool_ca") == [TextPiece("see ")]
    assert det.pending == len("<tool_ca")
    assert det.flush() == [TextPiece("<tool_ca")]


def test_partial_tag_is_released_when_the_next_feed_rules_it_out() -> None:
    det = ToolCallDetector()
    assert det.feed("x " + FUNCTION_MARKER[:-1]) == [TextPiece("x ")]
    assert det.pending == MAX_TAG_HOLD
    assert det.feed("!") == [TextPiece(FUNCTION_MARKER[:-1] + "!")]


def test_detector_is_reusable_after_flush() -> None:
    det = ToolCallDetector()
    det.feed("Hello <thi")
    assert det.flush() == [TextPiece("<thi")]
    assert det.feed(json.dumps(WEATHER)) == [WEATHER_CALL]
    assert det.flush() == []


# -- malformed --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error_part"),
    [
        ('{"name": "f", "arguments": {', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "got an array"),
        ('{"arguments": {}}', '"name"'),
        ('{"name": "", "arguments": {}}', '"name"'),
        ('{"name": "f", "arguments": [1]}', "must be a JSON object, got an array"),
        ('{"name": "f", "parameters": 3}', '"parameters" must be a JSON object'),
        ('{"name": "f", "arguments": "{bad"}', "string that is not valid JSON"),
        ('{"name": "f", "arguments": "[1]"}', "got an array"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),  # recursion limit
        ('{"name": "f", "arguments": {"n": ' + "9" * 5000 + "}}", "not valid JSON"),
    ],
)
def test_malformed_tool_call(body: str, error_part: str) -> None:
    raw = f"{TOOL_OPEN}{body}{TOOL_CLOSE}"
    [event] = whole(f"{raw}")
    assert isinstance(event, MalformedCall)
    assert event.raw == raw
    assert error_part in event.error


def test_malformed_call_keeps_the_text_around_it() -> None:
    raw = f"{TOOL_OPEN}oops{TOOL_CLOSE}"
    events = both(f"a{raw}b")
    assert events[0] == TextPiece("a")
    assert isinstance(events[1], MalformedCall)
    assert events[1].raw == raw
    assert events[2] == TextPiece("b")


def test_unterminated_tool_call_at_flush() -> None:
    raw = f'{TOOL_OPEN}{{"name": "f", "arguments": {{}}}}</tool_c'
    [event] = both(raw)
    assert event == MalformedCall(raw, "unterminated tool call: no </tool_call> after it")


def test_function_marker_without_object_is_text() -> None:
    assert both(f"{FUNCTION_MARKER} hello") == [TextPiece(f"{FUNCTION_MARKER} hello")]
    assert both(f"{FUNCTION_MARKER}  ") == [TextPiece(f"{FUNCTION_MARKER}  ")]
    # The character after the marker is looked at again as text: a tag there still counts.
    assert both(f"{FUNCTION_MARKER}{THINK_OPEN}t") == [
        TextPiece(FUNCTION_MARKER),
        ThoughtPiece("t"),
    ]


def test_function_marker_with_bad_object_is_malformed_call() -> None:
    raw = f'{FUNCTION_MARKER} {{"name": 1, "arguments": {{}}}}'
    [event] = both(raw + "")
    assert isinstance(event, MalformedCall)
    assert event.raw == raw
    assert '"name"' in event.error
    [event] = both(f'{FUNCTION_MARKER} {{"name": "f", "arguments": {{')
    assert isinstance(event, MalformedCall)
    assert "never closes" in event.error


# -- scale ------------------------------------------------------------------------------------


def test_large_input_fed_one_character_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """200 KB one character at a time: a quadratic detector would not finish in reasonable time.

    Also checks that each completed object is decoded once (plus once for string arguments).
    """
    decoded: list[int] = []
    original_loads = json.loads

    def counting_loads(s: str | bytes, **kwargs: Any) -> Any:
        decoded.append(len(s))
        return original_loads(s, **kwargs)

    monkeypatch.setattr(json, "loads", counting_loads)
    big_args = {"blob": 'x<y {} \\" ' * 5_000}
    bare = json.dumps({"name": "a", "arguments": big_args})
    tagged = f"{TOOL_OPEN}{json.dumps({'name': 'b', 'arguments': big_args})}{TOOL_CLOSE}"
    marked = f"{FUNCTION_MARKER} {json.dumps({'name': 'c', 'arguments': big_args})}"
    thought = f"{THINK_OPEN}{'a < b ' * 5_000}{THINK_CLOSE}"
    text = "tail < text " * 5_000
    stream = bare + tagged + marked + thought + text
    assert len(stream) > 200_000
    longest_call = max(map(len, [bare, tagged, marked]))
    det = ToolCallDetector()
    events: list[DetectorEvent] = []
    for ch in stream:
        events += det.feed(ch)
        assert det.pending <= longest_call
    events += det.flush()
    assert merge(events) == [
        CallPiece("a", big_args),
        CallPiece("b", big_args),
        CallPiece("c", big_args),
        ThoughtPiece("a < b " * 5_000),
        TextPiece(text),
    ]
    assert len(decoded) == 3


# -- properties -------------------------------------------------------------------------------

TAGS = [TOOL_OPEN, TOOL_CLOSE, FUNCTION_MARKER, THINK_OPEN, THINK_CLOSE]
names = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=3)
whitespace = st.sampled_from(["", " ", "\n", "\n\n", " \t "])


def call_object(name: str, args: dict[str, Any], key: str, as_string: bool) -> str:
    return json.dumps({"name": name, key: json.dumps(args) if as_string else args})


call_objects = st.builds(
    call_object, names, arguments, st.sampled_from(["arguments", "parameters"]), st.booleans()
)
partial_tags = st.sampled_from(TAGS).flatmap(
    lambda tag: st.integers(1, len(tag)).map(lambda k: tag[:k])
)
fragments = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["<", "<<", "{", "}", '"', "\\", " ", "\n", '{"name": "f", ', '"arguments": {']
    ),
    partial_tags,
    st.builds(lambda ws, obj: f"{TOOL_OPEN}{ws}{obj}{ws}{TOOL_CLOSE}", whitespace, call_objects),
    st.builds(lambda ws, obj: f"{FUNCTION_MARKER}{ws}{obj}", whitespace, call_objects),
    call_objects,
    st.builds(lambda t: f"{THINK_OPEN}{t}{THINK_CLOSE}", st.text(max_size=12)),
)
messy_texts = st.lists(fragments, max_size=10).map("".join)
cut_points = st.lists(st.integers(min_value=0), max_size=12)


@PROPERTY
@given(text=messy_texts, cuts=cut_points, detect_calls=st.booleans(), start=st.booleans())
def test_chunking_does_not_change_the_events(
    text: str, cuts: list[int], detect_calls: bool, start: bool
) -> None:
    options = {"detect_calls": detect_calls, "start_in_thought": start}
    expected = whole(text, **options)
    assert run(split(text, cuts), **options) == expected
    assert by_char(text, **options) == expected


@PROPERTY
@given(text=st.text(), cuts=cut_points)
def test_garbage_never_raises_and_plain_text_is_untouched(text: str, cuts: list[int]) -> None:
    events = run(split(text, cuts))
    if "<" not in text and not text.lstrip().startswith("{"):
        assert events == ([TextPiece(text)] if text else [])


@PROPERTY
@given(text=messy_texts, cuts=cut_points)
def test_visible_text_never_holds_more_than_a_tag_prefix(text: str, cuts: list[int]) -> None:
    # Outside calls (no call opener; "x" first so no bare object can lead) the hold is tiny.
    text = "x" + text
    assume(TOOL_OPEN not in text and FUNCTION_MARKER not in text)
    det = ToolCallDetector()
    for chunk in split(text, cuts):
        det.feed(chunk)
        assert det.pending <= MAX_TAG_HOLD
    # Without call detection, only `</think>` or `<think>` prefixes are ever held.
    det = ToolCallDetector(detect_calls=False)
    for chunk in split(text, cuts):
        det.feed(chunk)
        assert det.pending <= len(THINK_CLOSE) - 1


# A well-formed answer and the events it must give, whatever the chunking.
plain = st.text(st.characters(exclude_characters="<{"), min_size=1, max_size=15)


@st.composite
def answers(draw: st.DrawFn) -> tuple[str, list[DetectorEvent]]:
    parts: list[str] = []
    expected: list[DetectorEvent] = []
    if draw(st.booleans()):  # a leading bare call
        name, args = draw(names), draw(arguments)
        parts.append(
            call_object(
                name, args, draw(st.sampled_from(["arguments", "parameters"])), draw(st.booleans())
            )
        )
        expected.append(CallPiece(name, args))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["text", "think", "tagged", "marker"]))
        if kind == "text":
            chunk = draw(plain)
            parts.append(chunk)
            expected.append(TextPiece(chunk))
        elif kind == "think":
            chunk = draw(plain)
            parts.append(f"{THINK_OPEN}{chunk}{THINK_CLOSE}")
            expected.append(ThoughtPiece(chunk))
        else:
            name, args = draw(names), draw(arguments)
            obj = call_object(name, args, "arguments", draw(st.booleans()))
            ws = draw(whitespace)
            opener = f"{TOOL_OPEN}{ws}" if kind == "tagged" else f"{FUNCTION_MARKER}{ws}"
            parts.append(opener + obj + (f"{ws}{TOOL_CLOSE}" if kind == "tagged" else ""))
            expected.append(CallPiece(name, args))
    return "".join(parts), merge(expected)


@PROPERTY
@given(answer=answers(), cuts=cut_points)
def test_well_formed_answers_give_exactly_their_events(
    answer: tuple[str, list[DetectorEvent]], cuts: list[int]
) -> None:
    text, expected = answer
    assert run(split(text, cuts)) == expected
    assert by_char(text) == expected
