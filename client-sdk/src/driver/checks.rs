//! What the client checks in the log it reads, without trusting the relay: replayed events
//! and the places the relay gave for this device's own appends.
//!
//! **Replays.** In an honest log each device's events carry rising device sequences as the
//! stream sequence rises (a device's appends are committed in the order it sent them, and a
//! device sequence is never used twice). The client keeps, per device, the highest
//! `device_seq` it has read and the stream sequence it was read at (a [`Mark`]), durably in
//! the state folder (file `seen`). An event whose `device_seq` is at or below its device's
//! mark and whose stream sequence is *beyond* the mark's is an old sealed event served again
//! under a new place: the payload opens (it is bound to its device and device sequence, not
//! to the stream sequence) but it is not new. It is dropped (acknowledged, never shown),
//! logged and counted ([`Status::replayed_events`](crate::Status::replayed_events)).
//!
//! Reading the same places again is not a replay: after [`ResyncRequired`] moves the cursor
//! back, the relay serves the same stream sequences again, all at or below the marks. Nor
//! is a trimmed log: events gone before the client read them leave no mark. A relay restored
//! from a backup reuses stream sequences for *new* events; those carry device sequences
//! above the marks and pass. What cannot be told from a bounded record: an old event served
//! again at a stream sequence at or below its device's mark (only after the cursor went back,
//! which the app sees as [`ResyncRequired`]).
//!
//! **Own appends.** `Appended { seq }` for an append of this device is remembered until the
//! event at `seq` is read (or checked at once if it was read moments ago); an event there
//! that is not this device's append with that `device_seq` is reported
//! ([`ClientError::MisplacedAppend`], counted in
//! [`Status::misplaced_appends`](crate::Status::misplaced_appends)). These expectations live
//! in memory only: a client that restarts before reading its appends back does not check them.
//!
//! [`ResyncRequired`]: crate::ClientError::ResyncRequired
//! [`ClientError::MisplacedAppend`]: crate::ClientError::MisplacedAppend

use std::collections::{BTreeMap, VecDeque};

use ferry_protocol::DeviceId;

/// Own appends awaiting their read-back at most (beyond it the oldest are not checked).
const MAX_EXPECTED: usize = 65_536;
/// Events read lately, for `Appended` answers that arrive after their event.
const RECENT: usize = 1024;

/// The highest device sequence read from one device, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub device_seq: u64,
    pub seq: u64,
}

/// The marks of every device read so far (what the state folder keeps).
pub(crate) type Marks = BTreeMap<DeviceId, Mark>;

/// What an event is, against the marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Above its device's mark: new.
    Fresh,
    /// At or below the mark, at or before the mark's place: read again (after a resync).
    Reread,
    /// At or below the mark, beyond the mark's place: an old event served again.
    Replay { mark: Mark },
}

#[derive(Debug, Default)]
pub(crate) struct LogChecks {
    marks: Marks,
    /// The marks changed since the last save.
    dirty: bool,
    /// Stream sequence → this device's device sequence, from `Appended`, not read yet.
    expected: BTreeMap<u64, u64>,
    /// The last events read: (seq, device, device_seq).
    recent: VecDeque<(u64, DeviceId, u64)>,
}

impl LogChecks {
    pub fn new(marks: Marks) -> Self {
        Self {
            marks,
            ..Self::default()
        }
    }

    /// What the event at `seq` from `device`, numbered `device_seq`, is. Changes nothing.
    pub fn judge(&self, device: DeviceId, device_seq: u64, seq: u64) -> Verdict {
        match self.marks.get(&device) {
            Some(mark) if device_seq <= mark.device_seq => {
                if seq > mark.seq {
                    Verdict::Replay { mark: *mark }
                } else {
                    Verdict::Reread
                }
            }
            _ => Verdict::Fresh,
        }
    }

    /// If the relay placed one of this device's appends at `seq` and the event there is not
    /// it (`own`: whether the event is from this device), the device sequence it gave.
    /// Changes nothing.
    pub fn misplaced(&self, seq: u64, own: bool, device_seq: u64) -> Option<u64> {
        self.expected
            .get(&seq)
            .copied()
            .filter(|expected| !(own && *expected == device_seq))
    }

