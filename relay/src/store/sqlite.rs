//! The SQLite backend: the embedded default for a relay running alone.
//!
//! One database file in WAL mode with `synchronous = FULL`: WAL with `NORMAL` may lose the
//! last transactions on power loss, and the relay acknowledges an append only once it is
//! durable, so every commit syncs the WAL. Group commit ([`super::committer`]) is what keeps
//! that affordable.
//!
//! Writes go through a pool of exactly one connection, and every writing transaction starts
//! with `BEGIN IMMEDIATE`, so a transaction that reads a user's head holds the write lock
//! until it commits (also against another process, which waits up to the busy timeout).
//! Reads go through a separate pool of `query_only` connections, which WAL lets run next to
//! the writer. An in-memory database (`sqlite::memory:`) uses the writer for both.

use std::collections::HashMap;
use std::str::FromStr;

use async_trait::async_trait;

use ferry_protocol::{DeviceCertificate, DeviceId, DeviceInfo, Event, Revocation, UserId};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{
    AppendOutcome, AppendRequest, DEVICE_COLUMNS, DeviceRecord, DeviceRow, LogBounds, Quota,
    READ_PAGE_SQL, Store, StoreError, StoreOptions, Stored, TRIM_BATCH, TRIM_USERS_PAGE, UserHead,
    UserPage, batch_devices, batch_keys, batch_users, check_device_seq, db_int, event_from_row,
    from_db_int, key32, plan_batch, trim_target,
};

/// Rows per multi-row statement: 6 parameters a row stays far below SQLite's 32,766-parameter
/// limit, and a batch of a thousand appends takes a handful of statements instead of thousands
/// of round trips to SQLite's worker thread.
const ROWS_PER_STATEMENT: usize = 500;

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// The SQLite-backed [`Store`].
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    quota: Quota,
}

