-- Conversations: the relay as MLS's Delivery Service, and the KeyPackage directory (SQLite).
--
-- Append-only: once this file has landed it is never edited; changes go in a new file.

-- One row per conversation (its id is the MLS group id). `epoch` and `head` move together
-- under the row's lock: a commit is stored only for the current epoch (first valid commit per
-- epoch wins). `content_count` numbers the Content messages, so unread counts are a
-- subtraction. `group_state` is the relay's openmls PublicGroup (public tree and context, no
-- secrets); `group_info` the latest GroupInfo, for external joins. `floor_epoch` is the epoch
-- entered by the last commit that added or removed a leaf: no application message of an
-- earlier epoch is accepted any more, so a removed device cannot read what is said after its
-- removal and a new device can read everything stored after its join.
CREATE TABLE conversations (
    conv_id          BLOB    NOT NULL PRIMARY KEY CHECK (length(conv_id) = 16),
    epoch            INTEGER NOT NULL CHECK (epoch >= 0),
    head             INTEGER NOT NULL DEFAULT 0 CHECK (head >= 0),
    content_count    INTEGER NOT NULL DEFAULT 0 CHECK (content_count >= 0),
    created_at       INTEGER NOT NULL CHECK (created_at >= 0),
    last_activity    INTEGER NOT NULL CHECK (last_activity >= 0),
    group_state      BLOB    NOT NULL,
    group_info       BLOB    NOT NULL,
    group_info_epoch INTEGER NOT NULL CHECK (group_info_epoch >= 0),
    floor_epoch      INTEGER NOT NULL DEFAULT 0 CHECK (floor_epoch >= 0),
    -- Retention keeps the messages earliest..=head; `trimmed_handshake` is the last commit
    -- or proposal it deleted: a device behind it must rejoin (external commit).
    earliest          INTEGER NOT NULL DEFAULT 1 CHECK (earliest >= 1),
    trimmed_handshake INTEGER NOT NULL DEFAULT 0 CHECK (trimmed_handshake >= 0)
);

-- The group's leaves: one per member device, mirrored from `group_state` by every commit.
-- `acked` is the device's cursor in the conversation ("delivered").
CREATE TABLE conv_leaves (
    conv_id   BLOB    NOT NULL CHECK (length(conv_id) = 16),
    device_id BLOB    NOT NULL CHECK (length(device_id) = 32),
    user_id   BLOB    NOT NULL CHECK (length(user_id) = 32),
    acked     INTEGER NOT NULL DEFAULT 0 CHECK (acked >= 0),
    PRIMARY KEY (conv_id, device_id)
);
CREATE INDEX conv_leaves_by_device ON conv_leaves (device_id);

-- Member users (a user with at least one leaf) and their read markers: `read_seq` is the
-- conv_seq read up to, `read_index` the content count there.
CREATE TABLE conv_members (
    conv_id    BLOB    NOT NULL CHECK (length(conv_id) = 16),
    user_id    BLOB    NOT NULL CHECK (length(user_id) = 32),
    read_seq   INTEGER NOT NULL DEFAULT 0 CHECK (read_seq >= 0),
    read_index INTEGER NOT NULL DEFAULT 0 CHECK (read_index >= 0),
    joined_seq INTEGER NOT NULL CHECK (joined_seq >= 0),
    PRIMARY KEY (conv_id, user_id)
);
CREATE INDEX conv_members_by_user ON conv_members (user_id);

-- The conversation streams. `class`: 0 commit, 1 proposal, 2 content, 3 control.
-- `content_index` is the conversation's content count once this message is stored.
CREATE TABLE conv_messages (
    conv_id       BLOB    NOT NULL CHECK (length(conv_id) = 16),
    conv_seq      INTEGER NOT NULL CHECK (conv_seq >= 1),
    device_id     BLOB    NOT NULL CHECK (length(device_id) = 32),
    device_seq    INTEGER NOT NULL CHECK (device_seq >= 1),
    epoch         INTEGER NOT NULL CHECK (epoch >= 0),
    class         INTEGER NOT NULL CHECK (class IN (0, 1, 2, 3)),
    content_index INTEGER NOT NULL CHECK (content_index >= 0),
    sent_at       INTEGER NOT NULL CHECK (sent_at >= 0),
    message       BLOB    NOT NULL,
    PRIMARY KEY (conv_id, conv_seq),
    -- A retried send finds its original here.
    UNIQUE (conv_id, device_id, device_seq)
);

-- Each device's KeyPackages, by their MLS hash reference. A claim deletes the one it hands
-- out, except the device's last-resort package (at most one per device).
CREATE TABLE key_packages (
    device_id   BLOB    NOT NULL CHECK (length(device_id) = 32),
    reference   BLOB    NOT NULL,
    user_id     BLOB    NOT NULL CHECK (length(user_id) = 32),
    last_resort INTEGER NOT NULL CHECK (last_resort IN (0, 1)),
    package     BLOB    NOT NULL,
    uploaded_at INTEGER NOT NULL CHECK (uploaded_at >= 0),
    PRIMARY KEY (device_id, reference)
);
