//! Sending a file: seal and hash it, upload the sealed parts, send the message.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ferry_protocol::attachments::{BlobId, CHUNK_LEN, FileKey, part_count, sealed_len};
use ferry_protocol::conversations::ConvId;
use ferry_protocol::{ClientFrame, ServerFrame};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{
    AttachmentError, FileRef, MAX_NAME_LEN, MAX_STALLS, Progress, WINDOW, mime_for,
    refused_for_now, truncate,
};
use crate::client::ClientHandle;
use crate::error::ClientError;
use crate::people::{Ask, unexpected};

impl ClientHandle {
    /// Sends the file at `path` to a conversation: encrypted here under a key of its own,
    /// uploaded, then announced in a message whose members may fetch it
    /// ([`Content::File`](crate::Content::File)). `progress` hears how far the upload is.
    /// Returns the message's place (`conv_seq`).
    pub async fn send_file(
        &self,
        conv: ConvId,
        path: &Path,
        progress: impl Fn(Progress) + Send + Sync,
    ) -> Result<u64, ClientError> {
        let file = self.upload_file(path, &progress).await?;
        self.send_file_ref(conv, file).await
    }

    /// Encrypts and uploads the file at `path` without sending it anywhere yet; the relay
    /// deletes it unless a message refers to it within a day. Send it with
    /// [`send_file_ref`](Self::send_file_ref).
    pub async fn upload_file(
        &self,
        path: &Path,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<FileRef, ClientError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = truncate(&name, MAX_NAME_LEN).to_owned();
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let key = FileKey(key);
        // First pass: the digest (declared when the upload starts, checked by the relay
        // when it ends and by every reader).
        let (plain_len, digest) = {
            let (path, key) = (path.to_path_buf(), key.clone());
            tokio::task::spawn_blocking(move || digest_of(&path, &key))
                .await
                .map_err(|e| ClientError::Protocol(format!("sealing task failed: {e}")))??
        };
        let size = sealed_len(plain_len);
        let blob = match self.ask(ClientFrame::BlobCreate { size, digest }).await? {
            ServerFrame::BlobCreated { blob, .. } => blob,
            other => return Err(unexpected(&other)),
        };
        progress(Progress {
            done: 0,
            total: plain_len,
        });
        let upload = Upload {
            path,
            key: &key,
            blob,
            plain_len,
        };
        self.put_parts(&upload, progress).await?;
        Ok(FileRef {
            blob,
            key,
            digest,
            size: plain_len,
            mime: mime_for(&name).to_owned(),
            name,
        })
    }

    /// Sends a file uploaded with [`upload_file`](Self::upload_file) (or received: a
    /// forward, which needs no upload) to a conversation; returns its `conv_seq`.
    pub async fn send_file_ref(&self, conv: ConvId, file: FileRef) -> Result<u64, ClientError> {
        self.conversations.send_file_ref(self, conv, file).await
    }

    /// Puts the sealed parts, [`WINDOW`] at a time, from where the relay says the upload
    /// stands.
    async fn put_parts(
        &self,
        upload: &Upload<'_>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(), ClientError> {
        let parts = u32::try_from(part_count(sealed_len(upload.plain_len)))
            .map_err(|_| ClientError::Protocol("a file too large to upload".into()))?;
        let mut start = 0;
        let mut stalls = 0;
        let mut pause = super::RATE_PAUSE;
        while stalls < MAX_STALLS {
            let (sender, mut sealed) = mpsc::channel(WINDOW);
            let producer = {
                let (path, key) = (upload.path.to_path_buf(), upload.key.clone());
                let plain_len = upload.plain_len;
                tokio::task::spawn_blocking(move || {
                    produce(&path, &key, plain_len, start, &sender);
                })
            };
            let mut in_flight = FuturesOrdered::new();
            let mut next = start;
            let outcome = loop {
                while in_flight.len() < WINDOW && next < parts {
                    let bytes = match sealed.recv().await {
                        Some(Ok(bytes)) => bytes,
                        Some(Err(e)) => return Err(e.into()),
                        None => return Err(ClientError::Protocol("sealing stopped".into())),
                    };
                    let frame = ClientFrame::BlobPut {
                        blob: upload.blob,
                        part: next,
                        bytes,
                    };
                    in_flight.push_back(async move { (next, self.ask(frame).await) });
                    next += 1;
                }
                let Some((part, answer)) = in_flight.next().await else {
                    return Err(ClientError::Protocol("the upload ended early".into()));
                };
                let answer = match answer {
                    // The relay refused this part for now ([`refused_for_now`]: the device's
                    // attachment bandwidth is used up, or the relay is shutting down or its
                    // storage failed): after a pause (and the reconnect, if it went away) this
                    // part and the next go again, and the relay's answer to it says where the
                    // upload stands. A lost connection needs nothing here: the client sends a
                    // request cut off by a reconnect again by itself.
                    Err(refusal) if refused_for_now(&refusal) => {
                        tracing::debug!(
                            part,
                            %refusal,
                            "the relay refused a part for now; it goes again"
                        );
                        break Err(Restart::Paused(part));
                    }
                    answer => answer?,
                };
                match answer {
                    ServerFrame::BlobStored { complete: true, .. } => break Ok(()),
                    ServerFrame::BlobStored { stored, .. } if stored == part + 1 => {
                        let done = u64::from(stored) * CHUNK_LEN as u64;
                        progress(Progress {
                            done: done.min(upload.plain_len),
                            total: upload.plain_len,
                        });
                    }
                    // The relay holds something else than this connection sent (a part
                    // lost, or an upload resumed): go on from where it stands.
                    ServerFrame::BlobStored { stored, .. } => {
                        tracing::debug!(
                            part,
                            stored,
                            "upload starts again from the relay's position"
                        );
                        break Err(Restart::From(stored));
                    }
                    other => return Err(unexpected(&other)),
                }
            };
            drop(sealed);
            let _ = producer.await;
            let from = match outcome {
                Ok(()) => {
                    progress(Progress {
                        done: upload.plain_len,
                        total: upload.plain_len,
                    });
                    return Ok(());
                }
                Err(Restart::From(stored)) => stored,
                Err(Restart::Paused(part)) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(super::MAX_RATE_PAUSE);
                    part
                }
            };
            stalls = if from > start { 0 } else { stalls + 1 };
            start = from.min(parts);
        }
        Err(AttachmentError::Stalled.into())
    }
}

