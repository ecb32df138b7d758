-- People: handles, profiles, contacts, blocks, presence settings (PostgreSQL).
--
-- Append-only: once this file has landed it is never edited; changes go in a new file.

-- A user's handle, stored only as HMAC-SHA256(relay handle key, lookup key of `name.NN`):
-- a dump of the database does not list handles. One handle per user.
CREATE TABLE handles (
    hash    BYTEA  NOT NULL PRIMARY KEY CHECK (octet_length(hash) = 32),
    user_id BYTEA  NOT NULL UNIQUE CHECK (octet_length(user_id) = 32),
    set_at  BIGINT NOT NULL CHECK (set_at >= 0)
);

-- Per-user settings of the people domain. `profile` is sealed with the user's profile key
-- (the relay never holds it); only `profile_version` is readable. `last_seen` is the only
-- presence state ever stored (seconds, written when a session starts and ends).
-- `request_day`/`requests_today` count contact requests for the daily limit.
CREATE TABLE people (
    user_id          BYTEA   NOT NULL PRIMARY KEY CHECK (octet_length(user_id) = 32),
    profile_version  BIGINT  NOT NULL DEFAULT 0 CHECK (profile_version >= 0),
    profile          BYTEA,
    presence_visible BOOLEAN NOT NULL DEFAULT TRUE,
    last_seen        BIGINT  NOT NULL DEFAULT 0 CHECK (last_seen >= 0),
    request_day      BIGINT  NOT NULL DEFAULT 0 CHECK (request_day >= 0),
    requests_today   BIGINT  NOT NULL DEFAULT 0 CHECK (requests_today >= 0)
);

-- What `owner` sees of its relation with `peer`, one row per direction: each user's rows are
-- that user's own view (a blocked user's view is left as it was, so it learns nothing).
-- state: 1 contact, 2 outgoing request (intro = the request as sent), 3 incoming request.
CREATE TABLE contacts (
    owner BYTEA    NOT NULL CHECK (octet_length(owner) = 32),
    peer  BYTEA    NOT NULL CHECK (octet_length(peer) = 32),
    state SMALLINT NOT NULL CHECK (state IN (1, 2, 3)),
    intro BYTEA,
    since BIGINT   NOT NULL CHECK (since >= 0),
    PRIMARY KEY (owner, peer)
);

-- `owner` blocked `peer`: nothing `peer` directs at `owner` reaches `owner`.
CREATE TABLE blocks (
    owner BYTEA  NOT NULL CHECK (octet_length(owner) = 32),
    peer  BYTEA  NOT NULL CHECK (octet_length(peer) = 32),
    since BIGINT NOT NULL CHECK (since >= 0),
    PRIMARY KEY (owner, peer)
);
