//! The outbox: sealed events written to disk before they are sent, until the relay
//! acknowledges them.
//!
//! # Invariants
//!
//! 1. An event is in the outbox, durably, before its `Append` leaves the device; it leaves
//!    the outbox only after the relay answered `Appended` (or refused it for good).
//! 2. A device sequence is never handed out twice, across crashes too: the next one is the
//!    greater of the `device_seq` file and one past every sequence in the journal, and the
//!    `device_seq` file is rewritten (durably) before the journal forgets anything.
//! 3. Re-sending is always safe: an entry is re-sent with the same device sequence and the
//!    same sealed bytes, which the relay answers with the original stream sequence.
//!
//! # Format
//!
//! `outbox` is an append-only journal: a header, then records
//!
//! ```text
//! record = len: u32 LE ‖ body (len bytes) ‖ check: first 8 bytes of SHA-256(body)
//! body   = 1 ‖ device_seq: u64 LE ‖ sealed payload      an event to send
//!        | 2 ‖ device_seq: u64 LE                       the event is done
//! ```
//!
//! New events are written and flushed (`fsync`) as a batch, so many appends share one
//! flush. "Done" records are not flushed: losing one after a crash only re-sends an event
//! the relay already has, which it deduplicates (invariant 3). A record that is cut short or
//! fails its check ends the journal: it was being written when the device stopped and was
//! never reported as stored. When every event is done the journal is emptied; when it is
//! mostly done records it is rewritten (atomically) with the live entries only.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_protocol::SealedPayload;
use ferry_protocol::limits::MAX_PAYLOAD_LEN;
use sha2::{Digest, Sha256};

use crate::error::StateError;
use crate::files::{self, Access};

/// First bytes of the journal; a new format gets a new header.
const HEADER: &[u8; 16] = b"ferry-outbox-v1\n";
const ENTRY: u8 = 1;
const DONE: u8 = 2;
/// Bytes around a body: its length and its check.
const FRAMING: usize = 4 + 8;
/// Rewrite the journal when it is larger than this and mostly done records.
const COMPACT_AT: u64 = 1024 * 1024;

/// The journal file name inside the state folder.
pub(crate) const FILE: &str = "outbox";
/// The file holding the next device sequence as of the last compaction.
pub(crate) const COUNTER_FILE: &str = "device_seq";

/// Events waiting for the relay's acknowledgement, on disk and in memory.
pub(crate) struct Outbox {
    path: PathBuf,
    counter_path: PathBuf,
    file: File,
    /// Bytes in the journal.
    len: u64,
    /// Bytes of live entries (what a rewrite would keep).
    live_bytes: u64,
    entries: BTreeMap<u64, SealedPayload>,
    next_seq: u64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("entries", &self.entries.len())
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Writes an empty outbox in `dir` (device sequences start at 1).
    pub fn create(dir: &Path) -> Result<(), StateError> {
        files::write_u64(&dir.join(COUNTER_FILE), 1)?;
        files::write_atomic(&dir.join(FILE), HEADER, Access::Private)
    }

