"""Find GGUF models in the dist folder: each `*.gguf` file is one model, named by its file stem.

Files directly in the folder and one level down (`dist/<name>/<file>.gguf`) count; deeper trees
and split shards beyond the first (`-00002-of-00003.gguf`) do not, since llama.cpp loads a split
model from its first file. The scan is cheap, so it is redone whenever a name is not found.

`read_gguf_string` reads one string field (the chat template) from a file's header without
loading the model, so listing models can tell which ones take tools; `read_longest_token` the
longest token of its vocabulary, which bounds how much text its context window can hold.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_LATER_SHARD = re.compile(r"-(\d{5})-of-\d{5}$")
_T = TypeVar("_T")


def model_id(path: Path) -> str:
    return path.name.removesuffix(".gguf")


def normalize_model_name(name: str) -> str:
    """Accept `x`, `x.gguf` and `dist/x.gguf` for the model with id `x`."""
    return Path(name).name.removesuffix(".gguf")


def discover_gguf(dist: Path) -> dict[str, Path]:
    """Model id -> file, sorted by id; the first file wins when two share a stem."""
    if not dist.is_dir():
        return {}
    found: dict[str, Path] = {}
    candidates = sorted(dist.glob("*.gguf")) + sorted(dist.glob("*/*.gguf"))
    for path in candidates:
        shard = _LATER_SHARD.search(path.stem)
        if shard is not None and shard.group(1) != "00001":
            continue
        if path.is_file():
            found.setdefault(model_id(path), path)
    return dict(sorted(found.items()))


# GGUF value types (gguf.GGUFValueType) and the byte sizes of the fixed-size ones.
_STRING, _ARRAY = 8, 9
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_TOOLS = re.compile(r"\btools\b")


class _Header:
    """A cursor over a little-endian GGUF header (format version 2 and later)."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return int(value)

    def string(self) -> bytes:
        size = self.take("<Q")
        self.at += size
        return self.data[self.at - size : self.at]

    def skip(self, kind: int) -> None:
        if kind == _STRING:
            size = self.take("<Q")  # not `self.at += self.take(...)`: take() moves `at` first
            self.at += size
        elif kind == _ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            if item in _FIXED_SIZES:
                self.at += _FIXED_SIZES[item] * count
            else:
                for _ in range(count):
                    self.skip(item)
        elif kind in _FIXED_SIZES:
            self.at += _FIXED_SIZES[kind]
        else:
            raise ValueError(f"unknown GGUF value type {kind}")


def _read_field(path: Path, key: str, read: Callable[[_Header, int], _T | None]) -> _T | None:
    """`read(header, kind)` at the value of `key` in the GGUF header of `path`; None if the key
    is absent or the file unreadable."""
    wanted = key.encode()
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            header = _Header(data)
            if data[:4] != b"GGUF" or header.take("<4xI") < 2:
                return None
            header.take("<Q")  # tensor count
            for _ in range(header.take("<Q")):
                name, kind = header.string(), header.take("<I")
                if name == wanted:
                    return read(header, kind)
                header.skip(kind)
    except (OSError, ValueError, struct.error):
        return None
    return None


def _string(header: _Header, kind: int) -> str | None:
    return header.string().decode("utf-8", errors="replace") if kind == _STRING else None


def _longest_string(header: _Header, kind: int) -> int | None:
    if kind != _ARRAY or header.take("<I") != _STRING:
        return None
    longest = 0
    for _ in range(header.take("<Q")):
        size = header.take("<Q")
        header.at += size
        longest = max(longest, size)
    return longest


def read_gguf_string(path: Path, key: str) -> str | None:
    """The string value of `key` in the GGUF header of `path`; None if absent or unreadable."""
    return _read_field(path, key, _string)


def read_longest_token(path: Path) -> int | None:
    """The UTF-8 bytes of the vocabulary's longest token as stored (`tokenizer.ggml.tokens`),
    which is at least the bytes of any token's text: byte-level BPE stores each byte as one
    character of one or two bytes, SentencePiece a space as the three bytes of `▁` and a byte
    token as `<0xNN>`. None if absent or unreadable."""
    return _read_field(path, "tokenizer.ggml.tokens", _longest_string)


def template_takes_tools(template: str | None) -> bool:
    """Whether a chat template renders a `tools` list (Qwen, Hermes, Llama 3.1 and the like)."""
    return template is not None and _TOOLS.search(template) is not None
