"""The one place a store is chosen: `storage.url` `postgresql://...` is PostgreSQL (several
replicas on one database), anything else SQLite at `storage.path` (one process per file)."""

from __future__ import annotations

from tether.config.schema import StorageSettings
from tether.store.base import Store
from tether.store.postgres import PostgresStore
from tether.store.sqlite import SQLiteStore


def build_store(settings: StorageSettings) -> Store:
    """The store `settings` name, not yet opened (`Store.open` connects)."""
    if settings.postgres_url is not None:
        return PostgresStore(
            settings.postgres_url, lease_sec=settings.lease_sec, pool_size=settings.pool_size
        )
    return SQLiteStore(settings.path, synchronous=settings.synchronous)


def describe(settings: StorageSettings) -> str:
    """Where the store is, for logs (never a URL's password)."""
    if settings.postgres_url is not None:
        return "postgresql (storage.url)"
    return str(settings.path)
