"""Sans-I/O streaming detector: splits model output into visible text, thoughts and tool calls.

`feed(text)` takes the next piece of model output and returns the events it completes;
`flush()` ends the stream and returns whatever was held back. Neither ever raises.

`ToolCallDetector` recognises, across any chunk boundary:

* `<tool_call>{json}</tool_call>` (Hermes, Qwen, SmolLM2); the body ends at the first
  `</tool_call>`.
* `<<function_call>> {json}`: the object follows the marker (whitespace allowed) and ends where
  its braces balance (braces inside JSON strings do not count).
* a bare `{"name": ..., "arguments": ...}` object (Llama 3) that is the first non-whitespace
  content of the answer (thoughts, whitespace and earlier calls do not count as content; any
  other visible text does). `"parameters"` is a synonym of `"arguments"`.
* `<think>...</think>`: its content is `ThoughtPiece`s, streamed as it arrives; a think block
  still open at `flush()` is all thought. Tags are not recognised inside a think block.

A call object needs a non-empty string `"name"`; `"arguments"` must be an object, or a string
holding a JSON object (OpenAI style), which is decoded. Text is released as soon as it cannot be
the start of a tag, so at most `MAX_TAG_HOLD` characters of text wait for the next feed; the
markup of well-formed calls and think blocks never appears in a `TextPiece`. Whitespace is text
and is never dropped, even before a call.

Malformed input, in order of how sure we are that the model meant a call:

* `<tool_call>` body that is not a valid call (bad JSON, not an object, no usable `"name"`,
  `"arguments"` not an object) -> `MalformedCall(raw, error)`; a missing or null
  `"arguments"` means `{}`. An unterminated `<tool_call>` at `flush()` -> `MalformedCall`.
* `<<function_call>>` followed by a JSON object that is not a valid call, or by an object still
  open at `flush()` -> `MalformedCall`; followed by anything but `{` -> text, marker included.
* a leading `{` object that is not a call (or is still open at `flush()`) -> text, verbatim.
  Such an object is given up as soon as a top-level key cannot be `name`, `arguments`,
  `parameters` or `type`, so a JSON answer like `{"result": ...}` streams almost at once.
  Here `"arguments"`/`"parameters"` must be present: `{"name": "Bob"}` is data, not a call.

`MalformedCall.raw` is the markup exactly as the model wrote it (tags included); `error` is a
sentence meant to be sent back to the model as the tool error.

Cost is linear in the input: each feed scans only the new text plus at most `MAX_TAG_HOLD`
held characters, JSON brace/string state is tracked incrementally, and each completed object
is decoded once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Protocol

from tether.tool_markup import TOOL_CLOSE, TOOL_OPEN


@dataclass(frozen=True, slots=True)
class TextPiece:
    """Visible answer text, released as soon as it cannot be the start of markup."""

    text: str


@dataclass(frozen=True, slots=True)
class ThoughtPiece:
    """Text inside `<think>...</think>`: hidden unless the client asked for thoughts."""

    text: str


@dataclass(frozen=True, slots=True)
class CallPiece:
    """A complete, well-formed tool call."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MalformedCall:
    """Tool-call markup whose body is not a valid call; `error` tells the model why."""

    raw: str
    error: str


DetectorEvent = TextPiece | ThoughtPiece | CallPiece | MalformedCall


class StreamDetector(Protocol):
    def feed(self, text: str) -> list[DetectorEvent]: ...

    def flush(self) -> list[DetectorEvent]: ...


class PassthroughDetector:
    """Every piece of output is visible text (used when a turn has no tools and no markup)."""

    def feed(self, text: str) -> list[DetectorEvent]:
        return [TextPiece(text)] if text else []

    def flush(self) -> list[DetectorEvent]:
        return []


FUNCTION_MARKER = "<<function_call>>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# The most text ever held back outside a call: a proper prefix of the longest tag.
MAX_TAG_HOLD = len(FUNCTION_MARKER) - 1

