//! Calls: the signaling of 1:1 voice and video calls, for a WebRTC stack the app brings. The
//! SDK never touches media; it carries session descriptions and ICE candidates between the
//! two users' devices, sealed end to end, and keeps each call's state.
//!
//! ```text
//!  caller                         relay (ConvEphemeral)        callee's online devices
//!  place_call(offer) ── Offer ──────────────────────────────▶ each: Incoming, ── Ringing ─▶
//!  CallEvent::Ringing ◀──────────────────────────────────────
//!                     ◀── Accept(answer) ─────────────────── accept_call(answer) on one
//!  CallEvent::Answered ─ Selected(device) ──────────────────▶ that one: Connected;
//!                                                             the others: AnsweredElsewhere
//!  Candidate ◀──────────────────────────────────────────────▶ Candidate
//!  hang_up ── HangUp ───────────────────────────────────────▶ Ended(RemoteHungUp)
//! ```
//!
//! - A call is between the two users of a 1:1 conversation. Signals are ephemeral bodies
//!   sealed under a key exported from the conversation's MLS epoch: the relay forwards them
//!   to the online devices of both users and can read none of them.
//! - Every online device of the callee rings; the first whose `Accept` the caller hears
//!   wins: the caller names it (`Selected`), and every other device of the callee stops
//!   ringing when it hears that, or another device's `Accept` or `Decline`.
//! - The caller rings for [`Options::ring_timeout`](crate::Options::ring_timeout); a callee
//!   device rings a little longer, so the caller's `HangUp` normally ends it.
//! - When a call ends, the caller's device appends a record to the conversation (a stored
//!   MLS message: devices that were offline see it): missed (counts as unread), declined,
//!   busy, or completed with its duration.
//! - A device is in one call at a time: an offer while it is in another is answered `Busy`.
//!   Two users calling each other at once keep the call with the lower id.
//! - Signals are best effort, like every ephemeral: one lost makes a call fail or time out,
//!   never hang; a signal about a call this device does not know, or from a device not in
//!   the call, is ignored.

mod api;
mod machine;
mod signal;

pub(crate) use machine::{Calls, Out};
pub(crate) use signal::CallSignal;
pub use signal::{MAX_CANDIDATE_LEN, MAX_SDP_LEN};

use ferry_protocol::conversations::{ConvId, MessageClass};
use ferry_protocol::{DeviceId, UserId};
use serde::{Deserialize, Serialize};

/// How long a callee device rings past the caller's timeout before giving up by itself.
pub const RING_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a device that accepted waits for the caller to pick it.
pub const SELECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A call: 16 random bytes chosen by the caller.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CallId(pub [u8; 16]);

impl std::fmt::Debug for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallId({})", &hex::encode(self.0)[..12])
    }
}

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Where a call stands on this device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallState {
    /// This device called and the callee's devices ring.
    Outgoing,
    /// Another user calls: this device rings.
    Incoming,
    /// This device accepted and waits for the caller to confirm it (others may have
    /// accepted too).
    Accepting,
    /// The two devices exchange candidates; media is the app's.
    Connected,
    /// Over.
    Ended(EndReason),
}

/// Why a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// This device hung up (or declined, or cancelled its call).
    HungUp,
    /// The other device hung up.
    RemoteHungUp,
    /// The caller: nobody answered in time (or nobody of the callee was online).
    NoAnswer,
    /// The callee: the call stopped ringing without being answered.
    Missed,
    /// The caller: the callee declined.
    Declined,
    /// The caller: the callee is in another call.
    Busy,
    /// The callee: another of its devices accepted.
    AnsweredElsewhere,
    /// The callee: another of its devices declined.
    DeclinedElsewhere,
    /// The callee: it accepted but the caller never confirmed it.
    Unconfirmed,
}

/// What happened in a call, for the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    /// Another user calls: ring, then [`accept_call`](crate::ClientHandle::accept_call)
    /// with an answer to `offer`, or [`decline_call`](crate::ClientHandle::decline_call).
    Incoming {
        /// The call.
        call: CallId,
        /// The 1:1 conversation.
        conv: ConvId,
        /// The caller.
        from: UserId,
        /// Whether it is a video call.
        video: bool,
        /// The caller's session description.
        offer: String,
    },
    /// The caller: a device of the callee rings.
    Ringing {
        /// The call.
        call: CallId,
        /// The ringing device.
        device: DeviceId,
    },
    /// The caller: a device of the callee answered; apply its session description.
    Answered {
        /// The call.
        call: CallId,
        /// The device the call is with.
        device: DeviceId,
        /// Its session description.
        answer: String,
    },
    /// The callee: the caller confirmed this device; the call is on.
    Connected {
        /// The call.
        call: CallId,
    },
    /// An ICE candidate of the other device (on a device that accepted, the caller's
    /// candidates sent while it rang come right after [`CallEvent::Connected`]'s accept).
    Candidate {
        /// The call.
        call: CallId,
        /// The candidate line.
        candidate: String,
    },
    /// The call is over.
    Ended {
        /// The call.
        call: CallId,
        /// Why.
        reason: EndReason,
    },
}

/// A call as [`ClientHandle::calls`](crate::ClientHandle::calls) lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallInfo {
    /// The call.
    pub call: CallId,
    /// The 1:1 conversation.
    pub conv: ConvId,
    /// The other user.
    pub peer: UserId,
    /// Whether this device placed it.
    pub outgoing: bool,
    /// Whether it is a video call.
    pub video: bool,
    /// Where it stands.
    pub state: CallState,
    /// The caller's session description while the call rings here (as in
    /// [`CallEvent::Incoming`]): an app that starts or reloads meanwhile can still answer.
    pub offer: Option<String>,
}

/// How a call went, as the caller's device records it in the conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The call.
    pub call: CallId,
    /// Whether it was a video call.
    pub video: bool,
    /// How it ended.
    pub outcome: CallOutcome,
}

/// How a call ended (see [`CallRecord`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallOutcome {
    /// Nobody answered (or the caller gave up first).
    Missed,
    /// The callee declined.
    Declined,
    /// The callee was in another call.
    Busy,
    /// It was answered, and lasted this long.
    Completed {
        /// Seconds from the answer to the end.
        seconds: u64,
    },
}

impl CallRecord {
    /// The message class it is sent as: a missed call counts as unread.
    pub(crate) fn class(&self) -> MessageClass {
        match self.outcome {
            CallOutcome::Missed => MessageClass::Content,
            CallOutcome::Declined | CallOutcome::Busy | CallOutcome::Completed { .. } => {
                MessageClass::Control
            }
        }
    }
}
