"""Tools from plain functions: schema generation, the @tool mark, validation, the Registry."""

from __future__ import annotations

import types
from collections.abc import Sequence
from enum import Enum
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from tether.tools.base import ToolSpec
from tether.tools.registry import (
    Registry,
    Tool,
    ToolConfigError,
    clean_schema,
    is_marked,
    make_tool,
    parse_docstring,
    tool,
)


def search(query: str, limit: int = 10, exact: bool = False) -> list[str]:
    """Search the notes.

    Matching is case-insensitive
    unless `exact` is set.

    Args:
        query: What to look for.
        limit (int, optional): At most this many
            results.

    Returns:
        The matching note titles.
    """
    return [query] * limit


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Point(BaseModel):
    x: float
    y: float = 0.0


class Tree(BaseModel):
    children: list[Tree] = []


# --- schema generation --------------------------------------------------------------------------


def test_schema_from_hints_defaults_and_google_docstring() -> None:
    t = make_tool(search)
    assert t.spec.name == "search"
    assert (
        t.spec.description
        == "Search the notes. Matching is case-insensitive unless `exact` is set."
    )
    assert t.spec.parameters == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for."},
            "limit": {
                "type": "integer",
                "default": 10,
                "description": "At most this many results.",
            },
            "exact": {"type": "boolean", "default": False},
        },
        "required": ["query"],
        "additionalProperties": False,
    }


def test_optional_literal_enum_annotated_and_nested_model() -> None:
    def paint(
        unit: Literal["c", "f"],
        color: Color = Color.RED,
        note: str | None = None,
        count: Annotated[int, Field(ge=1, description="How many coats.")] = 1,
        at: Point | None = None,
    ) -> str:
        """Paint."""
        return ""

    props = make_tool(paint).spec.parameters["properties"]
    assert props["unit"] == {"enum": ["c", "f"], "type": "string"}
    assert props["color"] == {"enum": ["red", "green"], "type": "string", "default": "red"}
    assert props["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    assert props["count"] == {
        "type": "integer",
        "minimum": 1,
        "default": 1,
        "description": "How many coats.",
    }
    point = {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "number", "default": 0.0}},
        "required": ["x"],
    }
    assert props["at"] == {"anyOf": [point, {"type": "null"}], "default": None}
    assert "$defs" not in make_tool(paint).spec.parameters


def test_recursive_models_keep_their_defs() -> None:
    def plant(tree: Tree) -> str:
        """Plant a tree."""
        return ""

    params = make_tool(plant).spec.parameters
    assert params["properties"]["tree"] == {"$ref": "#/$defs/Tree"}
    assert "Tree" in params["$defs"]


def test_parameter_names_that_clash_with_pydantic_or_schema_words() -> None:
    def odd(json: str, title: str, model_config: int = 0, schema: str = "") -> str:
        """Odd names."""
        return f"{json}{title}{model_config}{schema}"

    t = make_tool(odd)
    assert list(t.spec.parameters["properties"]) == ["json", "title", "model_config", "schema"]
    assert t.spec.parameters["properties"]["title"] == {"type": "string"}
    args, kwargs = t.prepare({"json": "a", "title": "b", "model_config": "3"})
    assert args == ()
    assert kwargs == {"json": "a", "title": "b", "model_config": 3, "schema": ""}


def test_missing_annotations_and_docstring() -> None:
    def bare(x, y=2):  # type: ignore[no-untyped-def]
        return x

    t = make_tool(bare)
    assert t.spec.description == ""
    assert t.spec.parameters["properties"] == {"x": {}, "y": {"default": 2}}
    assert t.spec.parameters["required"] == ["x"]


def test_no_parameters() -> None:
    def ping() -> str:
        """Ping."""
        return "pong"

    assert make_tool(ping).spec.parameters == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }


def test_clean_schema_keeps_a_property_called_title_and_strips_the_rest() -> None:
    schema = {
        "title": "X",
        "type": "object",
        "properties": {"title": {"title": "Title", "type": "string"}},
        "items": {"title": "I"},
    }
    assert clean_schema(schema) == {
        "type": "object",
        "properties": {"title": {"type": "string"}},
        "items": {},
    }


# --- docstrings ---------------------------------------------------------------------------------


def test_numpy_docstring() -> None:
    doc = """Convert a temperature.

    Parameters
    ----------
    value : float
        The temperature
        to convert.
    unit : {"c", "f"}
        Target unit.

    Returns
    -------
    float
    """
    assert parse_docstring(doc) == (
        "Convert a temperature.",
        {"value": "The temperature to convert.", "unit": "Target unit."},
    )


def test_sphinx_docstring() -> None:
    doc = """Send a message.

    :param str to: The recipient,
        by name.
    :param body: The text.
    :returns: Nothing.
    """
    assert parse_docstring(doc) == (
        "Send a message.",
        {"to": "The recipient, by name.", "body": "The text."},
    )


@pytest.mark.parametrize("doc", [None, "", "   "])
def test_empty_docstrings(doc: str | None) -> None:
    assert parse_docstring(doc) == ("", {})


def test_google_docstring_keyword_args_and_stars() -> None:
    doc = """Do it.

    Args:
        *items: Ignored stars.
        flag: On or off.
    Raises:
        ValueError: never a parameter.
    """
    assert parse_docstring(doc) == ("Do it.", {"items": "Ignored stars.", "flag": "On or off."})


# --- the decorator and make_tool ----------------------------------------------------------------


