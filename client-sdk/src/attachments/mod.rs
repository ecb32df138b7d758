//! Attachments: files sent in conversations, encrypted on this device (docs/protocol.md §16).
//!
//! Sending a file ([`ClientHandle::send_file`](crate::ClientHandle::send_file)) reads it
//! twice: once to seal it under a fresh key and hash the result, once more to upload the
//! sealed parts (a few at a time, each answered; a part cut off by a reconnect, or refused
//! for now, is sent again and the relay's answer says where the upload stands). Then a
//! message carrying a [`FileRef`] (the blob's id, the key, the digest, the name) goes to the
//! conversation, and its members may fetch the blob. Receiving one
//! ([`ClientHandle::save_file`](crate::ClientHandle::save_file)) fetches the parts, opens
//! each (authenticated, in place; a part refused for now is asked for again after a pause),
//! and writes the file beside its destination; only when the whole blob matched the digest
//! is it renamed into place, so an app never sees a byte that was not checked. Both report
//! [`Progress`].
//!
//! The relay never sees the key, the name or the plaintext; it sees the blob's size.

mod download;
mod upload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_protocol::ErrorCode;
use ferry_protocol::attachments::{BlobId, FileKey};
use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// Parts asked for at once while uploading or downloading (each 256 KiB).
const WINDOW: usize = 8;

/// The first pause after the relay refused a part for now ([`refused_for_now`]); it doubles
/// while refusals go on, up to [`MAX_RATE_PAUSE`].
const RATE_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);
const MAX_RATE_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

/// Times in a row an upload or a download starts again without getting further before it
/// gives up: an upload after this many restarts from no later part than before (each a part
/// refused for now, [`refused_for_now`], or the relay holding no more than before), ending
/// with [`AttachmentError::Stalled`]; a download at the refusal after this many refusals in
/// a row, ending with that refusal.
const MAX_STALLS: u32 = 8;

/// Whether the relay refused a part only for now, so that it goes again after a pause: the
/// device's attachment bandwidth is used up (`rate_limited`), or the relay could not store or
/// read the part (`unavailable`: its storage failed, or it is going away). Any other refusal
/// is for good. A lost connection is not a refusal: the client sends a request cut off by a
/// reconnect again by itself.
fn refused_for_now(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::RateLimited
            | ClientError::Relay {
                code: ErrorCode::Unavailable,
                ..
            }
    )
}

/// Longest file name a [`FileRef`] carries, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A file in a conversation message: where its sealed bytes are and how to open them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The blob at the relay.
    pub blob: BlobId,
    /// The file's key (secret: it opens the file).
    pub key: FileKey,
    /// SHA-256 of the whole blob, checked before the file is handed over.
    pub digest: [u8; 32],
    /// The file's length in bytes.
    pub size: u64,
    /// Its name as the sender had it (untrusted: see [`FileRef::safe_name`]).
    pub name: String,
    /// Its media type, from the name's extension (`application/octet-stream` if unknown).
    pub mime: String,
}

impl FileRef {
    /// The name, made safe to create in a folder: no path separators or control
    /// characters, not `.`/`..`, not hidden, not empty.
    pub fn safe_name(&self) -> String {
        let cleaned: String = self
            .name
            .chars()
            .map(|c| {
                if c == '/' || c == '\\' || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let cleaned = cleaned.trim_start_matches('.').trim().to_owned();
        if cleaned.is_empty() {
            "file".to_owned()
        } else {
            truncate(&cleaned, MAX_NAME_LEN).to_owned()
        }
    }
}

/// How far an upload or a download is, in bytes of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// Why a file could not be sent or received.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The file changed while it was being sent.
    #[error("{} changed while it was being sent; send it again", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// What the relay served is not the file the message describes (a part that does not
    /// open, a size or a digest that does not match): nothing was written.
    #[error("the attachment does not match its message ({0}); nothing was saved")]
    Corrupt(&'static str),
    /// The message holds no file.
    #[error("message {0} holds no file")]
    NotAFile(u64),
    /// The destination exists already.
    #[error("{} exists already", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The relay kept refusing parts of the upload.
    #[error("the upload did not progress; try again")]
    Stalled,
}

impl AttachmentError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }
}

/// The media type a file name's extension suggests.
pub fn mime_for(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "txt" | "md" => "text/plain",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> FileRef {
        FileRef {
            blob: BlobId([0; 32]),
            key: FileKey([0; 32]),
            digest: [0; 32],
            size: 0,
            name: name.to_owned(),
            mime: String::new(),
        }
    }

    #[test]
    fn hostile_names_are_made_safe() {
        assert_eq!(named("photo.png").safe_name(), "photo.png");
        assert_eq!(named("../../etc/passwd").safe_name(), "_.._etc_passwd");
        assert_eq!(named("..").safe_name(), "file");
        assert_eq!(named("").safe_name(), "file");
        assert_eq!(named(".bashrc").safe_name(), "bashrc");
        assert_eq!(named("a\nb\u{7}c").safe_name(), "a_b_c");
        assert_eq!(named("C:\\x").safe_name(), "C:_x");
        let long = "é".repeat(200);
        let safe = named(&long).safe_name();
        assert!(safe.len() <= MAX_NAME_LEN && safe.starts_with('é'));
    }

    #[test]
    fn media_types_come_from_the_extension() {
        assert_eq!(mime_for("a.PNG"), "image/png");
        assert_eq!(mime_for("a.tar.gz"), "application/octet-stream");
        assert_eq!(mime_for("noext"), "application/octet-stream");
    }
}
