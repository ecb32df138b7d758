//! The log domain of storage: each user's event log, its retention, and the per-device
//! watermarks that keep a trimmed append from being stored twice.
//!
//! Written once for both backends except the append batch's statements, which take whole
//! batches at a time in each dialect's fastest form: `sqlite.rs` (multi-row `VALUES`) and
//! `postgres.rs` (columns as arrays through `UNNEST`). What to do with a batch is decided in
//! memory by [`plan`], shared.
//!
//! An append batch is a fixed number of statements whatever its size:
//!
//! 1. lock the row of every user in the batch, in user order (so two batches, on this node or
//!    another, never wait on each other in a cycle; SQLite's single writer is locked anyway),
//!    creating missing rows, and read the heads and data-key epochs (`chain_epoch`, raised by
//!    [`ChainStore::append_link`] under the same lock);
//! 2. look up which `(user, device, device_seq)` keys are already stored, retention's
//!    watermarks for the batch's devices, and which of them are active (admitted by the chain,
//!    not revoked): after step 1 no other transaction can change them for these users until
//!    this one commits (a revocation takes the same lock, [`ChainStore::append_link`]);
//! 3. number the new events in memory ([`plan::plan_batch`]);
//! 4. insert them, raise the heads, commit.
//!
//! Holding the user rows until commit is what makes each user's sequences gapless and
//! ordered by commit across any number of relay nodes.

pub(crate) mod plan;
mod postgres;
mod sqlite;

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use ferry_protocol::{DeviceId, ErrorCode, Event, SealedPayload, UserId};

use self::plan::{AppendKey, DeviceKey, Stored, UserHead, plan_batch, trim_target};
#[cfg(doc)]
use super::ChainStore;
use super::StoreError;
use super::sql::{Db, SqlStore, db_int, from_db_int, in_tx, key32, on_reader};

/// Most events deleted in one retention transaction.
pub const TRIM_BATCH: u64 = 1000;
/// Users read per page by [`LogStore::trim`].
pub const TRIM_USERS_PAGE: i64 = 500;

/// Storage of the users' event logs.
#[async_trait]
pub trait LogStore: Send + Sync {
    /// Appends every request in ONE transaction, in order, and answers each.
    ///
    /// Requests for the same user get increasing sequences in request order. A request from a
    /// device the user's chain has not admitted, or has revoked, is [`AppendOutcome::Revoked`].
    /// A new request whose payload is sealed under an epoch the user's chain has replaced is
    /// [`AppendOutcome::StaleEpoch`], and so is every later new request of its device in the
    /// batch. A request that
    /// repeats an earlier one (stored before, or earlier in this batch) is a
    /// [`AppendOutcome::Duplicate`] or [`AppendOutcome::Conflict`] and stores nothing.
    /// `now_ms` (Unix milliseconds) is recorded as the commit time, for age retention.
    ///
    /// Fails with [`StoreError::InvalidSequence`] before touching the database if any
    /// `device_seq` is 0 or above `i64::MAX`; on any error nothing of the batch is stored.
    async fn append_batch(
        &self,
        requests: &[AppendRequest],
        now_ms: u64,
    ) -> Result<Vec<AppendOutcome>, StoreError>;

    /// Appends one event in its own transaction.
    async fn append(
        &self,
        request: &AppendRequest,
        now_ms: u64,
    ) -> Result<AppendOutcome, StoreError> {
        let mut outcomes = self
            .append_batch(std::slice::from_ref(request), now_ms)
            .await?;
        outcomes
            .pop()
            .ok_or_else(|| StoreError::Corrupt("append_batch returned no outcome".into()))
    }

    /// Up to `limit` of the user's events with `seq > after_seq`, in sequence order.
    ///
    /// Events below [`LogBounds::earliest`] are gone; check [`LogBounds::covers`] first.
    /// Payloads may be up to 256 KiB each, so keep `limit` to what one frame can carry.
    async fn read_events(
        &self,
        user: UserId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.read_page(user, after_seq, limit, usize::MAX).await
    }

