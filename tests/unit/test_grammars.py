"""The grammars of llama.cpp answers: the call schema a forced call follows, and its GBNF."""

from __future__ import annotations

import json
import re

import pytest

from tether.detector import CallPiece, ToolCallDetector
from tether.engines.base import EngineError, ForcedCall, ToolSpec
from tether.engines.grammars import CALL_RULE, call_grammar, call_schema, json_grammar

PLACE = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = ToolSpec(
    "weather",
    "The weather.",
    {
        "type": "object",
        "properties": {"place": {"$ref": "#/$defs/Place"}},
        "required": ["place"],
        "$defs": {"Place": PLACE},
    },
)
ADD = ToolSpec(
    "add",
    "Add.",
    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
)


def test_a_named_call_is_that_tools_name_and_its_parameters() -> None:
    schema = call_schema([WEATHER, ADD], ForcedCall("add"))
    assert schema == {
        "type": "object",
        "properties": {"name": {"const": "add"}, "arguments": ADD.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def test_required_is_any_of_the_tools_with_their_defs_at_the_root() -> None:
    schema = call_schema([WEATHER, ADD], ForcedCall())
    assert [body["properties"]["name"]["const"] for body in schema["anyOf"]] == ["weather", "add"]
    # `#/$defs/Place` points at the call schema's root now: the definition moved there.
    assert schema["$defs"] == {"Place": PLACE}
    assert "$defs" not in schema["anyOf"][0]["properties"]["arguments"]
    assert WEATHER.parameters["$defs"] == {"Place": PLACE}  # the tool's own schema is untouched


def test_a_name_not_offered_and_clashing_defs_are_engine_errors() -> None:
    with pytest.raises(EngineError, match="no tool named 'sub'"):
        call_schema([WEATHER, ADD], ForcedCall("sub"))
    other = ToolSpec("other", "", {**WEATHER.parameters, "$defs": {"Place": {"type": "string"}}})
    with pytest.raises(EngineError, match="'Place' differently"):
        call_schema([WEATHER, other], ForcedCall())
    call_schema([WEATHER, other], ForcedCall("other"))  # one tool named: nothing clashes


def test_the_call_grammar_wraps_the_json_in_the_tool_call_markup() -> None:
    grammar = call_grammar([WEATHER, ADD], ForcedCall("weather"))
    assert grammar.root == CALL_RULE
    [rule] = [line for line in grammar.text.splitlines() if line.startswith(f"{CALL_RULE} ::=")]
    assert rule == f'{CALL_RULE} ::= "<tool_call>" "\\n"? root "</tool_call>"'
    assert re.search(r'^root ::= .*"\\"weather\\""', grammar.text, flags=re.MULTILINE) is None
    assert '"\\"weather\\""' in grammar.text  # the name, as the JSON string it must be


def test_a_tool_rule_named_like_the_root_moves_the_root_aside() -> None:
    clash = ToolSpec(
        "clash",
        "",
        {
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/forced_tool_call"}},
            "$defs": {
                "forced_tool_call": {"type": "object", "properties": {"y": {"type": "integer"}}}
            },
        },
    )
    grammar = call_grammar([clash], ForcedCall())
    assert grammar.root == f"{CALL_RULE}-"
    assert re.search(rf"^{CALL_RULE} ::=", grammar.text, flags=re.MULTILINE)  # the tool's own


def test_what_the_grammar_admits_is_a_call_to_the_detector() -> None:
    # The text the grammar's root spells, for the simplest arguments, read as a model's answer.
    body = {"name": "add", "arguments": {"a": 4}}
    detector = ToolCallDetector(detect_calls=True)
    pieces = detector.feed(f"<tool_call>\n{json.dumps(body)} </tool_call>") + detector.flush()
    assert pieces == [CallPiece("add", {"a": 4})]


def test_a_json_grammar_is_rooted_at_root_and_none_without_a_schema() -> None:
    assert json_grammar(None) is None
    grammar = json_grammar({"type": "object"})
    assert grammar is not None
    assert grammar.root == "root"
    with pytest.raises(EngineError, match="response_format: the JSON schema has no grammar"):
        json_grammar({"type": "string", "pattern": "no anchors"})
