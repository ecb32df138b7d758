//! The relay's durable storage: per-user event logs, device records and cursors.
//!
//! One [`Store`] trait, two sqlx backends chosen from the URL scheme by [`open`]:
//! [`SqliteStore`] (`sqlite://path?mode=rwc`, the embedded default) and [`PgStore`]
//! (`postgres://…`, production). Both run their migrations (`migrations/sqlite`,
//! `migrations/postgres`, append-only) when opened.
//!
//! # Data flow
//!
//! ```text
//!  connection tasks ──CommitHandle::append/submit──▶ bounded queue ──▶ Committer task
//!                                                         Store::append_batch (ONE transaction)
//!  live delivery    ◀── on_committed(user, new events) ───────┤
//!  connection tasks ◀── oneshot answer per append ────────────┘
//!  replay           ──Store::log_bounds, Store::read_events(user, after_seq, limit)──▶ pages
//!  Ack frames       ──Store::set_ack──▶ devices.acked = max(old, min(seq, head))
//!  retention job    ──Store::trim──▶ deletes a prefix of each user's log, raises `earliest`
//! ```
//!
//! The store holds sealed payloads only ([`SealedPayload`]); it never sees plaintext and
//! has no clock: every timestamp is passed in by the caller.
//!
//! # Invariants
//!
//! - Each user has one log. A new event gets `seq = head + 1` and the user's `head` row is
//!   raised in the same transaction, so sequences are per user, start at 1, are gapless and
//!   follow commit order (the head row is locked until commit). There is no global counter.
//! - `(user, device, device_seq)` is unique. `device_seq` starts at 1 (0 is
//!   [`StoreError::InvalidSequence`]). A retry with the same payload is
//!   [`AppendOutcome::Duplicate`] and stores nothing; a different payload is
//!   [`AppendOutcome::Conflict`]. Duplicates inside one batch are resolved the same way.
//! - A user's stored events and payload bytes stay within the store's [`Quota`]: an append
//!   that would pass it is [`AppendOutcome::QuotaExceeded`], and so is every later append
//!   of the same device in that batch (a device's appends are stored in the order sent).
//! - Retention keeps, per device, the highest `device_seq` it deleted (in the same
//!   transaction as the delete). A retry at or below it that is no longer stored is
//!   [`AppendOutcome::Expired`]: it was stored once, so it is never stored again.
//! - The events kept for a user are exactly the sequences `earliest..=head` ([`LogBounds`]):
//!   retention only ever deletes a prefix and never renumbers anything.
//! - A device's acknowledged sequence only grows and never exceeds the user's head.
//! - A revoked device stays revoked; its events stay in the log.
//! - Every query touches one user's rows (only [`Store::trim`] walks the users table), so the
//!   events table can be hash-partitioned or distributed by `user_id`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ferry_protocol::{DeviceId, SealedPayload, UserId};
//! use ferry_relay::store::{self, AppendOutcome, AppendRequest, CommitConfig, Committer};
//!
//! let dir = tempfile::tempdir()?;
//! let url = format!("sqlite://{}?mode=rwc", dir.path().join("ferry.db").display());
//! let store = store::open(&url).await?; // or postgres://user@host/db
//! let commits = Committer::spawn(Arc::clone(&store), CommitConfig::default());
//!
//! let (user, device) = (UserId([1; 32]), DeviceId([2; 32]));
//! let append = AppendRequest { user, device, device_seq: 1, payload: SealedPayload(vec![0xAA]) };
//! assert_eq!(commits.append(append.clone()).await?, AppendOutcome::Appended { seq: 1 });
//! // A retry is answered with the original sequence and stores nothing.
//! assert_eq!(commits.append(append).await?, AppendOutcome::Duplicate { seq: 1 });
//!
//! let bounds = store.log_bounds(user).await?;
//! assert!(bounds.covers(0)); // a device at cursor 0 can replay without a gap
//! let events = store.read_events(user, 0, 100).await?;
//! assert_eq!((events.len(), events[0].seq), (1, 1));
//!
//! commits.shutdown().await;
//! store.close().await;
//! # Ok(())
//! # }
//! ```

pub mod committer;
pub mod faults;
mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::{
    DeviceCertificate, DeviceId, DeviceInfo, ErrorCode, Event, Revocation, SealedPayload, UserId,
};

