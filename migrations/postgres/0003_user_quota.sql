-- Storage quotas (PostgreSQL).
--
-- Append-only: once this file has landed it is never edited; changes go in a new file.
--
-- users.bytes is the payload bytes stored for the user: raised by the appending transaction,
-- lowered by retention in the transaction that deletes, so a quota check reads one row.
ALTER TABLE users ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0 CHECK (bytes >= 0);
UPDATE users SET bytes = (
    SELECT COALESCE(SUM(octet_length(payload)), 0) FROM events WHERE events.user_id = users.user_id
);
