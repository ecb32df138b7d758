//! The relay's durable storage: per-user event logs, device records and cursors.
//!
//! Storage is split by domain, each with a trait of its own: [`LogStore`] (the per-user event
//! logs and their retention, in `log/`), [`ChainStore`] (each user's device chain, in
//! `chain.rs`), [`DeviceStore`] (the chain's mirror: device records and cursors, in
//! `devices.rs`), [`PeopleStore`] (handles, profiles, contacts, blocks and the notices
//! they write into users' logs, in `people.rs`) and [`ConversationStore`] (conversation
//! streams validated as MLS's Delivery Service, and the KeyPackage directory, in
//! `conversations.rs`) and [`PushStore`] (push targets and the queue of wake-ups, in
//! `push.rs`) and [`AttachmentStore`] (the index of attachments' blobs: who uploaded
//! them, which messages refer to them, each user's bytes, in `attachments.rs`). [`Store`] is all of them together, what a relay node runs on. One
//! implementation, [`SqlStore`], serves every domain on either backend, chosen from the URL
//! scheme by [`open`]: SQLite (`sqlite://path?mode=rwc`, the embedded default) or PostgreSQL
//! (`postgres://…`, production). Both run their migrations (`migrations/sqlite`,
//! `migrations/postgres`, append-only) when opened.
//!
//! # Adding a domain
//!
//! A new domain (people, conversations…) adds one module: its trait, its row types, and its
//! `impl Trait for SqlStore`, with each statement written once and run on either backend
//! through the [`sql`] seam (`on_reader!`, `on_writer!`, `in_tx!`); a statement is written
//! twice, in `sqlite.rs` and `postgres.rs` beside the domain, only where the dialects truly
//! differ (the log's batch statements are the example). Its tables go in a new migration in
//! each of the two migration folders. Then its trait joins [`Store`]'s list and
//! [`FaultyStore`] passes it through.
//!
//! # Data flow
//!
//! ```text
//!  connection tasks ──CommitHandle::append/submit──▶ bounded queue ──▶ Committer task
//!                                                         Store::append_batch (ONE transaction)
//!  live delivery    ◀── on_committed(user, new events) ───────┤
//!  connection tasks ◀── oneshot answer per append ────────────┘
//!  replay           ──LogStore::log_bounds, LogStore::read_page(user, after, limit, bytes)──▶ pages
//!  Ack frames       ──DeviceStore::set_ack──▶ devices.acked = max(old, min(seq, head))
//!  ChainAppend      ──ChainStore::append_link (ONE transaction, user row locked)──▶
//!                     chain_links + devices (Admit inserts the row, Revoke sets revoked_at)
//!  retention job    ──LogStore::trim──▶ deletes a prefix of each user's log, raises `earliest`
//! ```
//!
//! The store holds sealed payloads only ([`SealedPayload`](ferry_protocol::SealedPayload)); it never sees plaintext and
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
//! - A user's chain is stored only as a whole that verifies ([`ferry_protocol::Chain`]):
//!   [`ChainStore::append_link`] verifies the stored links and applies the new one under the
//!   user's row lock, and stores it with its mirror in `devices` in the same transaction. A
//!   device row exists (with `admitted_seqno`) exactly for the devices the chain admitted, and
//!   carries `revoked_at` exactly for those it revoked. An Admit beyond the limit of active
//!   devices is [`StoreError::TooManyDevices`]; a link that does not extend the chain is
//!   [`StoreError::ChainLinkRefused`].
//! - Only an active device appends: inside the append batch, under the same user row lock as
//!   `append_link`, an append from a device without an active row (never admitted, or
//!   revoked) is [`AppendOutcome::Revoked`] and stores nothing. So no append is stored after
//!   the revocation of its device committed, on any node.
//! - No event is stored sealed under a replaced data-key epoch: [`ChainStore::append_link`]
//!   raises the user's `chain_epoch` with every Revoke or Rotate link, and the append batch,
//!   under the same user row lock, refuses a new append whose payload names (format 2) a lower
//!   epoch with [`AppendOutcome::StaleEpoch`], and every later new append of the same device
//!   in that batch too. Payloads without a format-2 header are not looked at.
//! - A revoked device stays revoked (the chain never admits a device key twice); its events
//!   stay in the log.
//! - Every query touches one user's rows (only [`LogStore::trim`] walks the users table), so the
//!   events table can be hash-partitioned or distributed by `user_id`.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ferry_protocol::chain::SealedKey;
//! use ferry_protocol::{Chain, DeviceId, LinkBody, SealedPayload, SigningKey, UserKey};
//! use ferry_relay::store::{
//!     self, AppendOutcome, AppendRequest, ChainStore, CommitConfig, Committer, LogStore,
//! };
//!
//! let dir = tempfile::tempdir()?;
//! let url = format!("sqlite://{}?mode=rwc", dir.path().join("ferry.db").display());
//! let store = store::open(&url).await?; // or postgres://user@host/db
//! let commits = Committer::spawn(Arc::clone(&store), CommitConfig::default());
//!
//! // Only a device the user's chain admits may append: the user key creates the chain and
//! // admits the first device (a client uploads these links with `ChainAppend`).
//! let user_key = UserKey::from_secret_bytes(&[1; 32]);
//! let (user, device) = (user_key.id(), DeviceId([2; 32]));
//! let mut chain = Chain::new(user);
//! let create = LinkBody::Create { recovery_exchange: [9; 32], epoch_key: SealedKey(vec![7; 104]) };
//! let admit = LinkBody::Admit { device, exchange: [5; 32], name: "laptop".into(), created_at: 0 };
//! for body in [create, admit] {
//!     let link = chain.sign(body, SigningKey::User(&user_key));
//!     chain.apply(&link)?;
//!     store.append_link(&link, 10, 0).await?;
//! }
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

