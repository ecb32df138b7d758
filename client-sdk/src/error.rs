//! Errors: [`StateError`] for the state folder, [`ClientError`] for everything a client does,
//! [`PairingError`] for pairing a device.
//!
//! Every error code a relay can send (in an `Error` frame, a handshake refusal or a WebSocket
//! close code `4000 + code`) maps to a [`ClientError`] variant through
//! [`ClientError::from_code`]; codes without a variant of their own keep their number in
//! [`ClientError::Relay`]. [`ClientError::is_permanent`] tells which errors stop the client
//! (reconnecting cannot fix them) and which it rides out by reconnecting with backoff.
//!
//! Only what arrives inside the encrypted channel (an `Error` frame, `ResyncRequired`, the
//! encrypted `SessionStart::Rejected`) can stop the client or refuse an append. A close code
//! or the plaintext handshake `Reject` can be forged by anyone on the network path: the
//! connection reports them as [`ClientError::Unauthenticated`], which the client rides out.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_protocol::handshake::HandshakeError;
use ferry_protocol::{DeviceId, ErrorCode, IdentityError, RelayId};

/// Why the state folder could not be created, opened or written.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause (shared, so errors can be handed to several waiters).
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A file holds something this client did not write.
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// [`account::create`](crate::account::create) found a state already there.
    #[error("{} already holds a Ferry state", .0.display())]
    AlreadyExists(PathBuf),
    /// [`ClientState::open`](crate::ClientState::open) found no state.
    #[error("{} holds no Ferry state (create one first, e.g. `ferry init`)", .0.display())]
    NotFound(PathBuf),
    /// Another client (another process, or another `ClientState` in this one) has it open.
    #[error("{} is in use by another Ferry client", .0.display())]
    Locked(PathBuf),
    /// The relay URL is not of the form `ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH`.
    #[error("invalid relay URL {0:?}: expected ws://HOST:PORT/ws or wss://HOST:PORT/ws")]
    InvalidRelayUrl(String),
    /// The device chain given for a new state does not verify, or does not admit this
    /// device with its exchange key.
    #[error("the device chain does not fit this device: {0}")]
    ChainMismatch(String),
    /// The folder was made by a Ferry from before the device chain (it held the user key,
    /// which no device keeps any more). It cannot be converted.
    #[error(
        "{} was made by an earlier Ferry (with device certificates) and cannot be used any \
         more: make a new folder with `ferry init` (a new user) or `ferry pair`/`ferry join` \
         (this device joining the user again), then delete the old one",
        .0.display()
    )]
    OldFormat(PathBuf),
    /// The device name is too long or holds a control character.
    #[error("device name: {0}")]
    Identity(#[from] IdentityError),
}

