//! What a device's session starts from, in one read: the device's record (is it admitted, is
//! it revoked, where is its cursor), the user's log bounds, the device's last `device_seq`
//! and the chain's length.
//!
//! A reconnect asks for all of it twice: at admission, and again once the session has joined
//! the hub (a revocation stored in between reached no session). Each read on its own was a
//! round trip to the database, and on SQLite three hand-offs between threads (sqlx tests a
//! connection when it is handed out and again when it comes back), which made the database's
//! thread hops a larger cost of a reconnect than its crypto (docs/benchmarks.md, the
//! handshakes flame graph). So it is one statement, and on SQLite a point read on a rusqlite
//! reader, run on the session's own thread when a reader is free
//! ([`Direct::read_point`](super::sql::sqlite_direct::Direct::read_point)).

use std::sync::LazyLock;

use ferry_protocol::{DeviceId, UserId};

use super::StoreError;
use super::chain::{CHAIN_SEQNO_COLUMN, chain_seqno_from};
use super::devices::{ADMITTED, DEVICE_COLUMNS, DeviceRecord, DeviceRow};
use super::log::{DEVICE_SEQ_COLUMNS, LogBounds, bounds_from, last_device_seq_from};
use super::sql::sqlite_direct::numbered;
use super::sql::{Db, SqlStore};

/// See [`Store::session_start`](super::Store::session_start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStart {
    /// The device's record, if the user's chain has admitted it (revoked or not).
    pub device: Option<DeviceRecord>,
    /// The user's log bounds.
    pub bounds: LogBounds,
    /// The highest `device_seq` stored for the device, its trimmed events included.
    pub last_device_seq: u64,
    /// The length of the user's chain.
    pub chain_seqno: u64,
}

/// User `$1`, device `$2`: the device's columns (NULL when the chain has not admitted it),
/// then the other reads' own columns as scalar subqueries.
static SELECT: LazyLock<String> = LazyLock::new(|| {
    let device = DEVICE_COLUMNS
        .split(", ")
        .map(|column| format!("d.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {device},
                (SELECT earliest FROM users WHERE user_id = $1),
                (SELECT head FROM users WHERE user_id = $1),
                {DEVICE_SEQ_COLUMNS}, {CHAIN_SEQNO_COLUMN}
         FROM (SELECT 1) AS one
         LEFT JOIN devices d ON d.user_id = $1 AND d.device_id = $2 AND d.{ADMITTED}"
    )
});

/// [`SELECT`] with SQLite's parameters, for rusqlite.
static SELECT_SQLITE: LazyLock<String> = LazyLock::new(|| numbered(&SELECT));

/// The row of [`SELECT`], in its column order.
struct Row {
    device_id: Option<Vec<u8>>,
    name: Option<String>,
    created_at: Option<i64>,
    admitted_seqno: Option<i64>,
    registered_at: Option<i64>,
    last_seen: Option<i64>,
    acked: Option<i64>,
    revoked_at: Option<i64>,
    earliest: Option<i64>,
    head: Option<i64>,
    stored_device_seq: Option<i64>,
    trimmed_device_seq: Option<i64>,
    chain_seqno: Option<i64>,
}

impl Row {
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            device_id: row.get(0)?,
            name: row.get(1)?,
            created_at: row.get(2)?,
            admitted_seqno: row.get(3)?,
            registered_at: row.get(4)?,
            last_seen: row.get(5)?,
            acked: row.get(6)?,
            revoked_at: row.get(7)?,
            earliest: row.get(8)?,
            head: row.get(9)?,
            stored_device_seq: row.get(10)?,
            trimmed_device_seq: row.get(11)?,
            chain_seqno: row.get(12)?,
        })
    }

    fn from_postgres(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row as _;
        Ok(Self {
            device_id: row.try_get(0)?,
            name: row.try_get(1)?,
            created_at: row.try_get(2)?,
            admitted_seqno: row.try_get(3)?,
            registered_at: row.try_get(4)?,
            last_seen: row.try_get(5)?,
            acked: row.try_get(6)?,
            revoked_at: row.try_get(7)?,
            earliest: row.try_get(8)?,
            head: row.try_get(9)?,
            stored_device_seq: row.try_get(10)?,
            trimmed_device_seq: row.try_get(11)?,
            chain_seqno: row.try_get(12)?,
        })
    }

    fn into_start(self) -> Result<SessionStart, StoreError> {
        let device = match self.device_id {
            None => None,
            Some(device_id) => {
                let missing = || StoreError::Corrupt("a device row with a NULL column".into());
                let row = DeviceRow {
                    device_id,
                    name: self.name.ok_or_else(missing)?,
                    created_at: self.created_at.ok_or_else(missing)?,
                    admitted_seqno: self.admitted_seqno.ok_or_else(missing)?,
                    registered_at: self.registered_at.ok_or_else(missing)?,
                    last_seen: self.last_seen.ok_or_else(missing)?,
                    acked: self.acked.ok_or_else(missing)?,
                    revoked_at: self.revoked_at,
                };
                Some(row.into_record()?)
            }
        };
        Ok(SessionStart {
            device,
            bounds: bounds_from(self.earliest.zip(self.head))?,
            last_device_seq: last_device_seq_from(self.stored_device_seq, self.trimmed_device_seq)?,
            chain_seqno: chain_seqno_from(self.chain_seqno)?,
        })
    }
}

/// [`Store::session_start`](super::Store::session_start) on either backend.
pub(super) async fn read(
    store: &SqlStore,
    user: UserId,
    device: DeviceId,
) -> Result<SessionStart, StoreError> {
    let row = match &store.db {
        Db::Sqlite { writer, direct, .. } => {
            direct
                .read_point(writer, move |conn| {
                    let mut select = conn.prepare_cached(&SELECT_SQLITE)?;
                    let params = [user.as_bytes().as_slice(), device.as_bytes().as_slice()];
                    Ok(select.query_row(params, Row::from_sqlite)?)
                })
                .await?
        }
        Db::Postgres { pool, .. } => {
            let row = sqlx::query(&SELECT)
                .bind(user.as_bytes().as_slice())
                .bind(device.as_bytes().as_slice())
                .fetch_one(pool)
                .await?;
            Row::from_postgres(&row)?
        }
    };
    row.into_start()
}
