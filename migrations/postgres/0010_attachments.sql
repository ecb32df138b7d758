-- Attachments (docs/protocol.md §16): blobs the relay stores and cannot read, the messages
-- that refer to them, and each user's bytes stored (its quota). Times are Unix milliseconds.
-- `stored`: parts 0..stored are in the blob storage. `refs`: references ever made, a version
-- the deletion job checks so that it never deletes a blob a message just started to refer
-- to. `deleting`: the blob's parts are being deleted; it is gone for everyone.
CREATE TABLE blobs (
    blob_id            BYTEA   NOT NULL PRIMARY KEY CHECK (octet_length(blob_id) = 32),
    user_id            BYTEA   NOT NULL CHECK (octet_length(user_id) = 32),
    size               BIGINT  NOT NULL CHECK (size > 0),
    digest             BYTEA   NOT NULL CHECK (octet_length(digest) = 32),
    stored             BIGINT  NOT NULL DEFAULT 0 CHECK (stored >= 0),
    complete           BOOLEAN NOT NULL DEFAULT FALSE,
    refs               BIGINT  NOT NULL DEFAULT 0 CHECK (refs >= 0),
    deleting           BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         BIGINT  NOT NULL CHECK (created_at >= 0),
    unreferenced_until BIGINT  NOT NULL CHECK (unreferenced_until >= 0),
    expires_at         BIGINT  NOT NULL CHECK (expires_at >= 0)
);
CREATE INDEX blobs_by_expiry ON blobs (expires_at);
CREATE INDEX blobs_by_unreferenced ON blobs (unreferenced_until);

-- One row per message that refers to a blob.
CREATE TABLE blob_refs (
    blob_id  BYTEA   NOT NULL CHECK (octet_length(blob_id) = 32),
    conv_id  BYTEA   NOT NULL CHECK (octet_length(conv_id) = 16),
    conv_seq BIGINT  NOT NULL CHECK (conv_seq > 0),
    PRIMARY KEY (blob_id, conv_id, conv_seq)
);
CREATE INDEX blob_refs_by_conv ON blob_refs (conv_id, conv_seq);

-- Bytes of blobs each user has stored (created and not deleted), against its quota.
CREATE TABLE blob_usage (
    user_id BYTEA   NOT NULL PRIMARY KEY CHECK (octet_length(user_id) = 32),
    bytes   BIGINT  NOT NULL CHECK (bytes >= 0)
);
