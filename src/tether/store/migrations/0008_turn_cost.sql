-- What a turn's writes cost (tether.store.sqlite: group commit, a statement per kind of row).
--
-- 1. A request's journal row may exist before its user message is stored: frames it journals
--    while it waits for its session (`queued`) open it. begin_turn then writes the row again
--    (naming the message) without changing started_at, and the trigger drops a journal's
--    frames only when started_at really changes (a request_id used again for a new request).
DROP TRIGGER journal_restarted;
CREATE TRIGGER journal_restarted AFTER UPDATE OF started_at ON journals
WHEN OLD.started_at IS NOT NEW.started_at
BEGIN
    DELETE FROM events WHERE request_id = NEW.request_id;
END;
-- 2. Every message stored ends its session's active branch and updates the session (as the
--    store did with a statement of its own after each message).
CREATE TRIGGER messages_move_leaf AFTER INSERT ON messages
BEGIN
    UPDATE sessions SET updated_at = NEW.created_at, active_leaf_id = NEW.id
    WHERE id = NEW.session_id;
END;
