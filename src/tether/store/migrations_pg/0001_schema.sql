-- SQLite's migrations 0001-0007 in one: agents, sessions, messages (a tree by parent_id), the
-- open turns, the frame journal. Timestamps are ISO 8601 text in UTC (as in SQLite: they sort
-- as text and come back as written). `seq` (an identity) is the creation order SQLite reads
-- from rowid: messages and sessions are listed by it.
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    markdown_context TEXT NOT NULL DEFAULT '',
    default_options TEXT NOT NULL DEFAULT '{}',  -- JSON text, kept as written
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    title TEXT NOT NULL DEFAULT '',
    agent_id TEXT REFERENCES agents(id) ON DELETE SET NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    -- Where the active branch ends (the foreign key is added below, after messages).
    active_leaf_id TEXT
);
CREATE INDEX sessions_updated ON sessions (updated_at DESC, seq DESC);

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    parent_id TEXT REFERENCES messages(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'complete'
        CHECK (status IN ('complete', 'cancelled', 'error', 'interrupted')),
    name TEXT,
    tool_call_id TEXT,
    tool_calls TEXT,  -- JSON text
    model TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created_at TEXT NOT NULL,
    -- Full-text search (SQLite: the FTS5 table messages_fts): words as written, lower-cased
    -- ('simple': no stemming, no stop words, like FTS5's unicode61; diacritics are not folded).
    search_vector TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', content)) STORED
);
CREATE INDEX messages_session ON messages (session_id, seq);
CREATE INDEX messages_parent ON messages (parent_id, seq);
CREATE INDEX messages_search ON messages USING GIN (search_vector);

ALTER TABLE sessions ADD CONSTRAINT sessions_active_leaf
    FOREIGN KEY (active_leaf_id) REFERENCES messages(id) ON DELETE SET NULL;

-- Running turns (SQLite 0003), with the replica that runs each (see 0002_replicas.sql).
CREATE TABLE turns (
    user_message_id TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    head_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    started_at TEXT NOT NULL,
    replica_id TEXT NOT NULL
);
CREATE INDEX turns_replica ON turns (replica_id);

-- The frame journal (SQLite 0002, 0004, 0005): a row per request, its frames in events.
CREATE TABLE journals (
    request_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    token_digest TEXT,
    user_message_id TEXT,
    question_digest TEXT,
    replica_id TEXT NOT NULL  -- the replica that runs (or ran) the request
);
CREATE INDEX journals_ended ON journals (ended_at);
CREATE INDEX journals_open ON journals (replica_id) WHERE ended_at IS NULL;

CREATE TABLE events (
    request_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    frame TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (request_id, seq)
);

-- A request_id used again starts its journal afresh: resetting the row drops the old frames in
-- the same statement (SQLite: the trigger journal_restarted).
CREATE FUNCTION journal_restarted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM events WHERE request_id = NEW.request_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER journal_restarted AFTER UPDATE OF started_at ON journals
    FOR EACH ROW EXECUTE FUNCTION journal_restarted();