    /// [`LogStore::read_events`] bounded by size too: stops before the page's payloads pass
    /// `max_bytes` in total, but always returns the first event when there is one. What a
    /// session holds while a slow device reads a page stays bounded whatever the events weigh.
    async fn read_page(
        &self,
        user: UserId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The highest `device_seq` the relay holds for this device, or has held and trimmed
    /// (0 for none). A device whose own records are older (a restored state folder) must
    /// number its next appends above it.
    async fn last_device_seq(&self, user: UserId, device: DeviceId) -> Result<u64, StoreError>;

    /// The user's kept range: `earliest..=head` (see [`LogBounds`]). An unknown user has
    /// `earliest = 1, head = 0`.
    async fn log_bounds(&self, user: UserId) -> Result<LogBounds, StoreError>;

    /// Applies retention to one user's log; returns the number of events deleted.
    ///
    /// `max_count` keeps at most that many of the newest events. `max_age_ms` deletes the
    /// longest prefix of the log whose events were all committed before `now_ms - max_age_ms`
    /// (a young event protects everything after it, even if a clock went backwards).
    /// Deletes run in transactions of at most [`TRIM_BATCH`] events. Sequences never change;
    /// [`LogStore::log_bounds`] reports the new `earliest`.
    async fn trim_user(
        &self,
        user: UserId,
        max_age_ms: Option<u64>,
        max_count: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError>;

    /// [`LogStore::trim_user`] for every user; returns the number of events deleted.
    ///
    /// Walks the users table in pages of [`TRIM_USERS_PAGE`], looking only at users whose
    /// log is too long or whose oldest kept event is too old.
    async fn trim(
        &self,
        max_age_ms: Option<u64>,
        max_count: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError>;
}

/// One event to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    /// Whose log it goes to (the authenticated user of the connection).
    pub user: UserId,
    /// The sending device (the authenticated device of the connection).
    pub device: DeviceId,
    /// The sender's sequence number, from 1.
    pub device_seq: u64,
    /// The sealed payload, stored untouched.
    pub payload: SealedPayload,
}

/// What happened to one append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored now, at stream sequence `seq`.
    Appended {
        /// The new event's stream sequence.
        seq: u64,
    },
    /// Stored before (or earlier in the batch) with the same payload; nothing stored now.
    Duplicate {
        /// The stream sequence of the original.
        seq: u64,
    },
    /// The `device_seq` already holds a different payload; nothing stored.
    Conflict {
        /// The stream sequence of the event that holds this `device_seq`.
        seq: u64,
    },
    /// The `device_seq` is not stored but at or below what retention has deleted for the
    /// device: it was stored once and trimmed since; nothing stored.
    Expired,
    /// Storing it would pass the user's [`Quota`](super::Quota); nothing stored.
    QuotaExceeded,
    /// The sending device is not active in the user's chain (never admitted, or revoked),
    /// as checked under the user's row lock; nothing stored.
    Revoked,
    /// The payload is sealed (format 2) under a data-key epoch below the user's current one
    /// (raised by a Revoke or Rotate link, read under the user's row lock), or an earlier
    /// append of the device in the batch was; nothing stored. The device seals it again
    /// under the current epoch and sends it again.
    StaleEpoch {
        /// The user's current data-key epoch.
        current: u32,
    },
}

impl AppendOutcome {
    /// The sequence to answer `Appended` with, or the code the append is refused with.
    pub fn answer(self) -> Result<u64, ErrorCode> {
        match self {
            Self::Appended { seq } | Self::Duplicate { seq } => Ok(seq),
            Self::Conflict { .. } => Err(ErrorCode::Conflict),
            Self::Expired => Err(ErrorCode::AppendExpired),
            Self::QuotaExceeded => Err(ErrorCode::QuotaExceeded),
            Self::Revoked => Err(ErrorCode::DeviceRevoked),
            Self::StaleEpoch { .. } => Err(ErrorCode::StaleEpoch),
        }
    }

    /// The message to send with the refusal [`AppendOutcome::answer`] gives, if it says more
    /// than the code.
    pub fn refusal_message(self) -> Option<String> {
        match self {
            Self::StaleEpoch { current } => Some(format!(
                "the event is sealed under a replaced data-key epoch; the current epoch is \
                 {current}: fetch the chain and seal it again under epoch {current}"
            )),
            _ => None,
        }
    }

