//! Call signaling on the wire: what one device tells the devices of a 1:1 conversation,
//! inside an ephemeral body sealed under the epoch's exported key (see
//! `conversations::ephemeral`). Never stored by the relay; lost when nobody of the other
//! user is online (the caller's ring timeout then records a missed call).

use ferry_protocol::DeviceId;
use serde::{Deserialize, Serialize};

use super::CallId;

/// Longest session description (SDP) an offer or answer carries: the whole sealed body
/// stays under the relay's ephemeral limit (16 KiB).
pub const MAX_SDP_LEN: usize = 12 * 1024;
/// Longest ICE candidate line.
pub const MAX_CANDIDATE_LEN: usize = 1024;

/// One call signal (postcard; variants are never reordered, new ones are appended).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CallSignal {
    /// The caller's offer: every online device of the callee rings.
    Offer {
        /// The call.
        call: CallId,
        /// Whether it is a video call.
        video: bool,
        /// The caller's session description.
        sdp: String,
        /// The caller's clock when it called (ms since the Unix epoch): an offer much
        /// older or newer than the callee's clock is a replay and does not ring.
        sent_at: u64,
    },
    /// A callee device rings.
    Ringing {
        /// The call.
        call: CallId,
    },
    /// A callee device is in another call.
    Busy {
        /// The call.
        call: CallId,
    },
    /// A callee device answers (the first the caller hears wins, see `Selected`).
    Accept {
        /// The call.
        call: CallId,
        /// The callee device's session description.
        sdp: String,
    },
    /// The caller's choice among the devices that accepted: the others stop.
    Selected {
        /// The call.
        call: CallId,
        /// The device the call is with.
        device: DeviceId,
    },
    /// The callee declined (on one device: all of its devices stop ringing).
    Decline {
        /// The call.
        call: CallId,
    },
    /// An ICE candidate of the sender.
    Candidate {
        /// The call.
        call: CallId,
        /// The candidate line (`candidate:…`).
        candidate: String,
    },
    /// The sender ended the call (or, the caller, stopped ringing).
    HangUp {
        /// The call.
        call: CallId,
    },
}

impl CallSignal {
    /// The call it is about.
    pub fn call(&self) -> CallId {
        match self {
            Self::Offer { call, .. }
            | Self::Ringing { call }
            | Self::Busy { call }
            | Self::Accept { call, .. }
            | Self::Selected { call, .. }
            | Self::Decline { call }
            | Self::Candidate { call, .. }
            | Self::HangUp { call } => *call,
        }
    }

    /// Whether its text fields are within the limits (checked on what is received too).
    pub fn within_limits(&self) -> bool {
        match self {
            Self::Offer { sdp, .. } | Self::Accept { sdp, .. } => sdp.len() <= MAX_SDP_LEN,
            Self::Candidate { candidate, .. } => candidate.len() <= MAX_CANDIDATE_LEN,
            Self::Ringing { .. }
            | Self::Busy { .. }
            | Self::Selected { .. }
            | Self::Decline { .. }
            | Self::HangUp { .. } => true,
        }
    }
}
