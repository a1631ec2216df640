"""The built-in tools, made by factories so that their configuration is never global."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from tether.tools.builtin.calculator import calculator
from tether.tools.builtin.files import DEFAULT_MAX_READ_BYTES, file_tools
from tether.tools.builtin.time import make_current_time
from tether.tools.registry import Tool, make_tool

BUILTIN_NAMES: Final = ("current_time", "calculator", "list_files", "read_file")
FILE_TOOL_NAMES: Final = frozenset({"list_files", "read_file"})


def builtin_tools(
    *, files_root: Path | str | None = None, max_read_bytes: int = DEFAULT_MAX_READ_BYTES
) -> dict[str, Tool]:
    """Every built-in tool that can be made: the file tools only when `files_root` is set."""
    made = [make_current_time(), make_tool(calculator)]
    if files_root is not None:
        made += file_tools(files_root, max_read_bytes=max_read_bytes)
    return {t.name: t for t in made}
