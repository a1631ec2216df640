"""Finding MLC-LLM compiled models in `dist/` and the model library that goes with each.

The layout (seeds 001 and 002)::

    dist/
      libs/Qwen2.5-7B-q4f16_1.dll             # compiled model libraries (.so, .dll, .dylib)
      Qwen2.5-7B-Instruct-q4f16_1-MLC/
        mlc-chat-config.json                  # marks the folder as a model
        ndarray-cache.json                    # weight index (`tensor-cache.json` in newer MLC)
        params_shard_*.bin

A model is a direct sub-folder of `dist/` holding `mlc-chat-config.json` and a weight index; its
id is the folder name.

Matching a library to a model. Both names are normalised: lower-cased, the library's extension
dropped, and split into tokens at `-`, `_`, `.` and spaces. Each name is cut at its quantization
tag (`q4f16_1`, `q0f32`, `q4f16_autoawq`, `e4m3_e4m3_f16`, ...; the model's tag is the
`quantization` field of its `mlc-chat-config.json`, else the tag found in its folder name). A
library matches a model when

1. it carries the same quantization tag,
2. its tokens before the tag are a prefix of the model's tokens before the tag (so
   `Qwen2.5-7B-q4f16_1.dll` fits `Qwen2.5-7B-Instruct-q4f16_1-MLC`, but
   `Qwen2.5-0.5B-Instruct-q4f16_1.so` does not), and
3. unless the device is `auto`, the tokens after its tag name no other device (a `-cuda.so`
   library cannot serve `device: cpu`).

Among matches the best is the one that (a) shares the longest prefix with the model, then
(b) names the configured device, then (c) has this platform's extension; ties go to the first
name in sorted order. A model without a matching library is still listed: MLC then
compiles one itself at load time (JIT), which needs MLC's compiler toolchain.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

CHAT_CONFIG = "mlc-chat-config.json"
WEIGHT_INDEXES = ("ndarray-cache.json", "tensor-cache.json")
LIB_SUFFIXES = (".so", ".dll", ".dylib")
LIBS_DIR = "libs"

# MLC's quantization names: qAfB[_N] (q4f16_1, q0f32, q4f16_autoawq) and FP8 (e4m3_e4m3_f16).
_QUANT = re.compile(
    r"(?<![0-9a-z])(q\d+f\d+(?:_(?:\d+|autoawq|awq|ft))?|e\d+m\d+_e\d+m\d+_f\d+)(?![0-9a-z])"
)
_SEPARATORS = re.compile(r"[-_. ]+")
_DEVICES = frozenset(
    {"cpu", "cuda", "rocm", "vulkan", "metal", "opencl", "webgpu", "android", "iphone", "llvm"}
)


@dataclass(frozen=True, slots=True)
class MLCModel:
    id: str  # the folder name, which clients send as `model`
    path: Path
    model_lib: Path | None  # None: MLC compiles the library when it loads the model
    quantization: str | None


def tokens(text: str) -> list[str]:
    return [t for t in _SEPARATORS.split(text.lower()) if t]


def find_quantization(name: str) -> str | None:
    """The first MLC quantization tag in `name`, lower-cased, or None."""
    match = _QUANT.search(name.lower())
    return match.group(1) if match else None


def _split_at(name: str, quantization: str) -> tuple[list[str], list[str]] | None:
    """The tokens before and after the quantization tag, or None if `name` lacks the tag."""
    lowered = name.lower()
    # The tag must stand alone: `q4f16` is not found in `q4f16_1`.
    tag = re.compile(rf"(?<![0-9a-z]){re.escape(quantization)}(?![0-9a-z]|_[0-9a-z])")
    match = tag.search(lowered)
    if match is None:
        return None
    return tokens(lowered[: match.start()]), tokens(lowered[match.end() :])


def native_suffix(platform: str = sys.platform) -> str:
    if platform == "win32":
        return ".dll"
    if platform == "darwin":
        return ".dylib"
    return ".so"


def device_family(device: str) -> str:
    """`cuda:0` -> `cuda`; `auto` stays `auto`."""
    return device.split(":", 1)[0].strip().lower() or "auto"


def match_library(
    model_name: str,
    quantization: str | None,
    libraries: Iterable[Path],
    *,
    device: str = "auto",
    platform: str = sys.platform,
) -> Path | None:
    """The library that best fits `model_name`, by the rule in this module's docstring."""
    quantization = (quantization or find_quantization(model_name) or "").lower()
    if not quantization:
        return None
    model_parts = _split_at(model_name, quantization)
    model_base = model_parts[0] if model_parts else tokens(model_name)
    family = device_family(device)
    native = native_suffix(platform)
    best: tuple[tuple[int, bool, bool], Path] | None = None
    for lib in sorted(libraries, key=lambda p: p.name):
        parts = _split_at(lib.stem, quantization)
        if parts is None:
            continue
        base, rest = parts
        if not base or model_base[: len(base)] != base:
            continue
        named = _DEVICES.intersection(rest)
        if family != "auto" and named - {family}:
            continue
        key = (len(base), family in named, lib.suffix.lower() == native)
        if best is None or key > best[0]:
            best = (key, lib)
    return best[1] if best else None


def _read_quantization(config_path: Path) -> str | None:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("quantization") if isinstance(config, dict) else None
    return value.lower() if isinstance(value, str) and value else None


def list_libraries(dist: Path) -> list[Path]:
    libs = dist / LIBS_DIR
    if not libs.is_dir():
        return []
    return sorted(p for p in libs.iterdir() if p.is_file() and p.suffix.lower() in LIB_SUFFIXES)


def is_model_dir(path: Path) -> bool:
    return (path / CHAT_CONFIG).is_file() and any((path / n).is_file() for n in WEIGHT_INDEXES)


def discover(
    dist: Path,
    *,
    device: str = "auto",
    overrides: dict[str, Path] | None = None,
    platform: str = sys.platform,
) -> list[MLCModel]:
    """Every MLC model folder directly under `dist`, sorted by id, each with its library.

    `overrides` maps a model id to a library path and wins over the matching rule.
    """
    if not dist.is_dir():
        return []
    libraries: Sequence[Path] = list_libraries(dist)
    models = []
    for folder in sorted(p for p in dist.iterdir() if p.is_dir() and p.name != LIBS_DIR):
        if not is_model_dir(folder):
            continue
        quantization = _read_quantization(folder / CHAT_CONFIG) or find_quantization(folder.name)
        lib = (overrides or {}).get(folder.name) or match_library(
            folder.name, quantization, libraries, device=device, platform=platform
        )
        models.append(MLCModel(folder.name, folder, lib, quantization))
    return models