    /// The sequence to answer `Appended` with: `Some` unless the append was refused.
    pub fn committed_seq(self) -> Option<u64> {
        self.answer().ok()
    }

    /// Whether a new event was stored (and a wake-up is due).
    pub fn is_new(self) -> bool {
        matches!(self, Self::Appended { .. })
    }
}

/// The range of a user's log that is still stored: every sequence in `earliest..=head`.
///
/// When nothing is stored (a new user, or everything trimmed) `earliest == head + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    /// The lowest sequence still stored, or `head + 1` when none is.
    pub earliest: u64,
    /// The highest sequence ever assigned (0 before the first event).
    pub head: u64,
}

/// The highest `device_seq` of device `$2` of user `$1`: stored, and kept for it when its
/// events were trimmed (NULL when none). Read by [`LogStore::last_device_seq`] and, with the
/// other reads of a reconnect, by [`Store::session_start`](super::Store::session_start).
pub(crate) const DEVICE_SEQ_COLUMNS: &str = "(SELECT MAX(device_seq) FROM events
     WHERE user_id = $1 AND device_id = $2),
    (SELECT device_seq FROM trimmed_device_seqs WHERE user_id = $1 AND device_id = $2)";

/// [`LogStore::last_device_seq`] from the two columns of [`DEVICE_SEQ_COLUMNS`].
pub(crate) fn last_device_seq_from(
    stored: Option<i64>,
    trimmed: Option<i64>,
) -> Result<u64, StoreError> {
    from_db_int(stored.max(trimmed).unwrap_or(0), "device_seq")
}

/// [`LogStore::log_bounds`] from the user's `(earliest, head)` row, if it has one.
pub(crate) fn bounds_from(row: Option<(i64, i64)>) -> Result<LogBounds, StoreError> {
    match row {
        None => Ok(LogBounds {
            earliest: 1,
            head: 0,
        }),
        Some((earliest, head)) => Ok(LogBounds {
            earliest: from_db_int(earliest, "earliest")?,
            head: from_db_int(head, "head")?,
        }),
    }
}

impl LogBounds {
    /// Whether a device whose cursor is `acked` can replay without a gap, that is whether
    /// every event after `acked` is still stored. When false, answer `ResyncRequired`.
    pub fn covers(&self, acked: u64) -> bool {
        acked.saturating_add(1) >= self.earliest
    }

    /// Number of events stored.
    pub fn len(&self) -> u64 {
        self.head.saturating_add(1).saturating_sub(self.earliest)
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks a device sequence before it reaches the database (1..=i64::MAX).
pub fn check_device_seq(device_seq: u64) -> Result<(), StoreError> {
    if device_seq == 0 || device_seq > i64::MAX as u64 {
        Err(StoreError::InvalidSequence(device_seq))
    } else {
        Ok(())
    }
}

/// What step 2 of an append batch reads (see the module docs), for [`plan_batch`].
#[derive(Default)]
struct BatchState {
    /// The locked head of every user in the batch.
    heads: HashMap<UserId, UserHead>,
    /// The events already stored under any of the batch's keys.
    stored: HashMap<AppendKey, Stored>,
    /// Retention's watermark of any of the batch's devices that has one.
    trimmed: HashMap<DeviceKey, u64>,
    /// The batch's devices that are active (admitted by the chain, not revoked).
    active: HashSet<DeviceKey>,
}

impl BatchState {
    /// Step 3 of an append batch: [`plan_batch`] on what steps 1 and 2 read.
    fn plan<'a>(
        &self,
        requests: &'a [AppendRequest],
        quota: super::Quota,
    ) -> Result<plan::BatchPlan<'a>, StoreError> {
        plan_batch(
            requests,
            &self.heads,
            &self.stored,
            &self.trimmed,
            &self.active,
            quota,
        )
    }

    fn add_head(&mut self, row: HeadRow) -> Result<(), StoreError> {
        let head = UserHead {
            head: from_db_int(row.head, "head")?,
            earliest: from_db_int(row.earliest, "earliest")?,
            bytes: from_db_int(row.bytes, "bytes")?,
            chain_epoch: u32::try_from(row.chain_epoch).map_err(|_| {
                StoreError::Corrupt(format!("chain_epoch out of range: {}", row.chain_epoch))
            })?,
        };
        self.heads
            .insert(UserId(key32(&row.user_id, "user_id")?), head);
        Ok(())
    }