/// Why an upload goes on from another part than the next.
enum Restart {
    /// The relay holds parts up to this one.
    From(u32),
    /// The relay refused this part for now (`rate_limited`, `unavailable`).
    Paused(u32),
}

/// An upload under way.
struct Upload<'a> {
    path: &'a Path,
    key: &'a FileKey,
    blob: BlobId,
    plain_len: u64,
}

/// The file's length and the SHA-256 of its sealed form.
fn digest_of(path: &Path, key: &FileKey) -> Result<(u64, [u8; 32]), AttachmentError> {
    let plain_len = std::fs::metadata(path)
        .map_err(|e| AttachmentError::io(path, e))?
        .len();
    let mut hasher = Sha256::new();
    for part in SealedParts::open(path, key, plain_len, 0)? {
        hasher.update(part?);
    }
    Ok((plain_len, hasher.finalize().into()))
}

/// Seals parts `start..` into `sender` until they are done or nobody listens.
fn produce(
    path: &Path,
    key: &FileKey,
    plain_len: u64,
    start: u32,
    sender: &mpsc::Sender<Result<Vec<u8>, AttachmentError>>,
) {
    let parts = match SealedParts::open(path, key, plain_len, start) {
        Ok(parts) => parts,
        Err(e) => {
            let _ = sender.blocking_send(Err(e));
            return;
        }
    };
    for part in parts {
        let failed = part.is_err();
        if sender.blocking_send(part).is_err() || failed {
            return;
        }
    }
}

/// The sealed parts of a file of `plain_len` bytes from part `next` on, read as they go; a
/// file that is not that long any more is [`AttachmentError::Changed`].
struct SealedParts<'a> {
    file: File,
    path: PathBuf,
    key: &'a FileKey,
    plain_len: u64,
    chunks: u64,
    next: u64,
}

impl<'a> SealedParts<'a> {
    fn open(
        path: &Path,
        key: &'a FileKey,
        plain_len: u64,
        start: u32,
    ) -> Result<Self, AttachmentError> {
        let io = |e| AttachmentError::io(path, e);
        let mut file = File::open(path).map_err(io)?;
        let next = u64::from(start);
        file.seek(SeekFrom::Start(next * CHUNK_LEN as u64))
            .map_err(io)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            key,
            plain_len,
            chunks: plain_len.div_ceil(CHUNK_LEN as u64).max(1),
            next,
        })
    }

    fn changed(&self) -> AttachmentError {
        AttachmentError::Changed {
            path: self.path.clone(),
        }
    }
}

impl Iterator for SealedParts<'_> {
    type Item = Result<Vec<u8>, AttachmentError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.chunks {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let offset = index * CHUNK_LEN as u64;
        let len = (self.plain_len - offset).min(CHUNK_LEN as u64) as usize;
        let mut plain = vec![0; len];
        if let Err(e) = self.file.read_exact(&mut plain) {
            return Some(Err(if e.kind() == ErrorKind::UnexpectedEof {
                self.changed()
            } else {
                AttachmentError::io(&self.path, e)
            }));
        }
        let last = self.next == self.chunks;
        if last && !matches!(self.file.read(&mut [0; 1]), Ok(0)) {
            return Some(Err(self.changed()));
        }
        Some(Ok(self.key.seal_chunk(index, last, &plain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_open_in_order_and_a_changed_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let plain: Vec<u8> = (0..CHUNK_LEN * 2 + 5).map(|i| i as u8).collect();
        std::fs::write(&path, &plain).unwrap();
        let key = FileKey([9; 32]);
        let parts: Vec<_> = SealedParts::open(&path, &key, plain.len() as u64, 0)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parts.len(), 3);
        let mut opened = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            opened.extend(key.open_chunk(i as u64, i == 2, part).unwrap());
        }
        assert_eq!(opened, plain);
        // From part 1: the same parts.
        let later: Vec<_> = SealedParts::open(&path, &key, plain.len() as u64, 1)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(later, parts[1..]);
        // Longer or shorter than it was: refused.
        for len in [plain.len() - 1, plain.len() + 1] {
            std::fs::write(&path, &plain[..len.min(plain.len())]).unwrap();
            if len > plain.len() {
                std::fs::write(&path, [plain.as_slice(), b"x"].concat()).unwrap();
            }
            let result: Result<Vec<_>, _> = SealedParts::open(&path, &key, plain.len() as u64, 0)
                .unwrap()
                .collect();
            assert!(
                matches!(result, Err(AttachmentError::Changed { .. })),
                "{len}"
            );
        }
        // An empty file is one empty chunk.
        std::fs::write(&path, b"").unwrap();
        let empty: Vec<_> = SealedParts::open(&path, &key, 0, 0).unwrap().collect();
        assert_eq!(empty.len(), 1);
        assert_eq!(
            key.open_chunk(0, true, empty[0].as_ref().unwrap()).unwrap(),
            b""
        );
    }
}
