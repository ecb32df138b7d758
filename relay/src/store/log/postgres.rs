//! The append batch's statements on PostgreSQL: each statement takes whole columns as arrays
//! (`UNNEST`), so a batch is a fixed number of round trips with a fixed statement text
//! (prepared once per connection) whatever its size. Step 1 locks the users' rows in user
//! order, so two batches on any nodes never wait on each other in a cycle.

use sqlx::PgConnection;

use super::plan::{BatchPlan, batch_devices, batch_keys, batch_users};
use super::{ActiveRow, AppendRequest, BatchState, HeadRow, StoredRow, WatermarkRow};
use crate::store::StoreError;
use crate::store::sql::db_int;

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
    let keys = batch_keys(requests);
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT k.user_id, k.device_id, k.device_seq, e.seq, e.payload
         FROM UNNEST($1::BYTEA[], $2::BYTEA[], $3::BIGINT[]) AS k(user_id, device_id, device_seq)
         JOIN events e
           ON e.user_id = k.user_id AND e.device_id = k.device_id AND e.device_seq = k.device_seq",
    )
    .bind(column(&keys, |(u, _, _)| u.as_bytes().as_slice()))
    .bind(column(&keys, |(_, d, _)| d.as_bytes().as_slice()))
    .bind(column(&keys, |(_, _, s)| db_int(*s)))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        state.add_stored(row)?;
    }

    // Retention's watermarks for the batch's devices (written under the same row locks).
    let devices = batch_devices(requests);
    let rows: Vec<WatermarkRow> = sqlx::query_as(
        "SELECT t.user_id, t.device_id, t.device_seq
         FROM UNNEST($1::BYTEA[], $2::BYTEA[]) AS k(user_id, device_id)
         JOIN trimmed_device_seqs t ON t.user_id = k.user_id AND t.device_id = k.device_id",
    )
    .bind(column(&devices, |(u, _)| u.as_bytes().as_slice()))
    .bind(column(&devices, |(_, d)| d.as_bytes().as_slice()))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        state.add_watermark(row)?;
    }

    // Which of the batch's devices the chain admits and has not revoked (a revocation takes
    // the user row lock too, so this holds until commit).
    let rows: Vec<ActiveRow> = sqlx::query_as(
        "SELECT d.user_id, d.device_id
         FROM UNNEST($1::BYTEA[], $2::BYTEA[]) AS k(user_id, device_id)
         JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
         WHERE d.admitted_seqno IS NOT NULL AND d.revoked_at IS NULL",
    )
    .bind(column(&devices, |(u, _)| u.as_bytes().as_slice()))
    .bind(column(&devices, |(_, d)| d.as_bytes().as_slice()))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        state.add_active(row)?;
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
