//! The PostgreSQL backend: for production and for more than one relay node.
//!
//! An append batch is a fixed number of round trips whatever its size, each statement
//! taking whole columns as arrays (`UNNEST`):
//!
//! 1. upsert-and-lock the head row of every user in the batch, in user order (so two
//!    batches, on this node or another, never wait on each other in a cycle), returning
//!    the heads;
//! 2. look up which `(user, device, device_seq)` keys are already stored: after step 1 no
//!    other transaction can add one for these users until this one commits;
//! 3. number the new events in memory ([`super::plan_batch`]);
//! 4. insert them in one statement, raise the heads in one statement, commit.
//!
//! Holding the head row locks until commit is what makes each user's sequences gapless and
//! ordered by commit across any number of relay nodes. Transactions run at the default
//! READ COMMITTED isolation: each statement sees everything committed before it started, in
//! particular what the previous holder of a head lock committed.

use std::collections::HashMap;
use std::str::FromStr;

use async_trait::async_trait;
use ferry_protocol::{DeviceCertificate, DeviceId, DeviceInfo, Event, Revocation, UserId};
use sqlx::Row;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{
    AppendOutcome, AppendRequest, DEVICE_COLUMNS, DeviceRecord, DeviceRow, LogBounds, Quota,
    READ_PAGE_SQL, Store, StoreError, StoreOptions, Stored, TRIM_BATCH, TRIM_USERS_PAGE, UserHead,
    UserPage, batch_devices, batch_keys, batch_users, check_device_seq, db_int, event_from_row,
    from_db_int, key32, plan_batch, trim_target,
};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// The PostgreSQL-backed [`Store`].
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    quota: Quota,
}