impl StateError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// What went wrong talking to the relay, or with an event.
///
/// `Clone`, so one cause can be handed to every call waiting when the client stops.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The relay could not be reached, or the connection broke during the handshake. The
    /// client keeps retrying with backoff; appends wait in the outbox.
    #[error("relay unreachable: {0}")]
    RelayUnreachable(String),
    /// The `wss://` connection failed in TLS: the relay's certificate is not trusted (a
    /// private CA not given with [`Options::ca_file`](crate::Options::ca_file), an expired
    /// certificate, a name mismatch), or the port does not speak TLS. The client keeps
    /// retrying with backoff (a renewed certificate fixes it); [`Client::connect`](crate::Client::connect)
    /// reports it when no session opened in time.
    #[error("TLS with the relay failed: {0}")]
    Tls(String),
    /// The TLS settings cannot be used: the CA file is unreadable or holds no certificate,
    /// or the system has no root certificate. Permanent.
    #[error("TLS settings: {0}")]
    TlsConfig(String),
    /// The relay presented another identity key than the one pinned in the state: a
    /// misconfigured URL or a man in the middle. Permanent.
    #[error("the relay presented key {found}, not the pinned key {pinned}")]
    WrongRelayKey {
        /// The key pinned in the state.
        pinned: RelayId,
        /// The key the relay presented.
        found: RelayId,
    },
    /// A handshake signature did not verify (code 200). Permanent.
    #[error("handshake failed: {0}")]
    HandshakeFailed(String),
    /// This device was revoked by its user (code 203, inside the encrypted channel, or a
    /// revocation of this device in the device chain). Permanent: a revoked device key is
    /// never admitted again; pair the machine again as a new device (a new folder).
    #[error(
        "this device was revoked by its user; it can no longer act for the user (pair this \
         machine again as a new device, in a new folder)"
    )]
    Revoked,
    /// The relay does not know this device as one the user's device chain admits (code
    /// 205 at the handshake). Permanent.
    #[error("the relay does not know this device as one of the user's (code 205): pair it again")]
    NotAdmitted,
    /// The relay served device chain links that do not verify against the chain this
    /// device holds: a link forged, a device added without the user's signature, or history
    /// rewritten. The relay is misbehaving (or someone controls it). Permanent: nothing it
    /// serves is believed.
    #[error(
        "the relay served a device chain that does not verify (link {seqno}: {reason}); the \
         relay is misbehaving, nothing it says is believed"
    )]
    ChainRejected {
        /// The position of the first link that does not verify.
        seqno: u64,
        /// Why.
        reason: String,
    },
    /// The relay refused a device chain link (code 207): another device extended the chain
    /// first, or the signer is revoked.
    #[error("the relay refused the device chain link: {0}")]
    ChainLinkRefused(String),
    /// This device does not hold the key of the chain's current data-key epoch (its sealed
    /// key did not open), so it cannot seal new events. Permanent: recover with the
    /// recovery key, or pair the machine again.
    #[error(
        "this device cannot open the key of data-key epoch {epoch}; it cannot seal new events \
         (recover with the recovery key, or pair this machine again)"
    )]
    EpochKeyUnavailable {
        /// The epoch.
        epoch: u32,
    },
    /// The user already has as many devices as the relay allows (code 401). Permanent until
    /// another device is revoked.
    #[error("the user already has the maximum number of devices; revoke one first")]
    TooManyDevices,
    /// Client and relay share no protocol version (code 103). Permanent.
    #[error("the relay speaks no protocol version this client speaks; upgrade one side")]
    UnsupportedVersion,
    /// The relay no longer keeps the events after this device's cursor (code 302).
    /// Permanent: the app discards what it derived from the log and restarts from
    /// `earliest` with [`ClientState::resync`](crate::ClientState::resync).
    #[error(
        "the relay no longer has the events after this device's cursor; resync from {earliest}"
    )]
    ResyncRequired {
        /// The oldest event the relay still has (0 if it did not say).
        earliest: u64,
    },
    /// The relay answered "too many requests" (code 400). The client waits and retries
    /// appends by itself; this reaches the app only from other requests.
    #[error("rate limited by the relay; retry later")]
    RateLimited,
    /// The plaintext is too large for one event, or the relay refused the payload as too
    /// large (codes 101, 102). The event is not stored and leaves the outbox.
    #[error("payload of {len} bytes is too large for one event")]
    PayloadTooLarge {
        /// Length of the plaintext, or of the sealed payload when the relay refused it.
        len: usize,
    },
    /// The relay holds another payload under this device sequence (code 300): the state was
    /// restored from an old copy. The event leaves the outbox.
    #[error("device sequence {device_seq} was already used for another payload")]
    Conflict {
        /// The device sequence.
        device_seq: u64,
    },
    /// The relay stored this append once and its retention has removed it since (code 303):
    /// a retry that came too late. It is not stored again and leaves the outbox.
    #[error("device sequence {device_seq} was stored once and has expired from the relay's log")]
    AppendExpired {
        /// The device sequence.
        device_seq: u64,
    },
    /// An event's payload does not open with the data key of the epoch it names for its
    /// slot: it was sealed under another key (or an epoch this device never got, such as one
    /// after its revocation), or the relay tampered with it or moved it. The event is skipped
    /// once the app asks for the next one.
    #[error("event {seq} from device {device} (#{device_seq}) does not open with the data key")]
    Undecryptable {
        /// Stream sequence of the event.
        seq: u64,
        /// The device it claims to come from.
        device: DeviceId,
        /// Its device sequence.
        device_seq: u64,
    },
    /// The device to revoke is not an active device of the user's chain.
    #[error("device {0} is not an active device of this user")]
    UnknownDevice(DeviceId),
    /// The recovery key typed is not this account's: the relay holds no device chain for
    /// the user it stands for, or the chain is another user's.
    #[error(
        "this recovery key is not this account's: the relay knows no user for it (check the \
         key, and the relay)"
    )]
    WrongRecoveryKey,
    /// Any other code the relay sent.
    #[error("relay error {code}: {message}")]
    Relay {
        /// The code.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// The relay sent something the protocol does not allow. The client reconnects.
    #[error("protocol violation by the relay: {0}")]
    Protocol(String),
    /// A refusal that did not come through the authenticated channel: a WebSocket close
    /// code `4000 + code`, or the plaintext handshake `Reject`. Anyone on the network path
    /// can send these, so the client never acts on them beyond retrying: it reconnects with
    /// backoff and keeps its outbox. When the relay really refuses the device (revoked, say),
    /// the client learns it inside the encrypted channel at its next handshake
    /// ([`ClientError::Revoked`] and the others, permanent). Until then this is the warning
    /// the app sees in [`Status::last_error`](crate::Status::last_error): "the relay (or
    /// someone on the path) refuses this device".
    #[error(
        "the connection was refused with code {code} ({message}), unauthenticated: it may come \
         from the relay or from anyone on the network path; retrying"
    )]
    Unauthenticated {
        /// The code the close frame or the plaintext refusal carried.
        code: ErrorCode,
        /// The text that came with it.
        message: String,
    },
    /// The relay answered `Appended { seq }` for one of this device's appends, but the event
    /// the log holds at `seq` is not that append: the relay lied about where it stored it
    /// (or lost it). The event found there is delivered as usual; the append may be missing
    /// from the log. Reported once, through [`Client::next_event`](crate::Client::next_event).
    #[error(
        "the relay said this device's append #{device_seq} was stored as event {seq}, but the \
         log holds another event there"
    )]
    MisplacedAppend {
        /// This device's sequence number for the append.
        device_seq: u64,
        /// The stream sequence the relay gave for it.
        seq: u64,
    },
    /// Nothing was acknowledged in the time allowed; what is in the outbox stays there.
    #[error("timed out with {pending} event(s) not yet acknowledged by the relay")]
    Timeout {
        /// Events still in the outbox.
        pending: usize,
    },
    /// The client was closed (or its background task ended).
    #[error("the client is closed")]
    Closed,
    /// The state folder could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A people request (handles, contacts, profiles) was refused; the variant says why.
    #[error(transparent)]
    People(#[from] PeopleError),
    /// This device's MLS state could not do what a conversation needs (the message says
    /// what: not in the conversation, a message it cannot open, commits that kept losing).
    #[error("conversation: {0}")]
    Mls(String),
    /// A call cannot do what was asked (no such call, not ringing, already in a call, a
    /// session description over the limit; the message says which).
    #[error("call: {0}")]
    Call(String),
    /// A file could not be sent or received (see [`crate::attachments`]).
    #[error("attachment: {0}")]
    Attachment(#[from] crate::attachments::AttachmentError),
}

impl ClientError {
    /// The error a relay's code stands for, with the relay's explanation.
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        match code {
            ErrorCode::HandshakeFailed => Self::HandshakeFailed(message),
            ErrorCode::DeviceRevoked => Self::Revoked,
            ErrorCode::UnknownDevice => Self::NotAdmitted,
            ErrorCode::BadUserProof => Self::WrongRecoveryKey,
            ErrorCode::ChainLinkRefused => Self::ChainLinkRefused(message),
            ErrorCode::TooManyDevices => Self::TooManyDevices,
            ErrorCode::UnsupportedVersion => Self::UnsupportedVersion,
            ErrorCode::ResyncRequired => Self::ResyncRequired { earliest: 0 },
            ErrorCode::RateLimited => Self::RateLimited,
            _ => match PeopleError::from_code(code, &message) {
                Some(people) => Self::People(people),
                None => Self::Relay { code, message },
            },
        }
    }

    /// The error a WebSocket close code `4000 + code` names, if it carries one of Ferry's
    /// codes: what the code means, for messages and for pairing's one-shot answers.
    ///
    /// A close frame is never authenticated, so the client's connection does not act on
    /// this: it reports [`ClientError::Unauthenticated`] ([`unauthenticated_close`](Self::unauthenticated_close))
    /// and retries.
    pub fn from_close_code(close: u16, reason: &str) -> Option<Self> {
        ErrorCode::from_close_code(close).map(|code| Self::from_code(code, reason))
    }

    /// What a client makes of a close code `4000 + code`: [`ClientError::Unauthenticated`]
    /// (transient), if it carries one of Ferry's codes.
    pub fn unauthenticated_close(close: u16, reason: &str) -> Option<Self> {
        ErrorCode::from_close_code(close).map(|code| Self::Unauthenticated {
            code,
            message: reason.to_owned(),
        })
    }

    /// What the code of an unauthenticated refusal would mean had it been authenticated
    /// (itself for every other error).
    pub fn claimed(&self) -> Self {
        match self {
            Self::Unauthenticated { code, message } => Self::from_code(*code, message.clone()),
            other => other.clone(),
        }
    }

    /// Whether reconnecting cannot help: the client stops and reports it.
    ///
    /// Everything else (the relay unreachable, restarting, overloaded, a broken
    /// connection) the client rides out by reconnecting with backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::WrongRelayKey { .. }
            | Self::HandshakeFailed(_)
            | Self::Revoked
            | Self::NotAdmitted
            | Self::ChainRejected { .. }
            | Self::EpochKeyUnavailable { .. }
            | Self::WrongRecoveryKey
            | Self::TooManyDevices
            | Self::UnsupportedVersion
            | Self::ResyncRequired { .. }
            | Self::Closed
            | Self::TlsConfig(_)
            | Self::State(_) => true,
            Self::RelayUnreachable(_)
            | Self::Tls(_)
            | Self::RateLimited
            | Self::PayloadTooLarge { .. }
            | Self::Conflict { .. }
            | Self::AppendExpired { .. }
            | Self::Undecryptable { .. }
            | Self::UnknownDevice(_)
            | Self::ChainLinkRefused(_)
            | Self::Relay { .. }
            | Self::Protocol(_)
            | Self::Unauthenticated { .. }
            | Self::MisplacedAppend { .. }
            | Self::People(_)
            | Self::Mls(_)
            | Self::Call(_)
            | Self::Attachment(_)
            | Self::Timeout { .. } => false,
        }
    }
}

