-- APNs push targets (docs/protocol.md §15) beside Web Push ones: `kind` says which. An APNs
-- target's `endpoint` is its device token in hex, and it has no keys (empty). SQLite cannot
-- change a CHECK in place: the table is rebuilt.
CREATE TABLE push_targets_new (
    device_id  BLOB    NOT NULL PRIMARY KEY CHECK (length(device_id) = 32),
    user_id    BLOB    NOT NULL CHECK (length(user_id) = 32),
    kind       TEXT    NOT NULL DEFAULT 'web_push'
                       CHECK (kind IN ('web_push', 'apns', 'apns_sandbox')),
    endpoint   TEXT    NOT NULL,
    p256dh     BLOB    NOT NULL CHECK (length(p256dh) IN (0, 65)),
    auth       BLOB    NOT NULL CHECK (length(auth) IN (0, 16)),
    created_at INTEGER NOT NULL CHECK (created_at >= 0)
);
INSERT INTO push_targets_new (device_id, user_id, kind, endpoint, p256dh, auth, created_at)
    SELECT device_id, user_id, 'web_push', endpoint, p256dh, auth, created_at FROM push_targets;
DROP TABLE push_targets;
ALTER TABLE push_targets_new RENAME TO push_targets;
CREATE INDEX push_targets_by_user ON push_targets (user_id);
