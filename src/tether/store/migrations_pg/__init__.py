"""PostgreSQL schema migrations: `NNNN_name.sql`, applied in order at start-up, each in one
transaction with its row in `schema_version` (see tether.store.postgres). The schema means what
SQLite's (tether.store.migrations) means; where they differ, the file says why."""
