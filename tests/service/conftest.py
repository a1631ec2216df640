"""Fixtures of the llamacpp engine's tests: a dist folder of tiny GGUFs, the runs it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.llama_runs import Runs


@pytest.fixture
def dist(tmp_path: Path, tiny_gguf: Path) -> Path:
    folder = tmp_path / "dist"
    folder.mkdir()
    for name in ("tiny", "tiny-b"):
        (folder / f"{name}.gguf").symlink_to(tiny_gguf)
    return folder


@pytest.fixture
def runs() -> Runs:
    return Runs()