    /// The event at `seq` went to the app (or was dropped as a replay): move the mark, forget
    /// the expectation for this place.
    pub fn read(&mut self, device: DeviceId, device_seq: u64, seq: u64, verdict: Verdict) {
        if verdict == Verdict::Fresh {
            self.marks.insert(device, Mark { device_seq, seq });
            self.dirty = true;
        }
        self.expected.remove(&seq);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, device, device_seq));
    }

    /// The relay answered `Appended { seq }` for this device's `device_seq`. Returns
    /// `Some(true)` if the event at `seq` was read lately and is that append, `Some(false)` if
    /// it was read lately and is not, `None` if it is to be checked when read (or cannot be).
    pub fn appended(
        &mut self,
        me: DeviceId,
        device_seq: u64,
        seq: u64,
        received: u64,
    ) -> Option<bool> {
        if seq <= received {
            return self
                .recent
                .iter()
                .find(|(at, _, _)| *at == seq)
                .map(|(_, device, read)| *device == me && *read == device_seq);
        }
        self.expected.insert(seq, device_seq);
        while self.expected.len() > MAX_EXPECTED {
            self.expected.pop_first();
        }
        None
    }

    /// The marks, if they changed since the last call.
    pub fn take_dirty(&mut self) -> Option<Marks> {
        std::mem::take(&mut self.dirty).then(|| self.marks.clone())
    }
}

/// The `seen` file: one line per device, `DEVICE_HEX DEVICE_SEQ SEQ`.
pub(crate) fn encode_marks(marks: &Marks) -> String {
    let mut text = String::with_capacity(marks.len() * 90);
    for (device, mark) in marks {
        text.push_str(&format!("{device} {} {}\n", mark.device_seq, mark.seq));
    }
    text
}

pub(crate) fn decode_marks(text: &str) -> Option<Marks> {
    let mut marks = Marks::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_ascii_whitespace();
        let (Some(device), Some(device_seq), Some(seq), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        let device = DeviceId::from_hex(device).ok()?;
        let mark = Mark {
            device_seq: device_seq.parse().ok()?,
            seq: seq.parse().ok()?,
        };
        marks.insert(device, mark);
    }
    Some(marks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: DeviceId = DeviceId([1; 32]);
    const B: DeviceId = DeviceId([2; 32]);

    fn read(checks: &mut LogChecks, device: DeviceId, device_seq: u64, seq: u64) -> Verdict {
        let verdict = checks.judge(device, device_seq, seq);
        checks.read(device, device_seq, seq, verdict);
        verdict
    }

    #[test]
    fn an_old_event_at_a_new_place_is_a_replay_and_the_same_place_again_is_not() {
        let mut checks = LogChecks::default();
        assert_eq!(read(&mut checks, A, 1, 1), Verdict::Fresh);
        assert_eq!(read(&mut checks, B, 1, 2), Verdict::Fresh);
        assert_eq!(read(&mut checks, A, 2, 3), Verdict::Fresh);
        // A's #1 again, at 4.
        assert_eq!(
            read(&mut checks, A, 1, 4),
            Verdict::Replay {
                mark: Mark {
                    device_seq: 2,
                    seq: 3
                }
            }
        );
        assert_eq!(
            checks.judge(A, 2, 5),
            Verdict::Replay {
                mark: Mark {
                    device_seq: 2,
                    seq: 3
                }
            }
        );
        // The cursor went back to 0 (a resync): the same places again.
        for (device, device_seq, seq) in [(A, 1, 1), (B, 1, 2), (A, 2, 3)] {
            assert_eq!(read(&mut checks, device, device_seq, seq), Verdict::Reread);
        }
        assert_eq!(read(&mut checks, A, 3, 5), Verdict::Fresh);
        // A relay restored from a backup: new events reuse places, with new device sequences.
        assert_eq!(read(&mut checks, A, 4, 4), Verdict::Fresh);
    }

    #[test]
    fn own_appends_are_checked_where_the_relay_placed_them() {
        let mut checks = LogChecks::default();
        assert_eq!(checks.appended(A, 1, 1, 0), None);
        assert_eq!(checks.appended(A, 2, 2, 0), None);
        assert_eq!(checks.misplaced(1, true, 1), None);
        read(&mut checks, A, 1, 1);
        // Another device's event where A's #2 should be.
        assert_eq!(checks.misplaced(2, false, 1), Some(2));
        assert_eq!(checks.misplaced(2, true, 3), Some(2));
        read(&mut checks, B, 1, 2);
        assert_eq!(checks.misplaced(2, false, 1), None, "checked once");
        // An answer after its event was read.
        assert_eq!(checks.appended(A, 1, 1, 2), Some(true));
        assert_eq!(checks.appended(A, 9, 2, 2), Some(false));
    }

    #[test]
    fn marks_round_trip_through_their_file() {
        let mut checks = LogChecks::default();
        assert_eq!(checks.take_dirty(), None);
        read(&mut checks, A, 7, 10);
        read(&mut checks, B, 3, 11);
        let marks = checks.take_dirty().unwrap();
        assert_eq!(checks.take_dirty(), None);
        assert_eq!(decode_marks(&encode_marks(&marks)), Some(marks));
        assert_eq!(decode_marks(""), Some(Marks::new()));
        assert_eq!(decode_marks("zz 1 2\n"), None);
        assert_eq!(decode_marks(&format!("{A} 1\n")), None);
    }
}
