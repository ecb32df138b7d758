//! Appends: sealing into the outbox (one `fsync` per batch), sending within a window, and
//! settling each one when the relay answers.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use ferry_protocol::limits::MAX_PAYLOAD_LEN;
use ferry_protocol::seal::{self, EventSlot, MAX_PLAINTEXT_LEN};
use ferry_protocol::{Append, ClientFrame, ErrorCode, ErrorFrame};
use rand_core::OsRng;
use tokio::time::Instant;

use super::{Delivery, Driver, Ended, Enqueue, Item, Link, Pending, WINDOW, is_revoked};
use crate::error::{ClientError, StateError};

impl Driver {
    /// Seals a batch, flushes it to the outbox with one `fsync`, then queues it to send.
    pub(super) async fn enqueue(&mut self, batch: Vec<Enqueue>, link: Option<&mut Link>) {
        let mut replies = Vec::with_capacity(batch.len());
        let mut plaintexts = Vec::with_capacity(batch.len());
        for Enqueue {
            plaintext,
            stored,
            appended,
        } in batch
        {
            plaintexts.push(plaintext);
            replies.push((stored, appended));
        }
        let trust = Arc::clone(&self.trust);
        let (user, device) = (self.user, self.device);
        let sealed = self
            .on_disk(move |state| {
                let mut results = Vec::with_capacity(plaintexts.len());
                let mut batch = Vec::with_capacity(plaintexts.len());
                // Sealed under the newest epoch this device knows of.
                let trust = trust.read().unwrap_or_else(PoisonError::into_inner);
                let (epoch, key) = trust.newest();
                for plaintext in plaintexts {
                    let Some(key) = key else {
                        results.push(Err(ClientError::EpochKeyUnavailable { epoch }));
                        continue;
                    };
                    if plaintext.len() > MAX_PLAINTEXT_LEN {
                        results.push(Err(ClientError::PayloadTooLarge {
                            len: plaintext.len(),
                        }));
                        continue;
                    }
                    let device_seq = state.outbox.reserve();
                    let slot = EventSlot {
                        user,
                        device,
                        device_seq,
                    };
                    match seal::seal(key, epoch, &slot, &plaintext, &mut OsRng) {
                        Ok(payload) => {
                            results.push(Ok(device_seq));
                            batch.push((device_seq, payload));
                        }
                        Err(_) => results.push(Err(ClientError::PayloadTooLarge {
                            len: plaintext.len(),
                        })),
                    }
                }
                state.outbox.push(&batch)?;
                Ok::<_, StateError>((results, batch))
            })
            .await;
        let (results, batch) = match sealed {
            Ok(Ok(sealed)) => sealed,
            Ok(Err(error)) => {
                let error = ClientError::State(error);
                for (stored, appended) in replies {
                    let _ = stored.send(Err(error.clone()));
                    if let Some(appended) = appended {
                        let _ = appended.send(Err(error.clone()));
                    }
                }
                return;
            }
            Err(error) => {
                for (stored, _) in replies {
                    let _ = stored.send(Err(error.clone()));
                }
                return;
            }
        };
        let mut payloads = batch.into_iter();
        let mut link = link;
        for ((stored, appended), result) in replies.into_iter().zip(results) {
            match result {
                Ok(device_seq) => {
                    let Some((_, payload)) = payloads.next() else {
                        break;
                    };
                    self.pending.insert(
                        device_seq,
                        Pending {
                            payload,
                            waiters: appended.into_iter().collect(),
                        },
                    );
                    if let Some(link) = link.as_deref_mut() {
                        link.appends.push(device_seq);
                    }
                    self.publish_pending();
                    let _ = stored.send(Ok(device_seq));
                }
                Err(error) => {
                    if let Some(appended) = appended {
                        let _ = appended.send(Err(error.clone()));
                    }
                    let _ = stored.send(Err(error));
                }
            }
        }
    }

    pub(super) fn has_output(&self, link: &Link) -> bool {
        !link.control.is_empty()
            || self.has_request(link)
            || (link.appends.ready() && link.stale.is_empty())
    }

