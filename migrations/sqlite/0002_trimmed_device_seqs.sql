-- Retention against idempotency (SQLite).
--
-- Append-only: once this file has landed it is never edited; changes go in a new file.
--
-- When retention deletes events, the highest device_seq it deleted for each device is kept
-- here, in the same transaction as the delete. A retried append at or below it that is no
-- longer in the log was stored once and trimmed since: it is answered "expired" instead of
-- being stored a second time under a new sequence.
CREATE TABLE trimmed_device_seqs (
    user_id    BLOB    NOT NULL CHECK (length(user_id) = 32),
    device_id  BLOB    NOT NULL CHECK (length(device_id) = 32),
    device_seq INTEGER NOT NULL CHECK (device_seq >= 1),
    PRIMARY KEY (user_id, device_id)
);
