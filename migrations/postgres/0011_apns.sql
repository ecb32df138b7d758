-- APNs push targets (docs/protocol.md §15) beside Web Push ones: `kind` says which. An APNs
-- target's `endpoint` is its device token in hex, and it has no keys (empty).
ALTER TABLE push_targets
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'web_push'
        CHECK (kind IN ('web_push', 'apns', 'apns_sandbox')),
    DROP CONSTRAINT push_targets_p256dh_check,
    DROP CONSTRAINT push_targets_auth_check,
    ADD CONSTRAINT push_targets_p256dh_check CHECK (octet_length(p256dh) IN (0, 65)),
    ADD CONSTRAINT push_targets_auth_check CHECK (octet_length(auth) IN (0, 16));
