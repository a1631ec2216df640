-- Leases instead of SQLite's file lock: each replica (a `tether serve` process) has a row,
-- whose heartbeat it moves every lease/3 seconds (the database's clock, never the replicas').
-- A turn or journal whose replica has no row with a heartbeat younger than the lease belongs to
-- a dead process: a living replica recovers it (tether.recovery) and then deletes the row.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat TIMESTAMPTZ NOT NULL DEFAULT now()
);