    /// Opens the outbox in `dir`, dropping a torn tail left by a crash.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(FILE);
        let counter_path = dir.join(COUNTER_FILE);
        let counter = files::read_u64(&counter_path)?;
        let bytes = std::fs::read(&path).map_err(|e| StateError::io(&path, e))?;
        if !bytes.starts_with(HEADER) {
            return Err(StateError::corrupt(
                &path,
                "not a Ferry outbox (bad header)",
            ));
        }
        let journal = parse(&bytes[HEADER.len()..]);
        let valid_len = (HEADER.len() + journal.valid) as u64;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| StateError::io(&path, e))?;
        if valid_len < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                dropped = bytes.len() as u64 - valid_len,
                "outbox ends in a record that was being written when the client stopped; dropping it"
            );
            file.set_len(valid_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| StateError::io(&path, e))?;
        }
        let live_bytes = journal
            .entries
            .values()
            .map(|p| record_len(p.0.len()))
            .sum();
        Ok(Self {
            path,
            counter_path,
            file,
            len: valid_len,
            live_bytes,
            entries: journal.entries,
            next_seq: counter.max(journal.max_seq.saturating_add(1)).max(1),
        })
    }

    /// Hands out the next device sequence. It is durable once an entry with it is
    /// [`push`](Self::push)ed; one handed out and never pushed is simply skipped.
    pub fn reserve(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Writes sealed events and flushes them to disk, all with one `fsync`.
    pub fn push(&mut self, batch: &[(u64, SealedPayload)]) -> Result<(), StateError> {
        let mut buffer = Vec::new();
        for (seq, payload) in batch {
            let mut body = Vec::with_capacity(9 + payload.0.len());
            body.push(ENTRY);
            body.extend_from_slice(&seq.to_le_bytes());
            body.extend_from_slice(&payload.0);
            frame(&body, &mut buffer);
        }
        self.file
            .write_all(&buffer)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| StateError::io(&self.path, e))?;
        self.len += buffer.len() as u64;
        for (seq, payload) in batch {
            self.live_bytes += record_len(payload.0.len());
            self.entries.insert(*seq, payload.clone());
        }
        Ok(())
    }

    /// Marks events as done (acknowledged, or refused for good). Not flushed: see the
    /// module docs. Compacts the journal when that pays.
    pub fn remove(&mut self, seqs: &[u64]) -> Result<(), StateError> {
        let mut buffer = Vec::new();
        for seq in seqs {
            if let Some(payload) = self.entries.remove(seq) {
                self.live_bytes -= record_len(payload.0.len());
                let mut body = [0u8; 9];
                body[0] = DONE;
                body[1..].copy_from_slice(&seq.to_le_bytes());
                frame(&body, &mut buffer);
            }
        }
        if buffer.is_empty() {
            return Ok(());
        }
        if self.entries.is_empty() {
            return self.empty();
        }
        if self.len > COMPACT_AT && self.live_bytes < self.len / 2 {
            return self.rewrite();
        }
        self.file
            .write_all(&buffer)
            .map_err(|e| StateError::io(&self.path, e))?;
        self.len += buffer.len() as u64;
        Ok(())
    }

    /// Entries in device sequence order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &SealedPayload)> {
        self.entries.iter().map(|(seq, payload)| (*seq, payload))
    }

    /// Number of events waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The device sequence the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Everything is done: keep the counter, forget the journal.
    fn empty(&mut self) -> Result<(), StateError> {
        // The counter first: once the journal is gone, it alone remembers the sequences used.
        files::write_u64(&self.counter_path, self.next_seq)?;
        self.file
            .set_len(HEADER.len() as u64)
            .map_err(|e| StateError::io(&self.path, e))?;
        self.len = HEADER.len() as u64;
        self.live_bytes = 0;
        Ok(())
    }

    /// Rewrites the journal with the live entries only.
    fn rewrite(&mut self) -> Result<(), StateError> {
        files::write_u64(&self.counter_path, self.next_seq)?;
        let mut buffer = HEADER.to_vec();
        for (seq, payload) in &self.entries {
            let mut body = Vec::with_capacity(9 + payload.0.len());
            body.push(ENTRY);
            body.extend_from_slice(&seq.to_le_bytes());
            body.extend_from_slice(&payload.0);
            frame(&body, &mut buffer);
        }
        files::write_atomic(&self.path, &buffer, Access::Private)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| StateError::io(&self.path, e))?;
        self.len = buffer.len() as u64;
        Ok(())
    }
}

/// Size of an entry record for a payload of `payload_len` bytes.
fn record_len(payload_len: usize) -> u64 {
    (FRAMING + 9 + payload_len) as u64
}

/// Appends `len ‖ body ‖ check` to `out`.
fn frame(body: &[u8], out: &mut Vec<u8>) {
    // Bodies are at most 9 bytes plus one sealed payload (256 KiB), far below 4 GiB.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&check(body));
}

