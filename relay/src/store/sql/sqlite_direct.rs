//! SQLite's hot paths as one blocking call instead of a hand-off per statement.
//!
//! sqlx runs each SQLite connection on a worker thread of its own and hands it every
//! statement, and every row back, through channels: an append batch of a few dozen
//! statements is a few dozen round trips between threads, a replay page of a thousand events
//! a thousand, and under load those hand-offs and sqlx's per-row decoding cost more than
//! SQLite's own work (the flame graphs in `docs/flamegraphs/`, `docs/benchmarks.md`). So the
//! hot paths run as one job on a blocking thread, on connections to the same database opened
//! with rusqlite, whose statements stay prepared from one job to the next: the append batch
//! on a second writing connection ([`Direct::write`]), replay pages on read-only ones
//! ([`Direct::read`]): one hand-off to a blocking thread, where sqlx's pool makes three (it
//! tests the connection when handing it out and again when it comes back). A session's reads
//! as it starts and ends (`store/session_start.rs`, the first presence peers) are point reads
//! ([`Direct::read_point`]), which make none when a reader is free: they run on the caller's
//! thread.
//!
//! There is still one writer at a time: a writing job first takes the sqlx writer pool's only
//! connection and holds it until it has committed, so no other write of this process runs
//! meanwhile, and the database's write lock (`BEGIN IMMEDIATE`) never finds a writer of its
//! own process in the way (another process waits up to the busy timeout, as before).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::path::PathBuf;

use rusqlite::OpenFlags;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::Semaphore;

use crate::store::StoreError;

/// rusqlite's connections to the store's SQLite database (see the module docs).
#[derive(Clone)]
pub(crate) struct Direct {
    /// The second writing connection.
    writer: Arc<Mutex<rusqlite::Connection>>,
    /// Read-only connections; `None` for an in-memory database, whose reads take the
    /// writer's turn (it has one connection in sqlx too).
    readers: Option<Arc<Readers>>,
    /// The WAL's checkpoints (file databases).
    checkpointer: Option<Arc<Checkpointer>>,
}

impl fmt::Debug for Direct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direct")
            .field("readers", &self.readers.as_ref().map(|r| r.max))
            .finish_non_exhaustive()
    }
}

/// A pool of read-only connections, opened when first needed, at most `max` at once.
struct Readers {
    idle: Mutex<Vec<rusqlite::Connection>>,
    permits: Semaphore,
    max: usize,
    filename: PathBuf,
    busy_timeout: Duration,
}

impl Readers {
    fn open(&self) -> Result<rusqlite::Connection, StoreError> {
        // Opened for writing, like sqlx's readers, and made `query_only`: WAL readers share
        // the `-shm` index, which a read-only open may not be able to set up.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(&self.filename, flags)?;
        conn.busy_timeout(self.busy_timeout)?;
        conn.pragma_update(None, "query_only", "ON")?;
        Ok(conn)
    }