    /// The next frame to send: control frames, then requests, then appends.
    pub(super) fn next_output(&mut self, link: &mut Link) -> Option<ClientFrame> {
        if let Some(frame) = link.control.pop_front() {
            return Some(frame);
        }
        if let Some(frame) = self.next_request(link) {
            return Some(frame);
        }
        if !link.stale.is_empty() {
            return None;
        }
        let pending = &self.pending;
        let device_seq = link.appends.next(|seq| pending.contains_key(&seq))?;
        let payload = pending.get(&device_seq)?.payload.clone();
        Some(ClientFrame::Append(Append {
            device_seq,
            payload,
        }))
    }

    /// An `Error` frame: for an append, retry it later or drop it; otherwise it answers the
    /// oldest request.
    pub(super) fn relay_error(&mut self, error: ErrorFrame, link: &mut Link) -> Result<(), Ended> {
        // The relay's own word, inside the channel: this device is revoked. The client
        // stops; what waits in the outbox stays there (it will never be sent).
        if is_revoked(error.code) {
            return Err(Ended::Failed(ClientError::Revoked));
        }
        let Some(device_seq) = error.device_seq else {
            return self.request_failed(error, link);
        };
        link.appends.answered(device_seq);
        match error.code {
            // Not stored; the relay will take it later.
            // The relay refuses every later append of the device too until this one comes
            // again (it keeps a device's appends in order), so the whole window comes back
            // refused: one wait per round of refusals, not one per refused append, and it
            // lasts until the whole window is back (`AppendWindow`).
            ErrorCode::RateLimited
            | ErrorCode::Unavailable
            | ErrorCode::Internal
            | ErrorCode::QuotaExceeded => {
                if error.code == ErrorCode::QuotaExceeded {
                    // Kept and retried: retention or the operator may make room. The app
                    // sees why nothing leaves the outbox.
                    let full = ClientError::from_code(error.code, error.message.clone());
                    self.shared
                        .status
                        .send_modify(|s| s.last_error = Some(full));
                }
                let backoff = &mut self.append_backoff;
                link.appends.refused(device_seq, Instant::now(), || {
                    backoff.next_delay(&mut OsRng)
                });
            }
            // Sealed under an epoch the chain has replaced (a revocation this device had not
            // heard of when it sealed), or held back behind such an append. Not stored: it
            // is sealed again under the newest epoch once the chain is fetched, and sent
            // again; it never leaves the outbox for this.
            ErrorCode::StaleEpoch => {
                let newest = self.trust().newest().0;
                let first = self.pending.keys().next() == Some(&device_seq);
                let sealed_newest = self.pending.get(&device_seq).is_some_and(|pending| {
                    seal::epoch_of(&pending.payload).is_ok_and(|epoch| epoch >= newest)
                });
                if self.pending.contains_key(&device_seq) {
                    link.appends.push(device_seq);
                    link.stale.insert(device_seq);
                }
                if first && sealed_newest {
                    // Refused for itself, under the newest epoch this device knows: the
                    // relay knows a newer one. The fetch should bring it; if it does not,
                    // do not ask again at once.
                    tracing::warn!(device_seq, message = %error.message, "the relay refused an append sealed under this device's newest epoch");
                    let backoff = &mut self.append_backoff;
                    link.appends
                        .hold(Instant::now(), || backoff.next_delay(&mut OsRng));
                }
                link.want_fetch = true;
                self.maybe_fetch(link);
            }
            // The relay holds another event under this sequence (the state folder was
            // restored or copied): this one was never stored; it moves to a new sequence.
            ErrorCode::Conflict => self.conflicted.push(device_seq),
            ErrorCode::InvalidSequence => {
                self.finish_append(device_seq, Err(ClientError::Conflict { device_seq }));
            }
            // Stored once, trimmed since: nothing to resend.
            ErrorCode::AppendExpired => {
                self.finish_append(device_seq, Err(ClientError::AppendExpired { device_seq }));
            }
            ErrorCode::PayloadTooLarge | ErrorCode::FrameTooLarge => {
                let len = self
                    .pending
                    .get(&device_seq)
                    .map_or(MAX_PAYLOAD_LEN, |p| p.payload.0.len());
                self.finish_append(device_seq, Err(ClientError::PayloadTooLarge { len }));
            }
            code => {
                self.finish_append(device_seq, Err(ClientError::from_code(code, error.message)))
            }
        }
        Ok(())
    }