pub use committer::{
    AppendOrder, BatchObserver, BatchReport, CommitConfig, CommitHandle, CommitReply, CommitStats,
    CommittedHook, Committer, UncertainHook,
};
pub use faults::FaultyStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Opens the store named by `url` with default [`StoreOptions`] and runs its migrations.
///
/// `sqlite:` URLs (for example `sqlite://data/ferry.db?mode=rwc`) open [`SqliteStore`];
/// `postgres://` and `postgresql://` URLs open [`PgStore`].
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &StoreOptions::default()).await
}

/// [`open`] with explicit pool options.
pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
    match scheme {
        "sqlite" => Ok(Arc::new(SqliteStore::open(url, options).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(PgStore::open(url, options).await?)),
        // Only the scheme is echoed: the rest of the URL may hold a password.
        _ => Err(StoreError::InvalidUrl(format!(
            "unsupported scheme {scheme:?}: expected sqlite: or postgres://"
        ))),
    }
}

/// Connection pool options shared by both backends.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// PostgreSQL: connections in the pool. SQLite: reader connections (there is always
    /// exactly one writer connection).
    pub max_connections: u32,
    /// How long a query waits for a free connection before failing.
    pub acquire_timeout: Duration,
    /// SQLite: how long a statement waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// What one user may store.
    pub quota: Quota,
}

/// What one user may store: events kept, and their payload bytes. Retention frees both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Most events kept for one user.
    pub max_events: u64,
    /// Most payload bytes kept for one user.
    pub max_bytes: u64,
}

impl Quota {
    /// No limit.
    pub const UNLIMITED: Self = Self {
        max_events: u64::MAX,
        max_bytes: u64::MAX,
    };
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(5),
            quota: Quota::UNLIMITED,
        }
    }
}

