-- The device chain (SQLite).
--
-- Append-only: once this file has landed it is never edited; changes go in a new file.
--
-- Each user's device chain: hash-chained links, each signed by the user key or by a device
-- the chain admits. The relay verifies the stored links and the new one before it stores
-- it, under the user's row lock (the same lock the append batch takes), and in the same
-- transaction mirrors the chain into `devices`: an Admit inserts the device's row, a Revoke
-- sets revoked_at. `link` is the postcard encoding of the whole link (signature included),
-- `hash` its chain hash (what the next link names as prev).
CREATE TABLE chain_links (
    user_id   BLOB    NOT NULL CHECK (length(user_id) = 32),
    seqno     INTEGER NOT NULL CHECK (seqno >= 1),
    hash      BLOB    NOT NULL CHECK (length(hash) = 32),
    link      BLOB    NOT NULL,
    stored_at INTEGER NOT NULL CHECK (stored_at >= 0),
    PRIMARY KEY (user_id, seqno)
);

-- The position of the chain link that admitted the device. Rows from before the chain
-- (registered from a device certificate) have none: such a device is not admitted until a
-- chain link admits it (which keeps its cursor).
ALTER TABLE devices ADD COLUMN admitted_seqno INTEGER CHECK (admitted_seqno >= 1);