    fn add_stored(&mut self, row: StoredRow) -> Result<(), StoreError> {
        let key = (
            UserId(key32(&row.user_id, "user_id")?),
            DeviceId(key32(&row.device_id, "device_id")?),
            from_db_int(row.device_seq, "device_seq")?,
        );
        let stored = Stored {
            seq: from_db_int(row.seq, "seq")?,
            payload: row.payload,
        };
        self.stored.insert(key, stored);
        Ok(())
    }

    fn add_watermark(&mut self, row: WatermarkRow) -> Result<(), StoreError> {
        let device = (
            UserId(key32(&row.user_id, "user_id")?),
            DeviceId(key32(&row.device_id, "device_id")?),
        );
        self.trimmed
            .insert(device, from_db_int(row.device_seq, "device_seq")?);
        Ok(())
    }

    fn add_active(&mut self, row: ActiveRow) -> Result<(), StoreError> {
        self.active.insert((
            UserId(key32(&row.user_id, "user_id")?),
            DeviceId(key32(&row.device_id, "device_id")?),
        ));
        Ok(())
    }
}

/// One of a batch's devices that is active, as step 2 finds it.
#[derive(sqlx::FromRow)]
struct ActiveRow {
    user_id: Vec<u8>,
    device_id: Vec<u8>,
}

/// A user's row as step 1 of an append batch returns it.
#[derive(sqlx::FromRow)]
struct HeadRow {
    user_id: Vec<u8>,
    head: i64,
    earliest: i64,
    bytes: i64,
    chain_epoch: i64,
}

/// An event stored under one of a batch's keys, as step 2 finds it.
#[derive(sqlx::FromRow)]
struct StoredRow {
    user_id: Vec<u8>,
    device_id: Vec<u8>,
    device_seq: i64,
    seq: i64,
    payload: Vec<u8>,
}

/// Retention's watermark of one device, as step 2 finds it.
#[derive(sqlx::FromRow)]
struct WatermarkRow {
    user_id: Vec<u8>,
    device_id: Vec<u8>,
    device_seq: i64,
}

/// The SQL of [`LogStore::read_page`]: the newest `$3` events after `$2`, then only those
/// whose payloads before them sum to less than `$4`.
const READ_PAGE_SQL: &str = "SELECT seq, device_id, device_seq, payload FROM (
         SELECT seq, device_id, device_seq, payload,
                SUM(LENGTH(payload)) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING)
                    - LENGTH(payload) AS before
         FROM (SELECT seq, device_id, device_seq, payload FROM events
               WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) AS next
     ) AS page
     WHERE before < $4
     ORDER BY seq";

/// One event row, as [`READ_PAGE_SQL`] returns it.
#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    device_id: Vec<u8>,
    device_seq: i64,
    payload: Vec<u8>,
}

impl EventRow {
    fn into_event(self) -> Result<Event, StoreError> {
        Ok(Event {
            seq: from_db_int(self.seq, "seq")?,
            device: DeviceId(key32(&self.device_id, "device_id")?),
            device_seq: from_db_int(self.device_seq, "device_seq")?,
            payload: SealedPayload(self.payload),
        })
    }
}

/// One row of the users page read by [`LogStore::trim`]: `due` when the user needs trimming.
#[derive(sqlx::FromRow)]
struct UserPage {
    user_id: Vec<u8>,
    head: i64,
    earliest: i64,
    due: Option<bool>,
}

#[async_trait]
impl LogStore for SqlStore {
    async fn append_batch(
        &self,
        requests: &[AppendRequest],
        now_ms: u64,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        requests
            .iter()
            .try_for_each(|r| check_device_seq(r.device_seq))?;
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let quota = self.quota;
        let appender = match &self.db {
            Db::Postgres { appender, .. } => appender,
            Db::Sqlite { writer, direct, .. } => {
                // The job owns its requests (it runs on a thread of its own): a copy of the
                // payloads, far cheaper than the statements it saves.
                let requests = requests.to_vec();
                return direct
                    .write(writer, move |conn| {
                        sqlite::append_batch(conn, &requests, now_ms, quota)
                    })
                    .await;
            }
        };
        let mut turn = appender.turn().await?;
        turn.begin().await?;
        let state = postgres::read_batch_state(turn.conn()?, requests).await?;
        let plan = state.plan(requests, quota)?;
        postgres::write_plan(turn.conn()?, &plan, now_ms).await?;
        turn.commit().await?;
        Ok(plan.outcomes)
    }

