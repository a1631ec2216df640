"""GBNF grammars that hold a llama.cpp answer to a shape: a JSON schema, or a forced tool call.

Sans-I/O: JSON schemas in, GBNF text out (llama-cpp-python's `json_schema_to_gbnf`, cached by
the schema's JSON). Two shapes:

- `json_grammar(schema)`: the answer is one JSON value valid against `schema`
  (`response_format`);
- `call_grammar(tools, forced)`: the answer is one call in the `<tool_call>` markup
  (`tool_markup.py`), `<tool_call>{"name": ..., "arguments": ...}</tool_call>`, whose `name` is
  the forced tool's (or any offered tool's) and whose `arguments` are valid against that tool's
  parameters schema. The detector reads it as the model's call, as it reads an unforced one.
  A tool's `$defs` (pydantic's nested models) are lifted to the call schema's root, where their
  `#/$defs/...` references point.

The grammar holds types, `required`, `enum`/`const`, `additionalProperties`, string lengths,
`pattern` and `format`, array lengths and `$ref`s; llama.cpp's converter has no rule for
numeric bounds (`minimum`, `maximum`, `multipleOf`), so those are not held.

Once a grammar is complete llama.cpp's grammar sampler allows only an end-of-generation token,
so the answer ends there. Failures raise `EngineError`: a schema with no grammar, a forced name
that is not among the tools, two tools defining one `$defs` name differently.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from tether.engines.base import EngineError, ForcedCall, ToolSpec
from tether.tool_markup import TOOL_CLOSE, TOOL_OPEN

CALL_RULE = "forced-tool-call"  # the root of a call grammar, beside the JSON's own rules


@dataclass(frozen=True, slots=True)
class Grammar:
    """GBNF text and the name of its root rule."""

    text: str
    root: str = "root"


@functools.lru_cache(maxsize=64)
def _gbnf_of(schema_json: str, what: str) -> str:
    try:
        return str(json_schema_to_gbnf(schema_json))
    # The converter also asserts (a `pattern` without ^...$): an AssertionError is a bad schema.
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise EngineError(f"{what}: the JSON schema has no grammar: {error}") from error


def json_grammar(schema: dict[str, Any] | None) -> Grammar | None:
    """The grammar that makes the answer JSON valid against `schema` (None: no grammar)."""
    if schema is None:
        return None
    return Grammar(_gbnf_of(json.dumps(schema, sort_keys=True), "response_format"))


def call_schema(tools: Sequence[ToolSpec], forced: ForcedCall) -> dict[str, Any]:
    """The JSON schema of the call's body: `{"name": <a tool's>, "arguments": <its params>}`."""
    chosen = [tool for tool in tools if forced.name in (None, tool.name)]
    if not chosen:
        raise EngineError(f"tool_choice: no tool named {forced.name!r} was offered")
    defs: dict[str, Any] = {}
    bodies: list[dict[str, Any]] = []
    for tool in chosen:
        parameters = dict(tool.parameters)
        for name, definition in parameters.pop("$defs", {}).items():
            if defs.setdefault(name, definition) != definition:
                raise EngineError(
                    f"tool_choice: two tools define $defs {name!r} differently; "
                    "name one tool to call"
                )
        bodies.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema = bodies[0] if len(bodies) == 1 else {"anyOf": bodies}
    return {**schema, "$defs": defs} if defs else schema


def call_grammar(tools: Sequence[ToolSpec], forced: ForcedCall) -> Grammar:
    """The grammar that makes the answer one `<tool_call>` of the forced tool (or any tool)."""
    schema = json.dumps(call_schema(tools, forced), sort_keys=True)
    body = _gbnf_of(schema, "tool_choice")
    root = CALL_RULE
    while re.search(rf"^{re.escape(root)} ::=", body, flags=re.MULTILINE):  # a tool's own rule
        root += "-"
    opening, closing = (json.dumps(markup) for markup in (TOOL_OPEN, TOOL_CLOSE))
    return Grammar(f'{body}\n{root} ::= {opening} "\\n"? root {closing}', root)
