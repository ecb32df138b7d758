-- Attachments (docs/protocol.md §16): blobs the relay stores and cannot read, the messages
-- that refer to them, and each user's bytes stored (its quota). Times are Unix milliseconds.
-- `stored`: parts 0..stored are in the blob storage. `refs`: references ever made, a version
-- the deletion job checks so that it never deletes a blob a message just started to refer
-- to. `deleting`: the blob's parts are being deleted; it is gone for everyone.
CREATE TABLE blobs (
    blob_id            BLOB    NOT NULL PRIMARY KEY CHECK (length(blob_id) = 32),
    user_id            BLOB    NOT NULL CHECK (length(user_id) = 32),
    size               INTEGER NOT NULL CHECK (size > 0),
    digest             BLOB    NOT NULL CHECK (length(digest) = 32),
    stored             INTEGER NOT NULL DEFAULT 0 CHECK (stored >= 0),
    complete           INTEGER NOT NULL DEFAULT FALSE CHECK (complete IN (0, 1)),
    refs               INTEGER NOT NULL DEFAULT 0 CHECK (refs >= 0),
    deleting           INTEGER NOT NULL DEFAULT FALSE CHECK (deleting IN (0, 1)),
    created_at         INTEGER NOT NULL CHECK (created_at >= 0),
    unreferenced_until INTEGER NOT NULL CHECK (unreferenced_until >= 0),
    expires_at         INTEGER NOT NULL CHECK (expires_at >= 0)
);
CREATE INDEX blobs_by_expiry ON blobs (expires_at);
CREATE INDEX blobs_by_unreferenced ON blobs (unreferenced_until);

-- One row per message that refers to a blob.
CREATE TABLE blob_refs (
    blob_id  BLOB    NOT NULL CHECK (length(blob_id) = 32),
    conv_id  BLOB    NOT NULL CHECK (length(conv_id) = 16),
    conv_seq INTEGER NOT NULL CHECK (conv_seq > 0),
    PRIMARY KEY (blob_id, conv_id, conv_seq)
);
CREATE INDEX blob_refs_by_conv ON blob_refs (conv_id, conv_seq);

-- Bytes of blobs each user has stored (created and not deleted), against its quota.
CREATE TABLE blob_usage (
    user_id BLOB    NOT NULL PRIMARY KEY CHECK (length(user_id) = 32),
    bytes   INTEGER NOT NULL CHECK (bytes >= 0)
);
