-- Ferry's event log, devices and cursors (SQLite).
--
-- Append-only: once this file has landed it is never edited; changes go in a new file.
--
-- Every query the relay runs is scoped to one user_id (only retention walks the users
-- table), so on PostgreSQL the same tables can be hash-partitioned or distributed by
-- user_id; the SQLite schema mirrors that one.
--
-- Integers are Unix times (seconds for devices, milliseconds for events) or sequences,
-- all below 2^63. Keys are 32-byte Ed25519 public keys.

-- One row per user: the log's head (highest sequence assigned, 0 before the first event)
-- and earliest (lowest sequence still stored; head + 1 when nothing is). The appending
-- transaction raises head while holding the write lock, which makes sequences gapless and
-- ordered by commit.
CREATE TABLE users (
    user_id  BLOB    NOT NULL PRIMARY KEY CHECK (length(user_id) = 32),
    head     INTEGER NOT NULL DEFAULT 0 CHECK (head >= 0),
    earliest INTEGER NOT NULL DEFAULT 1 CHECK (earliest >= 1 AND earliest <= head + 1)
);

-- The logs. Payloads are sealed by the clients; the relay cannot read them.
-- Rows of one user are exactly the sequences earliest..=head of its users row.
CREATE TABLE events (
    user_id         BLOB    NOT NULL,
    seq             INTEGER NOT NULL CHECK (seq >= 1),
    device_id       BLOB    NOT NULL CHECK (length(device_id) = 32),
    device_seq      INTEGER NOT NULL CHECK (device_seq >= 1),
    payload         BLOB    NOT NULL,
    committed_at_ms INTEGER NOT NULL CHECK (committed_at_ms >= 0),
    PRIMARY KEY (user_id, seq),
    -- A retried append finds its original here.
    UNIQUE (user_id, device_id, device_seq)
);

-- The user's devices: the certificate fields (so the relay can hand the certificate back
-- for clients to verify), the cursor and the revocation.
CREATE TABLE devices (
    user_id              BLOB    NOT NULL CHECK (length(user_id) = 32),
    device_id            BLOB    NOT NULL CHECK (length(device_id) = 32),
    name                 TEXT    NOT NULL,
    created_at           INTEGER NOT NULL CHECK (created_at >= 0),
    signature            BLOB    NOT NULL CHECK (length(signature) = 64),
    registered_at        INTEGER NOT NULL CHECK (registered_at >= 0),
    last_seen            INTEGER NOT NULL CHECK (last_seen >= 0),
    -- Cumulative acknowledged sequence: only grows, never above the user's head.
    acked                INTEGER NOT NULL DEFAULT 0 CHECK (acked >= 0),
    -- Set once by a revocation signed with the user key; never cleared.
    revoked_at           INTEGER CHECK (revoked_at >= 0),
    revocation_signature BLOB    CHECK (length(revocation_signature) = 64),
    PRIMARY KEY (user_id, device_id)
);
