//! The calls of one device as a state machine with no I/O: each input (the app's request, a
//! signal heard, a deadline passed) gives the signals to send and the records to store
//! ([`Out`]) and queues the app's events. The client seals and sends the outputs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use ferry_protocol::conversations::ConvId;
use ferry_protocol::{DeviceId, UserId};
use tokio::time::Instant;

use super::{
    CallEvent, CallId, CallInfo, CallOutcome, CallRecord, CallSignal, CallState, EndReason,
    RING_GRACE, SELECT_TIMEOUT,
};
use crate::error::ClientError;

/// Candidates a ringing device keeps until it accepts; more are dropped (the first ones
/// are the useful host and server-reflexive ones).
const MAX_BUFFERED_CANDIDATES: usize = 64;
/// Ended calls remembered, so late signals about them are ignored.
const ENDED_REMEMBERED: usize = 64;
/// An offer whose `sent_at` is further than this from the callee's clock does not ring: a
/// relay replaying an old offer (sealed in the same epoch) cannot make a phone ring again.
/// Generous, for clocks that disagree.
pub(crate) const MAX_OFFER_SKEW_MS: u64 = 120_000;

/// What the client does for the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Out {
    /// Seal and send this signal to the conversation's online devices.
    Signal(ConvId, CallSignal),
    /// Store this record in the conversation (the caller's device, when a call ends).
    Record(ConvId, CallRecord),
}

struct Call {
    conv: ConvId,
    peer: UserId,
    outgoing: bool,
    video: bool,
    state: CallState,
    /// The other device: the caller's (incoming), the selected one (outgoing, connected).
    peer_device: Option<DeviceId>,
    /// When the state times out.
    deadline: Option<Instant>,
    connected_at: Option<Instant>,
    /// Callee devices heard ringing (outgoing).
    ringing: BTreeSet<DeviceId>,
    /// The caller's candidates heard while ringing (incoming).
    buffered: Vec<String>,
    /// The caller's session description (incoming), for an app that looks while it rings.
    offer: Option<String>,
}

/// The calls of this device.
pub(crate) struct Calls {
    me: UserId,
    device: DeviceId,
    ring_timeout: Duration,
    live: BTreeMap<CallId, Call>,
    ended: VecDeque<CallId>,
    events: VecDeque<CallEvent>,
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls")
            .field("live", &self.live.len())
            .finish_non_exhaustive()
    }
}

fn call_error(message: impl Into<String>) -> ClientError {
    ClientError::Call(message.into())
}

