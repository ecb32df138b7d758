//! Attachments (docs/protocol.md §16): the bytes of blobs, behind [`BlobStorage`], and the
//! job that deletes dead blobs.
//!
//! A blob is stored as its parts (one object each, `PART_LEN` bytes but the last), so an
//! upload goes part by part with nothing to assemble, a download reads one part at a time,
//! and the same layout serves a folder and an object store. What the relay knows about each
//! blob (who uploaded it, how many parts are in, which messages refer to it) is in the
//! database ([`crate::store::AttachmentStore`]); this module never decides who may read.
//!
//! Two storages: [`FolderStorage`] (the default: `DATA_DIR/blobs`), and [`ObjectStorage`]
//! over any `object_store` backend: S3-compatible storage in production (`s3://…`), or
//! memory (`memory://`, tests).

mod folder;
mod object;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_protocol::attachments::{BlobId, part_count};

pub use folder::FolderStorage;
pub use object::ObjectStorage;

use crate::store::{AttachmentStore, DoomedBlob};

/// Where blobs' parts are kept. Writes are durable when they return; every operation is
/// idempotent (a part written twice holds the second copy, deleting what is gone succeeds).
#[async_trait]
pub trait BlobStorage: Send + Sync + std::fmt::Debug {
    /// Stores part `index` of `blob`.
    async fn put_part(&self, blob: &BlobId, index: u32, bytes: Bytes) -> std::io::Result<()>;

    /// Part `index` of `blob`, if it is stored.
    async fn get_part(&self, blob: &BlobId, index: u32) -> std::io::Result<Option<Bytes>>;

    /// Deletes `blob`'s parts (`parts` of them at most).
    async fn delete(&self, blob: &BlobId, parts: u32) -> std::io::Result<()>;
}

/// Opens the storage `url` names (see `--blob-store`), or the folder `default_folder`.
pub fn open(
    url: Option<&str>,
    default_folder: &std::path::Path,
) -> anyhow::Result<Arc<dyn BlobStorage>> {
    let Some(url) = url else {
        return Ok(Arc::new(FolderStorage::new(default_folder.to_path_buf())));
    };
    if let Some(rest) = url.strip_prefix("s3://") {
        return Ok(Arc::new(ObjectStorage::s3(rest)?));
    }
    if url == "memory://" {
        return Ok(Arc::new(ObjectStorage::in_memory()));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.contains("://") {
        anyhow::bail!("--blob-store: a folder, file://PATH, s3://BUCKET/PREFIX or memory://");
    }
    Ok(Arc::new(FolderStorage::new(path.into())))
}

/// How many parts a blob of `size` bytes has, as the storage counts them.
pub fn parts_of(size: u64) -> u32 {
    u32::try_from(part_count(size)).unwrap_or(u32::MAX)
}

/// One run of the deletion job: dead blobs (expired, unreferenced past their time, or left
/// behind by every message that referred to them) are marked, their parts deleted, then
/// their rows; returns how many were deleted. A run stopped between the parts and the row
/// (a crash) is finished by the next: marked blobs stay marked.
pub async fn delete_dead_blobs(
    store: &dyn AttachmentStore,
    storage: &dyn BlobStorage,
    now_ms: u64,
) -> anyhow::Result<u64> {
    const PER_ROUND: u32 = 256;
    store.forget_trimmed_refs().await?;
    let mut deleted = 0;
    loop {
        let doomed = store.doom_dead_blobs(now_ms, PER_ROUND).await?;
        let round = doomed.len();
        for blob in doomed {
            delete_doomed(store, storage, blob).await?;
            deleted += 1;
        }
        if round < PER_ROUND as usize {
            return Ok(deleted);
        }
    }
}

/// Deletes a marked blob: its parts, then its row.
pub async fn delete_doomed(
    store: &dyn AttachmentStore,
    storage: &dyn BlobStorage,
    doomed: DoomedBlob,
) -> anyhow::Result<()> {
    storage.delete(&doomed.blob, parts_of(doomed.size)).await?;
    store.forget_blob(doomed.blob).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both storages keep and return parts, overwrite, and delete idempotently.
    async fn exercise(storage: &dyn BlobStorage) {
        let blob = BlobId([3; 32]);
        let other = BlobId([4; 32]);
        assert_eq!(storage.get_part(&blob, 0).await.unwrap(), None);
        storage
            .put_part(&blob, 0, Bytes::from_static(b"zero"))
            .await
            .unwrap();
        storage
            .put_part(&blob, 1, Bytes::from_static(b"one"))
            .await
            .unwrap();
        storage
            .put_part(&other, 0, Bytes::from_static(b"other"))
            .await
            .unwrap();
        storage
            .put_part(&blob, 1, Bytes::from_static(b"uno"))
            .await
            .unwrap();
        assert_eq!(storage.get_part(&blob, 0).await.unwrap().unwrap(), "zero");
        assert_eq!(storage.get_part(&blob, 1).await.unwrap().unwrap(), "uno");
        assert_eq!(storage.get_part(&blob, 2).await.unwrap(), None);
        storage.delete(&blob, 2).await.unwrap();
        storage.delete(&blob, 2).await.unwrap();
        assert_eq!(storage.get_part(&blob, 0).await.unwrap(), None);
        assert_eq!(storage.get_part(&blob, 1).await.unwrap(), None);
        assert_eq!(storage.get_part(&other, 0).await.unwrap().unwrap(), "other");
    }

    #[tokio::test]
    async fn a_folder_keeps_parts() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&FolderStorage::new(dir.path().join("blobs"))).await;
    }

    #[tokio::test]
    async fn an_object_store_keeps_parts() {
        exercise(&ObjectStorage::in_memory()).await;
    }

    #[test]
    fn urls_pick_a_storage() {
        let folder = std::path::Path::new("/tmp/x");
        assert!(format!("{:?}", open(None, folder).unwrap()).contains("Folder"));
        assert!(format!("{:?}", open(Some("memory://"), folder).unwrap()).contains("Object"));
        assert!(format!("{:?}", open(Some("file:///tmp/y"), folder).unwrap()).contains("/tmp/y"));
        assert!(open(Some("ftp://host/x"), folder).is_err());
    }
}
