//! The attachment frames of a device session (docs/protocol.md §16): `BlobCreate` starts an
//! upload, `BlobPut` stores its parts in order, `BlobGet` serves a complete blob's parts.
//! One answer each.
//!
//! What a hostile client can try, and what it gets:
//! - reading someone else's blob: ids are 32 random bytes, and a blob is served only to its
//!   uploader and to members of a conversation keeping a message that refers to it; anyone
//!   else gets `no_such_attachment`, as for a blob that does not exist;
//! - writing into someone else's upload, or rewriting a complete blob: parts are taken only
//!   from the uploader's user, only at the next missing position, never once complete;
//! - filling the disk: each blob has a size limit and each user a quota, a blob no message
//!   refers to is deleted after a day, and creating blobs is limited like people writes;
//! - using the relay's bandwidth: parts put and got are limited per device;
//! - storing something that is not what it declared: the digest is checked when the last
//!   part arrives, and a mismatch deletes the blob.

use std::time::Instant;

use bytes::Bytes;
use ferry_protocol::attachments::{BlobId, part_len};
use ferry_protocol::{ClientFrame, ErrorCode, ErrorFrame, ServerFrame};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use super::people::{Asker, error, may_write, rate_limited, refused, storage_error};
use crate::attachments::{delete_doomed, parts_of};
use crate::context::{Context, now_ms};
use crate::store::{BlobRow, NewBlob};

/// Whether `frame` is one of this module's.
pub(super) fn is_attachment_frame(frame: &ClientFrame) -> bool {
    matches!(
        frame,
        ClientFrame::BlobCreate { .. } | ClientFrame::BlobPut { .. } | ClientFrame::BlobGet { .. }
    )
}

/// Answers one attachment frame.
pub(super) async fn handle(ctx: &Context, asker: Asker, frame: ClientFrame) -> ServerFrame {
    match frame {
        ClientFrame::BlobCreate { size, digest } => create(ctx, asker, size, digest).await,
        ClientFrame::BlobPut { blob, part, bytes } => {
            put(ctx, asker, blob, part, Bytes::from(bytes)).await
        }
        ClientFrame::BlobGet { blob, part } => get(ctx, asker, blob, part).await,
        other => {
            tracing::error!(frame = ?other, "not an attachment frame");
            ServerFrame::Error(ErrorFrame::new(ErrorCode::Internal))
        }
    }
}

async fn create(ctx: &Context, asker: Asker, size: u64, digest: [u8; 32]) -> ServerFrame {
    if !may_write(ctx, asker) {
        return rate_limited(ctx);
    }
    let limits = &ctx.config.attachments;
    if size == 0 {
        return error(
            ctx,
            ErrorCode::MalformedFrame,
            "an attachment has 1 byte at least",
        );
    }
    if size > limits.max_bytes {
        let why = format!(
            "this relay stores attachments of {} bytes at most",
            limits.max_bytes
        );
        return error(ctx, ErrorCode::AttachmentTooLarge, why);
    }
    let mut id = [0u8; 32];
    OsRng.fill_bytes(&mut id);
    let now = now_ms();
    let new = NewBlob {
        blob: BlobId(id),
        user: asker.user,
        size,
        digest,
        created_at: now,
        unreferenced_until: now.saturating_add(limits.unreferenced_secs.saturating_mul(1000)),
        expires_at: now.saturating_add(limits.max_age_secs.saturating_mul(1000)),
    };
    match ctx.store.create_blob(&new, limits.quota_bytes).await {
        Ok(()) => {
            tracing::debug!(user = %asker.user, blob = ?new.blob, size, "attachment upload started");
            ServerFrame::BlobCreated {
                blob: new.blob,
                unreferenced_until: new.unreferenced_until,
            }
        }
        Err(e) if e.code() == ErrorCode::QuotaExceeded => {
            let why = format!(
                "this user's attachments would pass its quota of {} bytes",
                limits.quota_bytes
            );
            error(ctx, ErrorCode::QuotaExceeded, why)
        }
        Err(e) => storage_error(ctx, &e),
    }
}

