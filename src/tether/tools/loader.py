"""Turning the `tools.enabled` config list into a Registry.

Each entry is one of:

- `"builtin"`: every built-in tool (the file tools only when `tools.files_root` is set);
- a built-in name: `current_time`, `calculator`, `list_files`, `read_file`;
- `"package.module:function"`: that function (marked with `@tool` or not);
- `"package.module"`: every `@tool`-marked function in that module.

Bad entries raise ToolConfigError at start-up: a typo in the config should stop the server,
not silently remove a tool.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from tether.tools.builtin import BUILTIN_NAMES, FILE_TOOL_NAMES, builtin_tools
from tether.tools.builtin.files import DEFAULT_MAX_READ_BYTES
from tether.tools.registry import Registry, ToolConfigError, make_tool

ALL_BUILTINS = "builtin"


def build_registry(
    enabled: Iterable[str],
    *,
    files_root: Path | str | None = None,
    max_read_bytes: int = DEFAULT_MAX_READ_BYTES,
) -> Registry:
    """A Registry holding the tools named by `enabled` (see the module docstring)."""
    registry = Registry()
    builtins = builtin_tools(files_root=files_root, max_read_bytes=max_read_bytes)
    for raw in enabled:
        entry = raw.strip()
        if entry in (ALL_BUILTINS, "builtins"):
            for t in builtins.values():
                if registry.get(t.name) is None:
                    registry.add(t)
        elif entry in BUILTIN_NAMES:
            if entry not in builtins:
                assert entry in FILE_TOOL_NAMES
                raise ToolConfigError(f"tools.enabled: {entry!r} needs tools.files_root to be set")
            registry.add(builtins[entry])
        elif ":" in entry:
            registry.add(make_tool(_import_attr(entry)))
        elif entry:
            module = _import(entry)
            if not registry.add_module(module):
                raise ToolConfigError(
                    f"tools.enabled: module {entry!r} has no @tool functions "
                    f"(name one with {entry}:function)"
                )
    return registry


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        hint = f"; built-in tools are {', '.join(BUILTIN_NAMES)}" if "." not in module_name else ""
        raise ToolConfigError(
            f"tools.enabled: cannot import {module_name!r}: {type(exc).__name__}: {exc}{hint}"
        ) from exc


def _import_attr(entry: str) -> Callable[..., Any]:
    module_name, _, attr = entry.partition(":")
    obj: Any = _import(module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ToolConfigError(f"tools.enabled: {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ToolConfigError(f"tools.enabled: {entry!r} is not a function")
    fn: Callable[..., Any] = obj
    return fn
