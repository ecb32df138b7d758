//! The people domain of storage: handles, profiles, contacts, blocks, presence settings, and
//! the notices the relay writes into users' logs when their contacts change. Every statement
//! here is written once for both backends.
//!
//! # Each user's rows are that user's own view
//!
//! `contacts` holds one row per direction: what `owner` sees of its relation with `peer`
//! (contact, outgoing request, incoming request). An operation by X about Y always changes
//! X's rows and writes a notice into X's log; it changes Y's rows and writes into Y's log only
//! when Y has not blocked X (`PeopleTx::delivered`). So a blocked user's view, answers and log are
//! exactly what they would be if the other user simply had not answered: its request looks
//! pending, its acceptance looks done. Blocking only changes the blocker's rows. Y's side is
//! written the same way in either case, inside a savepoint that is rolled back when it does
//! not reach Y, so the answer takes the same time too (`docs/benchmarks.md` measures it).
//!
//! # Invariants
//!
//! - Every operation runs in ONE transaction that locks both users' rows ([`Tx::lock_user`],
//!   in user order like the append batch, so transactions on any nodes never wait in a
//!   cycle), changes the rows and appends the notices. A notice is an event of the user's
//!   log from [`RELAY_DEVICE`] with `device_seq = seq`, so it gets the next sequence, is
//!   replayed by every device from its cursor and is never lost or reordered. A notice is
//!   never refused for the user's quota, but it counts towards it like any event (others'
//!   requests are bounded by their daily limits; retention frees them like any event).
//! - A request goes only to a user with a device chain (`no_such_contact` otherwise): no log
//!   is started for an id nobody holds.
//! - A handle's `hash` is unique (one user per handle) and a user has at most one handle;
//!   setting a handle replaces the old one in the same transaction, and keeps its number
//!   when the name is the same.
//! - A profile's version only grows.
//! - The request counters, pending requests and contacts stay within [`PeopleLimits`], on
//!   both sides of an acceptance that reaches the requester.

use std::sync::LazyLock;

use async_trait::async_trait;
use ferry_protocol::people::{
    ContactInfo, ContactState, Intro, LAST_SEEN_GRANULARITY_S, Notice, RELAY_DEVICE, SealedCard,
    SealedProfile,
};
use ferry_protocol::{ErrorCode, Event, UserId, codec};
use sqlx::QueryBuilder;

use super::StoreError;
use super::sql::sqlite_direct::numbered;
use super::sql::{
    Db, SqlStore, TOUCH_ROWS_PER_STATEMENT, Tx, db_int, from_db_int, in_tx, key32, on_reader,
    on_writer,
};

/// Seconds in the day of the daily request limit (UTC days).
const DAY_S: u64 = 86_400;

/// [`PeopleStore::presence_peers`]: user `$1`'s mutual contacts when both show presence,
/// those after peer `$2` (an empty id: from the first), at most `$3` (PostgreSQL: NULL for
/// all; SQLite: -1).
const PRESENCE_PEERS: &str = "SELECT c.peer FROM contacts c
     JOIN contacts back ON back.owner = c.peer AND back.peer = c.owner AND back.state = 1
     LEFT JOIN people mine ON mine.user_id = c.owner
     LEFT JOIN people theirs ON theirs.user_id = c.peer
     WHERE c.owner = $1 AND c.state = 1 AND c.peer > $2
       AND COALESCE(mine.presence_visible, TRUE)
       AND COALESCE(theirs.presence_visible, TRUE)
     ORDER BY c.peer
     LIMIT $3";

/// The presence peers a SQLite relay reads on the session's own thread, as a point read
/// ([`Direct::read_point`](super::sql::sqlite_direct::Direct::read_point)): a few dozen index
/// lookups. A user with more has the rest read on the blocking pool.
pub const PRESENCE_PEERS_POINT_ROWS: usize = 64;

/// [`PRESENCE_PEERS`] with SQLite's parameters, for rusqlite.
static PRESENCE_PEERS_SQLITE: LazyLock<String> = LazyLock::new(|| numbered(PRESENCE_PEERS));

/// What one user may do in the people domain; a relay's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeopleLimits {
    /// Contact requests a user may send per (UTC) day, repeats included.
    pub requests_per_day: u64,
    /// Outgoing requests a user may have unanswered at once.
    pub pending_requests: u64,
    /// Contacts a user may have.
    pub contacts: u64,
    /// Users a user may block.
    pub blocks: u64,
}

impl Default for PeopleLimits {
    fn default() -> Self {
        Self {
            requests_per_day: 100,
            pending_requests: 200,
            contacts: 2000,
            blocks: 10_000,
        }
    }
}

/// The notices an operation appended to users' logs, for the hub to deliver.
#[derive(Debug, Default, PartialEq, Eq)]
#[must_use = "the users whose logs grew must be woken"]
pub struct Notified(pub Vec<(UserId, Event)>);

/// Contact changes that need no intro.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactChange {
    /// Decline the peer's pending request.
    Decline,
    /// Withdraw this user's pending request to the peer.
    Cancel,
    /// Stop being contacts.
    Remove,
    /// Block the peer.
    Block,
    /// Unblock the peer.
    Unblock,
}

