//! The in-process registry: pairing slots in this node's memory (see the [rules](super)).
//!
//! Used by a node without Redis. Both ends of a pairing must be connected to this node: a
//! joiner that reaches another node is told "unknown code".

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_protocol::{ErrorCode, ServerFrame, UserId};
use tokio::sync::mpsc;

use super::{PairingRegistry, Party};
use crate::context::now_ms;
use crate::sync::lock;

#[derive(Debug)]
struct Slot {
    inviter: Party,
    /// The user the inviter acts for.
    user: UserId,
    joiner: Option<Party>,
    expires: Instant,
    burned: bool,
}

/// The node's pairing slots, in memory.
#[derive(Debug)]
pub struct LocalPairing {
    slots: Mutex<HashMap<u16, Slot>>,
    ttl: Duration,
}

impl LocalPairing {
    /// Slots that live `ttl` after opening.
    pub fn new(ttl: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The inviter, a device of `user`, opens `slot`. Returns the expiry in Unix milliseconds.
    pub fn open(&self, slot: u16, inviter: Party, user: UserId) -> Result<u64, ErrorCode> {
        if slot >= ferry_protocol::pairing::SLOTS {
            return Err(ErrorCode::PairingUnknownCode);
        }
        let now = Instant::now();
        let mut slots = self.lock();
        slots.retain(|_, s| s.expires > now);
        if slots.contains_key(&slot) {
            return Err(ErrorCode::PairingSlotTaken);
        }
        if slots.values().any(|s| s.user == user && !s.burned) {
            return Err(ErrorCode::RateLimited);
        }
        slots.insert(
            slot,
            Slot {
                inviter,
                user,
                joiner: None,
                expires: now + self.ttl,
                burned: false,
            },
        );
        Ok(now_ms() + self.ttl.as_millis() as u64)
    }

    /// A joiner's first message for `slot`: the slot is now taken by this joiner.
    pub fn join(&self, slot: u16, joiner: Party, body: Vec<u8>) -> Result<(), ErrorCode> {
        let mut slots = self.lock();
        let entry = slots.get_mut(&slot).ok_or(ErrorCode::PairingUnknownCode)?;
        if entry.expires <= Instant::now() {
            slots.remove(&slot);
            return Err(ErrorCode::PairingExpired);
        }
        if entry.burned || entry.joiner.is_some() {
            return Err(ErrorCode::PairingCodeUsed);
        }
        entry.joiner = Some(joiner);
        let inviter = entry.inviter.frames.clone();
        drop(slots);
        self.deliver(slot, &inviter, ServerFrame::PairPeer { slot, body })
    }

    /// Forwards `body` from one end of `slot` to the other.
    pub fn forward(&self, slot: u16, from: u64, body: Vec<u8>) -> Result<(), ErrorCode> {
        let peer = {
            let slots = self.lock();
            let entry = slots
                .get(&slot)
                .filter(|s| !s.burned)
                .ok_or(ErrorCode::PairingUnknownCode)?;
            other_end(entry, from)?.frames.clone()
        };
        self.deliver(slot, &peer, ServerFrame::PairPeer { slot, body })
    }

    /// One end closes `slot`; it is burned and the other end is told.
    pub fn close(&self, slot: u16, from: u64, success: bool) -> Result<(), ErrorCode> {
        let code = (!success).then_some(ErrorCode::PairingFailed);
        let peer = {
            let mut slots = self.lock();
            let entry = slots
                .get_mut(&slot)
                .filter(|s| !s.burned)
                .ok_or(ErrorCode::PairingUnknownCode)?;
            let peer = other_end(entry, from)?.clone();
            entry.burned = true;
            entry.joiner = None;
            peer
        };
        let _ = peer.frames.try_send(ServerFrame::PairClosed { slot, code });
        Ok(())
    }

    /// A session ended: burn its slots and tell the other ends.
    pub fn session_ended(&self, session: u64) {
        let mut notify = Vec::new();
        {
            let mut slots = self.lock();
            for (&slot, entry) in slots.iter_mut().filter(|(_, s)| !s.burned) {
                let inviter_left = entry.inviter.session == session;
                let joiner_left = entry.joiner.as_ref().is_some_and(|j| j.session == session);
                if inviter_left || joiner_left {
                    entry.burned = true;
                    let other = if inviter_left {
                        entry.joiner.take()
                    } else {
                        Some(entry.inviter.clone())
                    };
                    notify.extend(other.map(|party| (slot, party)));
                }
            }
        }
        for (slot, party) in notify {
            let _ = party.frames.try_send(ServerFrame::PairClosed {
                slot,
                code: Some(ErrorCode::Unavailable),
            });
        }
    }

    fn deliver(
        &self,
        slot: u16,
        to: &mpsc::Sender<ServerFrame>,
        frame: ServerFrame,
    ) -> Result<(), ErrorCode> {
        if to.try_send(frame).is_err() {
            // The other end is gone or not reading: the pairing cannot go on.
            if let Some(entry) = self.lock().get_mut(&slot) {
                entry.burned = true;
            }
            return Err(ErrorCode::Unavailable);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Slot>> {
        lock(&self.slots)
    }
}

#[async_trait::async_trait]
impl PairingRegistry for LocalPairing {
    async fn open(&self, slot: u16, inviter: Party, user: UserId) -> Result<u64, ErrorCode> {
        LocalPairing::open(self, slot, inviter, user)
    }

    async fn join(&self, slot: u16, joiner: Party, body: Vec<u8>) -> Result<(), ErrorCode> {
        LocalPairing::join(self, slot, joiner, body)
    }

    async fn forward(&self, slot: u16, from: u64, body: Vec<u8>) -> Result<(), ErrorCode> {
        LocalPairing::forward(self, slot, from, body)
    }

    async fn close(&self, slot: u16, from: u64, success: bool) -> Result<(), ErrorCode> {
        LocalPairing::close(self, slot, from, success)
    }

    async fn session_ended(&self, session: u64) {
        LocalPairing::session_ended(self, session);
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }
}

fn other_end(slot: &Slot, from: u64) -> Result<&Party, ErrorCode> {
    match &slot.joiner {
        Some(joiner) if slot.inviter.session == from => Ok(joiner),
        Some(joiner) if joiner.session == from => Ok(&slot.inviter),
        // Not a party to this slot (or nobody joined yet): as if the slot did not exist.
        _ => Err(ErrorCode::PairingUnknownCode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: UserId = UserId([1; 32]);
    const V: UserId = UserId([2; 32]);

    fn party(session: u64) -> (Party, mpsc::Receiver<ServerFrame>) {
        let (frames, rx) = mpsc::channel(8);
        (Party { session, frames }, rx)
    }

    #[test]
    fn one_join_per_slot_and_burned_after_close() {
        let slots = LocalPairing::new(Duration::from_secs(60));
        let (a, mut a_rx) = party(1);
        let (b, mut b_rx) = party(2);
        let (c, _) = party(3);
        slots.open(7, a.clone(), U).unwrap();
        assert_eq!(
            slots.open(7, a.clone(), V),
            Err(ErrorCode::PairingSlotTaken)
        );
        assert_eq!(
            slots.join(8, b.clone(), vec![]),
            Err(ErrorCode::PairingUnknownCode)
        );
        slots.join(7, b.clone(), vec![1]).unwrap();
        assert_eq!(
            a_rx.try_recv().unwrap(),
            ServerFrame::PairPeer {
                slot: 7,
                body: vec![1]
            }
        );
        assert_eq!(
            slots.join(7, c.clone(), vec![]),
            Err(ErrorCode::PairingCodeUsed)
        );
        // A stranger cannot inject into the slot.
        assert_eq!(
            slots.forward(7, 3, vec![9]),
            Err(ErrorCode::PairingUnknownCode)
        );
        slots.forward(7, 1, vec![2]).unwrap();
        assert_eq!(
            b_rx.try_recv().unwrap(),
            ServerFrame::PairPeer {
                slot: 7,
                body: vec![2]
            }
        );
        slots.close(7, 2, false).unwrap();
        assert_eq!(
            a_rx.try_recv().unwrap(),
            ServerFrame::PairClosed {
                slot: 7,
                code: Some(ErrorCode::PairingFailed)
            }
        );
        assert_eq!(slots.join(7, c, vec![]), Err(ErrorCode::PairingCodeUsed));
        assert_eq!(slots.open(7, a, U), Err(ErrorCode::PairingSlotTaken));
    }

    #[test]
    fn a_user_has_one_live_slot_at_a_time() {
        let slots = LocalPairing::new(Duration::from_secs(60));
        let (a, _a_rx) = party(1);
        let (b, _b_rx) = party(2);
        slots.open(1, a.clone(), U).unwrap();
        assert_eq!(slots.open(2, a.clone(), U), Err(ErrorCode::RateLimited));
        assert_eq!(slots.open(2, b.clone(), U), Err(ErrorCode::RateLimited));
        slots.open(2, b, V).unwrap();
        // Once the pairing ends (the inviter left: burned), the user may open another.
        slots.session_ended(1);
        slots.open(3, a, U).unwrap();
    }

    #[test]
    fn expired_slots_refuse_joins_and_free_up() {
        let (a, _a_rx) = party(1);
        let slots = LocalPairing::new(Duration::from_millis(30));
        slots.open(5, a.clone(), U).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        let (b, _) = party(2);
        assert_eq!(slots.join(5, b, vec![]), Err(ErrorCode::PairingExpired));
        slots.open(5, a, U).unwrap();
    }

    #[test]
    fn the_other_end_hears_when_a_party_leaves() {
        let slots = LocalPairing::new(Duration::from_secs(60));
        let (a, _a_rx) = party(1);
        let (b, mut b_rx) = party(2);
        slots.open(1, a, U).unwrap();
        slots.join(1, b, vec![]).unwrap();
        slots.session_ended(1);
        assert_eq!(
            b_rx.try_recv().unwrap(),
            ServerFrame::PairClosed {
                slot: 1,
                code: Some(ErrorCode::Unavailable)
            }
        );
    }
}