    /// Numbers new appends past `last_device_seq`, the highest the relay holds from this
    /// device (durably, before anything new is sealed).
    pub(super) async fn advance_past(&mut self, last_device_seq: u64) -> Result<(), ClientError> {
        if last_device_seq == 0 {
            return Ok(());
        }
        self.on_disk(move |state| state.outbox.advance_past(last_device_seq))
            .await??;
        Ok(())
    }

    /// Re-seals the appends the relay answered `Conflict` under new device sequences (one
    /// durable outbox record each) and queues them again. They were never stored: the
    /// relay holds other events under their old sequences, left by an older copy of this
    /// device's state folder.
    pub(super) async fn reseal_conflicted(&mut self, link: &mut Link) -> Result<(), ClientError> {
        let olds: Vec<(u64, ferry_protocol::SealedPayload)> = std::mem::take(&mut self.conflicted)
            .into_iter()
            .filter_map(|seq| self.pending.get(&seq).map(|p| (seq, p.payload.clone())))
            .collect();
        let trust = Arc::clone(&self.trust);
        let (user, device) = (self.user, self.device);
        let moved = self
            .on_disk(move |state| {
                let mut moves = Vec::with_capacity(olds.len());
                let mut unopenable = Vec::new();
                let trust = trust.read().unwrap_or_else(PoisonError::into_inner);
                let (epoch, newest) = trust.newest();
                for (old, payload) in olds {
                    let slot = EventSlot {
                        user,
                        device,
                        device_seq: old,
                    };
                    let opened = seal::epoch_of(&payload)
                        .ok()
                        .and_then(|e| trust.key(e))
                        .and_then(|key| seal::open(key, &slot, &payload).ok());
                    let (Some(plaintext), Some(newest)) = (opened, newest) else {
                        unopenable.push(old);
                        continue;
                    };
                    let new = state.outbox.reserve();
                    let slot = EventSlot {
                        device_seq: new,
                        ..slot
                    };
                    match seal::seal(newest, epoch, &slot, &plaintext, &mut OsRng) {
                        Ok(sealed) => moves.push((old, new, sealed)),
                        Err(_) => unopenable.push(old),
                    }
                }
                state.outbox.reseal(&moves)?;
                Ok::<_, StateError>((moves, unopenable))
            })
            .await??;
        let (moves, unopenable) = moved;
        for (old, new, payload) in moves {
            tracing::info!(
                old,
                new,
                "the relay holds another event under this device sequence; re-sealed under a new one"
            );
            if let Some(pending) = self.pending.remove(&old) {
                let waiters = pending.waiters;
                self.pending.insert(new, Pending { payload, waiters });
                link.appends.push(new);
            }
        }
        for old in unopenable {
            self.finish_append(old, Err(ClientError::Conflict { device_seq: old }));
        }
        Ok(())
    }

    /// Seals again, under the newest epoch, every outbox entry from the lowest one the relay
    /// refused `stale_epoch` on that is sealed under an older epoch: same device sequence
    /// (the relay stored none of them), one durable outbox record each. Called once the chain
    /// is current and nothing is in flight; everything is sent again lowest first.
    pub(super) async fn reseal_stale(&mut self, link: &mut Link) -> Result<(), ClientError> {
        let Some(&from) = std::mem::take(&mut link.stale).first() else {
            return Ok(());
        };
        let newest = self.trust().newest().0;
        let olds: Vec<(u64, ferry_protocol::SealedPayload)> = self
            .pending
            .range(from..)
            .filter(|(_, pending)| {
                seal::epoch_of(&pending.payload).is_ok_and(|epoch| epoch < newest)
            })
            .map(|(seq, pending)| (*seq, pending.payload.clone()))
            .collect();
        if olds.is_empty() {
            return Ok(());
        }
        let trust = Arc::clone(&self.trust);
        let (user, device) = (self.user, self.device);
        let moves = self
            .on_disk(move |state| {
                let mut moves = Vec::with_capacity(olds.len());
                let trust = trust.read().unwrap_or_else(PoisonError::into_inner);
                let (epoch, Some(newest)) = trust.newest() else {
                    return Ok(moves);
                };
                for (device_seq, payload) in olds {
                    let slot = EventSlot {
                        user,
                        device,
                        device_seq,
                    };
                    let opened = seal::epoch_of(&payload)
                        .ok()
                        .and_then(|e| trust.key(e))
                        .and_then(|key| seal::open(key, &slot, &payload).ok());
                    // One that does not open stays as it is (and is refused again): an
                    // outbox entry is never dropped for its epoch.
                    let Some(plaintext) = opened else {
                        tracing::warn!(
                            device_seq,
                            "an outbox entry does not open; it cannot be sealed again"
                        );
                        continue;
                    };
                    if let Ok(sealed) = seal::seal(newest, epoch, &slot, &plaintext, &mut OsRng) {
                        moves.push((device_seq, device_seq, sealed));
                    }
                }
                state.outbox.reseal(&moves)?;
                Ok::<_, StateError>(moves)
            })
            .await??;
        for (device_seq, _, payload) in moves {
            tracing::info!(
                device_seq,
                "sealed under a replaced epoch; sealed again under the newest one"
            );
            if let Some(pending) = self.pending.get_mut(&device_seq) {
                pending.payload = payload;
                link.appends.push(device_seq);
            }
        }
        // The refused entry could not be sealed again (its old key or the newest one is
        // missing): it is sent again as it is, after a wait, rather than in a tight loop.
        let stuck = self.pending.get(&from).is_some_and(|pending| {
            seal::epoch_of(&pending.payload).is_ok_and(|epoch| epoch < newest)
        });
        if stuck {
            let backoff = &mut self.append_backoff;
            link.appends
                .hold(Instant::now(), || backoff.next_delay(&mut OsRng));
        }
        Ok(())
    }

