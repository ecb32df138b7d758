//! Frames exchanged after the handshake, inside the encrypted channel.
//!
//! A client sends [`ClientFrame`]s and a relay sends [`ServerFrame`]s; the split is in the
//! types, so a relay can never be tricked into treating `Events` as a request.
//!
//! The conversation of an authenticated device:
//!
//! 1. The relay replays the log after the device's cursor in `Events` pages, then sends
//!    `CaughtUp` (or `ResyncRequired` when retention has dropped events past the cursor).
//! 2. Live: every event appended by any of the user's devices reaches the others in `Events`.
//! 3. The device appends with `Append { device_seq, payload }`; the relay answers `Appended`
//!    only once the event is committed. A retry with the same `device_seq` and payload gets the
//!    original stream sequence; a different payload gets `Error(Conflict)`.
//! 4. The device sends `Ack { seq }` once the app holds everything up to `seq`; the relay
//!    stores it as the device's cursor.
//! 5. `Ephemeral` frames go to the user's other online devices and are never stored.
//!
//! The device chain (`Chain*`): a device appends a signed link (admit, revoke, rotate) with
//! `ChainAppend`; the relay checks it against the user's chain and answers `ChainAppended`, or
//! `Error(chain_link_refused)`. `ChainFetch { after }` returns the links after a position in
//! `ChainLinks` pages; `ChainGrew` tells every session of the user that the chain is longer.
//!
//! Pairing frames (`Pair*`) carry opaque PAKE messages between two devices; the relay
//! forwards them between the two ends of a slot and never reads them.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::chain::Link;
use crate::codec::{DecodeError, Wire, check_len};
use crate::identity::DeviceId;
use crate::limits::*;

/// An event payload sealed by the client; opaque to the relay.
///
/// The layout (see [`crate::seal`]) is a format byte, a 24-byte nonce and the
/// XChaCha20-Poly1305 ciphertext with its tag. The relay stores and forwards it untouched.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPayload(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for SealedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedPayload({} bytes)", self.0.len())
    }
}

/// A device appends one sealed event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    /// The sender's own sequence number for this event, from 1, never reused.
    pub device_seq: u64,
    /// The sealed payload.
    pub payload: SealedPayload,
}

/// One stored event as the relay delivers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the user's log: per user, from 1, gapless, in commit order.
    pub seq: u64,
    /// The device that appended it.
    pub device: DeviceId,
    /// The sending device's sequence number for it.
    pub device_seq: u64,
    /// The sealed payload, as the device sent it.
    pub payload: SealedPayload,
}

/// An error reported by the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation (at most [`MAX_ERROR_MESSAGE_LEN`] bytes).
    pub message: String,
    /// The `device_seq` of the append this error answers, if it answers one.
    pub device_seq: Option<u64>,
}

impl ErrorFrame {
    /// An error with the code's own description as its message.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: code.description().to_owned(),
            device_seq: None,
        }
    }

    /// An error with a specific message, cut to the length limit on a character boundary.
    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut end = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self {
            code,
            message,
            device_seq: None,
        }
    }

    /// The same error, answering the append with `device_seq`.
    pub fn for_append(mut self, device_seq: u64) -> Self {
        self.device_seq = Some(device_seq);
        self
    }
}

/// One of the user's devices, as listed by the relay. Informational: which devices act for
/// the user is the device chain's word, which clients verify themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device.
    pub device: DeviceId,
    /// Its name, from the chain link that admitted it.
    pub name: String,
    /// When the relay last saw it connect, in seconds since the Unix epoch.
    pub last_seen: u64,
    /// Whether the chain has revoked it.
    pub revoked: bool,
}