/// Why a people request (handles, contacts, blocks, profiles) failed: the relay's refusals
/// (codes 600–608, one variant each) and what this client found when it checked a contact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeopleError {
    /// 600: the handle or name breaks the handle rules.
    #[error("not a valid handle: {0}")]
    HandleInvalid(String),
    /// 601: every number of this name is taken.
    #[error("every number of this name is taken; choose another name")]
    HandleTaken,
    /// 602: there is no such request or contact to act on.
    #[error("there is no pending request or contact with this user")]
    NoSuchContact,
    /// 603: the daily contact-request limit is reached.
    #[error("too many contact requests today; try again tomorrow")]
    RequestLimit,
    /// 604: too many unanswered outgoing requests.
    #[error("too many unanswered contact requests; cancel some first")]
    PendingLimit,
    /// 605: the contact limit is reached.
    #[error("the contact limit is reached; remove some contacts first")]
    ContactLimit,
    /// 606: too many handle lookups in the last minute.
    #[error("too many handle lookups; wait a minute")]
    LookupLimit,
    /// 607: the other user is not a contact.
    #[error("this user is not a contact")]
    NotAContact,
    /// 609: the block limit is reached.
    #[error("the block limit is reached; unblock some users first")]
    BlockLimit,
    /// 608: the relay refused the request's introduction.
    #[error("the relay refused the introduction: {0}")]
    BadIntro(String),
    /// This client refused the request before sending it (a note or a profile too long, a
    /// control character in a display name).
    #[error("not valid: {0}")]
    Invalid(String),
    /// No user has this handle.
    #[error("nobody has the handle {0}")]
    NoSuchHandle(String),
    /// The other user's device chain, or what it signed, does not verify: the relay (or
    /// someone) served something the user did not sign. Nothing was accepted.
    #[error("the other user's identity does not verify: {0}")]
    Unverified(String),
}