    /// An open connection nobody is using, if there is one (the caller holds a permit).
    fn take_idle(&self) -> Option<rusqlite::Connection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Returns a connection after a job: a read-only one has no transaction to leave open.
    fn give_back(&self, conn: rusqlite::Connection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

impl Direct {
    /// Opens the database sqlx opened with `options` (after its migrations): the writing
    /// connection now, with the pragmas the sqlx writer has (every commit synced, foreign
    /// keys enforced), and up to `max_readers` read-only ones when first needed.
    pub(super) fn open(
        options: &SqliteConnectOptions,
        in_memory: bool,
        busy_timeout: Duration,
        max_readers: usize,
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
        // Checkpoints run on a thread of their own (`spawn_checkpointer`), not in a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
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
        let readers = (!in_memory).then(|| {
            let max = max_readers.max(1);
            Arc::new(Readers {
                idle: Mutex::new(Vec::with_capacity(max)),
                permits: Semaphore::new(max),
                max,
                filename: options.get_filename().to_path_buf(),
                busy_timeout,
            })
        });
        let checkpointer = if in_memory {
            None
        } else {
            // Commits append to the WAL only; this thread moves it into the database file.
            let checkpoints = conn_for_checkpoints(options.get_filename(), busy_timeout)?;
            Some(Arc::new(Checkpointer::spawn(checkpoints)?))
        };
        Ok(Self {
            writer: Arc::new(Mutex::new(conn)),
            readers,
            checkpointer,
        })
    }

    /// Stops the background checkpoints and waits for their thread (the store closes).
    pub(crate) fn close(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.stop();
        }
    }

    /// Runs `job` on this connection, on a blocking thread, while holding `writer`'s only
    /// connection (the process's turn to write).
    ///
    /// The job owns what it needs (`'static`); if the caller stops waiting, the job still
    /// runs to its end and only then gives the turn back. A job must end every transaction
    /// it begins: rusqlite's [`rusqlite::Transaction`] rolls back when dropped, also when
    /// the job panics.
    pub(crate) async fn write<T, F>(&self, writer: &SqlitePool, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let turn = writer.acquire().await?;
        let conn = Arc::clone(&self.writer);
        blocking(move || {
            // A job that panicked rolled its transaction back while unwinding: the
            // connection is usable.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            let result = job(&mut conn);
            drop(conn);
            drop(turn);
            result
        })
        .await
    }

    /// Runs `job` on a read-only connection (query_only: a job cannot write through it),
    /// on a blocking thread, at most as many at once as sqlx's reader pool allows. On an
    /// in-memory database, on the writing connection in the writer's turn (`writer`).
    pub(crate) async fn read<T, F>(&self, writer: &SqlitePool, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let Some(readers) = &self.readers else {
            return self.write(writer, job).await;
        };
        let permit = readers
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let readers = Arc::clone(readers);
        let result = blocking(move || {
            let mut conn = match readers.take_idle() {
                Some(conn) => conn,
                None => readers.open()?,
            };
            let result = job(&mut conn);
            readers.give_back(conn);
            result
        })
        .await;
        drop(permit);
        result
    }

    /// [`Direct::read`] for a point read (a few rows found by key), run here on the
    /// caller's thread when a read-only connection is open and free at once, else as
    /// `read`. From SQLite's page cache such a read takes microseconds, less than the
    /// hand-off to a blocking thread and back: thread switches and a wake-up, which made a
    /// reconnect cost 9% more CPU (docs/benchmarks.md, issue 14's fifth round). A read
    /// that may scan, sort many rows or wait belongs on `read`: this one holds up the
    /// caller's other tasks while it runs.
    pub(crate) async fn read_point<T, F>(
        &self,
        writer: &SqlitePool,
        job: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if let Some(readers) = &self.readers
            && let Ok(permit) = readers.permits.try_acquire()
        {
            // Only a connection already open: opening one is file I/O.
            if let Some(mut conn) = readers.take_idle() {
                let result = job(&mut conn);
                readers.give_back(conn);
                drop(permit);
                return result;
            }
        }
        self.read(writer, job).await
    }
}

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The checkpointer's connection: synchronous FULL, so a checkpoint syncs the database file
/// before the WAL is reused.
fn conn_for_checkpoints(
    filename: &std::path::Path,
    busy_timeout: Duration,
) -> Result<rusqlite::Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(filename, flags)?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] (PASSIVE: it never waits for a reader or
/// the writer) on a thread of its own, until stopped.
///
/// SQLite checkpoints in the commit that passes `wal_autocheckpoint` pages, so one commit in
/// a thousand paid for copying the WAL into the database and syncing it: the writers' own
/// checkpoints are off (`wal_autocheckpoint = 0`, on both writing connections) and this
/// thread does them instead, beside the commits.
///
/// Stopping (at close, or when the store is dropped) waits for the thread, so its connection
/// is closed by then: the last connection to close removes the `-wal` and `-shm` files, which
/// must not happen at some moment after the relay has stopped.
struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Checkpointer {
    fn spawn(conn: rusqlite::Connection) -> Result<Self, StoreError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ferry-sqlite-checkpoint".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    std::thread::park_timeout(CHECKPOINT_EVERY);
                    if stopped.load(Ordering::Acquire) {
                        break;
                    }
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "SQLite checkpoint failed; trying again");
                    }
                }
            })
            .map_err(|e| StoreError::Database(Arc::new(e)))?;
        Ok(Self {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `sql` (written with PostgreSQL's `$n` parameters, which sqlx takes on both backends) with
/// SQLite's `?n`, which bind by number in rusqlite: the same statement text serves both.
pub(crate) fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

/// Runs `job` on tokio's blocking threads and hands its panic on.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(job).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Only when the runtime shuts down.
        Err(_) => Err(StoreError::Closed),
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

    async fn open(url: &str) -> (SqlitePool, Direct) {
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
                .write(&writer, |conn| {
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
    async fn readers_see_what_was_committed_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let (writer, direct) = open(&url).await;
        let count = |direct: Direct, writer: SqlitePool| async move {
            direct
                .read(&writer, |conn| {
                    Ok(conn
                        .query_row("SELECT COUNT(*) FROM users", [], |row| row.get::<_, i64>(0))?)
                })
                .await
                .unwrap()
        };
        assert_eq!(count(direct.clone(), writer.clone()).await, 0);
        sqlx::query("INSERT INTO users (user_id) VALUES (randomblob(32))")
            .execute(&writer)
            .await
            .unwrap();
        assert_eq!(count(direct.clone(), writer.clone()).await, 1);
        let written = direct
            .read(&writer, |conn| {
                Ok(conn.execute("INSERT INTO users (user_id) VALUES (randomblob(32))", [])?)
            })
            .await;
        assert!(
            matches!(written, Err(StoreError::Database(_))),
            "{written:?}"
        );
        assert_eq!(count(direct, writer).await, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_point_read_runs_here_only_on_an_open_free_reader() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let here = std::thread::current().id();
        // Where the job ran, and what it saw.
        let point = |direct: &Direct, writer: &SqlitePool| {
            let (direct, writer) = (direct.clone(), writer.clone());
            async move {
                direct
                    .read_point(&writer, |conn| {
                        let users = conn.query_row("SELECT COUNT(*) FROM users", [], |row| {
                            row.get::<_, i64>(0)
                        })?;
                        Ok((std::thread::current().id(), users))
                    })
                    .await
                    .unwrap()
            }
        };

        let (writer, direct) = open(&file).await;
        // No reader open yet: opening one is file I/O, on a blocking thread.
        let (first, _) = point(&direct, &writer).await;
        assert_ne!(first, here);
        // One is open and free: the read runs here, and sees what was committed.
        sqlx::query("INSERT INTO users (user_id) VALUES (randomblob(32))")
            .execute(&writer)
            .await
            .unwrap();
        assert_eq!(point(&direct, &writer).await, (here, 1));
        // Every reader busy: it waits its turn like `read`, and runs on a blocking thread.
        let readers = direct.readers.as_ref().unwrap();
        let busy = readers
            .permits
            .acquire_many(readers.max as u32)
            .await
            .unwrap();
        let waiting = tokio::spawn(point(&direct, &writer));
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a point read took a busy reader's turn"
        );
        drop(busy);
        let (there, users) = waiting.await.unwrap();
        assert_ne!(there, here);
        assert_eq!(users, 1);
        // In memory there are no readers: it takes the writer's turn, as `read` does.
        let (writer, direct) = open("sqlite::memory:").await;
        let (ran, users) = point(&direct, &writer).await;
        assert_ne!(ran, here);
        assert_eq!(users, 0);
    }

    #[tokio::test]
    async fn commits_reach_the_database_file_through_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let (writer, direct) = open(&url).await;
        direct
            .write(&writer, |conn| {
                conn.execute("INSERT INTO users (user_id) VALUES (randomblob(32))", [])?;
                Ok(())
            })
            .await
            .unwrap();
        sqlx::query("INSERT INTO users (user_id) VALUES (randomblob(32))")
            .execute(&writer)
            .await
            .unwrap();
        // The database file alone, without its WAL: it holds what was checkpointed (a copy
        // taken while a checkpoint writes may be torn: that counts as nothing yet).
        let in_file = || {
            let copy = dir.path().join("copy.db");
            std::fs::copy(&path, &copy).unwrap();
            let count = rusqlite::Connection::open(&copy)
                .and_then(|conn| {
                    conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get::<_, i64>(0))
                })
                .unwrap_or(0);
            std::fs::remove_file(&copy).unwrap();
            count
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while in_file() < 2 {
            assert!(Instant::now() < deadline, "the commits stayed in the WAL");
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
    }

    #[tokio::test]
    async fn a_closed_store_leaves_no_connection_open_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let db = super::super::sqlite::connect(&url, &StoreOptions::default())
            .await
            .unwrap();
        let wal = dir.path().join("t.db-wal");
        assert!(wal.exists());
        // The checkpointer has used its connection (a connection that has not read yet does
        // not keep the WAL).
        tokio::time::sleep(CHECKPOINT_EVERY * 2).await;
        db.close().await;
        drop(db);
        // The last connection to close removes the WAL: none (the checkpointer's included)
        // is left to do it some time later.
        assert!(
            !wal.exists(),
            "a connection is still open after the store closed"
        );
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
                    .write(&writer, |_| {
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
            .write(&writer, |conn| {
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
                    .write(&writer, |conn| -> Result<(), StoreError> {
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
            .write(&writer, |conn| {
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
