//! Blobs in a folder (the default: `DATA_DIR/blobs`): part `i` of blob `id` is the file
//! `ab/ID/i` (`ab`: the id's first byte, so no folder holds millions of entries).
//!
//! A part is written to `i.tmp`, flushed to disk, renamed over `i`, and the folder flushed,
//! so an acknowledged part survives a crash and a torn write is never read as a part.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use ferry_protocol::attachments::BlobId;

use super::BlobStorage;

/// Blobs as files under one folder.
#[derive(Debug)]
pub struct FolderStorage {
    root: PathBuf,
}

impl FolderStorage {
    /// Blobs under `root` (created when the first part is written).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn blob_dir(&self, blob: &BlobId) -> PathBuf {
        let id = blob.to_hex();
        self.root.join(&id[..2]).join(id)
    }
}

#[async_trait]
impl BlobStorage for FolderStorage {
    async fn put_part(&self, blob: &BlobId, index: u32, bytes: Bytes) -> std::io::Result<()> {
        let dir = self.blob_dir(blob);
        tokio::task::spawn_blocking(move || write_durably(&dir, &index.to_string(), &bytes))
            .await
            .map_err(std::io::Error::other)?
    }

    async fn get_part(&self, blob: &BlobId, index: u32) -> std::io::Result<Option<Bytes>> {
        let path = self.blob_dir(blob).join(index.to_string());
        match tokio::fs::read(path).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, blob: &BlobId, _parts: u32) -> std::io::Result<()> {
        match tokio::fs::remove_dir_all(self.blob_dir(blob)).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}
