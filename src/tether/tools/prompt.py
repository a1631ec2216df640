"""Telling the model about the tools: a short system-prompt fragment.

The fragment is deliberately terse (one line per tool, one example of the call format) because
the default model is SmolLM2-135M: a long tool preamble makes tiny models call tools for
everything or stop answering plain questions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from tether.tool_markup import TOOL_CLOSE, TOOL_OPEN
from tether.tools.base import ToolSpec

MAX_DESCRIPTION_CHARS: Final = 120

_TYPE_NAMES: Final = {
    "string": "string",
    "integer": "int",
    "number": "number",
    "boolean": "bool",
    "object": "object",
    "array": "array",
    "null": "null",
}


def render_tools_prompt(specs: Sequence[ToolSpec]) -> str:
    """The system-prompt fragment listing `specs` and the `<tool_call>` format ("" if none)."""
    if not specs:
        return ""
    lines = ["You can call these tools:"]
    lines += [f"- {signature(spec)}" + _short(spec.description) for spec in specs]
    lines.append(
        "To call a tool, reply with only "
        f'{TOOL_OPEN}{{"name": "tool_name", "arguments": {{"param": "value"}}}}{TOOL_CLOSE} '
        "and wait for its result. If no tool is needed, just answer."
    )
    return "\n".join(lines)


def signature(spec: ToolSpec) -> str:
    """`name(param: type, optional?: type)` from the spec's JSON schema."""
    schema = spec.parameters
    props = schema.get("properties")
    required = set(schema.get("required", ()))
    params: list[str] = []
    if isinstance(props, dict):
        for pname, pschema in props.items():
            mark = "" if pname in required else "?"
            params.append(f"{pname}{mark}: {type_label(pschema, optional=bool(mark))}")
    return f"{spec.name}({', '.join(params)})"


def type_label(schema: Any, *, optional: bool = False) -> str:
    """A compact type for a JSON schema: `string`, `int[]`, `"c"|"f"`, `int|null`..."""
    if not isinstance(schema, dict):
        return "any"
    if "enum" in schema and isinstance(schema["enum"], list):
        return "|".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            labels = [type_label(s) for s in schema[key]]
            if optional:  # "?" already says it may be left out
                labels = [label for label in labels if label != "null"] or ["null"]
            return "|".join(dict.fromkeys(labels))
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if not (optional and k == "null")]
        return "|".join(_TYPE_NAMES.get(str(k), str(k)) for k in kinds) or "any"
    if kind == "array":
        return f"{type_label(schema.get('items'))}[]" if "items" in schema else "array"
    if isinstance(kind, str):
        return _TYPE_NAMES.get(kind, kind)
    if "$ref" in schema or "properties" in schema:
        return "object"
    return "any"


def _short(description: str) -> str:
    """The first line of the description, capped, as `: text` (or "")."""
    first = description.strip().split("\n", 1)[0].strip()
    if len(first) > MAX_DESCRIPTION_CHARS:
        first = first[: MAX_DESCRIPTION_CHARS - 1].rstrip() + "…"
    return f": {first}" if first else ""
