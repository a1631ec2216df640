-- The frame journal for `resume` (see tether.runs): every server frame of an ended request, as
-- sent. All rows of one request are written in one transaction with one `created_at`, so pruning
-- by age or by row count always removes whole requests.
CREATE TABLE events (
    request_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    frame TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (request_id, seq)
) WITHOUT ROWID;
CREATE INDEX events_created ON events(created_at);