def test_decorator_marks_without_registering() -> None:
    @tool
    def plain() -> str:
        """Plain."""
        return ""

    @tool(name="renamed", description="Custom.", timeout_s=2.5)
    def original() -> str:
        """Docstring loses to the explicit description."""
        return ""

    assert is_marked(plain)
    assert is_marked(original)
    assert plain() == ""  # the function itself is unchanged
    t = make_tool(original)
    assert (t.name, t.spec.description, t.timeout_s) == ("renamed", "Custom.", 2.5)
    assert make_tool(original, name="again").name == "again"


@pytest.mark.parametrize("name", ["has space", "dotted.name", "x" * 65, "ünï"])
def test_invalid_names_are_refused(name: str) -> None:
    def f() -> None:
        pass

    with pytest.raises(ToolConfigError, match="invalid tool name"):
        make_tool(f, name=name)
    with pytest.raises(ToolConfigError):
        tool(name=name)


def test_varargs_are_refused() -> None:
    def many(*args: int) -> int:
        return sum(args)

    def named(**kwargs: int) -> int:
        return 0

    for f in (many, named):
        with pytest.raises(ToolConfigError, match=r"\*args and \*\*kwargs"):
            make_tool(f)


def test_unresolvable_annotation_is_a_config_error() -> None:
    def broken(x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(ToolConfigError, match="broken"):
        make_tool(broken)


def test_async_detection() -> None:
    async def coro() -> str:
        return ""

    class AsyncCallable:
        __name__ = "async_callable"

        async def __call__(self) -> str:
            return ""

    class SyncCallable:
        __name__ = "sync_callable"

        def __call__(self) -> str:
            return ""

    assert make_tool(coro).is_async
    assert make_tool(AsyncCallable()).is_async
    assert not make_tool(SyncCallable()).is_async
    assert not make_tool(search).is_async


# --- argument validation ------------------------------------------------------------------------


def test_prepare_coerces_and_fills_defaults() -> None:
    t = make_tool(search)
    assert t.prepare({"query": "x", "limit": "3"}) == (
        (),
        {"query": "x", "limit": 3, "exact": False},
    )


def test_prepare_builds_enums_and_models() -> None:
    def paint(color: Color, at: Point) -> str:
        return ""

    _, kwargs = make_tool(paint).prepare({"color": "green", "at": {"x": 1}})
    assert kwargs == {"color": Color.GREEN, "at": Point(x=1.0)}


def test_prepare_positional_only() -> None:
    def div(a: int, b: int, /, *, exact: bool = True) -> float:
        return a / b

    t = make_tool(div)
    args, kwargs = t.prepare({"a": 6, "b": 3})
    assert (args, kwargs) == ((6, 3), {"exact": True})
    assert div(*args, **kwargs) == 2


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (
            {},
            ("query",),
        ),
        ({"query": "x", "limit": "many"}, ("limit",)),
        ({"query": "x", "surprise": 1}, ("surprise",)),
        ({"query": ["not", "a", "string"]}, ("query",)),
    ],
)
def test_prepare_rejects(arguments: dict[str, Any], problem: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        make_tool(search).prepare(arguments)
    assert tuple(info.value.errors()[0]["loc"]) == problem


def test_internal_field_names_are_not_accepted_as_arguments() -> None:
    with pytest.raises(ValidationError):
        make_tool(search).prepare({"p0": "x"})


def test_raw_tool_receives_the_arguments_dict() -> None:
    async def forward(arguments: dict[str, Any]) -> str:
        return ""

    raw = Tool(spec=ToolSpec("raw", "", {"type": "object"}), fn=forward, is_async=True)
    assert raw.prepare({"anything": [1]}) == (({"anything": [1]},), {})


# --- the registry -------------------------------------------------------------------------------


class FakeSource:
    def __init__(self, tools: Sequence[Tool] = ()) -> None:
        self.current = list(tools)

    def tools(self) -> Sequence[Tool]:
        return self.current


def _named(name: str, description: str = "") -> Tool:
    return Tool(spec=ToolSpec(name, description, {"type": "object"}), fn=lambda _: None)


def test_registry_add_get_specs_and_duplicates() -> None:
    registry = Registry()
    added = registry.add(search)
    assert registry.get("search") is added
    assert registry.get("nope") is None
    assert registry.specs() == [added.spec]
    with pytest.raises(ToolConfigError, match="duplicate tool name 'search'"):
        registry.add(search)
    registry.add(search, name="search2")
    assert registry.names() == ["search", "search2"]


def test_registry_sources_are_live_and_fixed_tools_win() -> None:
    registry = Registry()
    registry.add(_named("shared", "fixed"))
    source = FakeSource([_named("shared", "from source"), _named("remote")])
    registry.add_source(source)
    assert registry.names() == ["shared", "remote"]
    shared = registry.get("shared")
    assert shared is not None
    assert shared.spec.description == "fixed"
    source.current = []  # e.g. the MCP server died
    assert registry.names() == ["shared"]
    assert registry.get("remote") is None


def test_add_module_picks_marked_functions_only() -> None:
    module = types.ModuleType("plugin")

    @tool
    def one() -> str:
        return "1"

    @tool(name="two")
    def second() -> str:
        return "2"

    def unmarked() -> str:
        return "x"

    module.one = one  # type: ignore[attr-defined]
    module.two = second  # type: ignore[attr-defined]
    module.alias = one  # type: ignore[attr-defined]  # the same function twice: added once
    module.unmarked = unmarked  # type: ignore[attr-defined]
    registry = Registry()
    assert [t.name for t in registry.add_module(module)] == ["one", "two"]