# Top-level keys a bare leading call may have; any other key means "this is data, release it".
_BARE_KEYS = ("name", "arguments", "parameters", "type")
_WS = re.compile(r"\s*")
_IN_STRING_STOP = re.compile(r'["\\]')
_IN_OBJECT_STOP = re.compile(r'[{}",]')


class _State(Enum):
    TEXT = auto()
    THINK = auto()
    TAG_CALL = auto()  # inside <tool_call>, waiting for </tool_call>
    MARKER_CALL = auto()  # after <<function_call>>: whitespace, then an object
    BARE_CALL = auto()  # a leading `{` that may be a Llama-style call


class _Scan(Enum):
    OPEN = auto()  # the object needs more input
    CLOSED = auto()  # its braces balanced
    REJECTED = auto()  # a bare object that cannot be a call


def _find_tag(data: str, start: int, tags: tuple[str, ...]) -> tuple[int, str | None]:
    """First `<` at or after `start` that opens one of `tags` (returned) or may still do so.

    Returns `(i, tag)` for a full match, `(i, None)` when `data[i:]` is a proper prefix of a
    tag (hold it back), and `(len(data), None)` when nothing from `start` on can be a tag.
    """
    n = len(data)
    longest = max(map(len, tags))
    i = data.find("<", start)
    while i >= 0:
        for tag in tags:
            if data.startswith(tag, i):
                return i, tag
        if n - i < longest:
            tail = data[i:]
            if any(tag.startswith(tail) for tag in tags):
                return i, None
        i = data.find("<", i + 1)
    return n, None


def _skip_ws(data: str, i: int) -> int:
    match = _WS.match(data, i)  # `\s*` always matches; the check is for the type checker
    return match.end() if match else i


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _parse_call(body: str, *, bare: bool) -> CallPiece | str:
    """Decode a call object; on failure return why, worded for the model."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError
        return f"tool call is not valid JSON: {exc}"
    if not isinstance(obj, dict):
        return (
            'a tool call must be a JSON object {"name": ..., "arguments": {...}}, '
            f"got {_json_type(obj)}"
        )
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return 'tool call has no "name" string'
    key = "arguments" if "arguments" in obj or "parameters" not in obj else "parameters"
    args = obj.get(key)
    if args is None and not bare:
        args = {}
    if isinstance(args, str):
        # OpenAI style: the arguments object serialized into a string.
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError) as exc:
            return f'tool call "{key}" is a string that is not valid JSON: {exc}'
    if not isinstance(args, dict):
        return f'tool call "{key}" must be a JSON object, got {_json_type(args)}'
    return CallPiece(name, args)


class _Events:
    """Collects one feed's events, merging adjacent text (or thought) pieces."""

    def __init__(self) -> None:
        self._events: list[DetectorEvent] = []
        self._kind: type[TextPiece] | type[ThoughtPiece] = TextPiece
        self._parts: list[str] = []  # joined once, so many tiny pieces stay linear

    def piece(self, kind: type[TextPiece] | type[ThoughtPiece], text: str) -> None:
        if not text:
            return
        if kind is not self._kind:
            self._close()
            self._kind = kind
        self._parts.append(text)

    def add(self, event: DetectorEvent) -> None:
        self._close()
        self._events.append(event)

    def take(self) -> list[DetectorEvent]:
        self._close()
        events, self._events = self._events, []
        return events

    def _close(self) -> None:
        if self._parts:
            self._events.append(self._kind("".join(self._parts)))
            self._parts = []


