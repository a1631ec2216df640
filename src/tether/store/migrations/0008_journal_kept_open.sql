-- A request's journal row may exist before its user message is stored: frames it journals
-- while it waits for its session (`queued`) open it. begin_turn then writes the row again
-- (naming the message) without changing started_at, and the trigger drops a journal's frames
-- only when started_at really changes (a request_id used again for a new request).
DROP TRIGGER journal_restarted;
CREATE TRIGGER journal_restarted AFTER UPDATE OF started_at ON journals
WHEN OLD.started_at IS NOT NEW.started_at
BEGIN
    DELETE FROM events WHERE request_id = NEW.request_id;
END;
