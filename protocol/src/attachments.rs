//! Attachments (docs/protocol.md §16): files encrypted on the sending device and stored by
//! the relay as opaque blobs.
//!
//! A file is encrypted under a fresh random [`FileKey`] in chunks of [`CHUNK_LEN`] bytes,
//! each sealed on its own (ChaCha20-Poly1305, the chunk's index and whether it is the last in
//! the nonce), so a large file streams in both directions and a chunk is authenticated
//! before any of it is used; a chunk moved, dropped, repeated, or a stream cut short fails
//! to open. Each sealed chunk is one [`PART_LEN`]-byte part of the blob (the last is
//! shorter), which is the unit of upload and download. The key, the blob's SHA-256 and the
//! blob's id travel inside an MLS message; the relay sees only the blob and its size.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of a blob part: a sealed chunk (all but the last part of a blob are this long).
pub const PART_LEN: usize = 256 * 1024;

/// Plaintext bytes of a chunk: a part less the AEAD tag.
pub const CHUNK_LEN: usize = PART_LEN - TAG_LEN;

/// The Poly1305 tag of each sealed chunk.
pub const TAG_LEN: usize = 16;

/// Most attachments one conversation message references.
pub const MAX_ATTACHMENTS_PER_MESSAGE: usize = 16;

/// Bound into every chunk, so a chunk sealed for anything else never opens as one.
const CHUNK_AAD: &[u8] = b"ferry attachment chunk v1";

/// A blob at the relay: 32 random bytes the relay picks when the upload starts. It is a
/// capability (nobody guesses it), and the relay also checks who asks for it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`BlobId::to_hex`]'s output.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A capability: logs show enough to tell blobs apart, not enough to fetch one.
        write!(f, "BlobId({}…)", hex::encode(&self.0[..4]))
    }
}

/// How many parts a blob of `size` bytes has (0 for an empty blob, which is never valid).
pub fn part_count(size: u64) -> u64 {
    size.div_ceil(PART_LEN as u64)
}

/// The length of part `index` of a blob of `size` bytes, if it has that part.
pub fn part_len(size: u64, index: u64) -> Option<usize> {
    let start = index.checked_mul(PART_LEN as u64)?;
    if start >= size {
        return None;
    }
    // At most PART_LEN, so it fits.
    Some(usize::try_from((size - start).min(PART_LEN as u64)).unwrap_or(PART_LEN))
}

/// The size of the blob that a file of `plain_len` bytes encrypts to (an empty file is one
/// empty chunk: a tag alone).
pub fn sealed_len(plain_len: u64) -> u64 {
    let chunks = plain_len.div_ceil(CHUNK_LEN as u64).max(1);
    plain_len + chunks * TAG_LEN as u64
}

/// The key of one file: random, used for that file only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct FileKey(pub [u8; 32]);

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(…)")
    }
}

/// A chunk that does not open: tampered with, out of place, or under another key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an attachment chunk failed to decrypt (corrupted, reordered, truncated or wrong key)")]
pub struct ChunkError;

impl FileKey {
    /// Seals chunk `index` of a file (`last`: no chunk follows). `plain` is at most
    /// [`CHUNK_LEN`] bytes, exactly that for every chunk but the last.
    pub fn seal_chunk(&self, index: u64, last: bool, plain: &[u8]) -> Vec<u8> {
        debug_assert!(plain.len() <= CHUNK_LEN);
        let payload = Payload {
            msg: plain,
            aad: CHUNK_AAD,
        };
        self.cipher()
            .encrypt(&chunk_nonce(index, last), payload)
            .unwrap_or_default()
    }

    /// Opens chunk `index`, which the reader expects to be the last or not.
    pub fn open_chunk(&self, index: u64, last: bool, sealed: &[u8]) -> Result<Vec<u8>, ChunkError> {
        if sealed.len() < TAG_LEN || sealed.len() > PART_LEN {
            return Err(ChunkError);
        }
        let payload = Payload {
            msg: sealed,
            aad: CHUNK_AAD,
        };
        self.cipher()
            .decrypt(&chunk_nonce(index, last), payload)
            .map_err(|_| ChunkError)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

/// The nonce of chunk `index`: the index (big-endian) in bytes 0..8, 1 in byte 11 for the
/// last chunk. A key seals one file, so (index, last) never repeats under it.
fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::from(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FileKey {
        FileKey([7; 32])
    }

    #[test]
    fn a_chunk_opens_only_where_it_was_sealed() {
        let key = key();
        let sealed = key.seal_chunk(3, false, b"hello");
        assert_eq!(sealed.len(), 5 + TAG_LEN);
        assert_eq!(key.open_chunk(3, false, &sealed).unwrap(), b"hello");
        // Another index, the last flag flipped, another key, a flipped bit: all refused.
        assert_eq!(key.open_chunk(4, false, &sealed), Err(ChunkError));
        assert_eq!(key.open_chunk(3, true, &sealed), Err(ChunkError));
        assert_eq!(
            FileKey([8; 32]).open_chunk(3, false, &sealed),
            Err(ChunkError)
        );
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert_eq!(key.open_chunk(3, false, &flipped), Err(ChunkError));
        assert_eq!(
            key.open_chunk(3, false, &sealed[..TAG_LEN - 1]),
            Err(ChunkError)
        );
    }

    #[test]
    fn sizes_add_up() {
        assert_eq!(sealed_len(0), TAG_LEN as u64);
        assert_eq!(sealed_len(1), 1 + TAG_LEN as u64);
        assert_eq!(sealed_len(CHUNK_LEN as u64), PART_LEN as u64);
        assert_eq!(
            sealed_len(CHUNK_LEN as u64 + 1),
            PART_LEN as u64 + 1 + TAG_LEN as u64
        );
        assert_eq!(part_count(0), 0);
        assert_eq!(part_count(1), 1);
        assert_eq!(part_count(PART_LEN as u64), 1);
        assert_eq!(part_count(PART_LEN as u64 + 1), 2);
        let size = 2 * PART_LEN as u64 + 10;
        assert_eq!(part_len(size, 0), Some(PART_LEN));
        assert_eq!(part_len(size, 2), Some(10));
        assert_eq!(part_len(size, 3), None);
        assert_eq!(part_len(size, u64::MAX), None);
    }

    #[test]
    fn blob_ids_print_a_prefix_only() {
        let id = BlobId([0xab; 32]);
        assert_eq!(format!("{id:?}"), "BlobId(abababab…)");
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(BlobId::from_hex("abab"), None);
        assert_eq!(format!("{:?}", key()), "FileKey(…)");
    }
}