class ToolCallDetector:
    """Streaming detector for tool calls and think blocks (see the module docstring).

    `detect_calls=False` recognises only think blocks (a turn without tools): call markup is
    then plain text. `start_in_thought=True` is for chat templates that end the prompt with
    `<think>`: output is thought until the model writes `</think>`.
    """

    def __init__(self, *, detect_calls: bool = True, start_in_thought: bool = False) -> None:
        self._detect_calls = detect_calls
        self._start_in_thought = start_in_thought
        self._openers = (TOOL_OPEN, FUNCTION_MARKER, THINK_OPEN) if detect_calls else (THINK_OPEN,)
        self._out = _Events()
        self._reset()

    def _reset(self) -> None:
        self._state = _State.THINK if self._start_in_thought else _State.TEXT
        self._carry = ""  # unconsumed input that may be the start of a tag (<= MAX_TAG_HOLD)
        self._held: list[str] = []  # markup of the call being read, tags included
        self._held_len = 0
        self._armed = self._detect_calls  # no visible text yet: a bare `{` call may come
        # Incremental JSON scanner for MARKER_CALL and BARE_CALL.
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._expect_key = False  # BARE_CALL: the next top-level token must be a key
        self._key: str | None = None  # BARE_CALL: the top-level key being read

    @property
    def pending(self) -> int:
        """How many characters fed so far have not been released in any event yet."""
        return len(self._carry) + self._held_len

    def feed(self, text: str) -> list[DetectorEvent]:
        if self._state is _State.TEXT and not self._armed and not self._carry and "<" not in text:
            # What nearly every token of an answer is: plain text that cannot start a tag.
            return [TextPiece(text)] if text else []
        data = self._carry + text
        self._carry = ""
        i = 0
        while i < len(data):
            i = self._step(data, i)
        return self._out.take()

    def flush(self) -> list[DetectorEvent]:
        carry, self._carry = self._carry, ""
        state = self._state
        if state is _State.TEXT:
            self._text(carry)
        elif state is _State.THINK:
            self._out.piece(ThoughtPiece, carry)
        elif state is _State.TAG_CALL:
            self._hold(carry)
            raw = self._take_held()
            self._out.add(MalformedCall(raw, f"unterminated tool call: no {TOOL_CLOSE} after it"))
        elif state is _State.MARKER_CALL and self._depth > 0:
            raw = self._take_held()
            error = f"unterminated tool call: the JSON object after {FUNCTION_MARKER} never closes"
            self._out.add(MalformedCall(raw, error))
        else:  # a marker without an object yet, or a bare object still open: text after all
            self._text(self._take_held())
        events = self._out.take()
        self._reset()
        return events

    # -- one state step: consume from data[i:], return where the next step starts ------------

    def _step(self, data: str, i: int) -> int:
        state = self._state
        if state is _State.TEXT:
            return self._step_text(data, i)
        if state is _State.THINK:
            return self._step_think(data, i)
        if state is _State.TAG_CALL:
            return self._step_tag_call(data, i)
        if state is _State.MARKER_CALL:
            return self._step_marker_call(data, i)
        return self._step_bare_call(data, i)

    def _step_text(self, data: str, i: int) -> int:
        if self._armed:
            ws_end = _skip_ws(data, i)
            self._text(data[i:ws_end])
            i = ws_end
            if i < len(data) and data[i] == "{":
                self._open_object(_State.BARE_CALL)
                return i + 1
        tag_at, tag = _find_tag(data, i, self._openers)
        self._text(data[i:tag_at])
        if tag is None:
            self._carry = data[tag_at:]
            return len(data)
        if tag == THINK_OPEN:
            self._state = _State.THINK
        elif tag == TOOL_OPEN:
            self._state = _State.TAG_CALL
            self._hold(tag)
        else:
            self._state = _State.MARKER_CALL
            self._hold(tag)
            self._depth = 0  # the object has not started yet
        return tag_at + len(tag)

    def _step_think(self, data: str, i: int) -> int:
        tag_at, tag = _find_tag(data, i, (THINK_CLOSE,))
        self._out.piece(ThoughtPiece, data[i:tag_at])
        if tag is None:
            self._carry = data[tag_at:]
            return len(data)
        self._state = _State.TEXT
        return tag_at + len(tag)

    def _step_tag_call(self, data: str, i: int) -> int:
        tag_at, tag = _find_tag(data, i, (TOOL_CLOSE,))
        self._hold(data[i:tag_at])
        if tag is None:
            self._carry = data[tag_at:]
            return len(data)
        raw = self._take_held() + tag
        self._state = _State.TEXT
        self._emit_call(raw, raw[len(TOOL_OPEN) : -len(TOOL_CLOSE)])
        return tag_at + len(tag)

    def _step_marker_call(self, data: str, i: int) -> int:
        if self._depth == 0:  # between the marker and the object
            ws_end = _skip_ws(data, i)
            self._hold(data[i:ws_end])
            if ws_end == len(data):
                return ws_end
            if data[ws_end] != "{":  # no object: the marker was just text
                self._state = _State.TEXT
                self._text(self._take_held())
                return ws_end
            self._open_object(_State.MARKER_CALL)
            return ws_end + 1
        end, scan = self._scan_json(data, i)
        self._hold(data[i:end])
        if scan is _Scan.CLOSED:
            raw = self._take_held()
            self._state = _State.TEXT
            self._emit_call(raw, raw[len(FUNCTION_MARKER) :])
        return end

    def _step_bare_call(self, data: str, i: int) -> int:
        end, scan = self._scan_json(data, i)
        self._hold(data[i:end])
        if scan is _Scan.OPEN:
            return end
        self._state = _State.TEXT
        raw = self._take_held()
        call = _parse_call(raw, bare=True) if scan is _Scan.CLOSED else None
        if isinstance(call, CallPiece):
            self._out.add(call)
        else:
            self._text(raw)  # data, not a call; scanning resumes as text at `end`
        return end

    # -- helpers --------------------------------------------------------------------------

    def _text(self, text: str) -> None:
        if self._armed and text and not text.isspace():
            self._armed = False
        self._out.piece(TextPiece, text)

    def _hold(self, text: str) -> None:
        if text:
            self._held.append(text)
            self._held_len += len(text)

    def _take_held(self) -> str:
        raw = "".join(self._held)
        self._held = []
        self._held_len = 0
        return raw

    def _emit_call(self, raw: str, body: str) -> None:
        call = _parse_call(body, bare=False)
        self._out.add(call if isinstance(call, CallPiece) else MalformedCall(raw, call))

    def _open_object(self, state: _State) -> None:
        """Start scanning a JSON object whose `{` has just been read."""
        self._state = state
        self._hold("{")
        self._depth = 1
        self._in_string = self._escaped = False
        self._expect_key = state is _State.BARE_CALL
        self._key = None

    def _scan_json(self, data: str, i: int) -> tuple[int, _Scan]:
        """Advance the brace/string scanner over data[i:]; return where it stopped and why.

        On CLOSED the closing brace is consumed; on REJECTED data[end] is the first character
        that proves a bare object is not a call. Long strings and nested values are skipped
        with a regex search, so the cost is linear with a small constant.
        """
        n = len(data)
        bare = self._state is _State.BARE_CALL
        while i < n:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                    i += 1
                elif self._key is not None:  # a top-level key of a bare object: short
                    c = data[i]
                    if c == '"':
                        if self._key not in _BARE_KEYS:
                            return i, _Scan.REJECTED
                        self._key = None
                        self._in_string = False
                    else:
                        key = self._key + c
                        if not any(k.startswith(key) for k in _BARE_KEYS):
                            return i, _Scan.REJECTED
                        self._key = key
                    i += 1
                else:
                    match = _IN_STRING_STOP.search(data, i)
                    if match is None:
                        return n, _Scan.OPEN
                    i = match.end()
                    if match.group() == "\\":
                        self._escaped = True
                    else:
                        self._in_string = False
            elif bare and self._expect_key and self._depth == 1:
                i = _skip_ws(data, i)
                if i == n:
                    break
                if data[i] != '"':
                    return i, _Scan.REJECTED
                self._expect_key = False
                self._in_string = True
                self._key = ""
                i += 1
            else:
                match = _IN_OBJECT_STOP.search(data, i)
                if match is None:
                    return n, _Scan.OPEN
                i = match.end()
                c = match.group()
                if c == '"':
                    self._in_string = True
                elif c == "{":
                    self._depth += 1
                elif c == "}":
                    self._depth -= 1
                    if self._depth == 0:
                        return i, _Scan.CLOSED
                elif self._depth == 1:  # a top-level comma: a key comes next
                    self._expect_key = bare
        return n, _Scan.OPEN
