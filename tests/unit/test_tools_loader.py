"""build_registry: built-in names, "builtin", and plugin import paths from `tools.enabled`."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tether.tools.loader import build_registry
from tether.tools.registry import ToolConfigError

_counter = itertools.count()

PLUGIN = '''
from tether.tools.registry import tool


@tool
def shout(text: str) -> str:
    """Shout the text."""
    return text.upper()


@tool(name="whisper")
async def quiet(text: str) -> str:
    """Whisper the text."""
    return text.lower()


def plain(n: int) -> int:
    """Not marked, but loadable by path."""
    return n * 2


NOT_A_FUNCTION = 3
'''


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a module under a fresh name on sys.path; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(source: str) -> str:
        name = f"tether_test_plugin_{next(_counter)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


def test_builtin_without_files_root() -> None:
    assert build_registry(["builtin"]).names() == ["current_time", "calculator"]


def test_builtin_with_files_root(tmp_path: Path) -> None:
    registry = build_registry(["builtin"], files_root=tmp_path)
    assert registry.names() == ["current_time", "calculator", "list_files", "read_file"]


def test_single_builtins_and_nothing() -> None:
    assert build_registry(["calculator"]).names() == ["calculator"]
    assert build_registry([]).names() == []


def test_builtin_plus_a_named_builtin_is_not_a_duplicate() -> None:
    assert build_registry(["calculator", "builtin"]).names() == ["calculator", "current_time"]


def test_file_tool_without_root_is_a_config_error() -> None:
    with pytest.raises(ToolConfigError, match=r"'read_file' needs tools\.files_root"):
        build_registry(["read_file"])


def test_duplicates_are_config_errors() -> None:
    with pytest.raises(ToolConfigError, match="duplicate tool name 'calculator'"):
        build_registry(["calculator", "calculator"])


def test_module_path_loads_marked_tools(make_module: Callable[[str], str]) -> None:
    name = make_module(PLUGIN)
    registry = build_registry([name])
    assert registry.names() == ["shout", "whisper"]
    whisper = registry.get("whisper")
    assert whisper is not None
    assert whisper.is_async


def test_function_path_loads_even_unmarked_functions(make_module: Callable[[str], str]) -> None:
    name = make_module(PLUGIN)
    registry = build_registry([f"{name}:plain", f"{name}:quiet", "calculator"])
    assert registry.names() == ["plain", "whisper", "calculator"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{mod}:missing", "has no 'missing'"),
        ("{mod}:NOT_A_FUNCTION", "is not a function"),
        (
            "no_such_module_for_tether",
            "cannot import 'no_such_module_for_tether'.*built-in tools are",
        ),
        ("no_such_pkg.sub:fn", "cannot import 'no_such_pkg.sub'"),
    ],
)
def test_bad_entries(make_module: Callable[[str], str], entry: str, message: str) -> None:
    name = make_module(PLUGIN)
    with pytest.raises(ToolConfigError, match=message):
        build_registry([entry.format(mod=name)])


def test_module_without_tools(make_module: Callable[[str], str]) -> None:
    name = make_module("X = 1\n")
    with pytest.raises(ToolConfigError, match="has no @tool functions"):
        build_registry([name])


def test_module_that_fails_to_import(make_module: Callable[[str], str]) -> None:
    name = make_module("raise RuntimeError('broken plugin')\n")
    with pytest.raises(ToolConfigError, match="RuntimeError: broken plugin"):
        build_registry([name])