    async fn read_page(
        &self,
        user: UserId,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        if let Db::Sqlite { writer, direct, .. } = &self.db {
            return direct
                .read(writer, move |conn| {
                    sqlite::read_page(conn, user, after_seq, limit, max_bytes)
                })
                .await;
        }
        let rows: Vec<EventRow> = on_reader!(&self.db, |pool| {
            sqlx::query_as(READ_PAGE_SQL)
                .bind(user.as_bytes().as_slice())
                .bind(db_int(after_seq))
                .bind(db_int(limit as u64))
                .bind(db_int(max_bytes.max(1) as u64))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn last_device_seq(&self, user: UserId, device: DeviceId) -> Result<u64, StoreError> {
        let (stored, trimmed): (Option<i64>, Option<i64>) = on_reader!(&self.db, |pool| {
            sqlx::query_as(&format!("SELECT {DEVICE_SEQ_COLUMNS}"))
                .bind(user.as_bytes().as_slice())
                .bind(device.as_bytes().as_slice())
                .fetch_one(pool)
                .await?
        });
        last_device_seq_from(stored, trimmed)
    }

    async fn log_bounds(&self, user: UserId) -> Result<LogBounds, StoreError> {
        let row: Option<(i64, i64)> = on_reader!(&self.db, |pool| {
            sqlx::query_as("SELECT earliest, head FROM users WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .fetch_optional(pool)
                .await?
        });
        bounds_from(row)
    }

    async fn trim_user(
        &self,
        user: UserId,
        max_age_ms: Option<u64>,
        max_count: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let bounds = self.log_bounds(user).await?;
        self.trim_user_at(user, bounds, max_age_ms, max_count, now_ms)
            .await
    }

    async fn trim(
        &self,
        max_age_ms: Option<u64>,
        max_count: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        if max_age_ms.is_none() && max_count.is_none() {
            return Ok(0);
        }
        // Candidates: logs longer than max_count, or whose oldest kept event is older than
        // the cutoff (one primary-key lookup per user, inside the database).
        let max_count_db = max_count.map(db_int);
        let cutoff_db = max_age_ms.map(|age| db_int(now_ms.saturating_sub(age)));
        let mut after: Vec<u8> = Vec::new();
        let mut deleted = 0;
        loop {
            let page: Vec<UserPage> = on_reader!(&self.db, |pool| {
                sqlx::query_as(
                    "SELECT u.user_id, u.head, u.earliest,
                            ($2 IS NOT NULL AND u.head - u.earliest + 1 > $2)
                         OR ($3 IS NOT NULL AND e.committed_at_ms < $3) AS due
                     FROM users u
                     LEFT JOIN events e ON e.user_id = u.user_id AND e.seq = u.earliest
                     WHERE u.user_id > $1
                     ORDER BY u.user_id LIMIT $4",
                )
                .bind(after.as_slice())
                .bind(max_count_db)
                .bind(cutoff_db)
                .bind(TRIM_USERS_PAGE)
                .fetch_all(pool)
                .await?
            });
            for row in &page {
                if row.due.unwrap_or(false) {
                    let bounds = LogBounds {
                        earliest: from_db_int(row.earliest, "earliest")?,
                        head: from_db_int(row.head, "head")?,
                    };
                    let user = UserId(key32(&row.user_id, "user_id")?);
                    deleted += self
                        .trim_user_at(user, bounds, max_age_ms, max_count, now_ms)
                        .await?;
                }
            }
            match page.last() {
                Some(last) if page.len() as i64 == TRIM_USERS_PAGE => {
                    after.clone_from(&last.user_id)
                }
                _ => break,
            }
        }
        Ok(deleted)
    }
}

impl SqlStore {
    /// [`LogStore::trim_user`] from bounds the caller has read.
    async fn trim_user_at(
        &self,
        user: UserId,
        bounds: LogBounds,
        max_age_ms: Option<u64>,
        max_count: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let user_id = user.as_bytes().as_slice();
        let age = match max_age_ms {
            None => None,
            Some(max_age) => {
                let cutoff = now_ms.saturating_sub(max_age);
                // Walks the primary key in sequence order from `earliest`: reads the old
                // prefix (about to be deleted anyway) and stops at the first young event.
                let first_young: Option<i64> = on_reader!(&self.db, |pool| {
                    sqlx::query_scalar(
                        "SELECT seq FROM events
                         WHERE user_id = $1 AND seq >= $2 AND committed_at_ms >= $3
                         ORDER BY seq LIMIT 1",
                    )
                    .bind(user_id)
                    .bind(db_int(bounds.earliest))
                    .bind(db_int(cutoff))
                    .fetch_optional(pool)
                    .await?
                });
                Some(first_young.map(|seq| from_db_int(seq, "seq")).transpose()?)
            }
        };
        let target = trim_target(bounds, max_count, age);
        let greatest = self.dialect().greatest();
        // Remember how far each device's appends are gone, so a late retry of one of them is
        // answered "expired" instead of being stored again.
        let watermark = format!(
            "INSERT INTO trimmed_device_seqs (user_id, device_id, device_seq)
             SELECT user_id, device_id, MAX(device_seq) FROM events
             WHERE user_id = $1 AND seq >= $2 AND seq < $3
             GROUP BY user_id, device_id
             ON CONFLICT (user_id, device_id)
             DO UPDATE SET device_seq = {greatest}(trimmed_device_seqs.device_seq, excluded.device_seq)"
        );
        let free_bytes = format!(
            "UPDATE users SET bytes = {greatest}(0, bytes - (
                 SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM events
                 WHERE user_id = $1 AND seq >= $2 AND seq < $3))
             WHERE user_id = $1"
        );
        let raise_earliest =
            format!("UPDATE users SET earliest = {greatest}(earliest, $2) WHERE user_id = $1");
        let mut from = bounds.earliest;
        let mut deleted = 0;
        while from < target {
            let upto = target.min(from.saturating_add(TRIM_BATCH));
            let mut tx = self.db.begin().await?;
            // The user's row first, so an append batch of this user cannot look between the
            // delete and the watermark.
            tx.lock_user(user_id).await?;
            let done = in_tx!(&mut tx, |conn| {
                for statement in [&watermark, &free_bytes] {
                    sqlx::query(statement)
                        .bind(user_id)
                        .bind(db_int(from))
                        .bind(db_int(upto))
                        .execute(&mut *conn)
                        .await?;
                }
                let done =
                    sqlx::query("DELETE FROM events WHERE user_id = $1 AND seq >= $2 AND seq < $3")
                        .bind(user_id)
                        .bind(db_int(from))
                        .bind(db_int(upto))
                        .execute(&mut *conn)
                        .await?;
                sqlx::query(&raise_earliest)
                    .bind(user_id)
                    .bind(db_int(upto))
                    .execute(&mut *conn)
                    .await?;
                done.rows_affected()
            });
            tx.commit().await?;
            deleted += done;
            from = upto;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_cover_cursors_from_earliest_minus_one() {
        let bounds = LogBounds {
            earliest: 6,
            head: 20,
        };
        assert!(!bounds.covers(4));
        assert!(bounds.covers(5));
        assert!(bounds.covers(20));
        assert_eq!(bounds.len(), 15);
        let empty = LogBounds {
            earliest: 21,
            head: 20,
        };
        assert!(empty.is_empty());
        assert!(empty.covers(20));
        assert!(!empty.covers(19));
        assert!(
            LogBounds {
                earliest: 1,
                head: 0
            }
            .covers(0)
        );
    }

    #[test]
    fn device_seq_bounds() {
        assert!(check_device_seq(0).is_err());
        assert!(check_device_seq(1).is_ok());
        assert!(check_device_seq(i64::MAX as u64).is_ok());
        assert!(check_device_seq(i64::MAX as u64 + 1).is_err());
    }
}
