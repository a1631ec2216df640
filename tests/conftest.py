"""Shared fixtures: a test server in this process, test settings, a store on a fresh file, a
PostgreSQL server (one per test session) with a fresh database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, PostgresUnavailable, postgres_server
from tests.support.servers import RunningServer, make_settings, serve_app
from tests.support.tiny_gguf import ensure_tiny_gguf
from tether.config import Settings
from tether.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "dist" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    """A tiny random-weight GGUF with SmolLM2's tokenizer and chat template (built once)."""
    if not SMOLLM2.is_file():
        pytest.fail(f"{SMOLLM2} is missing: run ./setup.sh, which puts the default model there")
    return ensure_tiny_gguf(ROOT / ".cache" / "tiny-gguf", SMOLLM2)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    async with serve_app(settings) as running:
        yield running


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """An open SQLite store on a fresh file."""
    opened = SQLiteStore(tmp_path / "store.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test session (fails, never skips, when there is none)."""
    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture
async def postgres_url(postgres: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return await postgres.create_database()
