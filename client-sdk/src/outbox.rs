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
//!        | 3 ‖ device_seq: u64 LE ‖ old: u64 LE ‖ sealed payload
//!                                                       the event `old` re-sealed under
//!                                                       `device_seq` (one record, so a crash
//!                                                       keeps exactly one of the two)
//! ```
//!
//! New events are written and flushed (`fsync`) as a batch, so many appends share one
//! flush. "Done" records are not flushed: losing one after a crash only re-sends an event
//! the relay already has, which it deduplicates (invariant 3). When every event is done the
//! journal is emptied; when it is mostly done records it is rewritten (atomically) with the
//! live entries only.
//!
//! # Damage
//!
//! - A write that fails part-way (disk full, file size limit) is cut back off at once, so
//!   later records never land behind half a record. If even that fails the outbox is
//!   poisoned: every later write fails until the journal is opened again.
//! - On open, a record cut short or failing its check at the *end* of the journal was being
//!   written when the device stopped and was never reported as stored: it is dropped.
//! - A bad record with valid records *after* it is not a torn tail: those later records
//!   may have been reported as stored. Opening fails with [`StateError::Corrupt`] rather
//!   than cut them off; nothing is truncated.

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
const MOVED: u8 = 3;
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
    /// A failed write could not be cut back off: refuse every write (see the module docs).
    poisoned: bool,
    /// Tests: the next write stops with an error after this many bytes.
    #[cfg(test)]
    fail_next_write_after: Option<usize>,
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
        if let Some(at) = journal.valid_after_damage {
            return Err(StateError::corrupt(
                &path,
                format!(
                    "a damaged record at byte {} is followed by valid records (at byte {}); \
                     refusing to drop them: keep a copy of the folder and ask for help",
                    valid_len,
                    HEADER.len() + at
                ),
            ));
        }
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
            poisoned: false,
            #[cfg(test)]
            fail_next_write_after: None,
        })
    }

    /// Appends `buffer` to the journal, flushing it when `durable`. On failure the journal
    /// is cut back to what it was, so a partial record never sits before later ones.
    fn append_bytes(&mut self, buffer: &[u8], durable: bool) -> Result<(), StateError> {
        if self.poisoned {
            return Err(StateError::io(
                &self.path,
                std::io::Error::other("an earlier write failed and could not be undone"),
            ));
        }
        let written = self.write_all(buffer).and_then(|()| {
            if durable {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(error) = written {
            let undone = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            if let Err(undo) = undone {
                tracing::error!(path = %self.path.display(), %undo, "could not undo a failed outbox write; the outbox refuses writes until reopened");
                self.poisoned = true;
            }
            return Err(StateError::io(&self.path, error));
        }
        self.len += buffer.len() as u64;
        Ok(())
    }

    #[cfg(not(test))]
    fn write_all(&mut self, buffer: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buffer)
    }

    #[cfg(test)]
    fn write_all(&mut self, buffer: &[u8]) -> std::io::Result<()> {
        match self.fail_next_write_after.take() {
            Some(after) => {
                self.file.write_all(&buffer[..after.min(buffer.len())])?;
                Err(std::io::Error::other("injected write failure"))
            }
            None => self.file.write_all(buffer),
        }
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
        self.append_bytes(&buffer, true)?;
        for (seq, payload) in batch {
            self.live_bytes += record_len(payload.0.len());
            self.entries.insert(*seq, payload.clone());
        }
        Ok(())
    }

    /// Moves events to new device sequences, with payloads re-sealed for them, and flushes:
    /// each move is one record, so after a crash an event is under exactly one sequence.
    /// For events whose sequence the relay holds for another payload (a restored folder), and,
    /// with `old == new`, for events sealed again under a newer epoch (`stale_epoch`).
    pub fn reseal(&mut self, moves: &[(u64, u64, SealedPayload)]) -> Result<(), StateError> {
        let mut buffer = Vec::new();
        for (old, new, payload) in moves {
            let mut body = Vec::with_capacity(17 + payload.0.len());
            body.push(MOVED);
            body.extend_from_slice(&new.to_le_bytes());
            body.extend_from_slice(&old.to_le_bytes());
            body.extend_from_slice(&payload.0);
            frame(&body, &mut buffer);
        }
        self.append_bytes(&buffer, true)?;
        for (old, new, payload) in moves {
            if let Some(gone) = self.entries.remove(old) {
                self.live_bytes -= record_len(gone.0.len());
            }
            self.live_bytes += record_len(payload.0.len());
            self.entries.insert(*new, payload.clone());
        }
        Ok(())
    }

    /// Makes sure the next device sequence handed out is above `seq` (the highest one the
    /// relay holds from this device), durably.
    pub fn advance_past(&mut self, seq: u64) -> Result<(), StateError> {
        if seq >= self.next_seq {
            self.next_seq = seq.saturating_add(1);
            files::write_u64(&self.counter_path, self.next_seq)?;
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
        self.append_bytes(&buffer, false)
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
        self.poisoned = false;
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
    /// Where a valid record starts after the first bad one, if any does (not a torn tail).
    valid_after_damage: Option<usize>,
}

/// Reads records until the end or the first one that is cut short or fails its check,
/// then looks for valid records after that point.
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
            MOVED => {
                let Some((old, payload)) = payload.split_first_chunk::<8>() else {
                    break;
                };
                let old = u64::from_le_bytes(*old);
                journal.entries.remove(&old);
                journal.entries.insert(seq, SealedPayload(payload.to_vec()));
                journal.max_seq = journal.max_seq.max(old);
            }
            _ => break,
        }
        journal.max_seq = journal.max_seq.max(seq);
        journal.valid = bytes.len() - after.len();
        rest = after;
    }
    if journal.valid < bytes.len() {
        journal.valid_after_damage = ((journal.valid + 1)..bytes.len())
            .find(|&at| next_record(&bytes[at..]).is_some_and(|(body, _)| is_record_body(body)));
    }
    journal
}

