//! The in-process registry: pairing slots in this node's memory (see the [rules](super)).
//!
//! Used by a node without Redis. Both ends of a pairing must be connected to this node: a
//! joiner that reaches another node is told "unknown code".

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_protocol::{ErrorCode, ServerFrame, UserId};

use super::{FIRST_SLOT, LAST_SLOT, PairingRegistry, Party};
use crate::context::now_ms;
use crate::mailbox::Mailbox;
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

    /// The inviter, a device of `user`, opens the smallest free slot. Returns the slot and
    /// its expiry in Unix milliseconds.
    pub fn open(&self, inviter: Party, user: UserId) -> Result<(u16, u64), ErrorCode> {
        let now = Instant::now();
        let mut slots = self.lock();
        // Expired slots answer "expired" for one more lifetime before their number is free.
        slots.retain(|_, s| s.expires + self.ttl > now);
        if slots
            .values()
            .any(|s| s.user == user && !s.burned && s.expires > now)
        {
            return Err(ErrorCode::RateLimited);
        }
        // Live slots and tombstones are taken; at most `slots.len()` numbers are tried.
        let slot = (FIRST_SLOT..=LAST_SLOT)
            .find(|n| !slots.contains_key(n))
            .ok_or(ErrorCode::PairingSlotTaken)?;
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
        Ok((slot, now_ms() + self.ttl.as_millis() as u64))
    }

    /// A joiner's first message for `slot`: the slot is now taken by this joiner.
    pub fn join(&self, slot: u16, joiner: Party, body: Vec<u8>) -> Result<(), ErrorCode> {
        let mut slots = self.lock();
        let entry = slots.get_mut(&slot).ok_or(ErrorCode::PairingUnknownCode)?;
        if entry.expires <= Instant::now() {
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

    fn deliver(&self, slot: u16, to: &Mailbox, frame: ServerFrame) -> Result<(), ErrorCode> {
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
    async fn open(&self, inviter: Party, user: UserId) -> Result<(u16, u64), ErrorCode> {
        LocalPairing::open(self, inviter, user)
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
    use std::sync::Arc;

    use super::*;

    const U: UserId = UserId([1; 32]);
    const V: UserId = UserId([2; 32]);

    fn party(session: u64) -> (Party, Arc<Mailbox>) {
        let frames = Arc::new(Mailbox::new(8));
        (
            Party {
                session,
                frames: Arc::clone(&frames),
            },
            frames,
        )
    }

    #[test]
    fn one_join_per_slot_and_burned_after_close() {
        let slots = LocalPairing::new(Duration::from_secs(60));
        let (a, a_rx) = party(1);
        let (b, b_rx) = party(2);
        let (c, _) = party(3);
        let (a2, _) = party(4);
        assert_eq!(slots.open(a.clone(), U).unwrap().0, 1);
        assert_eq!(
            slots.join(2, b.clone(), vec![]),
            Err(ErrorCode::PairingUnknownCode)
        );
        assert_eq!(
            slots.join(0, b.clone(), vec![]),
            Err(ErrorCode::PairingUnknownCode)
        );
        slots.join(1, b.clone(), vec![1]).unwrap();
        assert_eq!(
            *a_rx.try_recv().unwrap(),
            ServerFrame::PairPeer {
                slot: 1,
                body: vec![1]
            }
        );
        assert_eq!(
            slots.join(1, c.clone(), vec![]),
            Err(ErrorCode::PairingCodeUsed)
        );
        // A stranger cannot inject into the slot.
        assert_eq!(
            slots.forward(1, 3, vec![9]),
            Err(ErrorCode::PairingUnknownCode)
        );
        slots.forward(1, 1, vec![2]).unwrap();
        assert_eq!(
            *b_rx.try_recv().unwrap(),
            ServerFrame::PairPeer {
                slot: 1,
                body: vec![2]
            }
        );
        slots.close(1, 2, false).unwrap();
        assert_eq!(
            *a_rx.try_recv().unwrap(),
            ServerFrame::PairClosed {
                slot: 1,
                code: Some(ErrorCode::PairingFailed)
            }
        );
        assert_eq!(slots.join(1, c, vec![]), Err(ErrorCode::PairingCodeUsed));
        // The burned slot stays taken until it expires: the user's next pairing gets another.
        assert_eq!(slots.open(a2, U).unwrap().0, 2);
    }

    #[test]
    fn the_relay_assigns_the_smallest_free_slot() {
        let slots = LocalPairing::new(Duration::from_secs(60));
        let users: Vec<UserId> = (0..5).map(|n| UserId([n; 32])).collect();
        let mut receivers = Vec::new();
        for (n, user) in users.iter().enumerate() {
            let (p, rx) = party(n as u64 + 10);
            receivers.push(rx);
            assert_eq!(slots.open(p, *user).unwrap().0, n as u16 + 1);
        }
        // Slot 3 is two lifetimes old (forced here): the next pairing gets 3, the one after 6.
        slots.lock().get_mut(&3).unwrap().expires = Instant::now() - Duration::from_secs(60);
        let (p, _rx) = party(20);
        assert_eq!(slots.open(p, UserId([9; 32])).unwrap().0, 3);
        let (p, _rx) = party(21);
        assert_eq!(slots.open(p, UserId([8; 32])).unwrap().0, 6);
    }

    #[test]
    fn a_user_has_one_live_slot_at_a_time() {
        let slots = LocalPairing::new(Duration::from_secs(60));
        let (a, _a_rx) = party(1);
        let (b, _b_rx) = party(2);
        slots.open(a.clone(), U).unwrap();
        assert_eq!(slots.open(a.clone(), U), Err(ErrorCode::RateLimited));
        assert_eq!(slots.open(b.clone(), U), Err(ErrorCode::RateLimited));
        slots.open(b, V).unwrap();
        // Once the pairing ends (the inviter left: burned), the user may open another.
        slots.session_ended(1);
        assert_eq!(slots.open(a, U).unwrap().0, 3);
    }

    #[test]
    fn expired_slots_refuse_joins_and_free_up() {
        let (a, _a_rx) = party(1);
        let slots = LocalPairing::new(Duration::from_millis(30));
        assert_eq!(slots.open(a.clone(), U).unwrap().0, 1);
        std::thread::sleep(Duration::from_millis(40));
        let (b, _) = party(2);
        assert_eq!(
            slots.join(1, b.clone(), vec![]),
            Err(ErrorCode::PairingExpired)
        );
        // The user may pair again at once; the expired number is kept for one more lifetime.
        assert_eq!(slots.open(a.clone(), U).unwrap().0, 2);
        assert_eq!(slots.join(1, b, vec![]), Err(ErrorCode::PairingExpired));
        std::thread::sleep(Duration::from_millis(70));
        assert_eq!(slots.open(a, U).unwrap().0, 1);
    }

    #[test]
    fn the_other_end_hears_when_a_party_leaves() {
        let slots = LocalPairing::new(Duration::from_secs(60));
        let (a, _a_rx) = party(1);
        let (b, b_rx) = party(2);
        let (slot, _) = slots.open(a, U).unwrap();
        slots.join(slot, b, vec![]).unwrap();
        slots.session_ended(1);
        assert_eq!(
            *b_rx.try_recv().unwrap(),
            ServerFrame::PairClosed {
                slot,
                code: Some(ErrorCode::Unavailable)
            }
        );
    }
}
