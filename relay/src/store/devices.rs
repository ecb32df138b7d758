//! The devices domain of storage: the relay's mirror of each user's device chain (which
//! devices are admitted, which revoked), their names, last-seen times and log cursors. Every
//! statement here is written once for both backends.
//!
//! Rows are written only by [`ChainStore::append_link`](super::ChainStore::append_link), in the
//! transaction that stores the link: an Admit inserts the row, a Revoke sets `revoked_at`.
//! Rows from before the chain (registered from a device certificate, `admitted_seqno` NULL)
//! are invisible here: such a device is not admitted until a chain link admits it.

use async_trait::async_trait;
use ferry_protocol::{DeviceId, DeviceInfo, UserId};

use super::StoreError;
use sqlx::QueryBuilder;

use super::sql::{
    SqlStore, TOUCH_ROWS_PER_STATEMENT, db_int, from_db_int, key32, on_reader, on_writer,
};

/// Storage of a user's devices.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Stores a device's cumulative acknowledgement and returns the value now stored.
    ///
    /// The stored value is `max(previous, min(seq, head))`: it never goes backwards and is
    /// clamped (not refused) to the user's head, so a cursor never claims events that do not
    /// exist. A returned value below `seq` tells the caller the client acked beyond the head.
    /// Fails with [`StoreError::UnknownDevice`] if the chain has not admitted the device.
    async fn set_ack(&self, user: UserId, device: DeviceId, seq: u64) -> Result<u64, StoreError>;

    /// The stored record of one device, if the user's chain has admitted it (revoked or not).
    async fn device(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError>;

    /// The devices the user's chain has admitted, revoked ones included, in admission order.
    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, StoreError>;

    /// Raises each device's `last_seen` to the time given with it (Unix seconds), in one
    /// statement per few hundred devices; a time never moves one back, and unknown devices
    /// are ignored. The relay calls it from its write-behind
    /// ([`LastSeenWrites`](super::LastSeenWrites)), once a second at most.
    async fn touch_devices(&self, seen: &[(UserId, DeviceId, u64)]) -> Result<(), StoreError>;
}

/// What the relay knows about one device the user's chain has admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device.
    pub device: DeviceId,
    /// Its name, from the link that admitted it.
    pub name: String,
    /// When it was admitted (Unix seconds, from the link: informational).
    pub created_at: u64,
    /// The position of the chain link that admitted it.
    pub admitted_seqno: u64,
    /// Its cumulative acknowledged sequence (0 before the first ack).
    pub acked: u64,
    /// When the relay stored the link that revoked it (Unix seconds), if one did.
    pub revoked_at: Option<u64>,
    /// When the relay last saw it (Unix seconds).
    pub last_seen: u64,
    /// When the relay stored the link that admitted it (Unix seconds).
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
            device: record.device,
            name: record.name,
            last_seen: record.last_seen,
        }
    }
}

/// A row of `devices` (columns in [`DEVICE_COLUMNS`] order).
#[derive(sqlx::FromRow)]
pub(super) struct DeviceRow {
    pub(super) device_id: Vec<u8>,
    pub(super) name: String,
    pub(super) created_at: i64,
    pub(super) admitted_seqno: i64,
    pub(super) registered_at: i64,
    pub(super) last_seen: i64,
    pub(super) acked: i64,
    pub(super) revoked_at: Option<i64>,
}

/// The columns of `devices` that make a [`DeviceRow`], in order.
pub(super) const DEVICE_COLUMNS: &str =
    "device_id, name, created_at, admitted_seqno, registered_at, last_seen, acked, revoked_at";

/// Only devices a chain link admitted (not rows from before the chain).
pub(super) const ADMITTED: &str = "admitted_seqno IS NOT NULL";

impl DeviceRow {
    pub(super) fn into_record(self) -> Result<DeviceRecord, StoreError> {
        Ok(DeviceRecord {
            device: DeviceId(key32(&self.device_id, "device_id")?),
            name: self.name,
            created_at: from_db_int(self.created_at, "created_at")?,
            admitted_seqno: from_db_int(self.admitted_seqno, "admitted_seqno")?,
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
             WHERE user_id = $1 AND device_id = $2 AND {ADMITTED}
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

    async fn device(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let select = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices
             WHERE user_id = $1 AND device_id = $2 AND {ADMITTED}"
        );
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
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 AND {ADMITTED}
             ORDER BY admitted_seqno"
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

    async fn touch_devices(&self, seen: &[(UserId, DeviceId, u64)]) -> Result<(), StoreError> {
        for chunk in seen.chunks(TOUCH_ROWS_PER_STATEMENT) {
            on_writer!(&self.db, |pool| {
                let mut query = QueryBuilder::new("WITH seen (user_id, device_id, at) AS (");
                query.push_values(chunk, |mut row, (user, device, at)| {
                    row.push_bind(user.as_bytes().as_slice())
                        .push_bind(device.as_bytes().as_slice())
                        .push_bind(db_int(*at));
                });
                query.push(
                    ") UPDATE devices SET last_seen = seen.at FROM seen
                     WHERE devices.user_id = seen.user_id AND devices.device_id = seen.device_id
                       AND devices.last_seen < seen.at",
                );
                query.build().execute(pool).await?;
            });
        }
        Ok(())
    }
}