impl PgStore {
    /// Connects to the database at `url` and runs the migrations (under PostgreSQL's
    /// advisory lock, so relay nodes starting together do not race).
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            quota: options.quota,
        })
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
                // Walks the primary key in sequence order from `earliest`: reads the old
                // prefix (about to be deleted anyway) and stops at the first young event.
                let first_young: Option<i64> = sqlx::query_scalar(
                    "SELECT seq FROM events
                     WHERE user_id = $1 AND seq >= $2 AND committed_at_ms >= $3
                     ORDER BY seq LIMIT 1",
                )
                .bind(user.as_bytes().as_slice())
                .bind(db_int(bounds.earliest))
                .bind(db_int(cutoff))
                .fetch_optional(&self.pool)
                .await?;
                Some(first_young.map(|seq| from_db_int(seq, "seq")).transpose()?)
            }
        };
        let target = trim_target(bounds, max_count, age);
        let mut from = bounds.earliest;
        let mut deleted = 0;
        while from < target {
            let upto = target.min(from.saturating_add(TRIM_BATCH));
            let mut tx = self.pool.begin().await?;
            // Remember how far each device's appends are gone, so a late retry of one of
            // them is answered "expired" instead of being stored again. The user's head row
            // is locked first, so an append batch of this user cannot look between the
            // delete and the watermark.
            sqlx::query("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE")
                .bind(user.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO trimmed_device_seqs (user_id, device_id, device_seq)
                 SELECT user_id, device_id, MAX(device_seq) FROM events
                 WHERE user_id = $1 AND seq >= $2 AND seq < $3
                 GROUP BY user_id, device_id
                 ON CONFLICT (user_id, device_id)
                 DO UPDATE SET device_seq = GREATEST(trimmed_device_seqs.device_seq, EXCLUDED.device_seq)",
            )
            .bind(user.as_bytes().as_slice())
            .bind(db_int(from))
            .bind(db_int(upto))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE users SET bytes = GREATEST(0, bytes - (
                     SELECT COALESCE(SUM(octet_length(payload)), 0) FROM events
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
            sqlx::query("UPDATE users SET earliest = GREATEST(earliest, $2) WHERE user_id = $1")
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
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
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
        let mut tx = self.pool.begin().await?;

        // 1. Lock the head rows in user order (creating missing ones) and read the heads.
        let users = batch_users(requests);
        let user_ids: Vec<&[u8]> = users.iter().map(|u| u.as_bytes().as_slice()).collect();
        let rows: Vec<(Vec<u8>, i64, i64, i64)> = sqlx::query_as(
            "INSERT INTO users (user_id)
             SELECT user_id FROM UNNEST($1::BYTEA[]) WITH ORDINALITY AS t(user_id, n) ORDER BY n
             ON CONFLICT (user_id) DO UPDATE SET head = users.head
             RETURNING user_id, head, earliest, bytes",
        )
        .bind(user_ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut heads = HashMap::with_capacity(rows.len());
        for (user, head, earliest, bytes) in rows {
            let head = UserHead {
                head: from_db_int(head, "head")?,
                earliest: from_db_int(earliest, "earliest")?,
                bytes: from_db_int(bytes, "bytes")?,
            };
            heads.insert(UserId(key32(&user, "user_id")?), head);
        }

        // 2. Which keys are stored already (retries); their payloads decide Duplicate/Conflict.
        let keys = batch_keys(requests);
        let rows = sqlx::query(
            "SELECT k.user_id, k.device_id, k.device_seq, e.seq, e.payload
             FROM UNNEST($1::BYTEA[], $2::BYTEA[], $3::BIGINT[]) AS k(user_id, device_id, device_seq)
             JOIN events e
               ON e.user_id = k.user_id AND e.device_id = k.device_id AND e.device_seq = k.device_seq",
        )
        .bind(keys.iter().map(|(u, _, _)| u.as_bytes().as_slice()).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, d, _)| d.as_bytes().as_slice()).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, _, s)| db_int(*s)).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let mut stored = HashMap::with_capacity(rows.len());
        for row in rows {
            let user: Vec<u8> = row.try_get("user_id")?;
            let device: Vec<u8> = row.try_get("device_id")?;
            let key = (
                UserId(key32(&user, "user_id")?),
                DeviceId(key32(&device, "device_id")?),
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

        // Retention's watermarks for the batch's devices (written under the same head locks).
        let devices = batch_devices(requests);
        let rows: Vec<(Vec<u8>, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT t.user_id, t.device_id, t.device_seq
             FROM UNNEST($1::BYTEA[], $2::BYTEA[]) AS k(user_id, device_id)
             JOIN trimmed_device_seqs t ON t.user_id = k.user_id AND t.device_id = k.device_id",
        )
        .bind(
            devices
                .iter()
                .map(|(u, _)| u.as_bytes().as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            devices
                .iter()
                .map(|(_, d)| d.as_bytes().as_slice())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut trimmed = HashMap::with_capacity(rows.len());
        for (user, device, device_seq) in rows {
            trimmed.insert(
                (
                    UserId(key32(&user, "user_id")?),
                    DeviceId(key32(&device, "device_id")?),
                ),
                from_db_int(device_seq, "device_seq")?,
            );
        }

        // 3. Number the new events.
        let plan = plan_batch(requests, &heads, &stored, &trimmed, self.quota)?;

        // 4. Insert them and raise the heads, one statement each.
        if !plan.inserts.is_empty() {
            sqlx::query(
                "INSERT INTO events (user_id, seq, device_id, device_seq, payload, committed_at_ms)
                 SELECT user_id, seq, device_id, device_seq, payload, $6
                 FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BYTEA[], $4::BIGINT[], $5::BYTEA[])
                   AS t(user_id, seq, device_id, device_seq, payload)",
            )
            .bind(
                plan.inserts
                    .iter()
                    .map(|(_, r)| r.user.as_bytes().as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(
                plan.inserts
                    .iter()
                    .map(|(seq, _)| db_int(*seq))
                    .collect::<Vec<_>>(),
            )
            .bind(
                plan.inserts
                    .iter()
                    .map(|(_, r)| r.device.as_bytes().as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(
                plan.inserts
                    .iter()
                    .map(|(_, r)| db_int(r.device_seq))
                    .collect::<Vec<_>>(),
            )
            .bind(
                plan.inserts
                    .iter()
                    .map(|(_, r)| r.payload.0.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(db_int(now_ms))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE users SET head = t.head, bytes = users.bytes + t.bytes
                 FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[]) AS t(user_id, head, bytes)
                 WHERE users.user_id = t.user_id",
            )
            .bind(
                plan.heads
                    .iter()
                    .map(|(u, _, _)| u.as_bytes().as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(
                plan.heads
                    .iter()
                    .map(|(_, head, _)| db_int(*head))
                    .collect::<Vec<_>>(),
            )
            .bind(
                plan.heads
                    .iter()
                    .map(|(_, _, bytes)| db_int(*bytes))
                    .collect::<Vec<_>>(),
            )
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
            .fetch_all(&self.pool)
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
            "SELECT GREATEST(
                 COALESCE((SELECT MAX(device_seq) FROM events
                           WHERE user_id = $1 AND device_id = $2), 0),
                 COALESCE((SELECT device_seq FROM trimmed_device_seqs
                           WHERE user_id = $1 AND device_id = $2), 0))",
        )
        .bind(user.as_bytes().as_slice())
        .bind(device.as_bytes().as_slice())
        .fetch_one(&self.pool)
        .await?;
        from_db_int(last, "device_seq")
    }

    async fn log_bounds(&self, user: UserId) -> Result<LogBounds, StoreError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT earliest, head FROM users WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .fetch_optional(&self.pool)
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
        // Under concurrent acks PostgreSQL re-evaluates GREATEST on the newest row version.
        let acked: Option<i64> = sqlx::query_scalar(
            "UPDATE devices
             SET acked = GREATEST(acked, LEAST($3, COALESCE((SELECT head FROM users WHERE user_id = $1), 0)))
             WHERE user_id = $1 AND device_id = $2
             RETURNING acked",
        )
        .bind(user.as_bytes().as_slice())
        .bind(device.as_bytes().as_slice())
        .bind(db_int(seq))
        .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        // The user's head row serialises registrations, so two devices registering at once
        // cannot both take the last free place.
        sqlx::query(
            "INSERT INTO users (user_id) VALUES ($1)
             ON CONFLICT (user_id) DO UPDATE SET head = users.head",
        )
        .bind(user)
        .execute(&mut *tx)
        .await?;
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
            .fetch_optional(&self.pool)
            .await?;
        row.map(DeviceRow::into_record).transpose()
    }

    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, StoreError> {
        let select = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 ORDER BY registered_at, device_id"
        );
        let rows: Vec<DeviceRow> = sqlx::query_as(&select)
            .bind(user.as_bytes().as_slice())
            .fetch_all(&self.pool)
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
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn touch_device(
        &self,
        user: UserId,
        device: DeviceId,
        now_s: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE devices SET last_seen = GREATEST(last_seen, $3) WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user.as_bytes().as_slice())
        .bind(device.as_bytes().as_slice())
        .bind(db_int(now_s))
        .execute(&self.pool)
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
                        ($2::BIGINT IS NOT NULL AND u.head - u.earliest + 1 > $2::BIGINT)
                     OR ($3::BIGINT IS NOT NULL AND e.committed_at_ms < $3::BIGINT) AS due
                 FROM users u
                 LEFT JOIN events e ON e.user_id = u.user_id AND e.seq = u.earliest
                 WHERE u.user_id > $1
                 ORDER BY u.user_id LIMIT $4",
            )
            .bind(after.as_slice())
            .bind(max_count_db)
            .bind(cutoff_db)
            .bind(TRIM_USERS_PAGE)
            .fetch_all(&self.pool)
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
        self.pool.close().await;
    }
}
