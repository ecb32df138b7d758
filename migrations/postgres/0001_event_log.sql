-- Ferry's event log, devices and cursors (PostgreSQL).
--
-- Append-only: once this file has landed it is never edited; changes go in a new file.
--
-- Every query the relay runs is scoped to one user_id (only retention walks the users
-- table), so events (and devices) can later be hash-partitioned by user_id
-- (PARTITION BY HASH (user_id)) or distributed by user_id with Citus without changing a
-- query.
--
-- BIGINTs are Unix times (seconds for devices, milliseconds for events) or sequences, all
-- below 2^63. Keys are 32-byte Ed25519 public keys.

-- One row per user: the log's head (highest sequence assigned, 0 before the first event)
-- and earliest (lowest sequence still stored; head + 1 when nothing is). An appending
-- transaction locks this row before it numbers events and raises head before it commits,
-- which makes sequences gapless and ordered by commit, with no counter shared across users.
CREATE TABLE users (
    user_id  BYTEA  NOT NULL PRIMARY KEY CHECK (octet_length(user_id) = 32),
    head     BIGINT NOT NULL DEFAULT 0 CHECK (head >= 0),
    earliest BIGINT NOT NULL DEFAULT 1 CHECK (earliest >= 1 AND earliest <= head + 1)
);

-- The logs. Payloads are sealed by the clients; the relay cannot read them.
-- Rows of one user are exactly the sequences earliest..=head of its users row.
CREATE TABLE events (
    user_id         BYTEA  NOT NULL,
    seq             BIGINT NOT NULL CHECK (seq >= 1),
    device_id       BYTEA  NOT NULL CHECK (octet_length(device_id) = 32),
    device_seq      BIGINT NOT NULL CHECK (device_seq >= 1),
    payload         BYTEA  NOT NULL,
    committed_at_ms BIGINT NOT NULL CHECK (committed_at_ms >= 0),
    PRIMARY KEY (user_id, seq),
    -- A retried append finds its original here.
    UNIQUE (user_id, device_id, device_seq)
);
-- Sealed payloads are ciphertext and do not compress: store large ones out of line
-- without trying.
ALTER TABLE events ALTER COLUMN payload SET STORAGE EXTERNAL;

-- The user's devices: the certificate fields (so the relay can hand the certificate back
-- for clients to verify), the cursor and the revocation.
CREATE TABLE devices (
    user_id              BYTEA  NOT NULL CHECK (octet_length(user_id) = 32),
    device_id            BYTEA  NOT NULL CHECK (octet_length(device_id) = 32),
    name                 TEXT   NOT NULL,
    created_at           BIGINT NOT NULL CHECK (created_at >= 0),
    signature            BYTEA  NOT NULL CHECK (octet_length(signature) = 64),
    registered_at        BIGINT NOT NULL CHECK (registered_at >= 0),
    last_seen            BIGINT NOT NULL CHECK (last_seen >= 0),
    -- Cumulative acknowledged sequence: only grows, never above the user's head.
    acked                BIGINT NOT NULL DEFAULT 0 CHECK (acked >= 0),
    -- Set once by a revocation signed with the user key; never cleared.
    revoked_at           BIGINT CHECK (revoked_at >= 0),
    revocation_signature BYTEA  CHECK (octet_length(revocation_signature) = 64),
    PRIMARY KEY (user_id, device_id)
);
