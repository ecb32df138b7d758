//! Receiving a file: fetch the parts, open each, write beside the destination, and rename
//! into place only once the whole blob matched its digest.

use std::path::{Path, PathBuf};

use ferry_protocol::attachments::{PART_LEN, part_count, sealed_len};
use ferry_protocol::{ClientFrame, ServerFrame};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{AttachmentError, FileRef, MAX_STALLS, Progress, WINDOW, refused_for_now};
use crate::client::ClientHandle;
use crate::error::ClientError;
use crate::people::{Ask, unexpected};

impl ClientHandle {
    /// Fetches the file of a message ([`Content::File`](crate::Content::File)) into `dest`,
    /// replacing it. The bytes go to a temporary file beside it (`DEST.ferry-part`), each
    /// part authenticated as it arrives; `dest` appears only once the whole file matched the
    /// message's digest and length. `progress` hears how far the download is.
    pub async fn save_file(
        &self,
        file: &FileRef,
        dest: &Path,
        progress: impl Fn(Progress) + Send + Sync,
    ) -> Result<(), ClientError> {
        let partial = partial_path(dest);
        let result = self.save_into(file, &partial, &progress).await;
        let result = match result {
            Ok(()) => tokio::fs::rename(&partial, dest)
                .await
                .map_err(|e| AttachmentError::io(dest, e).into()),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    /// Fetches the file of a message into memory (a preview), once checked; refused above
    /// `max_len` bytes.
    pub async fn fetch_file(&self, file: &FileRef, max_len: u64) -> Result<Vec<u8>, ClientError> {
        if file.size > max_len {
            return Err(AttachmentError::Corrupt("larger than asked for").into());
        }
        let mut out = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0));
        let mut fetch = Fetch::new(self, file)?;
        while let Some(plain) = fetch.next_part().await? {
            out.extend_from_slice(&plain);
        }
        Ok(out)
    }

    async fn save_into(
        &self,
        file: &FileRef,
        partial: &Path,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), ClientError> {
        let io = |e| ClientError::from(AttachmentError::io(partial, e));
        let _ = tokio::fs::remove_file(partial).await;
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let out = options.open(partial).await.map_err(io)?;
        let mut out = tokio::io::BufWriter::with_capacity(PART_LEN, out);
        let mut fetch = Fetch::new(self, file)?;
        progress(Progress {
            done: 0,
            total: file.size,
        });
        while let Some(plain) = fetch.next_part().await? {
            out.write_all(&plain).await.map_err(io)?;
            progress(Progress {
                done: fetch.done,
                total: file.size,
            });
        }
        out.flush().await.map_err(io)?;
        out.into_inner().sync_all().await.map_err(io)
    }
}

/// A download under way: [`WINDOW`] parts asked for at once, each checked and opened in
/// order, the whole blob checked against the digest before the end is reported.
struct Fetch<'a> {
    handle: &'a ClientHandle,
    file: &'a FileRef,
    size: u64,
    parts: u32,
    /// The next part handed over.
    index: u32,
    /// The next part asked for.
    asked: u32,
    in_flight:
        FuturesOrdered<futures_util::future::BoxFuture<'a, Result<ServerFrame, ClientError>>>,
    hasher: Sha256,
    /// Plaintext bytes handed over.
    done: u64,
    /// The pause before asking again after a part refused for now ([`refused_for_now`]),
    /// and how many refusals in a row.
    pause: std::time::Duration,
    refused: u32,
}

impl<'a> Fetch<'a> {
    fn new(handle: &'a ClientHandle, file: &'a FileRef) -> Result<Self, ClientError> {
        let size = sealed_len(file.size);
        let parts = u32::try_from(part_count(size))
            .map_err(|_| AttachmentError::Corrupt("an impossible size"))?;
        Ok(Self {
            handle,
            file,
            size,
            parts,
            index: 0,
            asked: 0,
            in_flight: FuturesOrdered::new(),
            hasher: Sha256::new(),
            done: 0,
            pause: super::RATE_PAUSE,
            refused: 0,
        })
    }

    /// The next part's plaintext, or `None` once every part was handed over and the whole
    /// blob matched the file's length and digest.
    async fn next_part(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        if self.index == self.parts {
            if self.done != self.file.size {
                return Err(AttachmentError::Corrupt("the file's length").into());
            }
            let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
            if digest != self.file.digest {
                return Err(AttachmentError::Corrupt("the digest").into());
            }
            return Ok(None);
        }
        let index = self.index;
        let bytes = loop {
            while self.in_flight.len() < WINDOW && self.asked < self.parts {
                let frame = ClientFrame::BlobGet {
                    blob: self.file.blob,
                    part: self.asked,
                };
                self.in_flight.push_back(self.handle.ask(frame));
                self.asked += 1;
            }
            match self.in_flight.next().await {
                // The relay refused this part for now (the device's attachment bandwidth is
                // used up, or it could not read the part): this part and the ones asked after
                // it are asked again after a pause. A relay that keeps refusing ends the
                // download with its refusal.
                Some(Err(refusal)) if refused_for_now(&refusal) => {
                    self.refused += 1;
                    if self.refused > MAX_STALLS {
                        return Err(refusal);
                    }
                    tracing::debug!(
                        part = index,
                        %refusal,
                        "the relay refused a part for now; it is asked for again"
                    );
                    self.in_flight = FuturesOrdered::new();
                    self.asked = index;
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(super::MAX_RATE_PAUSE);
                }
                Some(answer) => match answer? {
                    ServerFrame::BlobPart {
                        part, size, bytes, ..
                    } if part == index => {
                        if size != self.size {
                            return Err(AttachmentError::Corrupt("the blob's size").into());
                        }
                        self.pause = super::RATE_PAUSE;
                        self.refused = 0;
                        break bytes;
                    }
                    other => return Err(unexpected(&other)),
                },
                None => return Err(AttachmentError::Corrupt("parts missing").into()),
            }
        };
        self.hasher.update(&bytes);
        let last = index + 1 == self.parts;
        let plain = self
            .file
            .key
            .open_chunk(u64::from(index), last, &bytes)
            .map_err(|_| AttachmentError::Corrupt("a part does not open"))?;
        self.index += 1;
        self.done += plain.len() as u64;
        Ok(Some(plain))
    }
}

/// Where a download is written until it is checked.
fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".ferry-part");
    dest.with_file_name(name)
}