/// The relay's durable storage. Both backends implement the same semantics (see the
/// module documentation for the invariants), checked by one shared test suite.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// `"sqlite"` or `"postgres"`, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Checks that the database answers (readiness probe).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Appends every request in ONE transaction, in order, and answers each.
    ///
    /// Requests for the same user get increasing sequences in request order. A request that
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

    /// [`Store::read_events`] bounded by size too: stops before the page's payloads pass
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

    /// Stores a device's cumulative acknowledgement and returns the value now stored.
    ///
    /// The stored value is `max(previous, min(seq, head))`: it never goes backwards and is
    /// clamped (not refused) to the user's head, so a cursor never claims events that do not
    /// exist. A returned value below `seq` tells the caller the client acked beyond the head.
    /// Fails with [`StoreError::UnknownDevice`] if the device is not registered.
    async fn set_ack(&self, user: UserId, device: DeviceId, seq: u64) -> Result<u64, StoreError>;

    /// Registers a device on first sight and returns its record.
    ///
    /// Idempotent: a known device (revoked or not) is returned as stored, the first
    /// certificate kept. A new device is refused with [`StoreError::TooManyDevices`] when
    /// the user already has `max_devices` devices that are not revoked. The caller has
    /// verified the certificate. `now_s` (Unix seconds) becomes `registered_at` and
    /// `last_seen`.
    async fn register_device(
        &self,
        certificate: &DeviceCertificate,
        max_devices: usize,
        now_s: u64,
    ) -> Result<DeviceRecord, StoreError>;

    /// The stored record of one device, if it is registered.
    async fn device(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError>;

    /// The user's devices, revoked ones included, in registration order.
    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, StoreError>;

    /// Marks a device revoked and returns whether it was registered. The caller has verified
    /// the signature. Revoking twice keeps the first revocation. The device's events stay.
    async fn revoke_device(&self, revocation: &Revocation) -> Result<bool, StoreError>;

    /// Raises the device's `last_seen` to `now_s` (Unix seconds); unknown devices are ignored.
    async fn touch_device(
        &self,
        user: UserId,
        device: DeviceId,
        now_s: u64,
    ) -> Result<(), StoreError>;

    /// Applies retention to one user's log; returns the number of events deleted.
    ///
    /// `max_count` keeps at most that many of the newest events. `max_age_ms` deletes the
    /// longest prefix of the log whose events were all committed before `now_ms - max_age_ms`
    /// (a young event protects everything after it, even if a clock went backwards).
    /// Deletes run in transactions of at most [`TRIM_BATCH`] events. Sequences never change;
    /// [`Store::log_bounds`] reports the new `earliest`.
    async fn trim_user(
        &self,
        user: UserId,
        max_age_ms: Option<u64>,
        max_count: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError>;

    /// [`Store::trim_user`] for every user; returns the number of events deleted.
    ///
    /// Walks the users table in pages of [`TRIM_USERS_PAGE`], looking only at users whose
    /// log is too long or whose oldest kept event is too old.
    async fn trim(
        &self,
        max_age_ms: Option<u64>,
        max_count: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError>;

    /// Closes the connection pools; later calls fail with a database error.
    async fn close(&self);
}

/// Most events deleted in one retention transaction.
pub const TRIM_BATCH: u64 = 1000;
/// Users read per page by [`Store::trim`].
pub const TRIM_USERS_PAGE: i64 = 500;

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
    /// Storing it would pass the user's [`Quota`]; nothing stored.
    QuotaExceeded,
}

impl AppendOutcome {
    /// The sequence to answer `Appended` with, or the code the append is refused with.
    pub fn answer(self) -> Result<u64, ErrorCode> {
        match self {
            Self::Appended { seq } | Self::Duplicate { seq } => Ok(seq),
            Self::Conflict { .. } => Err(ErrorCode::Conflict),
            Self::Expired => Err(ErrorCode::AppendExpired),
            Self::QuotaExceeded => Err(ErrorCode::QuotaExceeded),
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

/// What the relay knows about one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The certificate the device first registered with.
    pub certificate: DeviceCertificate,
    /// Its cumulative acknowledged sequence (0 before the first ack).
    pub acked: u64,
    /// When it was revoked (Unix seconds, from the revocation), if it was.
    pub revoked_at: Option<u64>,
    /// When the relay last saw it (Unix seconds).
    pub last_seen: u64,
    /// When the relay first saw it (Unix seconds).
    pub registered_at: u64,
}

impl DeviceRecord {
    /// Whether the device has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

impl From<DeviceRecord> for DeviceInfo {
    fn from(record: DeviceRecord) -> Self {
        Self {
            revoked: record.is_revoked(),
            certificate: record.certificate,
            last_seen: record.last_seen,
        }
    }
}

/// Why a storage operation failed. Conflicts are not errors: see [`AppendOutcome`].
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage URL cannot be used (the message never contains the URL itself).
    #[error("invalid storage URL: {0}")]
    InvalidUrl(String),
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[source] Arc<sqlx::Error>),
    /// Running the migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[source] Arc<sqlx::migrate::MigrateError>),
    /// A device sequence is 0 or too large to store (above `i64::MAX`).
    #[error("invalid device sequence {0}: device sequences start at 1")]
    InvalidSequence(u64),
    /// The user already has the maximum number of (non-revoked) devices.
    #[error("the user already has the maximum of {max} devices")]
    TooManyDevices {
        /// The limit in force.
        max: usize,
    },
    /// The device is not registered for this user.
    #[error("the device is not registered for this user")]
    UnknownDevice,
    /// A stored row could not be read back (bad length, negative number).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The committer has stopped; nothing more is accepted.
    #[error("the store is shutting down")]
    Closed,
    /// An earlier append of the same session was refused with this (retryable) code, and
    /// this later one is refused with it too until the earlier one is sent again: a device's
    /// appends are committed in the order it sent them.
    #[error("an earlier append of this device was refused ({}); send it again first", .0.name())]
    EarlierRefused(ErrorCode),
}

impl StoreError {
    /// The wire error code a relay answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidSequence(_) => ErrorCode::InvalidSequence,
            Self::TooManyDevices { .. } => ErrorCode::TooManyDevices,
            Self::UnknownDevice => ErrorCode::UnknownDevice,
            Self::Database(_) | Self::Closed => ErrorCode::Unavailable,
            Self::EarlierRefused(code) => *code,
            Self::InvalidUrl(_) | Self::Migrate(_) | Self::Corrupt(_) => ErrorCode::Internal,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(Arc::new(error))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(Arc::new(error))
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

// ---------------------------------------------------------------------------------------------
// Shared between the backends: integer conversions, row decoding and the batch planner.

/// A `u64` for a BIGINT column, saturating at `i64::MAX` (sequences, times and limits never
/// get there; saturating keeps comparisons like `seq > after` correct for huge inputs).
fn db_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A BIGINT column read back as `u64`; negative values are refused by CHECK constraints.
fn from_db_int(value: i64, column: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {column}: {value}")))
}

fn key32(bytes: &[u8], column: &str) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{column} of {} bytes, expected 32", bytes.len())))
}

/// A device row as both backends read it (columns in `DEVICE_COLUMNS` order).
#[derive(sqlx::FromRow)]
struct DeviceRow {
    user_id: Vec<u8>,
    device_id: Vec<u8>,
    name: String,
    created_at: i64,
    signature: Vec<u8>,
    registered_at: i64,
    last_seen: i64,
    acked: i64,
    revoked_at: Option<i64>,
}

/// The columns of `devices` that make a [`DeviceRow`], in order.
const DEVICE_COLUMNS: &str =
    "user_id, device_id, name, created_at, signature, registered_at, last_seen, acked, revoked_at";

impl DeviceRow {
    fn into_record(self) -> Result<DeviceRecord, StoreError> {
        let signature: [u8; 64] = self.signature.as_slice().try_into().map_err(|_| {
            StoreError::Corrupt(format!(
                "device signature of {} bytes, expected 64",
                self.signature.len()
            ))
        })?;
        Ok(DeviceRecord {
            certificate: DeviceCertificate {
                user: UserId(key32(&self.user_id, "user_id")?),
                device: DeviceId(key32(&self.device_id, "device_id")?),
                name: self.name,
                created_at: from_db_int(self.created_at, "created_at")?,
                signature,
            },
            acked: from_db_int(self.acked, "acked")?,
            revoked_at: self
                .revoked_at
                .map(|at| from_db_int(at, "revoked_at"))
                .transpose()?,
            last_seen: from_db_int(self.last_seen, "last_seen")?,
            registered_at: from_db_int(self.registered_at, "registered_at")?,
        })
    }
}

/// One row of the users page read by [`Store::trim`]: `due` when the user needs trimming.
#[derive(sqlx::FromRow)]
struct UserPage {
    user_id: Vec<u8>,
    head: i64,
    earliest: i64,
    due: Option<bool>,
}

/// An event row as both backends read it.
fn event_from_row(
    seq: i64,
    device_id: &[u8],
    device_seq: i64,
    payload: Vec<u8>,
) -> Result<Event, StoreError> {
    Ok(Event {
        seq: from_db_int(seq, "seq")?,
        device: DeviceId(key32(device_id, "device_id")?),
        device_seq: from_db_int(device_seq, "device_seq")?,
        payload: SealedPayload(payload),
    })
}

/// What makes an append unique.
type AppendKey = (UserId, DeviceId, u64);

/// The SQL of [`Store::read_page`], the same for both backends: the newest `$3` events after
/// `$2`, then only those whose payloads before them sum to less than `$4`.
const READ_PAGE_SQL: &str = "SELECT seq, device_id, device_seq, payload FROM (
         SELECT seq, device_id, device_seq, payload,
                SUM(LENGTH(payload)) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING)
                    - LENGTH(payload) AS before
         FROM (SELECT seq, device_id, device_seq, payload FROM events
               WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) AS next
     ) AS page
     WHERE before < $4
     ORDER BY seq";

