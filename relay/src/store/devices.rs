//! The devices domain of storage: which devices a user has, their certificates, revocations,
//! last-seen times and log cursors. Every statement here is written once for both backends.

use async_trait::async_trait;
use ferry_protocol::{DeviceCertificate, DeviceId, DeviceInfo, Revocation, UserId};

use super::StoreError;
use super::sql::{SqlStore, db_int, from_db_int, in_tx, key32, on_reader, on_writer};

/// Storage of a user's devices.
#[async_trait]
pub trait DeviceStore: Send + Sync {
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

/// A row of `devices` (columns in [`DEVICE_COLUMNS`] order).
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

#[async_trait]
impl DeviceStore for SqlStore {
    async fn set_ack(&self, user: UserId, device: DeviceId, seq: u64) -> Result<u64, StoreError> {
        // One statement, so concurrent acks cannot lower the cursor: under concurrent
        // updates PostgreSQL re-evaluates the expression on the newest row version, and
        // SQLite has one writer.
        let dialect = self.dialect();
        let sql = format!(
            "UPDATE devices
             SET acked = {greatest}(acked, {least}($3,
                     COALESCE((SELECT head FROM users WHERE user_id = $1), 0)))
             WHERE user_id = $1 AND device_id = $2
             RETURNING acked",
            greatest = dialect.greatest(),
            least = dialect.least(),
        );
        let acked: Option<i64> = on_writer!(&self.db, |pool| {
            sqlx::query_scalar(&sql)
                .bind(user.as_bytes().as_slice())
                .bind(device.as_bytes().as_slice())
                .bind(db_int(seq))
                .fetch_optional(pool)
                .await?
        });
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
        let mut tx = self.db.begin().await?;
        // The user's row serialises registrations, so two devices registering at once
        // cannot both take the last free place.
        tx.lock_user(user).await?;
        let select =
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 AND device_id = $2");
        let existing: Option<DeviceRow> = in_tx!(&mut tx, |conn| {
            sqlx::query_as(&select)
                .bind(user)
                .bind(device)
                .fetch_optional(&mut *conn)
                .await?
        });
        if let Some(row) = existing {
            tx.commit().await?;
            return row.into_record();
        }
        let active: i64 = in_tx!(&mut tx, |conn| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM devices WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(user)
            .fetch_one(&mut *conn)
            .await?
        });
        if usize::try_from(active).unwrap_or(usize::MAX) >= max_devices {
            return Err(StoreError::TooManyDevices { max: max_devices });
        }
        let insert = format!(
            "INSERT INTO devices (user_id, device_id, name, created_at, signature, registered_at, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             RETURNING {DEVICE_COLUMNS}"
        );
        let row: DeviceRow = in_tx!(&mut tx, |conn| {
            sqlx::query_as(&insert)
                .bind(user)
                .bind(device)
                .bind(certificate.name.as_str())
                .bind(db_int(certificate.created_at))
                .bind(certificate.signature.as_slice())
                .bind(db_int(now_s))
                .fetch_one(&mut *conn)
                .await?
        });
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
        let row: Option<DeviceRow> = on_reader!(&self.db, |pool| {
            sqlx::query_as(&select)
                .bind(user.as_bytes().as_slice())
                .bind(device.as_bytes().as_slice())
                .fetch_optional(pool)
                .await?
        });
        row.map(DeviceRow::into_record).transpose()
    }

    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, StoreError> {
        let select = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 ORDER BY registered_at, device_id"
        );
        let rows: Vec<DeviceRow> = on_reader!(&self.db, |pool| {
            sqlx::query_as(&select)
                .bind(user.as_bytes().as_slice())
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|row| row.into_record().map(DeviceInfo::from))
            .collect()
    }

    async fn revoke_device(&self, revocation: &Revocation) -> Result<bool, StoreError> {
        let done = on_writer!(&self.db, |pool| {
            sqlx::query(
                "UPDATE devices
                 SET revoked_at = COALESCE(revoked_at, $3),
                     revocation_signature = COALESCE(revocation_signature, $4)
                 WHERE user_id = $1 AND device_id = $2",
            )
            .bind(revocation.user.as_bytes().as_slice())
            .bind(revocation.device.as_bytes().as_slice())
            .bind(db_int(revocation.revoked_at))
            .bind(revocation.signature.as_slice())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done > 0)
    }

    async fn touch_device(
        &self,
        user: UserId,
        device: DeviceId,
        now_s: u64,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE devices SET last_seen = {greatest}(last_seen, $3)
             WHERE user_id = $1 AND device_id = $2",
            greatest = self.dialect().greatest(),
        );
        on_writer!(&self.db, |pool| {
            sqlx::query(&sql)
                .bind(user.as_bytes().as_slice())
                .bind(device.as_bytes().as_slice())
                .bind(db_int(now_s))
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
