-- Who a journal belongs to, and what it answers. `begin_turn` writes the row in the same
-- transaction as the user's message, so a process killed before the first frame is journaled
-- still leaves the request findable: recovery gives it its final frame, and a `chat` retried
-- with its request_id after the crash gets that outcome instead of storing the question again.
-- token_digest: SHA-256 (hex) of the resume token of the request's `processing` frame; `resume`
-- and `cancel` from another socket must present the token. user_message_id: the question.
-- question_digest: SHA-256 (hex) of its text (a chat sent again must ask the same question).
ALTER TABLE journals ADD COLUMN token_digest TEXT;
ALTER TABLE journals ADD COLUMN user_message_id TEXT;
ALTER TABLE journals ADD COLUMN question_digest TEXT;
