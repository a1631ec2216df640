-- A session's line across replicas (tether.store.pg_session_holds): the turn continuing a
-- session's active branch holds its session here from before its user message is stored until
-- its answer is; a turn of the same session on another replica waits for the hold (woken by
-- NOTIFY tether_session). A hold whose replica's lease expired, or one left behind by a living
-- replica (no open turn there on the session for a lease), is taken over.
CREATE TABLE session_holds (
    session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    holder TEXT NOT NULL,
    replica_id TEXT NOT NULL,
    taken_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
