-- As SQLite's 0008_turn_cost.sql.
--
-- 1. A request's journal row may exist before its user message is stored: frames it journals
--    while it waits for its session (`queued`) open it. begin_turn then writes the row again
--    (naming the message) without changing started_at, and the trigger drops a journal's
--    frames only when started_at really changes (a request_id used again for a new request).
DROP TRIGGER journal_restarted ON journals;
CREATE TRIGGER journal_restarted AFTER UPDATE OF started_at ON journals
    FOR EACH ROW WHEN (OLD.started_at IS DISTINCT FROM NEW.started_at)
    EXECUTE FUNCTION journal_restarted();
-- 2. Every message stored ends its session's active branch and updates the session (as the
--    store did with a statement of its own after each message).
CREATE FUNCTION messages_move_leaf() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions SET updated_at = NEW.created_at, active_leaf_id = NEW.id
    WHERE id = NEW.session_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER messages_move_leaf AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION messages_move_leaf();