/// Whether a body that passed its check is one this format writes.
fn is_record_body(body: &[u8]) -> bool {
    match body.split_first() {
        Some((&ENTRY, tail)) => tail.len() >= 8,
        Some((&DONE, tail)) => tail.len() == 8,
        Some((&MOVED, tail)) => tail.len() >= 16,
        _ => false,
    }
}

/// Fuzzing entry point: parses a journal body (without the header) and checks what the
/// parser promises, panicking if a promise is broken.
#[cfg(feature = "fuzzing")]
pub fn fuzz_journal(bytes: &[u8]) {
    let journal = parse(bytes);
    assert!(journal.valid <= bytes.len());
    if let Some(at) = journal.valid_after_damage {
        assert!(at > journal.valid && at < bytes.len());
    }
    // The valid prefix parses to the same entries on its own, and has no damage.
    let again = parse(&bytes[..journal.valid]);
    assert_eq!(again.valid, journal.valid);
    assert!(again.valid_after_damage.is_none());
    assert_eq!(again.entries, journal.entries);
    for seq in journal.entries.keys() {
        assert!(*seq <= journal.max_seq);
    }
}

/// Splits off one record's body if it is whole and passes its check.
fn next_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > 17 + MAX_PAYLOAD_LEN || rest.len() < len + 8 {
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
    fn a_failed_write_is_cut_back_so_later_entries_survive() {
        let (dir, mut outbox) = fresh();
        outbox.push(&[(1, payload(1))]).unwrap();
        // Half of entry 2 reaches the disk, then the write fails (disk full, say).
        outbox.fail_next_write_after = Some(40);
        assert!(outbox.push(&[(2, payload(2))]).is_err());
        // Entry 3 is reported as stored, so it must survive a reopen.
        outbox.push(&[(3, payload(3))]).unwrap();
        outbox.fail_next_write_after = Some(5);
        assert!(outbox.remove(&[1]).is_err());
        drop(outbox);
        let outbox = Outbox::open(dir.path()).unwrap();
        let left: Vec<_> = outbox.entries().map(|(s, _)| s).collect();
        assert_eq!(left, [1, 3]);
    }

    #[test]
    fn a_resealed_event_lives_under_its_new_sequence_only() {
        let (dir, mut outbox) = fresh();
        outbox.push(&[(1, payload(1)), (2, payload(2))]).unwrap();
        outbox.advance_past(10).unwrap();
        let new = outbox.reserve();
        assert_eq!(new, 11);
        outbox.reseal(&[(1, new, payload(9))]).unwrap();
        let now: Vec<_> = outbox.entries().map(|(s, p)| (s, p.clone())).collect();
        assert_eq!(now, [(2, payload(2)), (11, payload(9))]);
        drop(outbox);
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let now: Vec<_> = outbox.entries().map(|(s, p)| (s, p.clone())).collect();
        assert_eq!(now, [(2, payload(2)), (11, payload(9))]);
        assert_eq!(outbox.reserve(), 12);
        // Advancing is durable on its own, with nothing in the journal past it.
        outbox.remove(&[2, 11]).unwrap();
        outbox.advance_past(40).unwrap();
        drop(outbox);
        assert_eq!(Outbox::open(dir.path()).unwrap().reserve(), 41);
    }

    #[test]
    fn an_event_sealed_again_in_place_keeps_its_sequence_and_its_new_bytes() {
        // A `stale_epoch` refusal: same device sequence, new payload.
        let (dir, mut outbox) = fresh();
        outbox.push(&[(1, payload(1)), (2, payload(2))]).unwrap();
        outbox
            .reseal(&[(1, 1, payload(7)), (2, 2, payload(8))])
            .unwrap();
        let now: Vec<_> = outbox.entries().map(|(s, p)| (s, p.clone())).collect();
        assert_eq!(now, [(1, payload(7)), (2, payload(8))]);
        drop(outbox);
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let now: Vec<_> = outbox.entries().map(|(s, p)| (s, p.clone())).collect();
        assert_eq!(now, [(1, payload(7)), (2, payload(8))]);
        assert_eq!(outbox.reserve(), 3);
        outbox.remove(&[1]).unwrap();
        drop(outbox);
        let now: Vec<_> = Outbox::open(dir.path())
            .unwrap()
            .entries()
            .map(|(s, p)| (s, p.clone()))
            .collect();
        assert_eq!(now, [(2, payload(8))]);
    }

    #[test]
    fn valid_records_after_a_damaged_one_are_reported_not_dropped() {
        let (dir, mut outbox) = fresh();
        outbox.push(&[(1, payload(1))]).unwrap();
        let path = dir.path().join(FILE);
        let at = std::fs::metadata(&path).unwrap().len();
        // Half a record, as an old torn write left it, then a record written after it.
        let mut torn = Vec::new();
        frame(&[ENTRY, 2, 0, 0, 0, 0, 0, 0, 0, 7, 7, 7], &mut torn);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn[..torn.len() / 2])
            .unwrap();
        outbox.len += (torn.len() / 2) as u64;
        outbox.push(&[(3, payload(3))]).unwrap();
        drop(outbox);
        let before = std::fs::read(&path).unwrap();
        match Outbox::open(dir.path()) {
            Err(StateError::Corrupt { reason, .. }) => {
                assert!(reason.contains(&format!("at byte {at}")), "{reason}");
            }
            other => panic!("expected a corruption report, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "nothing was truncated"
        );
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