/// A user's contact list as the relay keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactList {
    /// Contacts, requests both ways and blocks.
    pub contacts: Vec<ContactInfo>,
    /// Whether the user shows presence.
    pub presence_visible: bool,
}

/// Storage of the people domain (see the module docs).
#[async_trait]
pub trait PeopleStore: Send + Sync {
    /// Gives `user` the handle `name.NN` for the first number in `candidates` (number, keyed
    /// hash) that nobody else holds, replacing its old handle; keeps the old number if its
    /// hash is among the candidates. Fails with `Refused(handle_taken)` when every
    /// candidate is taken (the old handle is kept then).
    async fn set_handle(
        &self,
        user: UserId,
        name: &str,
        candidates: &[(u8, [u8; 32])],
        now_ms: u64,
    ) -> Result<(u8, Notified), StoreError>;

    /// Removes `user`'s handle, if it has one.
    async fn clear_handle(&self, user: UserId, now_ms: u64) -> Result<Notified, StoreError>;

    /// The user holding the handle with this keyed hash.
    async fn find_handle(&self, hash: &[u8; 32]) -> Result<Option<UserId>, StoreError>;

    /// Whether `viewer` may read `user`'s device chain: its own, a user with a handle (it
    /// chose to be found), or a user it has a request or contact with, either way.
    async fn chain_visible(&self, viewer: UserId, user: UserId) -> Result<bool, StoreError>;

    /// `intro.from` asks `intro.to` to become a contact (see the module docs for what a
    /// repeat, a crossing request and a block do).
    async fn request_contact(
        &self,
        intro: &Intro,
        limits: &PeopleLimits,
        now_ms: u64,
    ) -> Result<Notified, StoreError>;

    /// `intro.from` accepts the pending request of `intro.to`. `Refused(no_such_contact)`
    /// without one.
    async fn accept_contact(
        &self,
        intro: &Intro,
        limits: &PeopleLimits,
        now_ms: u64,
    ) -> Result<Notified, StoreError>;

    /// Declines, cancels, removes, blocks or unblocks. `Refused(no_such_contact)` when there
    /// is nothing to decline, cancel or remove; blocking and unblocking are idempotent; a
    /// block beyond `limits.blocks` is `Refused(block_limit)`.
    async fn change_contact(
        &self,
        user: UserId,
        peer: UserId,
        change: ContactChange,
        limits: &PeopleLimits,
        now_ms: u64,
    ) -> Result<Notified, StoreError>;

    /// Stores the card `owner`'s devices keep about `peer` (opaque: sealed under `owner`'s
    /// data key). `Refused(no_such_contact)` unless `owner` has a contact row or a block with
    /// `peer`, or a card for it already: cards stay bounded by the contact limits.
    async fn set_card(
        &self,
        owner: UserId,
        peer: UserId,
        card: &SealedCard,
        now_ms: u64,
    ) -> Result<(), StoreError>;

    /// Whether `owner` has blocked `peer` (so nothing `peer` directs at `owner` may reach it).
    async fn is_blocked(&self, owner: UserId, peer: UserId) -> Result<bool, StoreError>;

    /// `user`'s contact list; last-seen times (coarse) only for mutual contacts when both
    /// show presence.
    async fn contacts(&self, user: UserId) -> Result<ContactList, StoreError>;

    /// Stores `user`'s profile. `Refused(conflict)` unless its version is above the stored
    /// one.
    async fn set_profile(
        &self,
        user: UserId,
        profile: &SealedProfile,
        now_ms: u64,
    ) -> Result<Notified, StoreError>;

    /// `user`'s profile as `viewer` may see it: its own, or a user `viewer` counts as a
    /// contact. `Refused(not_a_contact)` for anyone else.
    async fn profile(
        &self,
        viewer: UserId,
        user: UserId,
    ) -> Result<Option<SealedProfile>, StoreError>;

    /// Shows or hides `user`'s presence.
    async fn set_presence_visible(
        &self,
        user: UserId,
        visible: bool,
        now_ms: u64,
    ) -> Result<Notified, StoreError>;

    /// The users who may see `user`'s presence and whose presence `user` may see: mutual
    /// contacts when both show presence (empty when `user` hides it).
    async fn presence_peers(&self, user: UserId) -> Result<Vec<UserId>, StoreError>;

    /// Records when each user was last online (Unix seconds), in one statement per few
    /// hundred users; a time never moves one back. The relay calls it from its write-behind
    /// ([`LastSeenWrites`](super::LastSeenWrites)), once a second at most.
    async fn touch_last_seen(&self, seen: &[(UserId, u64)]) -> Result<(), StoreError>;
}

