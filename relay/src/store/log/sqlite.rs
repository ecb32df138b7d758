//! The log's hot paths on SQLite, each one blocking call on rusqlite's connections
//! ([`sqlite_direct`]) with statements prepared once (rusqlite's statement cache keeps them):
//! the append batch, whose every step is a statement run per user, device or event, and a
//! replay page, read row by row without a hand-off per row. Inside one call a statement costs SQLite's work only (a few
//! microseconds), with no thread hand-off per statement or row as through sqlx, and without
//! parsing a statement of hundreds of rows every batch. The writer is exclusive for the
//! whole transaction (`BEGIN IMMEDIATE`), so reading the heads is all step 1 needs.
//!
//! [`sqlite_direct`]: crate::store::sql::sqlite_direct

use std::collections::HashMap;
use std::sync::LazyLock;

use ferry_protocol::{Event, UserId};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::plan::{BatchPlan, DeviceKey, batch_devices, batch_users};
use super::{
    ActiveRow, AppendOutcome, AppendRequest, BatchState, EventRow, HeadRow, READ_PAGE_SQL,
    StoredRow, WatermarkRow,
};
use crate::store::sql::db_int;
use crate::store::sql::sqlite_direct::numbered;
use crate::store::{Quota, StoreError};

/// Runs [`LogStore::append_batch`](super::LogStore::append_batch) in one transaction on `conn`.
pub(super) fn append_batch(
    conn: &mut rusqlite::Connection,
    requests: &[AppendRequest],
    now_ms: u64,
    quota: Quota,
) -> Result<Vec<AppendOutcome>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let plan = read_batch_state(&tx, requests)?.plan(requests, quota)?;
    write_plan(&tx, &plan, now_ms)?;
    tx.commit()?;
    Ok(plan.outcomes)
}

/// Steps 1 and 2 of an append batch (see the module docs of [`super`]).
fn read_batch_state(
    tx: &rusqlite::Transaction<'_>,
    requests: &[AppendRequest],
) -> Result<BatchState, StoreError> {
    let mut state = BatchState::default();
    // Heads: read, or created for a user's first event. Reading first leaves the rows of
    // known users untouched (an upsert would write each one).
    let mut read_head = tx.prepare_cached(
        "SELECT head, earliest, bytes, chain_epoch FROM users WHERE user_id = ?1",
    )?;
    let mut create_head = tx.prepare_cached(
        "INSERT INTO users (user_id) VALUES (?1) RETURNING head, earliest, bytes, chain_epoch",
    )?;
    for user in batch_users(requests) {
        let user_id = user.as_bytes().as_slice();
        let head_row = |row: &rusqlite::Row<'_>| {
            Ok(HeadRow {
                user_id: user_id.to_vec(),
                head: row.get(0)?,
                earliest: row.get(1)?,
                bytes: row.get(2)?,
                chain_epoch: row.get(3)?,
            })
        };
        let row = match read_head.query_row([user_id], head_row).optional()? {
            Some(row) => row,
            None => create_head.query_row([user_id], head_row)?,
        };
        state.add_head(row)?;
    }
    // Per device: what of its batch's range is stored already (retries), retention's
    // watermark, and whether the chain admits it and has not revoked it. One range scan per
    // device instead of a lookup per key: new appends are above anything stored, so the
    // range is usually empty.
    let mut stored_in_range = tx.prepare_cached(
        "SELECT device_seq, seq, payload FROM events
         WHERE user_id = ?1 AND device_id = ?2 AND device_seq BETWEEN ?3 AND ?4",
    )?;
    let mut device_state = tx.prepare_cached(
        "SELECT (SELECT device_seq FROM trimmed_device_seqs
                 WHERE user_id = ?1 AND device_id = ?2),
                EXISTS (SELECT 1 FROM devices
                        WHERE user_id = ?1 AND device_id = ?2
                          AND admitted_seqno IS NOT NULL AND revoked_at IS NULL)",
    )?;
    let ranges = device_seq_ranges(requests);
    for (user, device) in batch_devices(requests) {
        let (user_id, device_id) = (user.as_bytes().as_slice(), device.as_bytes().as_slice());
        let (low, high) = ranges[&(user, device)];
        let mut rows = stored_in_range.query(params![user_id, device_id, low, high])?;
        while let Some(row) = rows.next()? {
            state.add_stored(StoredRow {
                user_id: user_id.to_vec(),
                device_id: device_id.to_vec(),
                device_seq: row.get(0)?,
                seq: row.get(1)?,
                payload: row.get(2)?,
            })?;
        }
        let (watermark, active): (Option<i64>, bool) =
            device_state.query_row([user_id, device_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        if let Some(device_seq) = watermark {
            state.add_watermark(WatermarkRow {
                user_id: user_id.to_vec(),
                device_id: device_id.to_vec(),
                device_seq,
            })?;
        }
        if active {
            state.add_active(ActiveRow {
                user_id: user_id.to_vec(),
                device_id: device_id.to_vec(),
            })?;
        }
    }
    Ok(state)
}

/// The lowest and highest `device_seq` of each device in the batch, as stored (`db_int`).
fn device_seq_ranges(requests: &[AppendRequest]) -> HashMap<DeviceKey, (i64, i64)> {
    let mut ranges = HashMap::<DeviceKey, (i64, i64)>::new();
    for request in requests {
        let seq = db_int(request.device_seq);
        ranges
            .entry((request.user, request.device))
            .and_modify(|(low, high)| {
                *low = (*low).min(seq);
                *high = (*high).max(seq);
            })
            .or_insert((seq, seq));
    }
    ranges
}

/// Step 4 of an append batch: the new events and the new heads.
fn write_plan(
    tx: &rusqlite::Transaction<'_>,
    plan: &BatchPlan<'_>,
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (user_id, seq, device_id, device_seq, payload, committed_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (seq, request) in &plan.inserts {
        insert.execute(params![
            request.user.as_bytes().as_slice(),
            db_int(*seq),
            request.device.as_bytes().as_slice(),
            db_int(request.device_seq),
            request.payload.0.as_slice(),
            db_int(now_ms),
        ])?;
    }
    let mut raise_head =
        tx.prepare_cached("UPDATE users SET head = ?2, bytes = bytes + ?3 WHERE user_id = ?1")?;
    for (user, head, bytes) in &plan.heads {
        raise_head.execute(params![
            user.as_bytes().as_slice(),
            db_int(*head),
            db_int(*bytes)
        ])?;
    }
    Ok(())
}

/// [`READ_PAGE_SQL`] with SQLite's numbered parameters.
static READ_PAGE: LazyLock<String> = LazyLock::new(|| numbered(READ_PAGE_SQL));

/// [`LogStore::read_page`](super::LogStore::read_page) on `conn`.
pub(super) fn read_page(
    conn: &mut rusqlite::Connection,
    user: UserId,
    after_seq: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut page = conn.prepare_cached(&READ_PAGE)?;
    let mut rows = page.query(params![
        user.as_bytes().as_slice(),
        db_int(after_seq),
        db_int(limit as u64),
        db_int(max_bytes.max(1) as u64),
    ])?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        let row = EventRow {
            seq: row.get(0)?,
            device_id: row.get(1)?,
            device_seq: row.get(2)?,
            payload: row.get(3)?,
        };
        events.push(row.into_event()?);
    }
    Ok(events)
}
