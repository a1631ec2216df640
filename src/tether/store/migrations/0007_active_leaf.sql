-- The message a session's active branch ends at (GET /sessions/{id}/messages): every message
-- stored moves it (a new turn, an edit, a regeneration is the active branch), PUT
-- /sessions/{id}/active moves it to another branch. NULL: the session's newest message.
ALTER TABLE sessions ADD COLUMN active_leaf_id TEXT REFERENCES messages(id) ON DELETE SET NULL;
UPDATE sessions SET active_leaf_id = (
    SELECT id FROM messages WHERE session_id = sessions.id ORDER BY rowid DESC LIMIT 1
);