/// [`PRESENCE_PEERS`] on a rusqlite connection: at most `limit` peers after `after`
/// (`limit` -1: all of them).
fn sqlite_presence_peers(
    conn: &mut rusqlite::Connection,
    user: UserId,
    after: &[u8],
    limit: i64,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut select = conn.prepare_cached(&PRESENCE_PEERS_SQLITE)?;
    let rows = select.query_map(
        rusqlite::params![user.as_bytes().as_slice(), after, limit],
        |row| row.get(0),
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Appends `notice` to `user`'s log as the next event, from [`RELAY_DEVICE`] with
/// `device_seq = seq`. The caller holds `user`'s row lock ([`Tx::lock_user`]).
pub(super) async fn append_notice(
    tx: &mut Tx,
    user: UserId,
    notice: &Notice,
    now_ms: u64,
) -> Result<Event, StoreError> {
    let payload = notice.to_payload();
    let id = user.as_bytes().as_slice();
    let now_ms = db_int(now_ms);
    let head: i64 = in_tx!(tx, |conn| {
        let head: i64 = sqlx::query_scalar("SELECT head FROM users WHERE user_id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO events (user_id, seq, device_id, device_seq, payload, committed_at_ms)
             VALUES ($1, $2, $3, $2, $4, $5)",
        )
        .bind(id)
        .bind(head + 1)
        .bind(RELAY_DEVICE.as_bytes().as_slice())
        .bind(payload.0.as_slice())
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE users SET head = $2, bytes = bytes + $3 WHERE user_id = $1")
            .bind(id)
            .bind(head + 1)
            .bind(db_int(payload.0.len() as u64))
            .execute(&mut *conn)
            .await?;
        head
    });
    let seq = from_db_int(head + 1, "head")?;
    Ok(Event {
        seq,
        device: RELAY_DEVICE,
        device_seq: seq,
        payload,
    })
}

const CONTACT: i16 = 1;
const OUTGOING: i16 = 2;
const INCOMING: i16 = 3;

fn state_of(code: i16) -> Result<ContactState, StoreError> {
    match code {
        CONTACT => Ok(ContactState::Contact),
        OUTGOING => Ok(ContactState::Outgoing),
        INCOMING => Ok(ContactState::Incoming),
        other => Err(StoreError::Corrupt(format!("contact state {other}"))),
    }
}

fn refused(code: ErrorCode) -> StoreError {
    StoreError::Refused(code)
}

/// One transaction of the people domain: the rows of two users, and the notices written.
struct PeopleTx {
    tx: Tx,
    now_ms: u64,
    notified: Notified,
}

impl PeopleTx {
    /// Begins and locks the users' rows in user order (the append batch's order).
    async fn begin(store: &SqlStore, users: &[UserId], now_ms: u64) -> Result<Self, StoreError> {
        let mut tx = store.db.begin().await?;
        let mut sorted = users.to_vec();
        sorted.sort();
        sorted.dedup();
        for user in &sorted {
            tx.lock_user(user.as_bytes()).await?;
        }
        Ok(Self {
            tx,
            now_ms,
            notified: Notified::default(),
        })
    }

    async fn commit(self) -> Result<Notified, StoreError> {
        self.tx.commit().await?;
        Ok(self.notified)
    }

    fn now_s(&self) -> i64 {
        db_int(self.now_ms / 1000)
    }

    /// Appends `notice` to `user`'s log (the user's row is locked).
    async fn notify(&mut self, user: UserId, notice: Notice) -> Result<(), StoreError> {
        let event = append_notice(&mut self.tx, user, &notice, self.now_ms).await?;
        self.notified.0.push((user, event));
        Ok(())
    }

    /// What `owner` sees of `peer`: the state code and the stored intro.
    async fn view(
        &mut self,
        owner: UserId,
        peer: UserId,
    ) -> Result<Option<(i16, Option<Vec<u8>>)>, StoreError> {
        Ok(in_tx!(&mut self.tx, |conn| {
            sqlx::query_as("SELECT state, intro FROM contacts WHERE owner = $1 AND peer = $2")
                .bind(owner.as_bytes().as_slice())
                .bind(peer.as_bytes().as_slice())
                .fetch_optional(&mut *conn)
                .await?
        }))
    }

    async fn state(&mut self, owner: UserId, peer: UserId) -> Result<Option<i16>, StoreError> {
        Ok(self.view(owner, peer).await?.map(|(state, _)| state))
    }

    async fn set_view(
        &mut self,
        owner: UserId,
        peer: UserId,
        state: i16,
        intro: Option<&Intro>,
    ) -> Result<(), StoreError> {
        let intro = intro.map(codec::encode);
        let since = self.now_s();
        in_tx!(&mut self.tx, |conn| {
            sqlx::query(
                "INSERT INTO contacts (owner, peer, state, intro, since) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (owner, peer) DO UPDATE SET
                     state = excluded.state, intro = excluded.intro, since = excluded.since",
            )
            .bind(owner.as_bytes().as_slice())
            .bind(peer.as_bytes().as_slice())
            .bind(state)
            .bind(intro)
            .bind(since)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    async fn drop_view(&mut self, owner: UserId, peer: UserId) -> Result<(), StoreError> {
        in_tx!(&mut self.tx, |conn| {
            sqlx::query("DELETE FROM contacts WHERE owner = $1 AND peer = $2")
                .bind(owner.as_bytes().as_slice())
                .bind(peer.as_bytes().as_slice())
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// Whether what `from` directs at `to` reaches `to`: `to` has not blocked `from`.
    async fn delivered(&mut self, from: UserId, to: UserId) -> Result<bool, StoreError> {
        Ok(!self.blocked(to, from).await?)
    }

    async fn blocked(&mut self, owner: UserId, peer: UserId) -> Result<bool, StoreError> {
        let found: Option<i64> = in_tx!(&mut self.tx, |conn| {
            sqlx::query_scalar("SELECT since FROM blocks WHERE owner = $1 AND peer = $2")
                .bind(owner.as_bytes().as_slice())
                .bind(peer.as_bytes().as_slice())
                .fetch_optional(&mut *conn)
                .await?
        });
        Ok(found.is_some())
    }

    /// Starts the other user's side of a directed operation. It is written the same way
    /// whether or not it reaches that user, inside a savepoint that [`Self::end_peer_side`]
    /// keeps or rolls back: a request to a user who blocked the sender runs the same
    /// statements as one that reaches its user, so its answer takes the same time, and
    /// nothing of it stays. Returns the mark to roll the notices back to.
    async fn begin_peer_side(&mut self) -> Result<usize, StoreError> {
        in_tx!(&mut self.tx, |conn| {
            sqlx::query("SAVEPOINT peer_side")
                .execute(&mut *conn)
                .await?;
        });
        Ok(self.notified.0.len())
    }

    /// Keeps the other user's side (`keep`) or rolls it back, with its notices: one
    /// statement either way.
    async fn end_peer_side(&mut self, keep: bool, mark: usize) -> Result<(), StoreError> {
        let statement = if keep {
            "RELEASE SAVEPOINT peer_side"
        } else {
            "ROLLBACK TO SAVEPOINT peer_side"
        };
        in_tx!(&mut self.tx, |conn| {
            sqlx::query(statement).execute(&mut *conn).await?;
        });
        if !keep {
            self.notified.0.truncate(mark);
        }
        Ok(())
    }

    /// Lifts `owner`'s block of `peer`, if there is one (with its notice).
    async fn unblock(&mut self, owner: UserId, peer: UserId) -> Result<(), StoreError> {
        let removed = in_tx!(&mut self.tx, |conn| {
            sqlx::query("DELETE FROM blocks WHERE owner = $1 AND peer = $2")
                .bind(owner.as_bytes().as_slice())
                .bind(peer.as_bytes().as_slice())
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if removed == 1 {
            self.notify(owner, Notice::Unblocked { peer }).await?;
        }
        Ok(())
    }

    /// Makes `user`'s row of settings (profile, presence, request counts) if it has none.
    async fn ensure_people_row(&mut self, user: UserId) -> Result<(), StoreError> {
        in_tx!(&mut self.tx, |conn| {
            sqlx::query(
                "INSERT INTO people (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user.as_bytes().as_slice())
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    async fn count(&mut self, owner: UserId, state: i16) -> Result<u64, StoreError> {
        let count: i64 = in_tx!(&mut self.tx, |conn| {
            sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE owner = $1 AND state = $2")
                .bind(owner.as_bytes().as_slice())
                .bind(state)
                .fetch_one(&mut *conn)
                .await?
        });
        from_db_int(count, "count")
    }

    /// Counts one request of `user` against the daily limit, or refuses it.
    async fn count_request(
        &mut self,
        user: UserId,
        limits: &PeopleLimits,
    ) -> Result<(), StoreError> {
        let day = db_int(self.now_ms / 1000 / DAY_S);
        let id = user.as_bytes().as_slice();
        self.ensure_people_row(user).await?;
        let (stored_day, today): (i64, i64) = in_tx!(&mut self.tx, |conn| {
            sqlx::query_as("SELECT request_day, requests_today FROM people WHERE user_id = $1")
                .bind(id)
                .fetch_one(&mut *conn)
                .await?
        });
        let today = if stored_day == day { today } else { 0 };
        if from_db_int(today, "requests_today")? >= limits.requests_per_day {
            return Err(refused(ErrorCode::RequestLimit));
        }
        in_tx!(&mut self.tx, |conn| {
            sqlx::query(
                "UPDATE people SET request_day = $2, requests_today = $3 WHERE user_id = $1",
            )
            .bind(id)
            .bind(day)
            .bind(today + 1)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// `user` becomes a contact of one more user, within the limit.
    async fn check_contact_room(
        &mut self,
        user: UserId,
        limits: &PeopleLimits,
    ) -> Result<(), StoreError> {
        if self.count(user, CONTACT).await? >= limits.contacts {
            return Err(refused(ErrorCode::ContactLimit));
        }
        Ok(())
    }

    /// `accepter` accepts `requester`'s request with `intro` (the accepter's); the
    /// accepter's view says incoming.
    async fn accept(
        &mut self,
        accepter: UserId,
        requester: UserId,
        intro: &Intro,
        limits: &PeopleLimits,
    ) -> Result<(), StoreError> {
        self.check_contact_room(accepter, limits).await?;
        let reaches = self.delivered(accepter, requester).await?
            && self.state(requester, accepter).await? == Some(OUTGOING);
        // The requester's limit too, where the acceptance reaches it (a blocker's count is
        // none of the blocked user's business; counted anyway, for the same time).
        let requester_contacts = self.count(requester, CONTACT).await?;
        if reaches && requester_contacts >= limits.contacts {
            return Err(refused(ErrorCode::ContactLimit));
        }
        self.set_view(accepter, requester, CONTACT, None).await?;
        let notice = Notice::Accepted {
            peer: requester,
            intro: Box::new(intro.clone()),
        };
        self.notify(accepter, notice).await?;
        let mark = self.begin_peer_side().await?;
        self.set_view(requester, accepter, CONTACT, None).await?;
        let notice = Notice::Accepted {
            peer: accepter,
            intro: Box::new(intro.clone()),
        };
        self.notify(requester, notice).await?;
        self.end_peer_side(reaches, mark).await
    }
}

fn decode_card(bytes: Option<Vec<u8>>) -> Result<Option<SealedCard>, StoreError> {
    bytes
        .map(|bytes| {
            codec::decode(&bytes).map_err(|e| StoreError::Corrupt(format!("stored card: {e}")))
        })
        .transpose()
}

fn decode_intro(bytes: &[u8]) -> Result<Intro, StoreError> {
    codec::decode(bytes).map_err(|e| StoreError::Corrupt(format!("stored intro: {e}")))
}

#[async_trait]
impl PeopleStore for SqlStore {
    async fn set_handle(
        &self,
        user: UserId,
        name: &str,
        candidates: &[(u8, [u8; 32])],
        now_ms: u64,
    ) -> Result<(u8, Notified), StoreError> {
        let mut ptx = PeopleTx::begin(self, &[user], now_ms).await?;
        let id = user.as_bytes().as_slice();
        let current: Option<Vec<u8>> = in_tx!(&mut ptx.tx, |conn| {
            sqlx::query_scalar("SELECT hash FROM handles WHERE user_id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
        });
        if let Some(current) = &current
            && let Some((number, _)) = candidates.iter().find(|(_, h)| h.as_slice() == current)
        {
            // The same name again: the same number, nothing changes.
            ptx.tx.commit().await?;
            return Ok((*number, Notified::default()));
        }
        in_tx!(&mut ptx.tx, |conn| {
            sqlx::query("DELETE FROM handles WHERE user_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        });
        let set_at = ptx.now_s();
        let mut chosen = None;
        for (number, hash) in candidates {
            // Taken numbers are skipped; a concurrent claim of the same one waits for the
            // other transaction and then skips it too.
            let inserted = in_tx!(&mut ptx.tx, |conn| {
                sqlx::query(
                    "INSERT INTO handles (hash, user_id, set_at) VALUES ($1, $2, $3)
                     ON CONFLICT (hash) DO NOTHING",
                )
                .bind(hash.as_slice())
                .bind(id)
                .bind(set_at)
                .execute(&mut *conn)
                .await?
                .rows_affected()
            });
            if inserted == 1 {
                chosen = Some(*number);
                break;
            }
        }
        let number = chosen.ok_or(refused(ErrorCode::HandleTaken))?;
        let handle = format!("{name}.{number:02}");
        ptx.notify(
            user,
            Notice::HandleChanged {
                handle: Some(handle),
            },
        )
        .await?;
        Ok((number, ptx.commit().await?))
    }

    async fn clear_handle(&self, user: UserId, now_ms: u64) -> Result<Notified, StoreError> {
        let mut ptx = PeopleTx::begin(self, &[user], now_ms).await?;
        let removed = in_tx!(&mut ptx.tx, |conn| {
            sqlx::query("DELETE FROM handles WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .execute(&mut *conn)
                .await?
                .rows_affected()
        });
        if removed > 0 {
            ptx.notify(user, Notice::HandleChanged { handle: None })
                .await?;
        }
        ptx.commit().await
    }

    async fn find_handle(&self, hash: &[u8; 32]) -> Result<Option<UserId>, StoreError> {
        let user: Option<Vec<u8>> = on_reader!(&self.db, |pool| {
            sqlx::query_scalar("SELECT user_id FROM handles WHERE hash = $1")
                .bind(hash.as_slice())
                .fetch_optional(pool)
                .await?
        });
        user.map(|bytes| key32(&bytes, "user_id").map(UserId))
            .transpose()
    }

    async fn chain_visible(&self, viewer: UserId, user: UserId) -> Result<bool, StoreError> {
        if viewer == user {
            return Ok(true);
        }
        let visible: bool = on_reader!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM handles WHERE user_id = $2)
                     OR EXISTS (SELECT 1 FROM contacts WHERE owner = $1 AND peer = $2)
                     OR EXISTS (SELECT 1 FROM contacts WHERE owner = $2 AND peer = $1)",
            )
            .bind(viewer.as_bytes().as_slice())
            .bind(user.as_bytes().as_slice())
            .fetch_one(pool)
            .await?
        });
        Ok(visible)
    }

    async fn request_contact(
        &self,
        intro: &Intro,
        limits: &PeopleLimits,
        now_ms: u64,
    ) -> Result<Notified, StoreError> {
        let (me, peer) = (intro.from, intro.to);
        if me == peer {
            return Err(refused(ErrorCode::BadIntro));
        }
        let has_chain: bool = on_reader!(&self.db, |pool| {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM chain_links WHERE user_id = $1)")
                .bind(peer.as_bytes().as_slice())
                .fetch_one(pool)
                .await?
        });
        if !has_chain {
            return Err(refused(ErrorCode::NoSuchContact));
        }
        let mut ptx = PeopleTx::begin(self, &[me, peer], now_ms).await?;
        // Asking a user one has blocked unblocks it.
        ptx.unblock(me, peer).await?;
        match ptx.state(me, peer).await? {
            Some(CONTACT) => return ptx.commit().await,
            // The peer asked first: asking back accepts.
            Some(INCOMING) => {
                ptx.accept(me, peer, intro, limits).await?;
                return ptx.commit().await;
            }
            Some(OUTGOING) => ptx.count_request(me, limits).await?,
            _ => {
                ptx.count_request(me, limits).await?;
                if ptx.count(me, OUTGOING).await? >= limits.pending_requests {
                    return Err(refused(ErrorCode::PendingLimit));
                }
            }
        }
        ptx.set_view(me, peer, OUTGOING, Some(intro)).await?;
        let sent = Notice::RequestSent {
            intro: Box::new(intro.clone()),
        };
        ptx.notify(me, sent).await?;
        let delivered = ptx.delivered(me, peer).await?;
        match ptx.view(peer, me).await? {
            // Both asked (the peer's request was not delivered to this user, or this user's
            // view was reset): they are contacts. (Never when the peer blocked this user: a
            // block drops the blocker's view.)
            Some((OUTGOING, Some(theirs))) if delivered => {
                let theirs = decode_intro(&theirs)?;
                ptx.check_contact_room(me, limits).await?;
                ptx.check_contact_room(peer, limits).await?;
                ptx.set_view(me, peer, CONTACT, None).await?;
                ptx.set_view(peer, me, CONTACT, None).await?;
                let to_me = Notice::Accepted {
                    peer,
                    intro: Box::new(theirs),
                };
                ptx.notify(me, to_me).await?;
                let to_peer = Notice::Accepted {
                    peer: me,
                    intro: Box::new(intro.clone()),
                };
                ptx.notify(peer, to_peer).await?;
            }
            theirs => {
                // Kept when it reaches the peer and the peer has not got it yet (a repeat of
                // a request delivered before brings nothing new).
                let keep = delivered && !matches!(theirs, Some((INCOMING, _)));
                let mark = ptx.begin_peer_side().await?;
                ptx.set_view(peer, me, INCOMING, None).await?;
                let received = Notice::RequestReceived {
                    intro: Box::new(intro.clone()),
                };
                ptx.notify(peer, received).await?;
                ptx.end_peer_side(keep, mark).await?;
            }
        }
        ptx.commit().await
    }

    async fn accept_contact(
        &self,
        intro: &Intro,
        limits: &PeopleLimits,
        now_ms: u64,
    ) -> Result<Notified, StoreError> {
        let (me, peer) = (intro.from, intro.to);
        let mut ptx = PeopleTx::begin(self, &[me, peer], now_ms).await?;
        match ptx.state(me, peer).await? {
            Some(INCOMING) => {}
            // Accepted already (a retry after a lost answer): done.
            Some(CONTACT) => return ptx.commit().await,
            _ => return Err(refused(ErrorCode::NoSuchContact)),
        }
        ptx.accept(me, peer, intro, limits).await?;
        ptx.commit().await
    }

    async fn change_contact(
        &self,
        me: UserId,
        peer: UserId,
        change: ContactChange,
        limits: &PeopleLimits,
        now_ms: u64,
    ) -> Result<Notified, StoreError> {
        if me == peer {
            return Err(refused(ErrorCode::NoSuchContact));
        }
        // A block or unblock changes only this user's rows: the other user is not locked
        // (nor given a row: blocking ids nobody holds leaves nothing behind but the block).
        let locked: &[UserId] = match change {
            ContactChange::Block | ContactChange::Unblock => &[me],
            _ => &[me, peer],
        };
        let mut ptx = PeopleTx::begin(self, locked, now_ms).await?;
        // (this user's state required, the peer's matching state, the notice for each side)
        let (mine, theirs, notice): (i16, i16, fn(UserId, bool) -> Notice) = match change {
            ContactChange::Decline => (INCOMING, OUTGOING, |peer, by_me| Notice::Declined {
                peer,
                by_me,
            }),
            ContactChange::Cancel => (OUTGOING, INCOMING, |peer, by_me| Notice::Cancelled {
                peer,
                by_me,
            }),
            ContactChange::Remove => (CONTACT, CONTACT, |peer, by_me| Notice::Removed {
                peer,
                by_me,
            }),
            ContactChange::Block => {
                let blocks: i64 = in_tx!(&mut ptx.tx, |conn| {
                    sqlx::query_scalar("SELECT COUNT(*) FROM blocks WHERE owner = $1")
                        .bind(me.as_bytes().as_slice())
                        .fetch_one(&mut *conn)
                        .await?
                });
                if !ptx.blocked(me, peer).await? && from_db_int(blocks, "blocks")? >= limits.blocks
                {
                    return Err(refused(ErrorCode::BlockLimit));
                }
                let since = ptx.now_s();
                let inserted = in_tx!(&mut ptx.tx, |conn| {
                    sqlx::query(
                        "INSERT INTO blocks (owner, peer, since) VALUES ($1, $2, $3)
                         ON CONFLICT (owner, peer) DO NOTHING",
                    )
                    .bind(me.as_bytes().as_slice())
                    .bind(peer.as_bytes().as_slice())
                    .bind(since)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
                });
                if inserted == 1 {
                    // Only the blocker's view changes (see the module docs).
                    ptx.drop_view(me, peer).await?;
                    ptx.notify(me, Notice::Blocked { peer }).await?;
                }
                return ptx.commit().await;
            }
            ContactChange::Unblock => {
                ptx.unblock(me, peer).await?;
                return ptx.commit().await;
            }
        };
        if ptx.state(me, peer).await? != Some(mine) {
            return Err(refused(ErrorCode::NoSuchContact));
        }
        ptx.drop_view(me, peer).await?;
        ptx.notify(me, notice(peer, true)).await?;
        let reaches = ptx.delivered(me, peer).await? && ptx.state(peer, me).await? == Some(theirs);
        let mark = ptx.begin_peer_side().await?;
        ptx.drop_view(peer, me).await?;
        ptx.notify(peer, notice(me, false)).await?;
        ptx.end_peer_side(reaches, mark).await?;
        ptx.commit().await
    }

    async fn set_card(
        &self,
        owner: UserId,
        peer: UserId,
        card: &SealedCard,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let (o, p) = (owner.as_bytes().as_slice(), peer.as_bytes().as_slice());
        let stored = on_writer!(&self.db, |pool| {
            sqlx::query(
                "INSERT INTO contact_cards (owner, peer, card, updated_at)
                 SELECT $1, $2, $3, $4
                 WHERE EXISTS (SELECT 1 FROM contacts WHERE owner = $1 AND peer = $2)
                    OR EXISTS (SELECT 1 FROM blocks WHERE owner = $1 AND peer = $2)
                    OR EXISTS (SELECT 1 FROM contact_cards WHERE owner = $1 AND peer = $2)
                 ON CONFLICT (owner, peer) DO UPDATE SET
                     card = excluded.card, updated_at = excluded.updated_at",
            )
            .bind(o)
            .bind(p)
            .bind(codec::encode(card))
            .bind(db_int(now_ms / 1000))
            .execute(pool)
            .await?
            .rows_affected()
        });
        if stored == 0 {
            return Err(refused(ErrorCode::NoSuchContact));
        }
        Ok(())
    }

    async fn is_blocked(&self, owner: UserId, peer: UserId) -> Result<bool, StoreError> {
        let found: Option<i64> = on_reader!(&self.db, |pool| {
            sqlx::query_scalar("SELECT since FROM blocks WHERE owner = $1 AND peer = $2")
                .bind(owner.as_bytes().as_slice())
                .bind(peer.as_bytes().as_slice())
                .fetch_optional(pool)
                .await?
        });
        Ok(found.is_some())
    }

    async fn contacts(&self, user: UserId) -> Result<ContactList, StoreError> {
        let id = user.as_bytes().as_slice();
        // (peer, state, since, peer's profile version, last seen if mutual and both show,
        // card)
        type Row = (Vec<u8>, i16, i64, Option<i64>, Option<i64>, Option<Vec<u8>>);
        type BlockRow = (Vec<u8>, i64, Option<Vec<u8>>);
        let (visible, rows, blocks): (Option<bool>, Vec<Row>, Vec<BlockRow>) =
            on_reader!(&self.db, |pool| {
                let visible =
                    sqlx::query_scalar("SELECT presence_visible FROM people WHERE user_id = $1")
                        .bind(id)
                        .fetch_optional(pool)
                        .await?;
                let rows = sqlx::query_as(
                    "SELECT c.peer, c.state, c.since, p.profile_version,
                            CASE WHEN c.state = 1 AND back.state = 1
                                      AND COALESCE(p.presence_visible, TRUE)
                                 THEN p.last_seen END,
                            card.card
                     FROM contacts c
                     LEFT JOIN contacts back ON back.owner = c.peer AND back.peer = c.owner
                     LEFT JOIN people p ON p.user_id = c.peer
                     LEFT JOIN contact_cards card ON card.owner = c.owner AND card.peer = c.peer
                     WHERE c.owner = $1
                     ORDER BY c.since, c.peer",
                )
                .bind(id)
                .fetch_all(pool)
                .await?;
                let blocks = sqlx::query_as(
                    "SELECT b.peer, b.since, card.card FROM blocks b
                     LEFT JOIN contact_cards card ON card.owner = b.owner AND card.peer = b.peer
                     WHERE b.owner = $1 ORDER BY b.since, b.peer",
                )
                .bind(id)
                .fetch_all(pool)
                .await?;
                (visible, rows, blocks)
            });
        let presence_visible = visible.unwrap_or(true);
        let mut contacts = Vec::with_capacity(rows.len() + blocks.len());
        for (peer, state, since, version, last_seen, card) in rows {
            let state = state_of(state)?;
            contacts.push(ContactInfo {
                user: UserId(key32(&peer, "peer")?),
                state,
                profile_version: if state == ContactState::Contact {
                    from_db_int(version.unwrap_or(0), "profile_version")?
                } else {
                    0
                },
                last_seen: match last_seen {
                    // Reciprocal: a user who hides its presence sees nobody's.
                    Some(seen) if presence_visible && seen > 0 => {
                        let seen = from_db_int(seen, "last_seen")?;
                        Some(seen - seen % LAST_SEEN_GRANULARITY_S)
                    }
                    _ => None,
                },
                since: from_db_int(since, "since")?,
                card: decode_card(card)?,
            });
        }
        for (peer, since, card) in blocks {
            contacts.push(ContactInfo {
                user: UserId(key32(&peer, "peer")?),
                state: ContactState::Blocked,
                profile_version: 0,
                last_seen: None,
                since: from_db_int(since, "since")?,
                card: decode_card(card)?,
            });
        }
        Ok(ContactList {
            contacts,
            presence_visible,
        })
    }

    async fn set_profile(
        &self,
        user: UserId,
        profile: &SealedProfile,
        now_ms: u64,
    ) -> Result<Notified, StoreError> {
        let mut ptx = PeopleTx::begin(self, &[user], now_ms).await?;
        let id = user.as_bytes().as_slice();
        let version = db_int(profile.version);
        ptx.ensure_people_row(user).await?;
        let stored = in_tx!(&mut ptx.tx, |conn| {
            sqlx::query(
                "UPDATE people SET profile_version = $2, profile = $3
                 WHERE user_id = $1 AND profile_version < $2",
            )
            .bind(id)
            .bind(version)
            .bind(codec::encode(profile))
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        if stored == 0 {
            return Err(refused(ErrorCode::Conflict));
        }
        ptx.notify(
            user,
            Notice::ProfileChanged {
                version: profile.version,
            },
        )
        .await?;
        ptx.commit().await
    }

    async fn profile(
        &self,
        viewer: UserId,
        user: UserId,
    ) -> Result<Option<SealedProfile>, StoreError> {
        let (allowed, stored): (bool, Option<Vec<u8>>) = on_reader!(&self.db, |pool| {
            let allowed: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM contacts WHERE owner = $1 AND peer = $2 AND state = 1)",
            )
            .bind(viewer.as_bytes().as_slice())
            .bind(user.as_bytes().as_slice())
            .fetch_one(pool)
            .await?;
            let stored: Option<Option<Vec<u8>>> =
                sqlx::query_scalar("SELECT profile FROM people WHERE user_id = $1")
                    .bind(user.as_bytes().as_slice())
                    .fetch_optional(pool)
                    .await?;
            (allowed, stored.flatten())
        });
        if viewer != user && !allowed {
            return Err(refused(ErrorCode::NotAContact));
        }
        stored
            .map(|bytes| {
                codec::decode(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("stored profile: {e}")))
            })
            .transpose()
    }

    async fn set_presence_visible(
        &self,
        user: UserId,
        visible: bool,
        now_ms: u64,
    ) -> Result<Notified, StoreError> {
        let mut ptx = PeopleTx::begin(self, &[user], now_ms).await?;
        let id = user.as_bytes().as_slice();
        ptx.ensure_people_row(user).await?;
        let changed = in_tx!(&mut ptx.tx, |conn| {
            sqlx::query(
                "UPDATE people SET presence_visible = $2
                 WHERE user_id = $1 AND presence_visible <> $2",
            )
            .bind(id)
            .bind(visible)
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        if changed == 1 {
            ptx.notify(user, Notice::PresenceVisibility { visible })
                .await?;
        }
        ptx.commit().await
    }

    async fn presence_peers(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        let rows: Vec<Vec<u8>> = match &self.db {
            // Every session asks this as it starts and as it ends, so on SQLite the first
            // rows are a point read on the session's thread and only a user with many
            // contacts hands the rest to the blocking pool (store/session_start.rs says why
            // hand-offs matter to a reconnect). The two reads are two snapshots: presence is
            // a hint, which the next session start corrects.
            Db::Sqlite { writer, direct, .. } => {
                let first = PRESENCE_PEERS_POINT_ROWS;
                let mut rows = direct
                    .read_point(writer, move |conn| {
                        sqlite_presence_peers(conn, user, &[], first as i64)
                    })
                    .await?;
                // A full first read: there may be more, after its last peer.
                if rows.len() == first
                    && let Some(after) = rows.last().cloned()
                {
                    let rest = direct
                        .read(writer, move |conn| {
                            sqlite_presence_peers(conn, user, &after, -1)
                        })
                        .await?;
                    rows.extend(rest);
                }
                rows
            }
            Db::Postgres { pool, .. } => {
                sqlx::query_scalar(PRESENCE_PEERS)
                    .bind(user.as_bytes().as_slice())
                    .bind(&[][..] as &[u8])
                    .bind(None::<i64>)
                    .fetch_all(pool)
                    .await?
            }
        };
        rows.iter()
            .map(|bytes| key32(bytes, "peer").map(UserId))
            .collect()
    }

    async fn touch_last_seen(&self, seen: &[(UserId, u64)]) -> Result<(), StoreError> {
        for chunk in seen.chunks(TOUCH_ROWS_PER_STATEMENT) {
            on_writer!(&self.db, |pool| {
                let mut query = QueryBuilder::new("INSERT INTO people (user_id, last_seen) ");
                query.push_values(chunk, |mut row, (user, at)| {
                    row.push_bind(user.as_bytes().as_slice())
                        .push_bind(db_int(*at));
                });
                query.push(
                    " ON CONFLICT (user_id) DO UPDATE SET last_seen = excluded.last_seen
                     WHERE people.last_seen < excluded.last_seen",
                );
                query.build().execute(pool).await?;
            });
        }
        Ok(())
    }
}
