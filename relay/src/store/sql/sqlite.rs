//! Connecting to SQLite: the embedded default for a relay running alone.
//!
//! One database file in WAL mode with `synchronous = FULL`: WAL with `NORMAL` may lose the
//! last transactions on power loss, and the relay acknowledges an append only once it is
//! durable, so every commit syncs the WAL. Group commit ([`crate::store::committer`]) is what
//! keeps that affordable.
//!
//! Writes go through a pool of exactly one connection, and every writing transaction starts
//! with `BEGIN IMMEDIATE` ([`super::Db::begin`]), so a transaction that reads a user's head
//! holds the write lock until it commits (also against another process, which waits up to
//! the busy timeout). Reads go through a separate pool of `query_only` connections, which WAL
//! lets run next to the writer. An in-memory database (`sqlite::memory:`) uses the writer for
//! both. The hot paths (append batches, replay pages) run on rusqlite's
//! connections to the same database instead ([`super::sqlite_direct`]).

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::Db;
use super::sqlite_direct::Direct;
use crate::store::{StoreError, StoreOptions};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// Opens (creating it if the URL says `mode=rwc`) the database at `url` and runs the
/// migrations.
pub(super) async fn connect(url: &str, options: &StoreOptions) -> Result<Db, StoreError> {
    let base = SqliteConnectOptions::from_str(url)?.busy_timeout(options.busy_timeout);
    let writer_options = base
        .clone()
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        // WAL checkpoints run on a thread of their own, not in a commit (`sqlite_direct`).
        .pragma("wal_autocheckpoint", "0");
    // One long-lived writer: an in-memory database lives as long as its connection.
    let writer = SqlitePoolOptions::new()
        // A connection to a local file does not go stale; sqlx's test before handing it out
        // is one more round trip to the connection's thread on every statement.
        .test_before_acquire(false)
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(writer_options.clone())
        .await?;
    MIGRATOR.run(&writer).await?;
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let reader = if in_memory {
        writer.clone()
    } else {
        SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.create_if_missing(false).pragma("query_only", "ON"))
            .await?
    };
    let direct = Direct::open(
        &writer_options,
        in_memory,
        options.busy_timeout,
        options.max_connections as usize,
    )?;
    Ok(Db::Sqlite {
        writer,
        reader,
        direct,
    })
}
