//! Connecting to PostgreSQL: for production and for more than one relay node.
//!
//! Transactions run at the default READ COMMITTED isolation: each statement sees everything
//! committed before it started, in particular what the previous holder of a row lock
//! committed. What must stay stable inside a transaction is protected by locking the user's
//! row first ([`super::Tx::lock_user`]), in user order when a transaction locks several, so
//! two transactions, on this node or another, never wait on each other in a cycle.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, PgConnection};
use tokio::sync::{Mutex, MutexGuard};

use super::Db;
use crate::store::{StoreError, StoreOptions};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// Connects to the database at `url` and runs the migrations (under PostgreSQL's advisory
/// lock, so relay nodes starting together do not race).
pub(super) async fn connect(url: &str, options: &StoreOptions) -> Result<Db, StoreError> {
    let connect = PgConnectOptions::from_str(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await?;
    MIGRATOR.run(&pool).await?;
    let appender = pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name(APPEND_CONNECTION_NAME);
    let appender = Arc::new(AppendConnection::new(appender));
    Ok(Db::Postgres { pool, appender })
}

/// The `application_name` of the [`AppendConnection`], as `pg_stat_activity` shows it.
pub const APPEND_CONNECTION_NAME: &str = "ferry-relay appends";

/// The connection append batches run on: one of their own beside the pool, so a node opens
/// one more connection than its pool.
///
/// Append batches come from one task, the group committer, which runs on a thread of its
/// own ([`Committer::spawn`](crate::store::Committer::spawn)). The first batch opens this
/// connection there, so its socket is driven by that thread's runtime: each statement's
/// answer wakes the committer at once rather than when a busy worker of the main runtime
/// next polls the socket, and a batch skips the pool's acquire and the ping that comes with
/// it. Other callers of `append_batch` (tests, a single `append`) take turns on it.
pub(crate) struct AppendConnection {
    options: PgConnectOptions,
    slot: Mutex<Option<PgConnection>>,
    /// Set by [`AppendConnection::close`]: no new connection is opened after it.
    closed: AtomicBool,
}

impl AppendConnection {
    fn new(options: PgConnectOptions) -> Self {
        Self {
            options,
            slot: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    /// The connection, for one batch (opened now if there is none): [`AppendTurn::begin`],
    /// the batch's statements on [`AppendTurn::conn`], then [`AppendTurn::commit`]. A turn
    /// dropped before it commits closes the connection (a batch that failed midway leaves it
    /// in an unknown state) and the next batch opens a new one.
    pub(crate) async fn turn(&self) -> Result<AppendTurn<'_>, StoreError> {
        let mut slot = self.slot.lock().await;
        if self.closed.load(Ordering::Acquire) {
            // As the pool answers once closed.
            return Err(sqlx::Error::PoolClosed.into());
        }
        let kept = slot.is_some();
        if !kept {
            *slot = Some(PgConnection::connect_with(&self.options).await?);
        }
        Ok(AppendTurn {
            options: &self.options,
            slot,
            kept,
            finished: false,
        })
    }

    /// Closes the connection, if open (waiting for a batch running on it).
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropped, not closed politely: the runtime that drives its socket may be gone.
        self.slot.lock().await.take();
    }
}

impl std::fmt::Debug for AppendConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendConnection")
            .field(
                "open",
                &self.slot.try_lock().map(|slot| slot.is_some()).ok(),
            )
            .finish_non_exhaustive()
    }
}

/// One batch's use of the [`AppendConnection`].
pub(crate) struct AppendTurn<'a> {
    options: &'a PgConnectOptions,
    slot: MutexGuard<'a, Option<PgConnection>>,
    /// Whether the connection was kept from an earlier batch (not opened by this turn).
    kept: bool,
    finished: bool,
}

impl AppendTurn<'_> {
    /// Begins the batch's transaction. A connection kept from an earlier batch may have been
    /// closed since (PostgreSQL restarted, an idle timeout, a proxy): if its `BEGIN` fails,
    /// which changed nothing, a new connection is opened, once, to begin on.
    ///
    /// The transaction is plain `BEGIN` and [`AppendTurn::commit`], not a sqlx
    /// `Transaction`: a turn that ends any other way closes the connection, which is what
    /// rolls back.
    pub(crate) async fn begin(&mut self) -> Result<(), StoreError> {
        let began = self.conn()?.execute("BEGIN").await.map(drop);
        match began {
            Ok(()) => Ok(()),
            Err(error) if std::mem::take(&mut self.kept) => {
                tracing::debug!(%error, "the append connection failed to begin; opening a new one");
                *self.slot = None;
                *self.slot = Some(PgConnection::connect_with(self.options).await?);
                self.conn()?.execute("BEGIN").await?;
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The connection, inside the transaction once [`AppendTurn::begin`] has run.
    pub(crate) fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.slot.as_mut().ok_or(StoreError::Closed)
    }

    /// Commits the batch; the connection is kept for the next one.
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        self.conn()?.execute("COMMIT").await?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for AppendTurn<'_> {
    fn drop(&mut self) {
        if !self.finished {
            *self.slot = None;
        }
    }
}