impl Calls {
    pub fn new(me: UserId, device: DeviceId, ring_timeout: Duration) -> Self {
        Self {
            me,
            device,
            ring_timeout,
            live: BTreeMap::new(),
            ended: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The next event for the app.
    pub fn take_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// The calls not over yet.
    pub fn list(&self) -> Vec<CallInfo> {
        self.live
            .iter()
            .map(|(call, c)| CallInfo {
                call: *call,
                conv: c.conv,
                peer: c.peer,
                outgoing: c.outgoing,
                video: c.video,
                state: c.state.clone(),
                offer: c.offer.clone().filter(|_| c.state == CallState::Incoming),
            })
            .collect()
    }

    /// When the next call times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.live.values().filter_map(|c| c.deadline).min()
    }

    // ------------------------------------------------------------------------------------
    // The app.

    /// Starts calling `peer` in the 1:1 conversation `conv` with `offer` (`wall_ms`: this
    /// device's clock, ms since the Unix epoch).
    #[allow(clippy::too_many_arguments)]
    pub fn place(
        &mut self,
        call: CallId,
        conv: ConvId,
        peer: UserId,
        video: bool,
        offer: String,
        now: Instant,
        wall_ms: u64,
    ) -> Result<Vec<Out>, ClientError> {
        if !self.live.is_empty() {
            return Err(call_error("this device is in a call already"));
        }
        let signal = CallSignal::Offer {
            call,
            video,
            sdp: offer,
            sent_at: wall_ms,
        };
        if !signal.within_limits() {
            return Err(call_error(format!(
                "the offer is longer than {} bytes",
                super::MAX_SDP_LEN
            )));
        }
        self.live.insert(
            call,
            Call {
                conv,
                peer,
                outgoing: true,
                video,
                state: CallState::Outgoing,
                peer_device: None,
                deadline: Some(now + self.ring_timeout),
                connected_at: None,
                ringing: BTreeSet::new(),
                buffered: Vec::new(),
                offer: None,
            },
        );
        Ok(vec![Out::Signal(conv, signal)])
    }

    /// Accepts an incoming call with `answer`.
    pub fn accept(
        &mut self,
        call: CallId,
        answer: String,
        now: Instant,
    ) -> Result<Vec<Out>, ClientError> {
        let signal = CallSignal::Accept { call, sdp: answer };
        if !signal.within_limits() {
            return Err(call_error(format!(
                "the answer is longer than {} bytes",
                super::MAX_SDP_LEN
            )));
        }
        let c = self.live_call(call)?;
        if c.state != CallState::Incoming {
            return Err(call_error(format!("call {call} is not ringing")));
        }
        c.state = CallState::Accepting;
        c.deadline = Some(now + SELECT_TIMEOUT);
        let conv = c.conv;
        // The caller's candidates heard while ringing, now that the app has an answer.
        let buffered = std::mem::take(&mut c.buffered);
        self.events.extend(
            buffered
                .into_iter()
                .map(|candidate| CallEvent::Candidate { call, candidate }),
        );
        Ok(vec![Out::Signal(conv, signal)])
    }

    /// Declines an incoming call (every device of this user stops ringing).
    pub fn decline(&mut self, call: CallId) -> Result<Vec<Out>, ClientError> {
        let c = self.live_call(call)?;
        if c.state != CallState::Incoming {
            return Err(call_error(format!("call {call} is not ringing")));
        }
        let conv = c.conv;
        self.end(call, EndReason::HungUp, None);
        Ok(vec![Out::Signal(conv, CallSignal::Decline { call })])
    }

    /// Ends a call: hangs up, or cancels an outgoing call that still rings.
    pub fn hang_up(&mut self, call: CallId, now: Instant) -> Result<Vec<Out>, ClientError> {
        let c = self.live_call(call)?;
        if c.state == CallState::Incoming {
            // Hanging up a ringing call declines it.
            return self.decline(call);
        }
        let conv = c.conv;
        let mut out = vec![Out::Signal(conv, CallSignal::HangUp { call })];
        out.extend(self.end(call, EndReason::HungUp, Some(now)));
        Ok(out)
    }

    /// Sends this device's ICE candidate to the other device.
    pub fn candidate(&mut self, call: CallId, candidate: String) -> Result<Vec<Out>, ClientError> {
        let c = self.live_call(call)?;
        if matches!(c.state, CallState::Incoming) {
            return Err(call_error(format!("call {call} is not accepted yet")));
        }
        let signal = CallSignal::Candidate { call, candidate };
        if !signal.within_limits() {
            return Err(call_error(format!(
                "a candidate is longer than {} bytes",
                super::MAX_CANDIDATE_LEN
            )));
        }
        Ok(vec![Out::Signal(c.conv, signal)])
    }

    fn live_call(&mut self, call: CallId) -> Result<&mut Call, ClientError> {
        self.live
            .get_mut(&call)
            .ok_or_else(|| call_error(format!("no call {call} in progress")))
    }

    // ------------------------------------------------------------------------------------
    // What other devices say.

    /// A signal from `device` of `user` in the 1:1 conversation `conv` (whose other user
    /// is `peer`: `user` is either that peer or this user); `wall_ms` is this device's clock.
    #[allow(clippy::too_many_arguments)]
    pub fn on_signal(
        &mut self,
        conv: ConvId,
        peer: UserId,
        user: UserId,
        device: DeviceId,
        signal: CallSignal,
        now: Instant,
        wall_ms: u64,
    ) -> Vec<Out> {
        let call = signal.call();
        if device == self.device || !signal.within_limits() || self.ended.contains(&call) {
            return Vec::new();
        }
        if let CallSignal::Offer {
            video,
            sdp,
            sent_at,
            ..
        } = signal
        {
            if wall_ms.abs_diff(sent_at) > MAX_OFFER_SKEW_MS {
                tracing::debug!(%call, sent_at, wall_ms, "an offer too old or too new: ignored");
                return Vec::new();
            }
            return self.on_offer(conv, peer, user, device, call, video, sdp, now);
        }
        let Some(c) = self.live.get_mut(&call) else {
            return Vec::new();
        };
        if c.conv != conv {
            return Vec::new();
        }
        let own = user == self.me;
        let from_peer = user == c.peer;
        match (c.outgoing, signal) {
            // The caller's side.
            (true, CallSignal::Ringing { .. }) if from_peer => {
                if c.state == CallState::Outgoing && c.ringing.insert(device) {
                    self.events.push_back(CallEvent::Ringing { call, device });
                }
                Vec::new()
            }
            (true, CallSignal::Accept { sdp, .. }) if from_peer => {
                if c.state != CallState::Outgoing {
                    // Another device won already; the Selected it hears ends it.
                    return Vec::new();
                }
                c.state = CallState::Connected;
                c.peer_device = Some(device);
                c.deadline = None;
                c.connected_at = Some(now);
                self.events.push_back(CallEvent::Answered {
                    call,
                    device,
                    answer: sdp,
                });
                vec![Out::Signal(conv, CallSignal::Selected { call, device })]
            }
            (true, CallSignal::Decline { .. }) if from_peer && c.state == CallState::Outgoing => {
                self.end(call, EndReason::Declined, Some(now))
            }
            (true, CallSignal::Busy { .. }) if from_peer && c.state == CallState::Outgoing => {
                // The devices still ringing stop.
                let mut out = vec![Out::Signal(conv, CallSignal::HangUp { call })];
                out.extend(self.end(call, EndReason::Busy, Some(now)));
                out
            }
            (true, CallSignal::Candidate { candidate, .. })
                if from_peer && c.peer_device == Some(device) =>
            {
                self.events
                    .push_back(CallEvent::Candidate { call, candidate });
                Vec::new()
            }
            (true, CallSignal::HangUp { .. }) if from_peer && c.peer_device == Some(device) => {
                self.end(call, EndReason::RemoteHungUp, Some(now))
            }
            // The callee's side: the caller's device.
            (false, CallSignal::Selected { device: chosen, .. })
                if from_peer && c.peer_device == Some(device) =>
            {
                if chosen == self.device {
                    if c.state == CallState::Accepting {
                        c.state = CallState::Connected;
                        c.deadline = None;
                        c.connected_at = Some(now);
                        self.events.push_back(CallEvent::Connected { call });
                    }
                } else {
                    self.end(call, EndReason::AnsweredElsewhere, None);
                }
                Vec::new()
            }
            (false, CallSignal::Candidate { candidate, .. })
                if from_peer && c.peer_device == Some(device) =>
            {
                match c.state {
                    CallState::Incoming => {
                        if c.buffered.len() < MAX_BUFFERED_CANDIDATES {
                            c.buffered.push(candidate);
                        }
                    }
                    CallState::Accepting | CallState::Connected => {
                        self.events
                            .push_back(CallEvent::Candidate { call, candidate });
                    }
                    CallState::Outgoing | CallState::Ended(_) => {}
                }
                Vec::new()
            }
            (false, CallSignal::HangUp { .. }) if from_peer && c.peer_device == Some(device) => {
                let reason = if c.state == CallState::Connected {
                    EndReason::RemoteHungUp
                } else {
                    EndReason::Missed
                };
                self.end(call, reason, None)
            }
            // The callee's side: another device of this user answered first.
            (false, CallSignal::Accept { .. }) if own && c.state == CallState::Incoming => {
                self.end(call, EndReason::AnsweredElsewhere, None)
            }
            (false, CallSignal::Decline { .. })
                if own && matches!(c.state, CallState::Incoming | CallState::Accepting) =>
            {
                self.end(call, EndReason::DeclinedElsewhere, None)
            }
            _ => Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_offer(
        &mut self,
        conv: ConvId,
        peer: UserId,
        user: UserId,
        device: DeviceId,
        call: CallId,
        video: bool,
        offer: String,
        now: Instant,
    ) -> Vec<Out> {
        if user != peer || user == self.me || self.live.contains_key(&call) {
            // Only the other user calls in a 1:1 conversation; an offer from a device of
            // this user is its own call, not this device's; a repeated offer is ignored.
            return Vec::new();
        }
        let mut out = Vec::new();
        // Both users called each other at once: the call with the lower id is kept on both
        // sides (each computes the same), the other is cancelled without a record.
        let crossing = self
            .live
            .iter()
            .find(|(_, c)| c.outgoing && c.conv == conv && c.state == CallState::Outgoing)
            .map(|(mine, _)| *mine);
        if let Some(mine) = crossing {
            if mine < call {
                return Vec::new();
            }
            out.push(Out::Signal(conv, CallSignal::HangUp { call: mine }));
            self.end(mine, EndReason::HungUp, None);
        }
        if !self.live.is_empty() {
            out.push(Out::Signal(conv, CallSignal::Busy { call }));
            return out;
        }
        self.live.insert(
            call,
            Call {
                conv,
                peer,
                outgoing: false,
                video,
                state: CallState::Incoming,
                peer_device: Some(device),
                deadline: Some(now + self.ring_timeout + RING_GRACE),
                connected_at: None,
                ringing: BTreeSet::new(),
                buffered: Vec::new(),
                offer: Some(offer.clone()),
            },
        );
        self.events.push_back(CallEvent::Incoming {
            call,
            conv,
            from: user,
            video,
            offer,
        });
        out.push(Out::Signal(conv, CallSignal::Ringing { call }));
        out
    }

    // ------------------------------------------------------------------------------------
    // Time.

    /// Ends the calls whose deadline passed.
    pub fn expire(&mut self, now: Instant) -> Vec<Out> {
        let due: Vec<CallId> = self
            .live
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|at| at <= now))
            .map(|(call, _)| *call)
            .collect();
        let mut out = Vec::new();
        for call in due {
            let Some(c) = self.live.get(&call) else {
                continue;
            };
            match c.state {
                CallState::Outgoing => {
                    out.push(Out::Signal(c.conv, CallSignal::HangUp { call }));
                    out.extend(self.end(call, EndReason::NoAnswer, Some(now)));
                }
                CallState::Incoming => out.extend(self.end(call, EndReason::Missed, None)),
                CallState::Accepting => {
                    out.push(Out::Signal(c.conv, CallSignal::HangUp { call }));
                    out.extend(self.end(call, EndReason::Unconfirmed, None));
                }
                CallState::Connected | CallState::Ended(_) => {}
            }
        }
        out
    }

    /// Ends `call`; on the caller's device returns the record to store.
    fn end(&mut self, call: CallId, reason: EndReason, now: Option<Instant>) -> Vec<Out> {
        let Some(c) = self.live.remove(&call) else {
            return Vec::new();
        };
        if self.ended.len() == ENDED_REMEMBERED {
            self.ended.pop_front();
        }
        self.ended.push_back(call);
        self.events.push_back(CallEvent::Ended { call, reason });
        let outcome = match (c.connected_at, reason) {
            (Some(at), _) => CallOutcome::Completed {
                seconds: now.map_or(0, |now| now.saturating_duration_since(at).as_secs()),
            },
            (None, EndReason::Declined) => CallOutcome::Declined,
            (None, EndReason::Busy) => CallOutcome::Busy,
            (None, _) => CallOutcome::Missed,
        };
        // A call cancelled in favour of a crossing one is not recorded (`now` is `None`).
        match (c.outgoing, now) {
            (true, Some(_)) => vec![Out::Record(
                c.conv,
                CallRecord {
                    call,
                    video: c.video,
                    outcome,
                },
            )],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
