"""The one place a store is chosen: `storage.url` `postgresql://...` is PostgreSQL (several
replicas on one database), anything else SQLite at `storage.path` (one process per file)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tether.config.schema import ServerSettings, StorageSettings
from tether.session_turns import ONE_PROCESS, SessionHolds
from tether.store.base import Store
from tether.store.pg_session_holds import PostgresSessionHolds
from tether.store.postgres import PostgresStore
from tether.store.replica_ids import default_replica_id
from tether.store.sqlite import SQLiteStore


def build_store(settings: StorageSettings, server: ServerSettings) -> Store:
    """The store `settings` name, not yet opened (`Store.open` connects); on PostgreSQL this
    replica's id is `server.replica_id`, else `<hostname>:<port>` (tether.store.replica_ids)."""
    if settings.postgres_url is not None:
        return PostgresStore(
            settings.postgres_url,
            lease_sec=settings.lease_sec,
            pool_size=settings.pool_size,
            replica_id=server.replica_id or default_replica_id(socket.gethostname(), server.port),
        )
    return SQLiteStore(settings.path, synchronous=settings.synchronous)


@asynccontextmanager
async def session_holds(store: Store) -> AsyncIterator[SessionHolds]:
    """How a session's turns go one at a time across the processes on `store` (open `store`
    first): holds in the database on PostgreSQL; on SQLite one process owns the file, and its
    own line suffices."""
    if not isinstance(store, PostgresStore):
        yield ONE_PROCESS
        return
    holds = PostgresSessionHolds(store)
    await holds.open()
    try:
        yield holds
    finally:
        await holds.close()


def describe(settings: StorageSettings) -> str:
    """Where the store is, for logs (never a URL's password)."""
    if settings.postgres_url is not None:
        return "postgresql (storage.url)"
    return str(settings.path)