    /// An append is settled: answer its waiters and take it out of the outbox.
    pub(super) fn finish_append(&mut self, device_seq: u64, result: Result<u64, ClientError>) {
        let Some(pending) = self.pending.remove(&device_seq) else {
            return; // A repeated answer (the append was sent on two connections).
        };
        if let Err(error) = &result {
            tracing::warn!(device_seq, %error, "append refused; it leaves the outbox");
            if pending.waiters.is_empty() {
                // Nobody waits for it: tell the app through its event queue.
                let _ = self.deliveries.try_send(Delivery {
                    seq: None,
                    item: Some(Item::App(Err(error.clone()))),
                });
            }
        }
        for waiter in pending.waiters {
            let _ = waiter.send(result.clone());
        }
        self.done.push(device_seq);
        self.schedule_save();
        self.publish_pending();
    }
}

/// One connection's appends: those still to send, those sent and not answered, and the wait
/// after a retryable refusal.
///
/// The relay refuses every append sent after a refused one until that one comes again
/// (protocol §6), so every append in flight behind a refusal comes back refused too. The
/// wait ends only once they all have: re-sending the refused ones while others are still on
/// their way back would let appends never sent before (or re-sent ones further on) reach the
/// relay ahead of those, and be stored ahead of them once the relay took the first re-sent
/// one as the end of the refusals.
#[derive(Debug, Default)]
pub(super) struct AppendWindow {
    /// Outbox entries not sent on this connection yet, in device sequence order.
    unsent: BTreeSet<u64>,
    /// Appends sent and not answered, in the order sent (the order the relay answers).
    in_flight: VecDeque<u64>,
    /// After a retryable refusal: send no append before this, nor while any is in flight.
    hold_until: Option<Instant>,
}