impl SqliteStore {
    /// Opens (creating it if the URL says `mode=rwc`) the database at `url` and runs the
    /// migrations.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let base = SqliteConnectOptions::from_str(url)?.busy_timeout(options.busy_timeout);
        let writer_options = base
            .clone()
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        // One long-lived writer: an in-memory database lives as long as its connection.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(writer_options)
            .await?;
        MIGRATOR.run(&writer).await?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(options.acquire_timeout)
                .connect_with(base.create_if_missing(false).pragma("query_only", "ON"))
                .await?
        };
        Ok(Self {
            writer,
            reader,
            quota: options.quota,
        })
    }

    /// Locks (by `BEGIN IMMEDIATE`) and returns the head of each user, creating head rows.
    async fn lock_heads(
        conn: &mut SqliteConnection,
        users: &[UserId],
    ) -> Result<HashMap<UserId, UserHead>, StoreError> {
        let mut heads = HashMap::with_capacity(users.len());
        // One upsert per chunk: the writer is already exclusive (BEGIN IMMEDIATE), so this
        // only makes sure every user has a head row and reads it, a few statements per batch.
        for chunk in users.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new("INSERT INTO users (user_id) ");
            query.push_values(chunk, |mut row, user| {
                row.push_bind(user.as_bytes().as_slice());
            });
            query.push(
                " ON CONFLICT (user_id) DO UPDATE SET head = head
                  RETURNING user_id, head, earliest, bytes",
            );
            for row in query.build().fetch_all(&mut *conn).await? {
                let user: Vec<u8> = row.try_get("user_id")?;
                let user = UserId(
                    user.try_into()
                        .map_err(|_| StoreError::Corrupt("user id is not 32 bytes".into()))?,
                );
                let head = UserHead {
                    head: from_db_int(row.try_get("head")?, "head")?,
                    earliest: from_db_int(row.try_get("earliest")?, "earliest")?,
                    bytes: from_db_int(row.try_get("bytes")?, "bytes")?,
                };
                heads.insert(user, head);
            }
        }
        Ok(heads)
    }

    async fn trim_user_at(
        &self,
        user: UserId,
        bounds: LogBounds,
        max_age_ms: Option<u64>,
        max_count: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let age = match max_age_ms {
            None => None,
            Some(max_age) => {
                let cutoff = now_ms.saturating_sub(max_age);
                let first_young: Option<i64> = sqlx::query_scalar(
                    "SELECT seq FROM events
                     WHERE user_id = $1 AND seq >= $2 AND committed_at_ms >= $3
                     ORDER BY seq LIMIT 1",
                )
                .bind(user.as_bytes().as_slice())
                .bind(db_int(bounds.earliest))
                .bind(db_int(cutoff))
                .fetch_optional(&self.reader)
                .await?;
                Some(first_young.map(|seq| from_db_int(seq, "seq")).transpose()?)
            }
        };
        let target = trim_target(bounds, max_count, age);
        let mut from = bounds.earliest;
        let mut deleted = 0;
        while from < target {
            let upto = target.min(from.saturating_add(TRIM_BATCH));
            let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            // Remember how far each device's appends are gone, so a late retry of one of
            // them is answered "expired" instead of being stored again.
            sqlx::query(
                "INSERT INTO trimmed_device_seqs (user_id, device_id, device_seq)
                 SELECT user_id, device_id, MAX(device_seq) FROM events
                 WHERE user_id = $1 AND seq >= $2 AND seq < $3
                 GROUP BY user_id, device_id
                 ON CONFLICT (user_id, device_id)
                 DO UPDATE SET device_seq = MAX(device_seq, excluded.device_seq)",
            )
            .bind(user.as_bytes().as_slice())
            .bind(db_int(from))
            .bind(db_int(upto))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE users SET bytes = MAX(0, bytes - (
                     SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM events
                     WHERE user_id = $1 AND seq >= $2 AND seq < $3))
                 WHERE user_id = $1",
            )
            .bind(user.as_bytes().as_slice())
            .bind(db_int(from))
            .bind(db_int(upto))
            .execute(&mut *tx)
            .await?;
            let done =
                sqlx::query("DELETE FROM events WHERE user_id = $1 AND seq >= $2 AND seq < $3")
                    .bind(user.as_bytes().as_slice())
                    .bind(db_int(from))
                    .bind(db_int(upto))
                    .execute(&mut *tx)
                    .await?;
            sqlx::query("UPDATE users SET earliest = MAX(earliest, $2) WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .bind(db_int(upto))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            deleted += done.rows_affected();
            from = upto;
        }
        Ok(deleted)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let heads = Self::lock_heads(&mut tx, &batch_users(requests)).await?;
        // Retries: the keys of the batch already in the log, a few statements per batch.
        let mut stored = HashMap::new();
        for chunk in batch_keys(requests).chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT user_id, device_id, device_seq, seq, payload FROM events
                 WHERE (user_id, device_id, device_seq) IN (",
            );
            let mut keys = query.separated(", ");
            for (user, device, device_seq) in chunk {
                keys.push("(");
                keys.push_bind_unseparated(user.as_bytes().as_slice());
                keys.push_unseparated(", ");
                keys.push_bind_unseparated(device.as_bytes().as_slice());
                keys.push_unseparated(", ");
                keys.push_bind_unseparated(db_int(*device_seq));
                keys.push_unseparated(")");
            }
            query.push(")");
            for row in query.build().fetch_all(&mut *tx).await? {
                let user: Vec<u8> = row.try_get("user_id")?;
                let device: Vec<u8> = row.try_get("device_id")?;
                let corrupt = || StoreError::Corrupt("id is not 32 bytes".into());
                let key = (
                    UserId(user.try_into().map_err(|_| corrupt())?),
                    DeviceId(device.try_into().map_err(|_| corrupt())?),
                    from_db_int(row.try_get("device_seq")?, "device_seq")?,
                );
                let seq = from_db_int(row.try_get("seq")?, "seq")?;
                stored.insert(
                    key,
                    Stored {
                        seq,
                        payload: row.try_get("payload")?,
                    },
                );
            }
        }
        // Retention's watermarks for the batch's devices.
        let mut trimmed = HashMap::new();
        for chunk in batch_devices(requests).chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT user_id, device_id, device_seq FROM trimmed_device_seqs
                 WHERE (user_id, device_id) IN (",
            );
            let mut keys = query.separated(", ");
            for (user, device) in chunk {
                keys.push("(");
                keys.push_bind_unseparated(user.as_bytes().as_slice());
                keys.push_unseparated(", ");
                keys.push_bind_unseparated(device.as_bytes().as_slice());
                keys.push_unseparated(")");
            }
            query.push(")");
            for row in query.build().fetch_all(&mut *tx).await? {
                let user: Vec<u8> = row.try_get("user_id")?;
                let device: Vec<u8> = row.try_get("device_id")?;
                trimmed.insert(
                    (
                        UserId(key32(&user, "user_id")?),
                        DeviceId(key32(&device, "device_id")?),
                    ),
                    from_db_int(row.try_get("device_seq")?, "device_seq")?,
                );
            }
        }
        let plan = plan_batch(requests, &heads, &stored, &trimmed, self.quota)?;
        for chunk in plan.inserts.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (user_id, seq, device_id, device_seq, payload, committed_at_ms) ",
            );
            query.push_values(chunk, |mut row, (seq, request)| {
                row.push_bind(request.user.as_bytes().as_slice())
                    .push_bind(db_int(*seq))
                    .push_bind(request.device.as_bytes().as_slice())
                    .push_bind(db_int(request.device_seq))
                    .push_bind(request.payload.0.as_slice())
                    .push_bind(db_int(now_ms));
            });
            query.build().execute(&mut *tx).await?;
        }
        for (user, head, bytes) in &plan.heads {
            sqlx::query("UPDATE users SET head = $2, bytes = bytes + $3 WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .bind(db_int(*head))
                .bind(db_int(*bytes))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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
        let rows = sqlx::query(READ_PAGE_SQL)
            .bind(user.as_bytes().as_slice())
            .bind(db_int(after_seq))
            .bind(db_int(limit as u64))
            .bind(db_int(max_bytes.max(1) as u64))
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter()
            .map(|row| {
                let device: Vec<u8> = row.try_get("device_id")?;
                event_from_row(
                    row.try_get("seq")?,
                    &device,
                    row.try_get("device_seq")?,
                    row.try_get("payload")?,
                )
            })
            .collect()
    }

    async fn last_device_seq(&self, user: UserId, device: DeviceId) -> Result<u64, StoreError> {
        let last: i64 = sqlx::query_scalar(
            "SELECT MAX(
                 COALESCE((SELECT MAX(device_seq) FROM events
                           WHERE user_id = $1 AND device_id = $2), 0),
                 COALESCE((SELECT device_seq FROM trimmed_device_seqs
                           WHERE user_id = $1 AND device_id = $2), 0))",
        )
        .bind(user.as_bytes().as_slice())
        .bind(device.as_bytes().as_slice())
        .fetch_one(&self.reader)
        .await?;
        from_db_int(last, "device_seq")
    }

    async fn log_bounds(&self, user: UserId) -> Result<LogBounds, StoreError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT earliest, head FROM users WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .fetch_optional(&self.reader)
                .await?;
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

    async fn set_ack(&self, user: UserId, device: DeviceId, seq: u64) -> Result<u64, StoreError> {
        let acked: Option<i64> = sqlx::query_scalar(
            "UPDATE devices
             SET acked = MAX(acked, MIN($3, COALESCE((SELECT head FROM users WHERE user_id = $1), 0)))
             WHERE user_id = $1 AND device_id = $2
             RETURNING acked",
        )
        .bind(user.as_bytes().as_slice())
        .bind(device.as_bytes().as_slice())
        .bind(db_int(seq))
        .fetch_optional(&self.writer)
        .await?;
        from_db_int(acked.ok_or(StoreError::UnknownDevice)?, "acked")
    }

    async fn register_device(
        &self,
        certificate: &DeviceCertificate,
        max_devices: usize,
        now_s: u64,
    ) -> Result<DeviceRecord, StoreError> {
        let user = certificate.user.as_bytes().as_slice();
        let device = certificate.device.as_bytes().as_slice();
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let select =
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 AND device_id = $2");
        let existing: Option<DeviceRow> = sqlx::query_as(&select)
            .bind(user)
            .bind(device)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = existing {
            tx.commit().await?;
            return row.into_record();
        }
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM devices WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
        if usize::try_from(active).unwrap_or(usize::MAX) >= max_devices {
            return Err(StoreError::TooManyDevices { max: max_devices });
        }
        sqlx::query("INSERT INTO users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        let insert = format!(
            "INSERT INTO devices (user_id, device_id, name, created_at, signature, registered_at, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             RETURNING {DEVICE_COLUMNS}"
        );
        let row: DeviceRow = sqlx::query_as(&insert)
            .bind(user)
            .bind(device)
            .bind(certificate.name.as_str())
            .bind(db_int(certificate.created_at))
            .bind(certificate.signature.as_slice())
            .bind(db_int(now_s))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        row.into_record()
    }

    async fn device(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let select =
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 AND device_id = $2");
        let row: Option<DeviceRow> = sqlx::query_as(&select)
            .bind(user.as_bytes().as_slice())
            .bind(device.as_bytes().as_slice())
            .fetch_optional(&self.reader)
            .await?;
        row.map(DeviceRow::into_record).transpose()
    }

    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, StoreError> {
        let select = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 ORDER BY registered_at, device_id"
        );
        let rows: Vec<DeviceRow> = sqlx::query_as(&select)
            .bind(user.as_bytes().as_slice())
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter()
            .map(|row| row.into_record().map(DeviceInfo::from))
            .collect()
    }

    async fn revoke_device(&self, revocation: &Revocation) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE devices
             SET revoked_at = COALESCE(revoked_at, $3),
                 revocation_signature = COALESCE(revocation_signature, $4)
             WHERE user_id = $1 AND device_id = $2",
        )
        .bind(revocation.user.as_bytes().as_slice())
        .bind(revocation.device.as_bytes().as_slice())
        .bind(db_int(revocation.revoked_at))
        .bind(revocation.signature.as_slice())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn touch_device(
        &self,
        user: UserId,
        device: DeviceId,
        now_s: u64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET last_seen = MAX(last_seen, $3) WHERE user_id = $1 AND device_id = $2")
            .bind(user.as_bytes().as_slice())
            .bind(device.as_bytes().as_slice())
            .bind(db_int(now_s))
            .execute(&self.writer)
            .await?;
        Ok(())
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
            let page: Vec<UserPage> = sqlx::query_as(
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
            .fetch_all(&self.reader)
            .await?;
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

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
