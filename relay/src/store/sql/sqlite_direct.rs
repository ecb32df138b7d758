//! The SQLite writer's hot path as one blocking call instead of a hand-off per statement.
//!
//! sqlx runs each SQLite connection on a worker thread of its own and hands it every
//! statement, and every row back, through channels: an append batch of a few dozen
//! statements is a few dozen round trips between threads, and under load those hand-offs and
//! sqlx's per-row decoding cost more than SQLite's own work (the flame graphs in
//! `docs/flamegraphs/`, `docs/benchmarks.md`). So the append batch runs as one job on a
//! blocking thread, on a second connection to the same database opened with rusqlite, whose
//! statements stay prepared from one batch to the next.
//!
//! There is still one writer at a time: a job first takes the sqlx writer pool's only
//! connection and holds it until it has committed, so no other write of this process runs
//! meanwhile, and the database's write lock (`BEGIN IMMEDIATE`) never finds a writer of its
//! own process in the way (another process waits up to the busy timeout, as before).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::OpenFlags;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

use crate::store::StoreError;

/// The second connection to the writer's database (see the module docs).
#[derive(Clone)]
pub(crate) struct DirectWriter(Arc<Mutex<rusqlite::Connection>>);

impl fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirectWriter")
    }
}

impl DirectWriter {
    /// Opens the database sqlx opened with `options` (after its migrations), with the
    /// pragmas the sqlx writer has: every commit synced, foreign keys enforced.
    pub(super) fn open(
        options: &SqliteConnectOptions,
        in_memory: bool,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if in_memory {
            // `sqlite::memory:` is a shared-cache database that lives while sqlx's writer
            // connection is open; this connection joins it by name.
            flags |= OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE;
        }
        let conn = rusqlite::Connection::open_with_flags(options.get_filename(), flags)?;
        conn.busy_timeout(busy_timeout)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // The same database, or writes would go somewhere nobody reads: a private in-memory
        // database (`?mode=memory` without `cache=shared`) cannot be opened twice.
        let migrated: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'events')",
            [],
            |row| row.get(0),
        )?;
        if !migrated {
            return Err(StoreError::InvalidUrl(
                "this in-memory SQLite database cannot be opened a second time: \
                 use `sqlite::memory:` or a file"
                    .into(),
            ));
        }
        Ok(Self(Arc::new(Mutex::new(conn))))
    }

    /// Runs `job` on this connection, on a blocking thread, while holding `writer`'s only
    /// connection (the process's turn to write).
    ///
    /// The job owns what it needs (`'static`); if the caller stops waiting, the job still
    /// runs to its end and only then gives the turn back. A job must end every transaction
    /// it begins: rusqlite's [`rusqlite::Transaction`] rolls back when dropped, also when
    /// the job panics.
    pub(crate) async fn run<T, F>(&self, writer: &SqlitePool, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let turn = writer.acquire().await?;
        let conn = Arc::clone(&self.0);
        let joined = tokio::task::spawn_blocking(move || {
            // A job that panicked rolled its transaction back while unwinding: the
            // connection is usable.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            let result = job(&mut conn);
            drop(conn);
            drop(turn);
            result
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Only when the runtime shuts down.
            Err(_) => Err(StoreError::Closed),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Database(Arc::new(error))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::store::StoreOptions;
    use crate::store::sql::Db;

    async fn open(url: &str) -> (SqlitePool, DirectWriter) {
        match super::super::sqlite::connect(url, &StoreOptions::default())
            .await
            .unwrap()
        {
            Db::Sqlite { writer, direct, .. } => (writer, direct),
            Db::Postgres { .. } => unreachable!(),
        }
    }

    #[tokio::test]
    async fn a_job_writes_the_database_sqlx_reads_in_memory_and_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        for url in ["sqlite::memory:", file.as_str()] {
            let (writer, direct) = open(url).await;
            let seen = direct
                .run(&writer, |conn| {
                    conn.execute("INSERT INTO users (user_id) VALUES (randomblob(32))", [])?;
                    Ok(conn
                        .query_row("SELECT COUNT(*) FROM users", [], |row| row.get::<_, i64>(0))?)
                })
                .await
                .unwrap();
            assert_eq!(seen, 1, "{url}");
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
                .fetch_one(&writer)
                .await
                .unwrap();
            assert_eq!(count, 1, "{url}: sqlx sees the job's commit");
        }
    }

    #[tokio::test]
    async fn a_private_in_memory_database_is_refused_not_split_in_two() {
        let refused =
            super::super::sqlite::connect("sqlite://ferry?mode=memory", &StoreOptions::default())
                .await;
        assert!(
            matches!(refused, Err(StoreError::InvalidUrl(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_job_holds_the_writer_until_it_ends() {
        let (writer, direct) = open("sqlite::memory:").await;
        let started = Instant::now();
        let job = {
            let (writer, direct) = (writer.clone(), direct.clone());
            tokio::spawn(async move {
                direct
                    .run(&writer, |_| {
                        std::thread::sleep(Duration::from_millis(300));
                        Ok(Instant::now())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        sqlx::query("INSERT INTO users (user_id) VALUES (randomblob(32))")
            .execute(&writer)
            .await
            .unwrap();
        let written = Instant::now();
        let job_ended = job.await.unwrap().unwrap();
        assert!(
            written >= job_ended,
            "the sqlx write ran during the job ({:?} after start)",
            written - started
        );
    }

    #[tokio::test]
    async fn a_failed_or_panicking_job_leaves_no_transaction_open() {
        let (writer, direct) = open("sqlite::memory:").await;
        let failed = direct
            .run(&writer, |conn| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                tx.execute("INSERT INTO users (user_id) VALUES (randomblob(32))", [])?;
                tx.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                tx.commit()?;
                Ok(())
            })
            .await;
        assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
        let panicked = {
            let (writer, direct) = (writer.clone(), direct.clone());
            tokio::spawn(async move {
                direct
                    .run(&writer, |conn| -> Result<(), StoreError> {
                        let tx = conn
                            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                        tx.execute("INSERT INTO users (user_id) VALUES (randomblob(32))", [])?;
                        panic!("a job that panics mid-transaction");
                    })
                    .await
            })
            .await
        };
        assert!(panicked.unwrap_err().is_panic());
        // Neither insert stayed, and both connections take a new transaction (one left open
        // would keep the write lock).
        let count = direct
            .run(&writer, |conn| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let count: i64 =
                    tx.query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))?;
                tx.commit()?;
                Ok(count)
            })
            .await
            .unwrap();
        assert_eq!(count, 0);
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO users (user_id) VALUES (randomblob(32))")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
}