fn check(body: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(body);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// What a journal holds.
#[derive(Debug, Default)]
struct Journal {
    entries: BTreeMap<u64, SealedPayload>,
    /// The highest device sequence in any record, done or not.
    max_seq: u64,
    /// Bytes of whole, valid records from the start.
    valid: usize,
}

/// Reads records until the end or the first one that is cut short or fails its check.
fn parse(bytes: &[u8]) -> Journal {
    let mut journal = Journal::default();
    let mut rest = bytes;
    while let Some((body, after)) = next_record(rest) {
        let Some((&kind, tail)) = body.split_first() else {
            break;
        };
        let Some((seq, payload)) = tail.split_first_chunk::<8>() else {
            break;
        };
        let seq = u64::from_le_bytes(*seq);
        match kind {
            ENTRY => {
                journal.entries.insert(seq, SealedPayload(payload.to_vec()));
            }
            DONE if payload.is_empty() => {
                journal.entries.remove(&seq);
            }
            _ => break,
        }
        journal.max_seq = journal.max_seq.max(seq);
        journal.valid = bytes.len() - after.len();
        rest = after;
    }
    journal
}

/// Splits off one record's body if it is whole and passes its check.
fn next_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > 9 + MAX_PAYLOAD_LEN || rest.len() < len + 8 {
        return None;
    }
    let (body, rest) = rest.split_at(len);
    let (stored, rest) = rest.split_first_chunk::<8>()?;
    (check(body) == *stored).then_some((body, rest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn payload(n: u8) -> SealedPayload {
        SealedPayload(vec![n; 100 + usize::from(n)])
    }

    fn fresh() -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().unwrap();
        Outbox::create(dir.path()).unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        (dir, outbox)
    }

    #[test]
    fn entries_survive_reopening_until_removed() {
        let (dir, mut outbox) = fresh();
        let batch: Vec<_> = (0..3).map(|n| (outbox.reserve(), payload(n))).collect();
        assert_eq!(batch.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3]);
        outbox.push(&batch).unwrap();
        outbox.remove(&[2]).unwrap();
        drop(outbox);

        let mut outbox = Outbox::open(dir.path()).unwrap();
        let left: Vec<_> = outbox.entries().map(|(s, p)| (s, p.clone())).collect();
        assert_eq!(left, [(1, payload(0)), (3, payload(2))]);
        assert_eq!(outbox.reserve(), 4);
    }

    #[test]
    fn sequences_are_never_reused_after_the_journal_is_emptied() {
        let (dir, mut outbox) = fresh();
        let seq = outbox.reserve();
        outbox.push(&[(seq, payload(1))]).unwrap();
        outbox.remove(&[seq]).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join(FILE)).unwrap().len(),
            HEADER.len() as u64
        );
        drop(outbox);
        let mut outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.len(), 0);
        assert_eq!(outbox.reserve(), 2);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_what_was_flushed_is_kept() {
        let (dir, mut outbox) = fresh();
        outbox.push(&[(1, payload(1)), (2, payload(2))]).unwrap();
        drop(outbox);
        let path = dir.path().join(FILE);
        let whole = std::fs::read(&path).unwrap();
        // Every possible cut inside the second record keeps the first one.
        let first_end = HEADER.len() + record_len(payload(1).0.len()) as usize;
        for cut in first_end..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let outbox = Outbox::open(dir.path()).unwrap();
            let seqs: Vec<_> = outbox.entries().map(|(s, _)| s).collect();
            assert_eq!(seqs, [1], "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), first_end as u64);
        }
        // A flipped bit is caught by the check.
        let mut flipped = whole.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(Outbox::open(dir.path()).unwrap().len(), 1);
        // A cut record's sequence was never reported as stored, so it may be handed out again.
        assert_eq!(Outbox::open(dir.path()).unwrap().reserve(), 2);
    }

    #[test]
    fn the_journal_is_compacted_when_mostly_done() {
        let (dir, mut outbox) = fresh();
        let big = SealedPayload(vec![9; 200 * 1024]);
        for _ in 0..8 {
            let seq = outbox.reserve();
            outbox.push(&[(seq, big.clone())]).unwrap();
        }
        outbox.remove(&[1, 2, 3, 4, 5, 6]).unwrap();
        let len = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
        assert!(len < 3 * 200 * 1024, "journal rewritten, now {len} bytes");
        drop(outbox);
        let mut outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.entries().map(|(s, _)| s).collect::<Vec<_>>(), [7, 8]);
        assert_eq!(outbox.reserve(), 9);
        assert!(matches!(
            std::fs::write(dir.path().join(FILE), b"garbage").map(|()| Outbox::open(dir.path())),
            Ok(Err(StateError::Corrupt { .. }))
        ));
    }
}