mod attachments;
mod chain;
pub mod committer;
pub mod conv_committer;
mod conversations;
mod devices;
pub mod faults;
pub mod last_seen;
mod log;
mod people;
mod push;
mod session_start;
pub mod sql;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::{ChainError, DeviceId, ErrorCode, UserId};

pub use attachments::{AttachmentStore, BlobRow, DoomedBlob, NewBlob};
pub use chain::{ChainStore, LINK_PAGE_BYTES, LinkAppended};
pub use committer::{
    Admission, AppendOrder, BatchObserver, BatchReport, CommitConfig, CommitHandle, CommitReply,
    CommitStats, CommittedHook, Committer, UncertainHook,
};
pub use conversations::{
    ConvCursor, ConvLimits, ConvPage, ConvSendRequest, ConversationStore, KeyPackageRow,
    SendOutcome,
};
pub use devices::{DeviceRecord, DeviceStore};
pub use faults::FaultyStore;
pub use last_seen::LastSeenWrites;
pub(crate) use log::plan::{batch_users, distinct_users};
pub use log::{
    AppendOutcome, AppendRequest, LogBounds, LogStore, TRIM_BATCH, TRIM_USERS_PAGE,
    check_device_seq,
};
pub use people::{
    ContactChange, ContactList, Notified, PRESENCE_PEERS_POINT_ROWS, PeopleLimits, PeopleStore,
};
pub use push::{PushKind, PushStore, PushTargetRow, QueuedWakeUps, WakeUp};
pub use session_start::SessionStart;
pub use sql::{APPEND_CONNECTION_NAME, Dialect, SqlStore};

/// Opens the store named by `url` with default [`StoreOptions`] and runs its migrations.
///
/// `sqlite:` URLs (for example `sqlite://data/ferry.db?mode=rwc`) open SQLite;
/// `postgres://` and `postgresql://` URLs open PostgreSQL.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, &StoreOptions::default()).await
}

/// [`open`] with explicit pool options.
pub async fn open_with(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqlStore::open(url, options).await?))
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

/// The relay's durable storage: every domain's storage together. Both backends implement the
/// same semantics (see the module documentation for the invariants), checked by one shared
/// test suite (`relay/tests/store.rs`).
#[async_trait]
pub trait Store:
    LogStore
    + ChainStore
    + DeviceStore
    + PeopleStore
    + ConversationStore
    + PushStore
    + AttachmentStore
    + std::fmt::Debug
    + 'static
{
    /// `"sqlite"` or `"postgres"`, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Checks that the database answers (readiness probe).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes the connection pools; later calls fail with a database error.
    async fn close(&self);

    /// What a device's session starts from: [`DeviceStore::device`],
    /// [`LogStore::log_bounds`], [`LogStore::last_device_seq`] and
    /// [`ChainStore::chain_seqno`]. Every reconnect asks for all of them, at admission and
    /// again once its session has joined the hub, so a backend reads them in one round trip
    /// (see `session_start.rs`).
    async fn session_start(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<SessionStart, StoreError>;
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        self.dialect().name()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sql::on_reader!(&self.db, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    async fn close(&self) {
        self.db.close().await;
    }

    async fn session_start(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<SessionStart, StoreError> {
        session_start::read(self, user, device).await
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
    Database(#[source] Arc<dyn std::error::Error + Send + Sync>),
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
    /// The user's chain has not admitted the device.
    #[error("the user's device chain has not admitted the device")]
    UnknownDevice,
    /// A chain link does not extend the user's chain (the error says why).
    #[error("chain link refused: {0}")]
    ChainLinkRefused(#[source] ChainError),
    /// A stored row could not be read back (bad length, negative number).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The committer has stopped; nothing more is accepted.
    #[error("the store is shutting down")]
    Closed,
    /// A people operation breaks a rule (a limit, nothing to act on, a taken handle); the
    /// code says which.
    #[error("refused: {}", .0.name())]
    Refused(ErrorCode),
    /// An operation breaks a rule, with the reason the client is told (a conversation's
    /// MLS checks say which check failed).
    #[error("refused: {}: {}", .0.name(), .1)]
    RefusedBecause(ErrorCode, String),
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
            Self::ChainLinkRefused(_) => ErrorCode::ChainLinkRefused,
            Self::Database(_) | Self::Closed => ErrorCode::Unavailable,
            Self::EarlierRefused(code) | Self::Refused(code) | Self::RefusedBecause(code, _) => {
                *code
            }
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