impl PeopleError {
    /// The variant of one of the relay's people codes.
    pub fn from_code(code: ErrorCode, message: &str) -> Option<Self> {
        Some(match code {
            ErrorCode::HandleInvalid => Self::HandleInvalid(message.to_owned()),
            ErrorCode::HandleTaken => Self::HandleTaken,
            ErrorCode::NoSuchContact => Self::NoSuchContact,
            ErrorCode::RequestLimit => Self::RequestLimit,
            ErrorCode::PendingLimit => Self::PendingLimit,
            ErrorCode::ContactLimit => Self::ContactLimit,
            ErrorCode::LookupLimit => Self::LookupLimit,
            ErrorCode::NotAContact => Self::NotAContact,
            ErrorCode::BadIntro => Self::BadIntro(message.to_owned()),
            ErrorCode::BlockLimit => Self::BlockLimit,
            _ => return None,
        })
    }
}

/// Why pairing a device failed ([`crate::pairing`]).
///
/// The messages are written for the person pairing: each says what to do next, so a command
/// line or an app can show them as they are.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// The text typed is not a slot number, a dash and six digits (`7-402913`). Nothing was
    /// sent.
    #[error("a pairing code is a number, a dash and six digits, as in 7-402913")]
    BadCode,
    /// No pairing waits under this code (relay code 500).
    #[error("unknown code: check the code shown on the other device")]
    UnknownCode,
    /// The code expired before a device joined (relay code 501, or no joiner in time).
    #[error("code expired: start pairing again")]
    Expired,
    /// Another device already joined with this code, or it was burned (relay code 502).
    #[error("code already used: start pairing again for a new code")]
    CodeUsed,
    /// The two devices did not hold the same code (detected by either side, or relay code
    /// 504). The code is burned.
    #[error("wrong code: the code is burned, start pairing again")]
    WrongCode,
    /// The inviter turned the device down ([`PendingDevice::refuse`](crate::pairing::PendingDevice::refuse)),
    /// as its user did not confirm it.
    #[error("the other device refused the pairing")]
    Refused,
    /// The other device went away before pairing finished.
    #[error("the other device left before pairing finished: start pairing again")]
    PeerLeft,
    /// The relay limits join attempts per address (relay code 400).
    #[error("too many pairing attempts: wait a minute, then try again")]
    RateLimited,
    /// The relay has no free pairing slot (relay code 503).
    #[error("the relay has no free pairing slot right now: try again in a minute")]
    NoFreeSlot,
    /// The relay could not be reached or the connection broke.
    #[error("relay unreachable: {0}")]
    RelayUnreachable(String),
    /// The relay presented another key than the one given (or pinned): a wrong `--relay-key`,
    /// a wrong URL, or a man in the middle.
    #[error("the relay presented key {found}, not {pinned}: check the relay URL and key")]
    WrongRelayKey {
        /// The key expected.
        pinned: RelayId,
        /// The key the relay presented.
        found: RelayId,
    },
    /// The device name is longer than [`MAX_DEVICE_NAME_LEN`](crate::limits::MAX_DEVICE_NAME_LEN)
    /// bytes. Nothing was sent.
    #[error(
        "the device name is longer than {} bytes",
        ferry_protocol::limits::MAX_DEVICE_NAME_LEN
    )]
    NameTooLong,
    /// The device name contains a control character (NUL, escape, newline...). Nothing was
    /// sent.
    #[error("the device name contains a control character")]
    NameHasControl,
    /// The other device sent something the pairing protocol does not allow.
    #[error("pairing failed: {0}")]
    Protocol(String),
    /// The relay refused the inviting device or failed in another way.
    #[error(transparent)]
    Client(ClientError),
    /// The new device's state folder could not be written (or already holds a state).
    #[error(transparent)]
    State(#[from] StateError),
}

