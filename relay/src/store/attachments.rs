//! The attachments domain of storage: what the relay knows of each blob (its uploader,
//! size, digest, how much of it is uploaded), the messages that refer to it, and each user's
//! bytes stored against its quota (docs/protocol.md §16). The blobs' bytes are elsewhere, in
//! a [`crate::attachments::BlobStorage`]; this is the index that decides who may read
//! them and when they go.
//!
//! # Invariants
//!
//! - A user's `blob_usage` is the sum of the sizes of its blob rows: a row is inserted and
//!   deleted in the same transaction as the usage moves, and the usage moves only by a
//!   conditional update (`bytes + size <= quota`), which the row lock serialises.
//! - A blob gets no new reference once it is `deleting`, and the deletion job marks a blob
//!   `deleting` only if its `refs` version is the one it saw when it judged the blob dead:
//!   a message that refers to the blob meanwhile (which raises `refs` under the row lock)
//!   keeps it.
//! - A blob is readable by its uploader and by the members of a conversation that keeps a
//!   message referring to it (`conv_seq >= earliest`); a `deleting` blob by nobody.

use async_trait::async_trait;
use ferry_protocol::attachments::BlobId;
use ferry_protocol::{DeviceId, ErrorCode, UserId};

use super::StoreError;
use super::sql::{SqlStore, Tx, db_int, from_db_int, in_tx, key32, on_reader, on_writer};

/// A blob about to be uploaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBlob {
    /// Its id (random, picked by the relay).
    pub blob: BlobId,
    /// The uploader.
    pub user: UserId,
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub digest: [u8; 32],
    /// When the upload started (Unix ms).
    pub created_at: u64,
    /// Deleted after this unless a message refers to it.
    pub unreferenced_until: u64,
    /// Deleted after this whatever refers to it.
    pub expires_at: u64,
}

/// A blob as the relay knows it, seen by one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRow {
    /// The uploader.
    pub user: UserId,
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub digest: [u8; 32],
    /// Parts `0..stored` are in the blob storage.
    pub stored: u32,
    /// All parts are there and matched the digest.
    pub complete: bool,
    /// Whether the user who asked may read it.
    pub readable: bool,
}

/// A blob the deletion job marked: its parts are to be deleted, then its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoomedBlob {
    /// The blob.
    pub blob: BlobId,
    /// Its length in bytes (how many parts it may have).
    pub size: u64,
}

/// Storage of the attachments index.
#[async_trait]
pub trait AttachmentStore: Send + Sync {
    /// Records a new blob and adds its size to its uploader's usage; refused with
    /// `quota_exceeded` when the usage would pass `quota_bytes`.
    async fn create_blob(&self, new: &NewBlob, quota_bytes: u64) -> Result<(), StoreError>;

