"""The Store contract (tests/contract/store_contract.py) on SQLite, on a real file, and on
PostgreSQL, on a real server this test session starts (tests/support/postgres.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract.store_contract import NewStore, StoreContract
from tether.store.postgres import PostgresStore
from tether.store.sqlite import SQLiteStore


class TestSQLiteStore(StoreContract):
    native_syntax = "fts5"
    native_phrase_query = '"say NOT" OR nowhere'
    native_bad_query = '"unterminated'

    @pytest.fixture
    def new_store(self, tmp_path: Path) -> NewStore:
        return lambda: SQLiteStore(tmp_path / "contract.db")


class TestPostgresStore(StoreContract):
    native_syntax = "websearch"
    native_phrase_query = '"say NOT" OR nowhere'
    native_bad_query = None  # websearch_to_tsquery reads any text

    @pytest.fixture
    def new_store(self, postgres_url: str) -> NewStore:
        return lambda: PostgresStore(postgres_url)
