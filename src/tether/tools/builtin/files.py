"""The `list_files` and `read_file` tools, confined to one root folder.

Paths are relative to the root. Absolute paths and `..` are refused outright (clearer for the
model than silently re-rooting them), and every path is resolved, symlinks included, and must
still lie inside the root, so a link pointing out of the root cannot be followed. Reads are
size-capped and binary files are refused.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Final

from tether.tools.registry import Tool, ToolConfigError, ToolError, make_tool

DEFAULT_MAX_READ_BYTES: Final = 16 * 1024
DEFAULT_MAX_ENTRIES: Final = 200


class FilesRoot:
    """Maps the model's relative paths to real paths inside `root`, or refuses them."""

    def __init__(self, root: Path | str) -> None:
        try:
            self.root = Path(root).expanduser().resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ToolConfigError(f"tools.files_root {str(root)!r} does not exist: {exc}") from exc
        if not self.root.is_dir():
            raise ToolConfigError(f"tools.files_root {str(root)!r} is not a folder")

    def resolve(self, path: str) -> Path:
        text = path.strip() or "."
        if "\x00" in text:
            raise ToolError("invalid path: contains a NUL character")
        posix = PurePosixPath(text.replace("\\", "/"))
        if posix.is_absolute() or PureWindowsPath(text).drive:
            raise ToolError(
                f"absolute paths are not allowed ({path!r}): give a path relative to the files root"
            )
        if ".." in posix.parts:
            raise ToolError(f"'..' is not allowed in paths ({path!r})")
        try:
            resolved = (self.root / posix).resolve(strict=True)
        except FileNotFoundError:
            raise ToolError(f"no such file or folder: {path!r}") from None
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            raise ToolError(f"cannot open {path!r}: {exc}") from None
        if not resolved.is_relative_to(self.root):
            raise ToolError(f"{path!r} leads outside the files root (a symlink); refused")
        return resolved


def file_tools(
    root: Path | str,
    *,
    max_read_bytes: int = DEFAULT_MAX_READ_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> list[Tool]:
    """`list_files` and `read_file` over `root` (which must exist)."""
    files = FilesRoot(root)

    def list_files(path: str = ".") -> str:
        """List a folder of the shared files (folders end with "/").

        Args:
            path: Folder relative to the files root; "." is the root itself.
        """
        folder = files.resolve(path)
        if not folder.is_dir():
            raise ToolError(f"{path!r} is a file, not a folder; use read_file")
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        lines: list[str] = []
        for entry in entries[:max_entries]:
            lines.append(_describe(entry, files.root))
        if len(entries) > max_entries:
            lines.append(f"... and {len(entries) - max_entries} more")
        return "\n".join(lines) if lines else "(empty folder)"

    def read_file(path: str) -> str:
        """Read a text file of the shared files.

        Args:
            path: File path relative to the files root.
        """
        target = files.resolve(path)
        if target.is_dir():
            raise ToolError(f"{path!r} is a folder; use list_files")
        # O_NOFOLLOW: the resolved path has no links left, so a link appearing now is a race.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(target, flags)
        except OSError as exc:
            raise ToolError(f"cannot read {path!r}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ToolError(f"{path!r} is not a regular file")
            data = f.read(max_read_bytes + 1)
        truncated = len(data) > max_read_bytes
        data = data[:max_read_bytes]
        if b"\x00" in data:
            raise ToolError(f"{path!r} is a binary file ({info.st_size} bytes); only text is read")
        try:
            # Incremental decoding tolerates a character cut in half by the size cap.
            text = codecs.getincrementaldecoder("utf-8")().decode(data, final=not truncated)
        except UnicodeDecodeError:
            raise ToolError(f"{path!r} is not UTF-8 text ({info.st_size} bytes)") from None
        if truncated:
            text += f"\n[truncated: showing the first {len(data)} of {info.st_size} bytes]"
        return text

    return [make_tool(list_files), make_tool(read_file)]


def _describe(entry: os.DirEntry[str], root: Path) -> str:
    try:
        if entry.is_symlink():
            real = Path(entry.path).resolve()
            if not real.is_relative_to(root):
                return f"{entry.name} (link outside the files root)"
        if entry.is_dir():
            return f"{entry.name}/"
        return f"{entry.name} ({entry.stat().st_size} bytes)"
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return f"{entry.name} (unreadable)"
