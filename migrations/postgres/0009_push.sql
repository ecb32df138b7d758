-- Push wake-ups (docs/protocol.md §15). A device has at most one push target, and at most
-- one pending wake-up (later ones coalesce into it). Times are Unix milliseconds.
CREATE TABLE push_targets (
    device_id  BYTEA   NOT NULL PRIMARY KEY CHECK (octet_length(device_id) = 32),
    user_id    BYTEA   NOT NULL CHECK (octet_length(user_id) = 32),
    endpoint   TEXT    NOT NULL,
    p256dh     BYTEA   NOT NULL CHECK (octet_length(p256dh) = 65),
    auth       BYTEA   NOT NULL CHECK (octet_length(auth) = 16),
    created_at BIGINT  NOT NULL CHECK (created_at >= 0)
);
CREATE INDEX push_targets_by_user ON push_targets (user_id);

-- `claimed_until`: a node is sending it until then (0: not claimed); a node that died while
-- sending leaves it to be claimed again after that.
CREATE TABLE push_queue (
    device_id     BYTEA   NOT NULL PRIMARY KEY CHECK (octet_length(device_id) = 32),
    user_id       BYTEA   NOT NULL CHECK (octet_length(user_id) = 32),
    urgent        BOOLEAN NOT NULL,
    due_at        BIGINT  NOT NULL CHECK (due_at >= 0),
    attempts      BIGINT  NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claimed_until BIGINT  NOT NULL DEFAULT 0 CHECK (claimed_until >= 0)
);
CREATE INDEX push_queue_by_due ON push_queue (due_at);