async fn put(ctx: &Context, asker: Asker, blob: BlobId, part: u32, bytes: Bytes) -> ServerFrame {
    if !ctx
        .attachment_limiter
        .try_take(&asker.device, Instant::now())
    {
        return rate_limited(ctx);
    }
    let row = match ctx.store.blob(blob, asker.user, asker.device).await {
        Ok(Some(row)) if row.user == asker.user => row,
        Ok(_) => return no_such(ctx),
        Err(e) => return storage_error(ctx, &e),
    };
    // Stored already, or not the next part: nothing stored, the answer says where it stands.
    if row.complete || part != row.stored {
        return stored(blob, &row);
    }
    let Some(expected) = part_len(row.size, u64::from(part)) else {
        return stored(blob, &row);
    };
    if bytes.len() != expected {
        let why = format!("part {part} of this attachment is {expected} bytes long");
        return error(ctx, ErrorCode::MalformedFrame, why);
    }
    let len = bytes.len();
    let last = part + 1 == parts_of(row.size);
    if let Err(e) = ctx.blobs.put_part(&blob, part, bytes.clone()).await {
        tracing::warn!(error = %e, "storing an attachment part failed");
        return refused(ctx, ErrorCode::Unavailable);
    }
    if last {
        match digest_matches(ctx, blob, &row, part, &bytes).await {
            Ok(true) => {}
            Ok(false) => return corrupt(ctx, blob).await,
            Err(e) => {
                tracing::warn!(error = %e, "reading an attachment back failed");
                return refused(ctx, ErrorCode::Unavailable);
            }
        }
    }
    match ctx.store.record_parts(blob, part, part + 1, last).await {
        Ok(true) => {
            ctx.metrics.attachment_bytes("up", len);
            if last {
                tracing::debug!(user = %asker.user, blob = ?blob, "attachment uploaded");
            }
            ServerFrame::BlobStored {
                blob,
                stored: part + 1,
                complete: last,
            }
        }
        // Another session of the user stored it first: say where it stands now.
        Ok(false) => match ctx.store.blob(blob, asker.user, asker.device).await {
            Ok(Some(row)) => stored(blob, &row),
            Ok(None) => no_such(ctx),
            Err(e) => storage_error(ctx, &e),
        },
        Err(e) => storage_error(ctx, &e),
    }
}

/// Whether the blob's parts before `last_index`, then `last`, hash to its digest.
async fn digest_matches(
    ctx: &Context,
    blob: BlobId,
    row: &BlobRow,
    last_index: u32,
    last: &[u8],
) -> std::io::Result<bool> {
    let mut hasher = Sha256::new();
    for index in 0..last_index {
        match ctx.blobs.get_part(&blob, index).await? {
            Some(part) => hasher.update(&part),
            None => return Ok(false),
        }
    }
    hasher.update(last);
    Ok(<[u8; 32]>::from(hasher.finalize()) == row.digest)
}

/// The upload does not match its digest: the blob is deleted, and the uploader told.
async fn corrupt(ctx: &Context, blob: BlobId) -> ServerFrame {
    match ctx.store.doom_blob(blob).await {
        Ok(Some(doomed)) => {
            if let Err(e) = delete_doomed(&*ctx.store, &*ctx.blobs, doomed).await {
                // Marked: the deletion job finishes it.
                tracing::warn!(error = %e, "deleting a corrupt attachment failed");
            } else {
                ctx.metrics.attachments_deleted(1);
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "marking a corrupt attachment failed"),
    }
    refused(ctx, ErrorCode::AttachmentCorrupt)
}

async fn get(ctx: &Context, asker: Asker, blob: BlobId, part: u32) -> ServerFrame {
    if !ctx
        .attachment_limiter
        .try_take(&asker.device, Instant::now())
    {
        return rate_limited(ctx);
    }
    let row = match ctx.store.blob(blob, asker.user, asker.device).await {
        Ok(Some(row)) if row.readable => row,
        Ok(_) => return no_such(ctx),
        Err(e) => return storage_error(ctx, &e),
    };
    if !row.complete {
        return refused(ctx, ErrorCode::AttachmentIncomplete);
    }
    if part_len(row.size, u64::from(part)).is_none() {
        let why = format!("this attachment has {} parts", parts_of(row.size));
        return error(ctx, ErrorCode::NoSuchAttachment, why);
    }
    match ctx.blobs.get_part(&blob, part).await {
        Ok(Some(bytes)) => {
            ctx.metrics.attachment_bytes("down", bytes.len());
            ServerFrame::BlobPart {
                blob,
                part,
                size: row.size,
                bytes: bytes.to_vec(),
            }
        }
        // Deleted since the row was read.
        Ok(None) => no_such(ctx),
        Err(e) => {
            tracing::warn!(error = %e, "reading an attachment part failed");
            refused(ctx, ErrorCode::Unavailable)
        }
    }
}

fn stored(blob: BlobId, row: &BlobRow) -> ServerFrame {
    ServerFrame::BlobStored {
        blob,
        stored: row.stored,
        complete: row.complete,
    }
}

fn no_such(ctx: &Context) -> ServerFrame {
    refused(ctx, ErrorCode::NoSuchAttachment)
}
