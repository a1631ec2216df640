-- Turns that are running: written with the user's message, moved along by each message the turn
-- stores (tool calls, tool results), deleted with the answer, all in the same transactions. A row
-- left at start-up belongs to a turn the process died in; it is closed with an `interrupted`
-- answer after `head_id`.
CREATE TABLE turns (
    user_message_id TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    head_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    started_at TEXT NOT NULL
);