/// A device, as retention's watermarks are keyed.
type DeviceKey = (UserId, DeviceId);

/// The distinct devices of a batch, in first-seen order.
fn batch_devices(requests: &[AppendRequest]) -> Vec<DeviceKey> {
    let mut seen = std::collections::HashSet::with_capacity(requests.len());
    requests
        .iter()
        .map(|r| (r.user, r.device))
        .filter(|key| seen.insert(*key))
        .collect()
}

/// An event already stored under an [`AppendKey`].
struct Stored {
    seq: u64,
    payload: Vec<u8>,
}

/// A user's row as an append batch locks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct UserHead {
    head: u64,
    earliest: u64,
    /// Payload bytes stored.
    bytes: u64,
}

impl UserHead {
    fn events(&self) -> u64 {
        self.head.saturating_add(1).saturating_sub(self.earliest)
    }
}

/// The writes one batch needs, decided in memory once the heads are locked and the
/// already-stored keys are known.
struct BatchPlan<'a> {
    /// One outcome per request, in request order.
    outcomes: Vec<AppendOutcome>,
    /// New events: their sequence and request, in request order.
    inserts: Vec<(u64, &'a AppendRequest)>,
    /// New head of every user that got events, and the payload bytes added, sorted by user.
    heads: Vec<(UserId, u64, u64)>,
}

/// The distinct users of a batch, sorted (the order in which their head rows are locked,
/// so two concurrent batches can never wait on each other in a cycle).
fn batch_users(requests: &[AppendRequest]) -> Vec<UserId> {
    distinct_users(requests.iter().map(|r| r.user))
}

