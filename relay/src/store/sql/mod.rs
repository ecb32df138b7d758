//! The SQL seam every storage domain is written against: one [`SqlStore`] over either
//! backend, and the few tools that let a query be written once for both.
//!
//! A domain (the log, devices, and later people, conversations…) implements its own storage
//! trait for [`SqlStore`] in its own module. Where SQLite and PostgreSQL agree (most
//! statements: both take `$1` placeholders, `ON CONFLICT … DO UPDATE`, `RETURNING`, row
//! values and window functions), the statement is written once and run through
//! `on_reader!`, `on_writer!` or `in_tx!`, which expand the same code once per backend,
//! so the compiler checks every bind and decode against both drivers. Where they differ, the
//! domain writes the two versions side by side (`sqlite.rs`, `postgres.rs` in its folder):
//! the log's batch statements are the example (multi-row `VALUES` on SQLite, whole columns as
//! arrays through `UNNEST` on PostgreSQL). [`Dialect`] names the small differences in scalar
//! functions.
//!
//! Connecting (pools, pragmas, migrations) is per backend too: `sqlite.rs`, `postgres.rs`.

/// Runs `$body` with `$pool` bound to the pool that serves reads, once per backend (see the
/// module docs): a statement written once, checked against both drivers.
macro_rules! on_reader {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::store::sql::Db::Sqlite { reader: $pool, .. } => $body,
            $crate::store::sql::Db::Postgres { pool: $pool, .. } => $body,
        }
    };
}

/// [`on_reader!`] on the pool that writes (autocommit statements outside a transaction).
macro_rules! on_writer {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::store::sql::Db::Sqlite { writer: $pool, .. } => $body,
            $crate::store::sql::Db::Postgres { pool: $pool, .. } => $body,
        }
    };
}

/// Runs `$body` with `$conn` bound to the connection of the transaction `$tx` (a
/// `&mut Tx`), once per backend; use it as `.execute(&mut *conn)`.
macro_rules! in_tx {
    ($tx:expr, |$conn:ident| $body:expr) => {
        match $tx {
            $crate::store::sql::Tx::Sqlite(tx) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::store::sql::Tx::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

pub(crate) use {in_tx, on_reader, on_writer};

mod postgres;
pub use postgres::APPEND_CONNECTION_NAME;
mod sqlite;
pub(crate) mod sqlite_direct;

use std::sync::Arc;

use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use super::{Quota, StoreError, StoreOptions};

/// The relay's SQL storage, on SQLite or PostgreSQL; every domain's storage trait is
/// implemented for it.
#[derive(Clone, Debug)]
pub struct SqlStore {
    pub(crate) db: Db,
    pub(crate) quota: Quota,
}

impl SqlStore {
    /// Opens the database named by `url` and runs its migrations: `sqlite:` URLs (for
    /// example `sqlite://data/ferry.db?mode=rwc`) or `postgres://` / `postgresql://` URLs.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        let db = match scheme {
            "sqlite" => sqlite::connect(url, options).await?,
            "postgres" | "postgresql" => postgres::connect(url, options).await?,
            // Only the scheme is echoed: the rest of the URL may hold a password.
            _ => {
                return Err(StoreError::InvalidUrl(format!(
                    "unsupported scheme {scheme:?}: expected sqlite: or postgres://"
                )));
            }
        };
        Ok(Self {
            db,
            quota: options.quota,
        })
    }

    /// Which SQL dialect this store speaks.
    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }
}

/// The connection pools of one backend.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    /// One writer connection (SQLite has one writer at a time anyway; a single connection
    /// makes `BEGIN IMMEDIATE` the lock) and `query_only` readers beside it (WAL lets them
    /// run while the writer writes).
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
        /// rusqlite's connections for the hot paths (see [`sqlite_direct`]).
        direct: sqlite_direct::Direct,
    },
    /// One pool for everything but append batches, which have a connection of their own.
    Postgres {
        pool: PgPool,
        appender: Arc<postgres::AppendConnection>,
    },
}