    /// The blob, as `device` of `user` may see it; `None` if there is no such blob, it is
    /// being deleted, or `device` is not an admitted, unrevoked device of `user` (checked
    /// here, for every part: a revoked device's session may live a moment longer than its
    /// record).
    async fn blob(
        &self,
        blob: BlobId,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<BlobRow>, StoreError>;

    /// Records that parts `0..to` are stored, if `0..from` was (`from < to`), and, with
    /// `complete`, that the blob is whole; returns whether it did (another upload of the
    /// same part got there first otherwise).
    async fn record_parts(
        &self,
        blob: BlobId,
        from: u32,
        to: u32,
        complete: bool,
    ) -> Result<bool, StoreError>;

    /// Marks a blob for deletion now (its upload failed its digest); returns it if it was
    /// not marked already.
    async fn doom_blob(&self, blob: BlobId) -> Result<Option<DoomedBlob>, StoreError>;

    /// The deletion job's first step, once per run: forgets the references of messages
    /// retention deleted (for good: a conversation's `earliest` only grows).
    async fn forget_trimmed_refs(&self) -> Result<(), StoreError>;

    /// The deletion job, in rounds: marks up to `limit` dead blobs for deletion (expired at
    /// `now_ms`, unreferenced past their time, or every message that referred to them
    /// deleted), and returns every marked blob (with those an earlier run marked and did
    /// not finish).
    async fn doom_dead_blobs(&self, now_ms: u64, limit: u32)
    -> Result<Vec<DoomedBlob>, StoreError>;

    /// Deletes a marked blob's row and references and takes its size off its uploader's
    /// usage (once its parts are deleted).
    async fn forget_blob(&self, blob: BlobId) -> Result<(), StoreError>;

    /// Bytes of blobs `user` has stored.
    async fn attachment_usage(&self, user: UserId) -> Result<u64, StoreError>;
}

#[async_trait]
impl AttachmentStore for SqlStore {
    async fn create_blob(&self, new: &NewBlob, quota_bytes: u64) -> Result<(), StoreError> {
        let user = new.user.as_bytes().as_slice();
        let mut tx = self.db.begin().await?;
        let charged = in_tx!(&mut tx, |conn| {
            sqlx::query(
                "INSERT INTO blob_usage (user_id, bytes) VALUES ($1, 0)
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(user)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE blob_usage SET bytes = bytes + $2 WHERE user_id = $1 AND bytes + $2 <= $3",
            )
            .bind(user)
            .bind(db_int(new.size))
            .bind(db_int(quota_bytes))
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        if charged == 0 {
            return Err(StoreError::Refused(ErrorCode::QuotaExceeded));
        }
        in_tx!(&mut tx, |conn| {
            sqlx::query(
                "INSERT INTO blobs (blob_id, user_id, size, digest, created_at,
                                    unreferenced_until, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(new.blob.0.as_slice())
            .bind(user)
            .bind(db_int(new.size))
            .bind(new.digest.as_slice())
            .bind(db_int(new.created_at))
            .bind(db_int(new.unreferenced_until))
            .bind(db_int(new.expires_at))
            .execute(&mut *conn)
            .await?;
        });
        tx.commit().await
    }

    async fn blob(
        &self,
        blob: BlobId,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<BlobRow>, StoreError> {
        type Row = (Vec<u8>, i64, Vec<u8>, i64, bool, bool);
        let row: Option<Row> = on_reader!(&self.db, |pool| {
            sqlx::query_as(&format!(
                "SELECT b.user_id, b.size, b.digest, b.stored, b.complete, {READABLE}
                 FROM blobs b WHERE b.blob_id = $1 AND b.deleting = FALSE AND EXISTS (
                   SELECT 1 FROM devices d WHERE d.user_id = $2 AND d.device_id = $3
                   AND d.admitted_seqno IS NOT NULL AND d.revoked_at IS NULL)"
            ))
            .bind(blob.0.as_slice())
            .bind(user.as_bytes().as_slice())
            .bind(device.as_bytes().as_slice())
            .fetch_optional(pool)
            .await?
        });
        let Some((owner, size, digest, stored, complete, readable)) = row else {
            return Ok(None);
        };
        Ok(Some(BlobRow {
            user: UserId(key32(&owner, "user_id")?),
            size: from_db_int(size, "size")?,
            digest: key32(&digest, "digest")?,
            stored: u32::try_from(stored)
                .map_err(|_| StoreError::Corrupt("blob parts out of range".into()))?,
            complete,
            readable,
        }))
    }

    async fn record_parts(
        &self,
        blob: BlobId,
        from: u32,
        to: u32,
        complete: bool,
    ) -> Result<bool, StoreError> {
        let moved = on_writer!(&self.db, |pool| {
            sqlx::query(
                "UPDATE blobs SET stored = $3, complete = $4
                 WHERE blob_id = $1 AND stored = $2 AND complete = FALSE AND deleting = FALSE",
            )
            .bind(blob.0.as_slice())
            .bind(i64::from(from))
            .bind(i64::from(to))
            .bind(complete)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(moved == 1)
    }

    async fn doom_blob(&self, blob: BlobId) -> Result<Option<DoomedBlob>, StoreError> {
        let size: Option<i64> = on_writer!(&self.db, |pool| {
            sqlx::query_scalar(
                "UPDATE blobs SET deleting = TRUE WHERE blob_id = $1 AND deleting = FALSE
                 RETURNING size",
            )
            .bind(blob.0.as_slice())
            .fetch_optional(pool)
            .await?
        });
        size.map(|size| {
            Ok(DoomedBlob {
                blob,
                size: from_db_int(size, "size")?,
            })
        })
        .transpose()
    }

    async fn forget_trimmed_refs(&self) -> Result<(), StoreError> {
        on_writer!(&self.db, |pool| {
            sqlx::query(
                "DELETE FROM blob_refs WHERE conv_seq < (
                   SELECT c.earliest FROM conversations c WHERE c.conv_id = blob_refs.conv_id)",
            )
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    async fn doom_dead_blobs(
        &self,
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<DoomedBlob>, StoreError> {
        let now = db_int(now_ms);
        let dead: Vec<(Vec<u8>, i64)> = on_reader!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT b.blob_id, b.refs FROM blobs b
                 WHERE b.deleting = FALSE AND (b.expires_at <= $1 OR (
                   (b.refs > 0 OR b.unreferenced_until <= $1)
                   AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.blob_id = b.blob_id)))
                 LIMIT $2",
            )
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        for (blob, refs) in dead {
            // Only if no message referred to it since it was judged dead.
            on_writer!(&self.db, |pool| {
                sqlx::query(
                    "UPDATE blobs SET deleting = TRUE
                     WHERE blob_id = $1 AND refs = $2 AND deleting = FALSE",
                )
                .bind(blob.as_slice())
                .bind(refs)
                .execute(pool)
                .await?;
            });
        }
        let doomed: Vec<(Vec<u8>, i64)> = on_reader!(&self.db, |pool| {
            sqlx::query_as("SELECT blob_id, size FROM blobs WHERE deleting = TRUE LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        doomed
            .into_iter()
            .map(|(blob, size)| {
                Ok(DoomedBlob {
                    blob: BlobId(key32(&blob, "blob_id")?),
                    size: from_db_int(size, "size")?,
                })
            })
            .collect()
    }

    async fn forget_blob(&self, blob: BlobId) -> Result<(), StoreError> {
        let id = blob.0.as_slice();
        let mut tx = self.db.begin().await?;
        let row: Option<(Vec<u8>, i64)> = in_tx!(&mut tx, |conn| {
            sqlx::query_as(
                "DELETE FROM blobs WHERE blob_id = $1 AND deleting = TRUE
                 RETURNING user_id, size",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        });
        if let Some((user, size)) = row {
            in_tx!(&mut tx, |conn| {
                sqlx::query("DELETE FROM blob_refs WHERE blob_id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("UPDATE blob_usage SET bytes = bytes - $2 WHERE user_id = $1")
                    .bind(user.as_slice())
                    .bind(size)
                    .execute(&mut *conn)
                    .await?;
            });
        }
        tx.commit().await
    }

    async fn attachment_usage(&self, user: UserId) -> Result<u64, StoreError> {
        let bytes: Option<i64> = on_reader!(&self.db, |pool| {
            sqlx::query_scalar("SELECT bytes FROM blob_usage WHERE user_id = $1")
                .bind(user.as_bytes().as_slice())
                .fetch_optional(pool)
                .await?
        });
        from_db_int(bytes.unwrap_or(0), "bytes")
    }
}

/// Whether the user bound as `$2` may read blob `b`: it uploaded it, or it is a member of a
/// conversation that keeps a message referring to it.
pub(super) const READABLE: &str = "(b.user_id = $2 OR EXISTS (
       SELECT 1 FROM blob_refs r
       JOIN conversations c ON c.conv_id = r.conv_id
       JOIN conv_members m ON m.conv_id = r.conv_id AND m.user_id = $2
       WHERE r.blob_id = b.blob_id AND r.conv_seq >= c.earliest))";

/// A conversation message about to be stored at `conv_seq` refers to `blobs`: each must be
/// complete and readable by `user`, and gets the reference, in the message's transaction
/// and before the message is written (so a refusal writes no message). The
/// blob's row is locked first (its `refs` raised), so the deletion job cannot mark it
/// meanwhile; a refusal may leave `refs` raised, which only makes that job look again.
pub(super) async fn refer(
    tx: &mut Tx,
    user: UserId,
    conv: ferry_protocol::ConvId,
    conv_seq: u64,
    blobs: &[BlobId],
) -> Result<(), StoreError> {
    check_distinct(blobs)?;
    for blob in blobs {
        let id = blob.0.as_slice();
        let complete: Option<bool> = in_tx!(tx, |conn| {
            sqlx::query_scalar(
                "UPDATE blobs SET refs = refs + 1 WHERE blob_id = $1 AND deleting = FALSE
                 RETURNING complete",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        });
        let readable: bool = match complete {
            None => false,
            Some(_) => in_tx!(tx, |conn| {
                sqlx::query_scalar(&format!(
                    "SELECT {READABLE} FROM blobs b WHERE b.blob_id = $1"
                ))
                .bind(id)
                .bind(user.as_bytes().as_slice())
                .fetch_one(&mut *conn)
                .await?
            }),
        };
        match (complete, readable) {
            (None, _) | (_, false) => return Err(StoreError::Refused(ErrorCode::NoSuchAttachment)),
            (Some(false), true) => {
                return Err(StoreError::Refused(ErrorCode::AttachmentIncomplete));
            }
            (Some(true), true) => {}
        }
    }
    for blob in blobs {
        in_tx!(tx, |conn| {
            sqlx::query("INSERT INTO blob_refs (blob_id, conv_id, conv_seq) VALUES ($1, $2, $3)")
                .bind(blob.0.as_slice())
                .bind(conv.0.as_slice())
                .bind(db_int(conv_seq))
                .execute(&mut *conn)
                .await?;
        });
    }
    Ok(())
}

fn check_distinct(blobs: &[BlobId]) -> Result<(), StoreError> {
    let distinct: std::collections::BTreeSet<_> = blobs.iter().collect();
    if distinct.len() == blobs.len() {
        Ok(())
    } else {
        Err(StoreError::RefusedBecause(
            ErrorCode::NoSuchAttachment,
            "a message names an attachment twice".into(),
        ))
    }
}
