//! Blobs in an object store through the `object_store` crate: S3-compatible storage in
//! production (`s3://BUCKET/PREFIX`, configured by the `AWS_*` environment variables:
//! `AWS_REGION`, `AWS_ENDPOINT` for MinIO or another S3-compatible service,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`…), or memory (tests). Part `i` of blob `id`
//! is the object `PREFIX/ID/i`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_protocol::attachments::BlobId;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::BlobStorage;

/// Blobs as objects under a prefix of an object store.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .finish()
    }
}

impl ObjectStorage {
    /// Blobs under `prefix` of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: Path::from(prefix),
        }
    }

    /// Blobs in memory (lost when the process ends): for tests.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()), "blobs")
    }

    /// Blobs in the S3 bucket named by `bucket_and_prefix` (`BUCKET/PREFIX`), the rest of
    /// the configuration from the environment.
    pub fn s3(bucket_and_prefix: &str) -> anyhow::Result<Self> {
        let (bucket, prefix) = bucket_and_prefix
            .split_once('/')
            .unwrap_or((bucket_and_prefix, "ferry-blobs"));
        if bucket.is_empty() {
            anyhow::bail!("--blob-store s3://BUCKET/PREFIX needs a bucket");
        }
        // reqwest's rustls has no provider of its own here: the process's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()?;
        Ok(Self::new(Arc::new(store), prefix))
    }

    fn part_path(&self, blob: &BlobId, index: u32) -> Path {
        self.prefix
            .clone()
            .join(blob.to_hex())
            .join(index.to_string())
    }
}

#[async_trait]
impl BlobStorage for ObjectStorage {
    async fn put_part(&self, blob: &BlobId, index: u32, bytes: Bytes) -> std::io::Result<()> {
        self.store
            .put(&self.part_path(blob, index), PutPayload::from_bytes(bytes))
            .await
            .map(drop)
            .map_err(std::io::Error::other)
    }

    async fn get_part(&self, blob: &BlobId, index: u32) -> std::io::Result<Option<Bytes>> {
        match self.store.get(&self.part_path(blob, index)).await {
            Ok(found) => found.bytes().await.map(Some).map_err(std::io::Error::other),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    async fn delete(&self, blob: &BlobId, parts: u32) -> std::io::Result<()> {
        for index in 0..parts {
            match self.store.delete(&self.part_path(blob, index)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        Ok(())
    }
}