/// The SQL dialect of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.35 or later.
    Sqlite,
    /// PostgreSQL 13 or later.
    Postgres,
}

impl Dialect {
    /// The name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// The scalar "larger of" function (`MAX(a, b)` in SQLite, `GREATEST` in PostgreSQL).
    pub fn greatest(self) -> &'static str {
        match self {
            Self::Sqlite => "MAX",
            Self::Postgres => "GREATEST",
        }
    }

    /// The scalar "smaller of" function (`MIN(a, b)` in SQLite, `LEAST` in PostgreSQL).
    pub fn least(self) -> &'static str {
        match self {
            Self::Sqlite => "MIN",
            Self::Postgres => "LEAST",
        }
    }
}

impl Db {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite { .. } => Dialect::Sqlite,
            Self::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// Starts a writing transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so what it reads stays true until it commits; on PostgreSQL,
    /// rows the transaction must keep stable are locked explicitly (see [`Tx::lock_user`]).
    pub(crate) async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Self::Sqlite { writer, .. } => Tx::Sqlite(writer.begin_with("BEGIN IMMEDIATE").await?),
            Self::Postgres { pool, .. } => Tx::Postgres(pool.begin().await?),
        })
    }

    pub(crate) async fn close(&self) {
        match self {
            Self::Sqlite {
                writer,
                reader,
                direct,
            } => {
                direct.close();
                reader.close().await;
                writer.close().await;
            }
            Self::Postgres { pool, appender } => {
                appender.close().await;
                pool.close().await;
            }
        }
    }
}

/// A writing transaction on either backend; dropped without [`Tx::commit`], it rolls back.
pub(crate) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(tx) => tx.commit().await?,
            Self::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Locks the user's row (creating it) until commit: every transaction that changes what
    /// a user owns takes this lock first, so two of them for one user run one after the other,
    /// on any number of relay nodes. SQLite's `BEGIN IMMEDIATE` already serialises writers;
    /// the upsert still creates the row.
    pub(crate) async fn lock_user(&mut self, user: &[u8]) -> Result<(), StoreError> {
        in_tx!(self, |conn| {
            sqlx::query(
                "INSERT INTO users (user_id) VALUES ($1)
                 ON CONFLICT (user_id) DO UPDATE SET head = users.head",
            )
            .bind(user)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }
}

/// Rows per multi-row statement of the `last_seen` write-behind: 3 parameters a row stays
/// far below both backends' parameter limits (SQLite 32,766, PostgreSQL 65,535).
pub(crate) const TOUCH_ROWS_PER_STATEMENT: usize = 500;

// ---------------------------------------------------------------------------------------------
// Conversions between Rust values and columns, the same for every domain.

/// A `u64` for a BIGINT column, saturating at `i64::MAX` (sequences, times and limits never
/// get there; saturating keeps comparisons like `seq > after` correct for huge inputs).
pub(crate) fn db_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A BIGINT column read back as `u64`; negative values are refused by CHECK constraints.
pub(crate) fn from_db_int(value: i64, column: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {column}: {value}")))
}

/// A 32-byte key (user, device) read back from a BYTEA/BLOB column.
pub(crate) fn key32(bytes: &[u8], column: &str) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{column} of {} bytes, expected 32", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_saturate_into_the_database_and_refuse_negatives_out_of_it() {
        assert_eq!(db_int(7), 7);
        assert_eq!(db_int(u64::MAX), i64::MAX);
        assert_eq!(from_db_int(7, "x").unwrap(), 7);
        assert!(from_db_int(-1, "x").is_err());
        assert!(key32(&[0; 31], "k").is_err());
        assert_eq!(key32(&[9; 32], "k").unwrap(), [9; 32]);
    }

    #[test]
    fn dialect_functions() {
        assert_eq!(Dialect::Sqlite.greatest(), "MAX");
        assert_eq!(Dialect::Postgres.greatest(), "GREATEST");
        assert_eq!(Dialect::Sqlite.least(), "MIN");
        assert_eq!(Dialect::Postgres.least(), "LEAST");
    }
}
