//! The append batch's statements on PostgreSQL: each statement takes whole columns as arrays
//! (`UNNEST`), so a batch is a fixed number of round trips with a fixed statement text
//! (prepared once per connection) whatever its size. Step 1 locks the users' rows in user
//! order, so two batches on any nodes never wait on each other in a cycle.

use sqlx::PgConnection;

use super::plan::{BatchPlan, batch_devices, batch_key_runs, batch_users};
use super::{ActiveRow, AppendRequest, BatchState, HeadRow, StoredRow, WatermarkRow};
use crate::store::StoreError;
use crate::store::sql::db_int;

/// One device of a batch, as step 2 reads it: retention's watermark, and whether it is active.
#[derive(sqlx::FromRow)]
struct DeviceRow {
    user_id: Vec<u8>,
    device_id: Vec<u8>,
    trimmed: Option<i64>,
    active: bool,
}

/// Steps 1 and 2 of an append batch (see the module docs of [`super`]).
pub(super) async fn read_batch_state(
    conn: &mut PgConnection,
    requests: &[AppendRequest],
) -> Result<BatchState, StoreError> {
    let mut state = BatchState::default();

    // 1. Lock the head rows in user order (creating missing ones) and read the heads.
    let users = batch_users(requests);
    let user_ids: Vec<&[u8]> = users.iter().map(|u| u.as_bytes().as_slice()).collect();
    let rows: Vec<HeadRow> = sqlx::query_as(
        "INSERT INTO users (user_id)
         SELECT user_id FROM UNNEST($1::BYTEA[]) WITH ORDINALITY AS t(user_id, n) ORDER BY n
         ON CONFLICT (user_id) DO UPDATE SET head = users.head
         RETURNING user_id, head, earliest, bytes, chain_epoch",
    )
    .bind(user_ids)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        state.add_head(row)?;
    }

    // 2. Which keys are stored already (retries); their payloads decide Duplicate/Conflict.
    // One range read per run of consecutive device sequences (usually one per device).
    let runs = batch_key_runs(requests);
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT e.user_id, e.device_id, e.device_seq, e.seq, e.payload
         FROM UNNEST($1::BYTEA[], $2::BYTEA[], $3::BIGINT[], $4::BIGINT[])
           AS r(user_id, device_id, first, last)
         JOIN events e ON e.user_id = r.user_id AND e.device_id = r.device_id
           AND e.device_seq BETWEEN r.first AND r.last",
    )
    .bind(column(&runs, |(u, _, _, _)| u.as_bytes().as_slice()))
    .bind(column(&runs, |(_, d, _, _)| d.as_bytes().as_slice()))
    .bind(column(&runs, |(_, _, first, _)| db_int(*first)))
    .bind(column(&runs, |(_, _, _, last)| db_int(*last)))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        state.add_stored(row)?;
    }

    // Per device of the batch: retention's watermark (written under the same row locks), and
    // whether the chain admits it and has not revoked it (a revocation takes the user row
    // lock too, so this holds until commit).
    let devices = batch_devices(requests);
    let rows: Vec<DeviceRow> = sqlx::query_as(
        "SELECT k.user_id, k.device_id, t.device_seq AS trimmed,
           EXISTS (SELECT 1 FROM devices d
                   WHERE d.user_id = k.user_id AND d.device_id = k.device_id
                     AND d.admitted_seqno IS NOT NULL AND d.revoked_at IS NULL) AS active
         FROM UNNEST($1::BYTEA[], $2::BYTEA[]) AS k(user_id, device_id)
         LEFT JOIN trimmed_device_seqs t
           ON t.user_id = k.user_id AND t.device_id = k.device_id",
    )
    .bind(column(&devices, |(u, _)| u.as_bytes().as_slice()))
    .bind(column(&devices, |(_, d)| d.as_bytes().as_slice()))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        if let Some(device_seq) = row.trimmed {
            state.add_watermark(WatermarkRow {
                user_id: row.user_id.clone(),
                device_id: row.device_id.clone(),
                device_seq,
            })?;
        }
        if row.active {
            state.add_active(ActiveRow {
                user_id: row.user_id,
                device_id: row.device_id,
            })?;
        }
    }
    Ok(state)
}

/// Step 4 of an append batch: the new events and the new heads, one statement each.
pub(super) async fn write_plan(
    conn: &mut PgConnection,
    plan: &BatchPlan<'_>,
    now_ms: u64,
) -> Result<(), StoreError> {
    if plan.inserts.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO events (user_id, seq, device_id, device_seq, payload, committed_at_ms)
         SELECT user_id, seq, device_id, device_seq, payload, $6
         FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BYTEA[], $4::BIGINT[], $5::BYTEA[])
           AS t(user_id, seq, device_id, device_seq, payload)",
    )
    .bind(column(&plan.inserts, |(_, r)| r.user.as_bytes().as_slice()))
    .bind(column(&plan.inserts, |(seq, _)| db_int(*seq)))
    .bind(column(&plan.inserts, |(_, r)| {
        r.device.as_bytes().as_slice()
    }))
    .bind(column(&plan.inserts, |(_, r)| db_int(r.device_seq)))
    .bind(column(&plan.inserts, |(_, r)| r.payload.0.as_slice()))
    .bind(db_int(now_ms))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE users SET head = t.head, bytes = users.bytes + t.bytes
         FROM UNNEST($1::BYTEA[], $2::BIGINT[], $3::BIGINT[]) AS t(user_id, head, bytes)
         WHERE users.user_id = t.user_id",
    )
    .bind(column(&plan.heads, |(u, _, _)| u.as_bytes().as_slice()))
    .bind(column(&plan.heads, |(_, head, _)| db_int(*head)))
    .bind(column(&plan.heads, |(_, _, bytes)| db_int(*bytes)))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One column of `rows`, to bind as a PostgreSQL array.
fn column<'a, T, V>(rows: &'a [T], field: impl Fn(&'a T) -> V) -> Vec<V> {
    rows.iter().map(field).collect()
}
