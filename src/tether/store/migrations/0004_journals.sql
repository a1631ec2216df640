-- Journals are written while their request runs (tether.runs flushes new frames as they come),
-- so a journal is a request's frames plus this row: when it started, and when it ended. A row
-- with ended_at NULL at start-up belongs to a request the last process died in (tether.recovery
-- ends it). Pruning takes whole ended journals, by ended_at; a running one is never pruned.
CREATE TABLE journals (
    request_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    ended_at TEXT
) WITHOUT ROWID;
CREATE INDEX journals_ended ON journals(ended_at);
-- A request_id used again starts its journal afresh: resetting the row drops the old frames in
-- the same statement.
CREATE TRIGGER journal_restarted AFTER UPDATE OF started_at ON journals
BEGIN
    DELETE FROM events WHERE request_id = NEW.request_id;
END;
INSERT INTO journals (request_id, started_at, ended_at)
    SELECT request_id, MIN(created_at), MAX(created_at) FROM events GROUP BY request_id;
-- Rows are appended per flush now; pruning goes by journals.ended_at.
DROP INDEX events_created;