impl PairingError {
    /// The error a relay's code stands for during pairing.
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::from(ClientError::from_code(code, message))
    }

    /// The pairing errors among the relay's codes.
    fn pairing(code: ErrorCode) -> Option<Self> {
        Some(match code {
            ErrorCode::PairingUnknownCode => Self::UnknownCode,
            ErrorCode::PairingExpired => Self::Expired,
            ErrorCode::PairingCodeUsed => Self::CodeUsed,
            ErrorCode::PairingFailed => Self::WrongCode,
            ErrorCode::PairingSlotTaken => Self::NoFreeSlot,
            _ => return None,
        })
    }
}

impl From<ClientError> for PairingError {
    fn from(error: ClientError) -> Self {
        // A pairing is one attempt that fails on any disconnect, whatever its cause; a close
        // code only says which message to show, so it is read for what it claims. Nothing is
        // kept from it.
        let error = match error {
            unauthenticated @ ClientError::Unauthenticated { .. } => unauthenticated.claimed(),
            other => other,
        };
        match error {
            ClientError::RelayUnreachable(why) => Self::RelayUnreachable(why),
            ClientError::WrongRelayKey { pinned, found } => Self::WrongRelayKey { pinned, found },
            ClientError::RateLimited => Self::RateLimited,
            ClientError::State(e) => Self::State(e),
            ClientError::Relay {
                code: ErrorCode::Unavailable,
                message,
            } => Self::RelayUnreachable(format!("the relay is unavailable ({message})")),
            ClientError::Relay { code, message } => {
                Self::pairing(code).unwrap_or(Self::Client(ClientError::Relay { code, message }))
            }
            other => Self::Client(other),
        }
    }
}

