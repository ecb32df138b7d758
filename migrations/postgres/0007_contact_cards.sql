-- Contact cards (PostgreSQL).
--
-- Append-only: once this file has landed it is never edited; changes go in a new file.
--
-- What a user's devices keep about one other user (its profile key, the device chain they
-- pinned, the handle they found it by), sealed under the user's data key: opaque to the
-- relay. Kept apart from `contacts` so a pin outlives a removal or a block (a contact added
-- again is checked against the same pin). At most one per (owner, peer); written only for a
-- peer the owner has a contact row or a block with.
CREATE TABLE contact_cards (
    owner      BYTEA  NOT NULL CHECK (octet_length(owner) = 32),
    peer       BYTEA  NOT NULL CHECK (octet_length(peer) = 32),
    card       BYTEA  NOT NULL,
    updated_at BIGINT NOT NULL CHECK (updated_at >= 0),
    PRIMARY KEY (owner, peer)
);
