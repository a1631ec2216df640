"""Find GGUF models in the dist folder: each `*.gguf` file is one model, named by its file stem.

Files directly in the folder and one level down (`dist/<name>/<file>.gguf`) count; deeper trees
and split shards beyond the first (`-00002-of-00003.gguf`) do not, since llama.cpp loads a split
model from its first file. The scan is cheap, so it is redone whenever a name is not found.
"""

from __future__ import annotations

import re
from pathlib import Path

_LATER_SHARD = re.compile(r"-(\d{5})-of-\d{5}$")


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
