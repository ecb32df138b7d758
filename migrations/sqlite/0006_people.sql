-- People: handles, profiles, contacts, blocks, presence settings (SQLite).
--
-- Append-only: once this file has landed it is never edited; changes go in a new file.

-- A user's handle, stored only as HMAC-SHA256(relay handle key, lookup key of `name.NN`):
-- a dump of the database does not list handles. One handle per user.
CREATE TABLE handles (
    hash    BLOB   NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    user_id BLOB   NOT NULL UNIQUE CHECK (length(user_id) = 32),
    set_at  INTEGER NOT NULL CHECK (set_at >= 0)
);

-- Per-user settings of the people domain. `profile` is sealed with the user's profile key
-- (the relay never holds it); only `profile_version` is readable. `last_seen` is the only
-- presence state ever stored (seconds, written when a session starts and ends).
-- `request_day`/`requests_today` count contact requests for the daily limit.
CREATE TABLE people (
    user_id          BLOB    NOT NULL PRIMARY KEY CHECK (length(user_id) = 32),
    profile_version  INTEGER NOT NULL DEFAULT 0 CHECK (profile_version >= 0),
    profile          BLOB,
    presence_visible INTEGER NOT NULL DEFAULT 1 CHECK (presence_visible IN (0, 1)),
    last_seen        INTEGER NOT NULL DEFAULT 0 CHECK (last_seen >= 0),
    request_day      INTEGER NOT NULL DEFAULT 0 CHECK (request_day >= 0),
    requests_today   INTEGER NOT NULL DEFAULT 0 CHECK (requests_today >= 0)
);

-- What `owner` sees of its relation with `peer`, one row per direction: each user's rows are
-- that user's own view (a blocked user's view is left as it was, so it learns nothing).
-- state: 1 contact, 2 outgoing request (intro = the request as sent), 3 incoming request.
CREATE TABLE contacts (
    owner BLOB     NOT NULL CHECK (length(owner) = 32),
    peer  BLOB     NOT NULL CHECK (length(peer) = 32),
    state INTEGER  NOT NULL CHECK (state IN (1, 2, 3)),
    intro BLOB,
    since INTEGER  NOT NULL CHECK (since >= 0),
    PRIMARY KEY (owner, peer)
);

-- `owner` blocked `peer`: nothing `peer` directs at `owner` reaches `owner`.
CREATE TABLE blocks (
    owner BLOB   NOT NULL CHECK (length(owner) = 32),
    peer  BLOB   NOT NULL CHECK (length(peer) = 32),
    since INTEGER NOT NULL CHECK (since >= 0),
    PRIMARY KEY (owner, peer)
);