/// The distinct users among `users`, sorted.
fn distinct_users(users: impl Iterator<Item = UserId>) -> Vec<UserId> {
    let mut users: Vec<UserId> = users.collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// The distinct keys of a batch, in first-seen order.
fn batch_keys(requests: &[AppendRequest]) -> Vec<AppendKey> {
    let mut seen = std::collections::HashSet::with_capacity(requests.len());
    requests
        .iter()
        .map(|r| (r.user, r.device, r.device_seq))
        .filter(|key| seen.insert(*key))
        .collect()
}

/// Assigns sequences: the pure heart of [`Store::append_batch`], shared by both backends.
///
/// `heads` holds the locked head of every user in the batch; `stored` the events already
/// stored under any of the batch's keys; `trimmed` the highest `device_seq` retention has
/// deleted for any of the batch's devices.
fn plan_batch<'a>(
    requests: &'a [AppendRequest],
    heads: &HashMap<UserId, UserHead>,
    stored: &HashMap<AppendKey, Stored>,
    trimmed: &HashMap<DeviceKey, u64>,
    quota: Quota,
) -> Result<BatchPlan<'a>, StoreError> {
    // Per user: the row as it will be after this batch's inserts so far.
    let mut next: HashMap<UserId, UserHead> = HashMap::with_capacity(heads.len());
    // Devices refused for quota in this batch: their later appends are refused too.
    let mut over_quota: std::collections::HashSet<DeviceKey> = std::collections::HashSet::new();
    // Keys appended earlier in this batch; keys stored before are looked up in `stored`.
    let mut appended: HashMap<AppendKey, (u64, &[u8])> = HashMap::with_capacity(requests.len());
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut inserts = Vec::with_capacity(requests.len());
    for request in requests {
        let key = (request.user, request.device, request.device_seq);
        let earlier = appended
            .get(&key)
            .copied()
            .or_else(|| stored.get(&key).map(|s| (s.seq, s.payload.as_slice())));
        let outcome = match earlier {
            Some((seq, payload)) if payload == request.payload.0.as_slice() => {
                AppendOutcome::Duplicate { seq }
            }
            Some((seq, _)) => AppendOutcome::Conflict { seq },
            None if trimmed
                .get(&(request.user, request.device))
                .is_some_and(|&upto| request.device_seq <= upto) =>
            {
                AppendOutcome::Expired
            }
            None => {
                let now = match next.get(&request.user) {
                    Some(now) => *now,
                    None => *heads.get(&request.user).ok_or_else(|| {
                        StoreError::Corrupt("user head row was not locked".into())
                    })?,
                };
                let len = request.payload.0.len() as u64;
                let device = (request.user, request.device);
                if over_quota.contains(&device)
                    || now.events() >= quota.max_events
                    || now.bytes.saturating_add(len) > quota.max_bytes
                {
                    over_quota.insert(device);
                    AppendOutcome::QuotaExceeded
                } else {
                    let seq = now.head + 1;
                    next.insert(
                        request.user,
                        UserHead {
                            head: seq,
                            earliest: now.earliest,
                            bytes: now.bytes + len,
                        },
                    );
                    appended.insert(key, (seq, request.payload.0.as_slice()));
                    inserts.push((seq, request));
                    AppendOutcome::Appended { seq }
                }
            }
        };
        outcomes.push(outcome);
    }
    let mut heads: Vec<(UserId, u64, u64)> = next
        .into_iter()
        .map(|(user, now)| {
            let before = heads.get(&user).map_or(0, |h| h.bytes);
            (user, now.head, now.bytes - before)
        })
        .collect();
    heads.sort_unstable();
    Ok(BatchPlan {
        outcomes,
        inserts,
        heads,
    })
}

