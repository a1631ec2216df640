-- Full-text search over every message's content (GET /search): an external-content FTS5 index
-- on messages, kept in step by triggers, filled once here from the rows already stored. It maps
-- messages by rowid: a VACUUM may renumber those (messages has no INTEGER PRIMARY KEY), so one
-- must be followed by INSERT INTO messages_fts (messages_fts) VALUES ('rebuild').
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content,
    content = 'messages',
    content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages
BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (NEW.rowid, NEW.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', OLD.rowid, OLD.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', OLD.rowid, OLD.content);
    INSERT INTO messages_fts (rowid, content) VALUES (NEW.rowid, NEW.content);
END;
INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