impl From<ferry_protocol::pairing::PairingError> for PairingError {
    fn from(error: ferry_protocol::pairing::PairingError) -> Self {
        use ferry_protocol::pairing::PairingError as Protocol;
        match error {
            Protocol::BadCode => Self::BadCode,
            Protocol::WrongCode => Self::WrongCode,
            Protocol::Identity(IdentityError::NameTooLong) => Self::NameTooLong,
            Protocol::Identity(IdentityError::NameHasControl) => Self::NameHasControl,
            other => Self::Protocol(other.to_string()),
        }
    }
}

impl From<HandshakeError> for ClientError {
    fn from(error: HandshakeError) -> Self {
        match error {
            HandshakeError::WrongRelayKey { pinned, found } => {
                Self::WrongRelayKey { pinned, found }
            }
            // Only `SessionStart::Rejected` reaches here as `Rejected`: it is encrypted and
            // so the relay's own word. `connection.rs` takes the plaintext `Reject` of the
            // ServerHello step apart before (as `Unauthenticated`).
            HandshakeError::Rejected(frame) => Self::from_code(frame.code, frame.message),
            HandshakeError::UnsupportedVersion { .. } => Self::UnsupportedVersion,
            HandshakeError::BadRelaySignature
            | HandshakeError::WeakKey
            | HandshakeError::SessionMismatch => Self::HandshakeFailed(error.to_string()),
            HandshakeError::BadUserProof => Self::WrongRecoveryKey,
            // A garbled or cut handshake message: the network, not the identities.
            other => Self::RelayUnreachable(format!("handshake: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_and_close_codes_round_trip() {
        for code in ErrorCode::ALL {
            let error = ClientError::from_close_code(code.close_code(), "why")
                .unwrap_or_else(|| panic!("{code:?} has a close code"));
            if let ClientError::Relay {
                code: kept,
                message,
            } = &error
            {
                assert_eq!((*kept, message.as_str()), (code, "why"));
            }
        }
        assert!(matches!(
            ClientError::from_close_code(4203, ""),
            Some(ClientError::Revoked)
        ));
        assert!(ClientError::from_close_code(1001, "").is_none());
    }

    #[test]
    fn pairing_errors_map_from_the_relay_codes() {
        let cases = [
            (ErrorCode::PairingUnknownCode, "unknown code"),
            (ErrorCode::PairingExpired, "code expired"),
            (ErrorCode::PairingCodeUsed, "code already used"),
            (ErrorCode::PairingFailed, "wrong code"),
            (
                ErrorCode::PairingSlotTaken,
                "the relay has no free pairing slot",
            ),
            (ErrorCode::RateLimited, "too many pairing attempts"),
            (ErrorCode::Unavailable, "relay unreachable"),
        ];
        for (code, shown) in cases {
            let from_frame = PairingError::from_code(code, "why").to_string();
            assert!(from_frame.starts_with(shown), "{code:?}: {from_frame}");
            let from_close = ClientError::from_close_code(code.close_code(), "why")
                .map(PairingError::from)
                .map(|e| e.to_string());
            assert_eq!(from_close.as_deref(), Some(from_frame.as_str()));
        }
        assert!(matches!(
            PairingError::from_code(ErrorCode::DeviceRevoked, ""),
            PairingError::Client(ClientError::Revoked)
        ));
        assert!(matches!(
            PairingError::from(ClientError::Relay {
                code: ErrorCode::Internal,
                message: "x".into()
            }),
            PairingError::Client(ClientError::Relay {
                code: ErrorCode::Internal,
                ..
            })
        ));
        assert!(matches!(
            PairingError::from(ferry_protocol::pairing::PairingError::WrongCode),
            PairingError::WrongCode
        ));
    }

    #[test]
    fn permanence() {
        assert!(ClientError::Revoked.is_permanent());
        assert!(ClientError::ResyncRequired { earliest: 3 }.is_permanent());
        assert!(!ClientError::RelayUnreachable("refused".into()).is_permanent());
        assert!(!ClientError::from_code(ErrorCode::Unavailable, "").is_permanent());
        assert!(!ClientError::from_code(ErrorCode::SlowConsumer, "").is_permanent());
    }
}