impl AppendWindow {
    /// A window that sends `unsent` (the outbox, on a new connection), lowest first.
    pub(super) fn new(unsent: impl IntoIterator<Item = u64>) -> Self {
        Self {
            unsent: unsent.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Queues an outbox entry to send on this connection.
    pub(super) fn push(&mut self, device_seq: u64) {
        self.unsent.insert(device_seq);
    }

    /// Whether an append may go out now.
    pub(super) fn ready(&self) -> bool {
        !self.unsent.is_empty() && self.hold_until.is_none() && self.in_flight.len() < WINDOW
    }

    /// The lowest entry to send now (skipping those `exists` no longer knows), which is then
    /// in flight; `None` while the window is full or waiting.
    pub(super) fn next(&mut self, exists: impl Fn(u64) -> bool) -> Option<u64> {
        if self.hold_until.is_some() || self.in_flight.len() >= WINDOW {
            return None;
        }
        while let Some(device_seq) = self.unsent.pop_first() {
            if exists(device_seq) {
                self.in_flight.push_back(device_seq);
                return Some(device_seq);
            }
        }
        None
    }

    /// The relay answered `device_seq` (committed or refused).
    pub(super) fn answered(&mut self, device_seq: u64) {
        if let Some(at) = self.in_flight.iter().position(|seq| *seq == device_seq) {
            self.in_flight.remove(at);
        }
    }

    /// `device_seq` was refused with a retryable code: it is sent again, lowest first, once
    /// the wait is over (`wait` is asked only when no wait is on already).
    pub(super) fn refused(
        &mut self,
        device_seq: u64,
        now: Instant,
        wait: impl FnOnce() -> Duration,
    ) {
        self.unsent.insert(device_seq);
        if self.hold_until.is_none() {
            self.hold_until = Some(now + wait());
        }
    }

    /// Sends no append for a while (`wait`), unless a wait is on already.
    pub(super) fn hold(&mut self, now: Instant, wait: impl FnOnce() -> Duration) {
        if self.hold_until.is_none_or(|until| until <= now) {
            self.hold_until = Some(now + wait());
        }
    }

    /// Whether no append is in flight.
    pub(super) fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// When the wait ends: never while an append sent before it is unanswered (see the type's
    /// docs); `None` when there is nothing to wait for.
    pub(super) fn resume_at(&self) -> Option<Instant> {
        self.hold_until.filter(|_| self.in_flight.is_empty())
    }

    /// The wait is over (at [`AppendWindow::resume_at`]).
    pub(super) fn resume(&mut self) {
        self.hold_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_relay::store::AppendOrder;

    /// The relay's side of one session, as the protocol has it: a rate limit of `tokens` per
    /// round, [`AppendOrder`] keeping the device's appends in order, answers in order.
    struct Relay {
        order: Arc<AppendOrder>,
        tokens: usize,
        stored: Vec<u64>,
        answers: VecDeque<(u64, bool)>,
    }

    impl Relay {
        fn receive(&mut self, device_seq: u64) {
            let admitted = self.order.admit(device_seq).is_ok()
                && if self.tokens == 0 {
                    self.order.refuse(device_seq, ErrorCode::RateLimited);
                    false
                } else {
                    self.tokens -= 1;
                    true
                };
            if admitted && !self.stored.contains(&device_seq) {
                self.stored.push(device_seq);
            }
            self.answers.push_back((device_seq, admitted));
        }
    }

    #[test]
    fn appends_refused_behind_a_refusal_are_not_overtaken_by_later_ones() {
        // 1000 entries through a relay that takes 5 appends a round (bursts of 100) and
        // answers 10 a round, from a client that sends at most 20 a round (its writer is
        // slower than the answers, so the window is not always full). Each round outlasts
        // the wait after a refusal: the wait is over before the refusals behind the first
        // one are all back, the case where appends used to overtake the refused ones.
        const ENTRIES: u64 = 1000;
        let mut window = AppendWindow::new(1..=ENTRIES);
        let mut relay = Relay {
            order: AppendOrder::new(),
            tokens: 100,
            stored: Vec::new(),
            answers: VecDeque::new(),
        };
        let mut now = Instant::now();
        let mut acknowledged = BTreeSet::new();
        for _round in 0..10_000 {
            if acknowledged.len() as u64 == ENTRIES {
                break;
            }
            relay.tokens = (relay.tokens + 5).min(100);
            if window.resume_at().is_some_and(|at| at <= now) {
                window.resume();
            }
            for _ in 0..20 {
                let Some(device_seq) = window.next(|seq| !acknowledged.contains(&seq)) else {
                    break;
                };
                relay.receive(device_seq);
            }
            for _ in 0..10 {
                let Some((device_seq, admitted)) = relay.answers.pop_front() else {
                    break;
                };
                window.answered(device_seq);
                if admitted {
                    acknowledged.insert(device_seq);
                } else {
                    window.refused(device_seq, now, || Duration::from_millis(50));
                }
            }
            now += Duration::from_millis(100);
        }
        assert_eq!(acknowledged.len() as u64, ENTRIES, "not all acknowledged");
        let out_of_order: Vec<(u64, u64)> = relay
            .stored
            .windows(2)
            .filter(|pair| pair[1] != pair[0] + 1)
            .map(|pair| (pair[0], pair[1]))
            .collect();
        assert!(
            out_of_order.is_empty(),
            "stored out of order: {out_of_order:?}"
        );
    }
}
