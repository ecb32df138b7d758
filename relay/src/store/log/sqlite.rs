//! The append batch's statements on SQLite: multi-row `VALUES` and row-value `IN` lists, a
//! few hundred rows per statement, so a batch of a thousand appends is a handful of
//! statements instead of thousands of round trips to SQLite's worker thread. The writer is
//! already exclusive (`BEGIN IMMEDIATE`), so reading the heads is all step 1 needs.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::plan::{BatchPlan, DeviceKey, batch_devices, batch_keys, batch_users};
use super::{AppendRequest, BatchState};
use crate::store::StoreError;
use crate::store::sql::db_int;

/// Rows per multi-row statement: 6 parameters a row stays far below SQLite's 32,766-parameter
/// limit.
const ROWS_PER_STATEMENT: usize = 500;

/// Steps 1 and 2 of an append batch (see the module docs of [`super`]).
pub(super) async fn read_batch_state(
    conn: &mut SqliteConnection,
    requests: &[AppendRequest],
) -> Result<BatchState, StoreError> {
    let mut state = BatchState::default();
    // Heads: one upsert per chunk makes sure every user has a row and reads it.
    for chunk in batch_users(requests).chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new("INSERT INTO users (user_id) ");
        query.push_values(chunk, |mut row, user| {
            row.push_bind(user.as_bytes().as_slice());
        });
        query.push(
            " ON CONFLICT (user_id) DO UPDATE SET head = head
              RETURNING user_id, head, earliest, bytes, chain_epoch",
        );
        for row in query.build_query_as().fetch_all(&mut *conn).await? {
            state.add_head(row)?;
        }
    }
    // Retries: the keys of the batch already in the log.
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
        for row in query.build_query_as().fetch_all(&mut *conn).await? {
            state.add_stored(row)?;
        }
    }
    // Retention's watermarks for the batch's devices.
    for chunk in batch_devices(requests).chunks(ROWS_PER_STATEMENT) {
        let mut query = of_devices(
            "SELECT user_id, device_id, device_seq FROM trimmed_device_seqs
             WHERE (user_id, device_id) IN (",
            chunk,
        );
        for row in query.build_query_as().fetch_all(&mut *conn).await? {
            state.add_watermark(row)?;
        }
    }
    // Which of the batch's devices the chain admits and has not revoked.
    for chunk in batch_devices(requests).chunks(ROWS_PER_STATEMENT) {
        let mut query = of_devices(
            "SELECT user_id, device_id FROM devices
             WHERE admitted_seqno IS NOT NULL AND revoked_at IS NULL
               AND (user_id, device_id) IN (",
            chunk,
        );
        for row in query.build_query_as().fetch_all(&mut *conn).await? {
            state.add_active(row)?;
        }
    }
    Ok(state)
}

/// `head` (a statement ending in `(user_id, device_id) IN (`) completed with `devices`.
fn of_devices<'a>(head: &str, devices: &'a [DeviceKey]) -> QueryBuilder<'a, Sqlite> {
    let mut query = QueryBuilder::<Sqlite>::new(head);
    let mut keys = query.separated(", ");
    for (user, device) in devices {
        keys.push("(");
        keys.push_bind_unseparated(user.as_bytes().as_slice());
        keys.push_unseparated(", ");
        keys.push_bind_unseparated(device.as_bytes().as_slice());
        keys.push_unseparated(")");
    }
    query.push(")");
    query
}

/// Step 4 of an append batch: the new events and the new heads.
pub(super) async fn write_plan(
    conn: &mut SqliteConnection,
    plan: &BatchPlan<'_>,
    now_ms: u64,
) -> Result<(), StoreError> {
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
        query.build().execute(&mut *conn).await?;
    }
    for (user, head, bytes) in &plan.heads {
        sqlx::query("UPDATE users SET head = $2, bytes = bytes + $3 WHERE user_id = $1")
            .bind(user.as_bytes().as_slice())
            .bind(db_int(*head))
            .bind(db_int(*bytes))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
