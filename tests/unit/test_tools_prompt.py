"""The system-prompt fragment and the OpenAI `tools` conversion."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from tether.chat import ToolPolicy
from tether.engines.base import ToolCall
from tether.tools.base import ToolResult, ToolSpec
from tether.tools.loader import build_registry
from tether.tools.prompt import (
    render_tools_prompt,
    signature,
    type_label,
)
from tether.tools.registry import make_tool


def test_no_tools_no_fragment() -> None:
    assert render_tools_prompt([]) == ""


def test_builtin_fragment_is_short_and_complete(tmp_path: Any) -> None:
    specs = build_registry(["builtin"], files_root=tmp_path).specs()
    text = render_tools_prompt(specs)
    assert text.splitlines() == [
        "You can call these tools:",
        "- current_time(timezone?: string): Get the current date and time.",
        "- calculator(expression: string): Evaluate an arithmetic expression.",
        '- list_files(path?: string): List a folder of the shared files (folders end with "/").',
        "- read_file(path: string): Read a text file of the shared files.",
        'To call a tool, reply with only <tool_call>{"name": "tool_name", "arguments": '
        '{"param": "value"}}</tool_call> and wait for its result. '
        "If no tool is needed, just answer.",
    ]
    assert len(text) < 600  # the tiny default model must still answer plain questions


def test_example_call_in_the_fragment_is_valid_json() -> None:
    text = render_tools_prompt([ToolSpec("x", "", {"type": "object"})])
    body = text.split("<tool_call>")[1].split("</tool_call>")[0]
    assert json.loads(body) == {"name": "tool_name", "arguments": {"param": "value"}}


def test_long_descriptions_are_cut_to_one_short_line() -> None:
    spec = ToolSpec("t", "First line " + "x" * 300 + "\nsecond line", {"type": "object"})
    line = render_tools_prompt([spec]).splitlines()[1]
    assert line.startswith("- t(): First line x")
    assert line.endswith("…")
    assert len(line) < 140
    assert render_tools_prompt([ToolSpec("t", "", {})]).splitlines()[1] == "- t()"


def test_signature_from_a_function() -> None:
    def convert(
        value: float,
        unit: Literal["c", "f"] = "c",
        tags: list[str] | None = None,
        precise: bool = False,
        count: int | None = 1,
    ) -> str:
        return ""

    assert signature(make_tool(convert).spec) == (
        'convert(value: number, unit?: "c"|"f", tags?: string[], precise?: bool, count?: int)'
    )


@pytest.mark.parametrize(
    ("schema", "optional", "label"),
    [
        ({"type": "string"}, False, "string"),
        ({"type": "integer"}, False, "int"),
        ({"type": ["string", "null"]}, False, "string|null"),
        ({"type": ["string", "null"]}, True, "string"),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, False, "int|null"),
        ({"anyOf": [{"type": "null"}]}, True, "null"),
        ({"type": "array", "items": {"type": "number"}}, False, "number[]"),
        ({"type": "array"}, False, "array"),
        ({"enum": [1, 2]}, False, "1|2"),
        ({"const": "x"}, False, '"x"'),
        ({"$ref": "#/$defs/Tree"}, False, "object"),
        ({"properties": {"a": {}}}, False, "object"),
        ({}, False, "any"),
        ("nonsense", False, "any"),
    ],
)
def test_type_labels(schema: Any, optional: bool, label: str) -> None:
    assert type_label(schema, optional=optional) == label


class FakeRunner:
    def specs(self) -> list[ToolSpec]:
        return [ToolSpec("ping", "Ping.", {"type": "object", "properties": {}})]

    async def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        return []


def test_tools_prompt_reads_the_runner() -> None:
    assert ToolPolicy(runner=FakeRunner()).fragment(True).splitlines()[1] == "- ping(): Ping."


class ChangingRunner(FakeRunner):
    """A runner whose tools change (an MCP server's list): the fragment follows them."""

    def __init__(self) -> None:
        self.names = ["ping"]

    def specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(name, "Ping.", {"type": "object", "properties": {}}) for name in self.names
        ]


def test_the_fragment_is_rendered_again_when_the_tools_change() -> None:
    runner = ChangingRunner()
    rendered: list[int] = []

    def prompt(specs: Any) -> str:
        rendered.append(len(specs))
        return render_tools_prompt(specs)

    policy = ToolPolicy(runner=runner, prompt=prompt)
    first = policy.fragment(True)
    assert policy.fragment(True) == first
    assert rendered == [1]
    runner.names.append("pong")
    assert "- pong()" in policy.fragment(True)
    assert rendered == [1, 2]
