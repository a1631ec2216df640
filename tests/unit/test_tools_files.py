"""list_files / read_file: everything stays inside the configured root."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tether.engines.base import ToolCall
from tether.tools.builtin.files import FilesRoot, file_tools
from tether.tools.executor import ToolExecutor
from tether.tools.registry import Registry, ToolConfigError, ToolError

Tools = dict[str, Callable[..., Any]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    (tmp_path / "secret.txt").write_text("also secret")

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("hello\nworld\n")
    (root / "sub" / "b.txt").write_text("bee")
    (root / "binary.dat").write_bytes(b"\x89PNG\x00\x01\x02")
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    (root / "big.txt").write_text("é" * 1000)  # 2000 bytes
    (root / "link_out").symlink_to(tmp_path / "secret.txt")
    (root / "dir_link_out").symlink_to(outside, target_is_directory=True)
    (root / "link_in").symlink_to(root / "a.txt")
    (root / "sub" / "up_and_in").symlink_to(Path("..") / "a.txt")
    (root / "loop").symlink_to(root / "loop")
    return root


@pytest.fixture
def tools(root: Path) -> Tools:
    return {t.name: t.fn for t in file_tools(root, max_read_bytes=1001)}


def test_list_root(tools: Tools) -> None:
    assert tools["list_files"]().splitlines() == [
        "a.txt (12 bytes)",
        "big.txt (2000 bytes)",
        "binary.dat (7 bytes)",
        "dir_link_out (link outside the files root)",
        "latin1.txt (4 bytes)",
        "link_in (12 bytes)",
        "link_out (link outside the files root)",
        "loop (unreadable)",
        "sub/",
    ]


@pytest.mark.parametrize("path", ["sub", "sub/", "./sub", "  sub  "])
def test_list_subfolder(tools: Tools, path: str) -> None:
    assert tools["list_files"](path) == "b.txt (3 bytes)\nup_and_in (12 bytes)"


def test_list_empty_and_capped(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for i in range(5):
        (tmp_path / f"f{i}").write_text("")
    list_files = {t.name: t.fn for t in file_tools(tmp_path, max_entries=3)}["list_files"]
    assert list_files("empty") == "(empty folder)"
    assert list_files().splitlines()[-1] == "... and 3 more"


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("a.txt", "hello\nworld\n"),
        ("./a.txt", "hello\nworld\n"),
        ("sub/b.txt", "bee"),
        ("sub\\b.txt", "bee"),
        ("link_in", "hello\nworld\n"),  # a link that stays inside is fine
        ("sub/up_and_in", "hello\nworld\n"),
    ],
)
def test_read(tools: Tools, path: str, content: str) -> None:
    assert tools["read_file"](path) == content


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../secret.txt", "'..' is not allowed"),
        ("sub/../a.txt", "'..' is not allowed"),
        ("sub/../../secret.txt", "'..' is not allowed"),
        ("..\\secret.txt", "'..' is not allowed"),
        ("/etc/passwd", "absolute paths are not allowed"),
        ("\\etc\\passwd", "absolute paths are not allowed"),
        ("C:\\Windows\\win.ini", "absolute paths are not allowed"),
        ("link_out", "leads outside the files root"),
        ("dir_link_out/secret.txt", "leads outside the files root"),
        ("missing.txt", "no such file or folder"),
        ("loop", "cannot open"),
        ("a\x00.txt", "NUL"),
        ("sub", "is a folder; use list_files"),
        ("binary.dat", "binary file"),
        ("latin1.txt", "not UTF-8 text"),
    ],
)
def test_read_refused(tools: Tools, path: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        tools["read_file"](path)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("..", "'..' is not allowed"),
        ("/", "absolute paths are not allowed"),
        ("dir_link_out", "leads outside the files root"),
        ("a.txt", "is a file, not a folder"),
    ],
)
def test_list_refused(tools: Tools, path: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        tools["list_files"](path)


def test_read_is_capped_on_a_character_boundary(tools: Tools) -> None:
    text = tools["read_file"]("big.txt")
    body, marker = text.split("\n[truncated:")
    assert body == "é" * 500  # 1000 of the 1001 allowed bytes: no half character
    assert marker == " showing the first 1001 of 2000 bytes]"


def test_fifo_is_not_read(root: Path, tools: Tools) -> None:
    os.mkfifo(root / "pipe")
    with pytest.raises(ToolError, match="not a regular file"):
        tools["read_file"]("pipe")


def test_root_must_be_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(ToolConfigError, match="does not exist"):
        FilesRoot(tmp_path / "nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(ToolConfigError, match="is not a folder"):
        FilesRoot(tmp_path / "file")


def test_root_given_through_a_symlink(tmp_path: Path, root: Path) -> None:
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    read_file = {t.name: t.fn for t in file_tools(tmp_path / "alias")}["read_file"]
    assert read_file("a.txt") == "hello\nworld\n"
    with pytest.raises(ToolError, match="leads outside"):
        read_file("link_out")


async def test_errors_reach_the_model_through_the_executor(root: Path) -> None:
    registry = Registry()
    registry.add_all(file_tools(root))
    [result] = await ToolExecutor(registry).run([ToolCall("1", "read_file", {"path": "../x"})])
    assert result.error == "tool 'read_file' failed: '..' is not allowed in paths ('../x')"