/// Frames a client sends after the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Append one sealed event to the user's log.
    Append(Append),
    /// Everything up to and including `seq` is safely held by the app.
    Ack {
        /// The highest stream sequence the device holds, cumulative.
        seq: u64,
    },
    /// A body for the user's other online devices, never stored.
    Ephemeral {
        /// Opaque, sealed by the client.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Liveness check; the relay answers `Pong` with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to the relay's `Ping`.
    Pong {
        /// The nonce of the `Ping`.
        nonce: u64,
    },
    /// Ask for the user's devices.
    ListDevices,
    /// Append a link to the user's device chain (admit, revoke, rotate); the relay answers
    /// `ChainAppended` or `Error(chain_link_refused)`.
    ChainAppend(Box<Link>),
    /// An authenticated device asks for a pairing slot; the relay picks its number and
    /// answers `PairOpened` (see the pairing section of the spec).
    PairOpen,
    /// An unauthenticated device joins slot `slot` with its first PAKE message.
    PairJoin {
        /// The slot number: the part of the code before the dash (public, it only routes).
        slot: u16,
        /// Opaque PAKE message.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Either side sends the next PAKE message to the other end of its slot.
    PairForward {
        /// The slot.
        slot: u16,
        /// Opaque PAKE message.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Either side ends the pairing; `success` tells the relay whether the code was right.
    PairClose {
        /// The slot.
        slot: u16,
        /// Whether the exchange succeeded.
        success: bool,
    },
    /// Ask for the chain's links after position `after` (0: from the first); the relay
    /// answers with one or more `ChainLinks` frames.
    ChainFetch {
        /// The position of the last link the device holds.
        after: u64,
    },
}

/// Frames a relay sends after the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The append with `device_seq` is committed at stream sequence `seq`.
    Appended {
        /// The sender's sequence number.
        device_seq: u64,
        /// Where it sits in the user's log.
        seq: u64,
    },
    /// One or more events, in stream order (the spec's `Event` frame, batched).
    Events(Vec<Event>),
    /// Replay is done: everything up to `head` was sent; live events follow.
    CaughtUp {
        /// The user's log head when replay ended.
        head: u64,
    },
    /// The cursor is below what the relay keeps; the device must resync.
    ResyncRequired {
        /// The oldest stream sequence the relay still has.
        earliest: u64,
    },
    /// An ephemeral body from another of the user's devices.
    Ephemeral {
        /// The sending device.
        from: DeviceId,
        /// Opaque, sealed by the sender.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// An error; whether the connection ends depends on the code (see the spec).
    Error(ErrorFrame),
    /// Liveness check; the client answers `Pong`.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to the client's `Ping`.
    Pong {
        /// The nonce of the `Ping`.
        nonce: u64,
    },
    /// The user's devices.
    Devices(Vec<DeviceInfo>),
    /// The link sent with `ChainAppend` is stored at position `seqno`.
    ChainAppended {
        /// Its position in the chain.
        seqno: u64,
    },
    /// A pairing slot is open until `expires_at`.
    PairOpened {
        /// The slot the relay assigned: the part of the code before the dash.
        slot: u16,
        /// Expiry, in milliseconds since the Unix epoch.
        expires_at: u64,
    },
    /// A PAKE message from the other end of the slot.
    PairPeer {
        /// The slot.
        slot: u16,
        /// Opaque PAKE message.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// The slot is closed (`code` says why when it did not succeed).
    PairClosed {
        /// The slot.
        slot: u16,
        /// `None` on success.
        code: Option<ErrorCode>,
    },
    /// Links of the chain, in order, answering `ChainFetch`. `more` says another page follows.
    ChainLinks {
        /// Consecutive links, the first right after the `after` asked for.
        links: Vec<Link>,
        /// Whether more links follow in another `ChainLinks` frame.
        more: bool,
    },
    /// The user's chain now has `seqno` links: fetch the ones you lack.
    ChainGrew {
        /// The chain's length.
        seqno: u64,
    },
}

/// Most links in one `ChainLinks` frame (a relay also keeps a frame under the frame limit).
pub const MAX_LINKS_PER_FRAME: usize = 256;

impl Wire for ClientFrame {
    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Self::Append(append) => check_len("payload", append.payload.0.len(), MAX_PAYLOAD_LEN),
            Self::Ephemeral { body } => check_len("ephemeral body", body.len(), MAX_EPHEMERAL_LEN),
            Self::PairJoin { body, .. } | Self::PairForward { body, .. } => {
                check_len("pairing body", body.len(), MAX_PAIRING_BODY_LEN)
            }
            Self::ChainAppend(link) => link.check_limits(),
            Self::ChainFetch { .. }
            | Self::Ack { .. }
            | Self::Ping { .. }
            | Self::Pong { .. }
            | Self::ListDevices
            | Self::PairOpen
            | Self::PairClose { .. } => Ok(()),
        }
    }
}

impl Wire for ServerFrame {
    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Self::Events(events) => {
                check_len("events", events.len(), MAX_EVENTS_PER_FRAME)?;
                events
                    .iter()
                    .try_for_each(|e| check_len("payload", e.payload.0.len(), MAX_PAYLOAD_LEN))
            }
            Self::Ephemeral { body, .. } => {
                check_len("ephemeral body", body.len(), MAX_EPHEMERAL_LEN)
            }
            Self::Error(error) => {
                check_len("error message", error.message.len(), MAX_ERROR_MESSAGE_LEN)
            }
            Self::Devices(devices) => {
                check_len("devices", devices.len(), MAX_DEVICES_PER_FRAME)?;
                devices
                    .iter()
                    .try_for_each(|d| check_len("device name", d.name.len(), MAX_DEVICE_NAME_LEN))
            }
            Self::PairPeer { body, .. } => {
                check_len("pairing body", body.len(), MAX_PAIRING_BODY_LEN)
            }
            Self::ChainLinks { links, .. } => {
                check_len("links", links.len(), MAX_LINKS_PER_FRAME)?;
                links.iter().try_for_each(Wire::check_limits)
            }
            Self::Appended { .. }
            | Self::CaughtUp { .. }
            | Self::ResyncRequired { .. }
            | Self::Ping { .. }
            | Self::Pong { .. }
            | Self::ChainAppended { .. }
            | Self::ChainGrew { .. }
            | Self::PairOpened { .. }
            | Self::PairClosed { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn error_messages_are_cut_to_the_limit_on_a_character_boundary() {
        // Short and exactly-at-the-limit messages are kept whole.
        assert_eq!(
            ErrorFrame::with_message(ErrorCode::Internal, "short").message,
            "short"
        );
        let exact = "x".repeat(MAX_ERROR_MESSAGE_LEN);
        assert_eq!(
            ErrorFrame::with_message(ErrorCode::Internal, exact.clone()).message,
            exact
        );
        // ASCII is cut at the limit.
        let long = "y".repeat(MAX_ERROR_MESSAGE_LEN + 500);
        assert_eq!(
            ErrorFrame::with_message(ErrorCode::Internal, long.clone()).message,
            long[..MAX_ERROR_MESSAGE_LEN]
        );
        // "a" then two-byte characters: byte MAX_ERROR_MESSAGE_LEN falls inside one, so the cut
        // goes back one byte rather than splitting it (or going past the limit).
        let text = format!("a{}", "é".repeat(MAX_ERROR_MESSAGE_LEN));
        let frame = ErrorFrame::with_message(ErrorCode::Internal, text.clone());
        assert_eq!(frame.message.len(), MAX_ERROR_MESSAGE_LEN - 1);
        assert!(text.starts_with(&frame.message));
        // Whatever the cut, the frame still decodes at the peer.
        let wire = codec::encode(&ServerFrame::Error(frame.clone()));
        assert_eq!(
            codec::decode::<ServerFrame>(&wire),
            Ok(ServerFrame::Error(frame))
        );
    }

    #[test]
    fn an_error_answering_an_append_names_it() {
        let error = ErrorFrame::new(ErrorCode::Conflict);
        assert_eq!(error.device_seq, None);
        assert_eq!(error.message, ErrorCode::Conflict.description());
        assert_eq!(error.for_append(9).device_seq, Some(9));
    }

    #[test]
    fn payloads_print_their_length_not_their_bytes() {
        let payload = SealedPayload(vec![0xab; 300]);
        assert_eq!(format!("{payload:?}"), "SealedPayload(300 bytes)");
    }
}