/// The sequence below which a user's events go, given its bounds and the retention rules
/// (`first_young` is the first kept sequence committed at or after the age cutoff, if any).
fn trim_target(bounds: LogBounds, max_count: Option<u64>, age: Option<Option<u64>>) -> u64 {
    let past_head = bounds.head + 1;
    let by_count = max_count.map_or(0, |max| past_head.saturating_sub(max));
    let by_age = match age {
        None => 0,
        Some(first_young) => first_young.unwrap_or(past_head),
    };
    by_count.max(by_age).min(past_head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(user: u8, device: u8, device_seq: u64, payload: u8) -> AppendRequest {
        AppendRequest {
            user: UserId([user; 32]),
            device: DeviceId([device; 32]),
            device_seq,
            payload: SealedPayload(vec![payload]),
        }
    }

    #[test]
    fn plan_numbers_per_user_and_resolves_repeats_in_the_batch() {
        let requests = [
            request(1, 1, 1, 10),
            request(2, 1, 1, 10),
            request(1, 1, 1, 10),
            request(1, 1, 1, 11),
            request(1, 1, 2, 12),
            request(1, 2, 7, 13),
            request(1, 3, 4, 14),
            request(1, 3, 5, 15),
        ];
        let head = |head| UserHead {
            head,
            earliest: 1,
            bytes: 0,
        };
        let heads = HashMap::from([(UserId([1; 32]), head(4)), (UserId([2; 32]), head(0))]);
        let stored = HashMap::from([(
            (UserId([1; 32]), DeviceId([2; 32]), 7),
            Stored {
                seq: 3,
                payload: vec![99],
            },
        )]);
        let trimmed = HashMap::from([((UserId([1; 32]), DeviceId([3; 32])), 4)]);
        let plan = plan_batch(&requests, &heads, &stored, &trimmed, Quota::UNLIMITED).unwrap();
        assert_eq!(
            plan.outcomes,
            [
                AppendOutcome::Appended { seq: 5 },
                AppendOutcome::Appended { seq: 1 },
                AppendOutcome::Duplicate { seq: 5 },
                AppendOutcome::Conflict { seq: 5 },
                AppendOutcome::Appended { seq: 6 },
                AppendOutcome::Conflict { seq: 3 },
                AppendOutcome::Expired,
                AppendOutcome::Appended { seq: 7 },
            ]
        );
        assert_eq!(
            plan.inserts.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [5, 1, 6, 7]
        );
        assert_eq!(
            plan.heads,
            [(UserId([1; 32]), 7, 3), (UserId([2; 32]), 1, 1)]
        );
    }

    #[test]
    fn the_quota_refuses_what_does_not_fit_and_what_the_device_sent_after_it() {
        let heads = HashMap::from([(
            UserId([1; 32]),
            UserHead {
                head: 10,
                earliest: 8,
                bytes: 250,
            },
        )]);
        let quota = Quota {
            max_events: 5,
            max_bytes: 300,
        };
        // 3 events and 250 bytes stored: a 1-byte append fits, a 60-byte one does not, and
        // the device's next append is refused after it even though it would fit.
        let big = AppendRequest {
            payload: SealedPayload(vec![0; 60]),
            ..request(1, 1, 2, 0)
        };
        let requests = [
            request(1, 1, 1, 10),
            big,
            request(1, 1, 3, 12),
            request(1, 2, 1, 13),
        ];
        let plan = plan_batch(&requests, &heads, &HashMap::new(), &HashMap::new(), quota).unwrap();
        assert_eq!(
            plan.outcomes,
            [
                AppendOutcome::Appended { seq: 11 },
                AppendOutcome::QuotaExceeded,
                AppendOutcome::QuotaExceeded,
                AppendOutcome::Appended { seq: 12 },
            ]
        );
        assert_eq!(plan.heads, [(UserId([1; 32]), 12, 2)]);
        // Counting events: 5 kept at most.
        let three = [
            request(1, 3, 1, 1),
            request(1, 3, 2, 1),
            request(1, 3, 3, 1),
        ];
        let full = plan_batch(&three, &heads, &HashMap::new(), &HashMap::new(), quota).unwrap();
        assert_eq!(
            full.outcomes,
            [
                AppendOutcome::Appended { seq: 11 },
                AppendOutcome::Appended { seq: 12 },
                AppendOutcome::QuotaExceeded,
            ]
        );
    }

    #[test]
    fn a_missing_head_is_an_error_not_a_guess() {
        let requests = [request(1, 1, 1, 10)];
        assert!(
            plan_batch(
                &requests,
                &HashMap::new(),
                &HashMap::new(),
                &HashMap::new(),
                Quota::UNLIMITED
            )
            .is_err()
        );
    }

    #[test]
    fn trim_targets() {
        let bounds = LogBounds {
            earliest: 1,
            head: 20,
        };
        assert_eq!(trim_target(bounds, None, None), 0);
        assert_eq!(trim_target(bounds, Some(15), None), 6);
        assert_eq!(trim_target(bounds, Some(50), None), 0);
        assert_eq!(trim_target(bounds, Some(0), None), 21);
        assert_eq!(trim_target(bounds, None, Some(Some(11))), 11);
        assert_eq!(trim_target(bounds, Some(15), Some(Some(3))), 6);
        assert_eq!(trim_target(bounds, None, Some(None)), 21);
    }

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
