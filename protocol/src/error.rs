//! Stable error codes: the numbers that cross the wire.
//!
//! Every error the relay reports to a client carries one of these codes, in an
//! [`ErrorFrame`](crate::ErrorFrame), a handshake rejection, or (offset by
//! [`ErrorCode::CLOSE_CODE_BASE`]) a WebSocket close code. The numbers never
//! change once released; new codes are appended. A peer that receives a code it
//! does not know keeps it as [`ErrorCode::Unknown`].
//!
//! Ranges: 1xx framing and protocol, 2xx handshake and identity, 3xx the event
//! log, 4xx limits, 5xx pairing, 6xx people (handles, contacts), 9xx the relay itself.

use serde::{Deserialize, Serialize};

/// A stable, numbered error code. See `docs/protocol.md` for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 100: a frame could not be decoded.
    MalformedFrame,
    /// 101: a frame is larger than the limit.
    FrameTooLarge,
    /// 102: an event payload or ephemeral body is larger than the limit.
    PayloadTooLarge,
    /// 103: no protocol version is supported by both sides.
    UnsupportedVersion,
    /// 104: a frame arrived that is not allowed at this point.
    UnexpectedFrame,
    /// 105: an encrypted frame failed to authenticate.
    DecryptFailed,
    /// 200: a handshake signature or key did not verify.
    HandshakeFailed,
    /// 201: the handshake did not finish in time.
    HandshakeTimeout,
    /// 202: retired (device certificates, before the device chain); never sent any more.
    BadCertificate,
    /// 203: this device has been revoked by its user.
    DeviceRevoked,
    /// 204: retired (user-key revocations, before the device chain); never sent any more.
    BadRevocation,
    /// 205: the device is not admitted by the user's device chain (at the handshake), or a
    /// device named in a request is not the user's.
    UnknownDevice,
    /// 206: the recovery proof (the user key's signature over the handshake) does not verify.
    BadUserProof,
    /// 207: a device chain link does not extend the user's chain.
    ChainLinkRefused,
    /// 300: the device sequence was already used for a different payload.
    Conflict,
    /// 301: the device sequence is invalid (device sequences start at 1).
    InvalidSequence,
    /// 302: the cursor is below what the relay still keeps, or beyond its head.
    ResyncRequired,
    /// 303: the append was stored once and retention has removed it since.
    AppendExpired,
    /// 304: the event is sealed under a data-key epoch the user's chain has replaced.
    StaleEpoch,
    /// 400: too many requests in too little time.
    RateLimited,
    /// 401: the user already has the maximum number of devices.
    TooManyDevices,
    /// 402: the relay is at its connection limit.
    TooManyConnections,
    /// 403: the device did not read its frames fast enough.
    SlowConsumer,
    /// 404: newer sessions of the same device replaced this one on this relay node.
    SessionReplaced,
    /// 405: the user's storage quota is full.
    QuotaExceeded,
    /// 500: no pairing slot is open for this code.
    PairingUnknownCode,
    /// 501: the pairing code has expired.
    PairingExpired,
    /// 502: the pairing code was already used.
    PairingCodeUsed,
    /// 503: the pairing slot is already open for another device.
    PairingSlotTaken,
    /// 504: the pairing exchange failed; the code was wrong and is now burned.
    PairingFailed,
    /// 600: a handle or handle name breaks the rules.
    HandleInvalid,
    /// 601: every number (00-99) of the name is taken.
    HandleTaken,
    /// 602: no pending request or contact with that user to act on.
    NoSuchContact,
    /// 603: the daily contact-request limit is reached.
    RequestLimit,
    /// 604: the limit of unanswered outgoing requests is reached.
    PendingLimit,
    /// 605: the contact limit is reached.
    ContactLimit,
    /// 606: too many handle lookups in the last minute.
    LookupLimit,
    /// 607: the other user is not a contact.
    NotAContact,
    /// 608: a contact request's intro does not verify or names the wrong users.
    BadIntro,
    /// 609: the user has blocked the most users allowed.
    BlockLimit,
    /// 700: no such conversation, or this device is not one of its members.
    NoSuchConversation,
    /// 701: a conversation with this id exists already.
    ConversationExists,
    /// 702: the relay's MLS checks refused a message, GroupInfo or KeyPackage.
    MlsRefused,
    /// 703: a commit would leave a user with only some of its devices in the group, add a
    /// device its chain does not admit, or change members without the group's admin role.
    MembershipRefused,
    /// 704: the device's KeyPackage pool is full.
    KeyPackageLimit,
    /// 800: this relay hands out no TURN credentials (none configured).
    TurnUnavailable,
    /// 801: a push target the relay cannot use.
    PushTargetInvalid,
    /// 810: an attachment larger than the relay stores.
    AttachmentTooLarge,
    /// 811: no such attachment, or this device may not read it.
    NoSuchAttachment,
    /// 812: the attachment is not uploaded completely yet.
    AttachmentIncomplete,
    /// 813: the uploaded attachment does not match its digest.
    AttachmentCorrupt,
    /// 900: the relay hit an internal error.
    Internal,
    /// 901: the relay is shutting down or its storage is unavailable.
    Unavailable,
    /// A code this build does not know (sent by a newer peer).
    Unknown(u16),
}

impl ErrorCode {
    /// WebSocket close codes 4000–4999 are for applications; Ferry closes a
    /// connection with `CLOSE_CODE_BASE + code` (for codes below 1000).
    pub const CLOSE_CODE_BASE: u16 = 4000;

    /// Every known code, in numeric order (used by the docs and tests).
    pub const ALL: [ErrorCode; 53] = [
        Self::MalformedFrame,
        Self::FrameTooLarge,
        Self::PayloadTooLarge,
        Self::UnsupportedVersion,
        Self::UnexpectedFrame,
        Self::DecryptFailed,
        Self::HandshakeFailed,
        Self::HandshakeTimeout,
        Self::BadCertificate,
        Self::DeviceRevoked,
        Self::BadRevocation,
        Self::UnknownDevice,
        Self::BadUserProof,
        Self::ChainLinkRefused,
        Self::Conflict,
        Self::InvalidSequence,
        Self::ResyncRequired,
        Self::AppendExpired,
        Self::StaleEpoch,
        Self::RateLimited,
        Self::TooManyDevices,
        Self::TooManyConnections,
        Self::SlowConsumer,
        Self::SessionReplaced,
        Self::QuotaExceeded,
        Self::PairingUnknownCode,
        Self::PairingExpired,
        Self::PairingCodeUsed,
        Self::PairingSlotTaken,
        Self::PairingFailed,
        Self::HandleInvalid,
        Self::HandleTaken,
        Self::NoSuchContact,
        Self::RequestLimit,
        Self::PendingLimit,
        Self::ContactLimit,
        Self::LookupLimit,
        Self::NotAContact,
        Self::BadIntro,
        Self::BlockLimit,
        Self::NoSuchConversation,
        Self::ConversationExists,
        Self::MlsRefused,
        Self::MembershipRefused,
        Self::KeyPackageLimit,
        Self::TurnUnavailable,
        Self::PushTargetInvalid,
        Self::AttachmentTooLarge,
        Self::NoSuchAttachment,
        Self::AttachmentIncomplete,
        Self::AttachmentCorrupt,
        Self::Internal,
        Self::Unavailable,
    ];

    /// The number on the wire.
    pub const fn number(self) -> u16 {
        match self {
            Self::MalformedFrame => 100,
            Self::FrameTooLarge => 101,
            Self::PayloadTooLarge => 102,
            Self::UnsupportedVersion => 103,
            Self::UnexpectedFrame => 104,
            Self::DecryptFailed => 105,
            Self::HandshakeFailed => 200,
            Self::HandshakeTimeout => 201,
            Self::BadCertificate => 202,
            Self::DeviceRevoked => 203,
            Self::BadRevocation => 204,
            Self::UnknownDevice => 205,
            Self::BadUserProof => 206,
            Self::ChainLinkRefused => 207,
            Self::Conflict => 300,
            Self::InvalidSequence => 301,
            Self::ResyncRequired => 302,
            Self::AppendExpired => 303,
            Self::StaleEpoch => 304,
            Self::RateLimited => 400,
            Self::TooManyDevices => 401,
            Self::TooManyConnections => 402,
            Self::SlowConsumer => 403,
            Self::SessionReplaced => 404,
            Self::QuotaExceeded => 405,
            Self::PairingUnknownCode => 500,
            Self::PairingExpired => 501,
            Self::PairingCodeUsed => 502,
            Self::PairingSlotTaken => 503,
            Self::PairingFailed => 504,
            Self::HandleInvalid => 600,
            Self::HandleTaken => 601,
            Self::NoSuchContact => 602,
            Self::RequestLimit => 603,
            Self::PendingLimit => 604,
            Self::ContactLimit => 605,
            Self::LookupLimit => 606,
            Self::NotAContact => 607,
            Self::BadIntro => 608,
            Self::BlockLimit => 609,
            Self::NoSuchConversation => 700,
            Self::ConversationExists => 701,
            Self::MlsRefused => 702,
            Self::MembershipRefused => 703,
            Self::KeyPackageLimit => 704,
            Self::TurnUnavailable => 800,
            Self::PushTargetInvalid => 801,
            Self::AttachmentTooLarge => 810,
            Self::NoSuchAttachment => 811,
            Self::AttachmentIncomplete => 812,
            Self::AttachmentCorrupt => 813,
            Self::Internal => 900,
            Self::Unavailable => 901,
            Self::Unknown(n) => n,
        }
    }

    /// A short stable name, used in logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::MalformedFrame => "malformed_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnexpectedFrame => "unexpected_frame",
            Self::DecryptFailed => "decrypt_failed",
            Self::HandshakeFailed => "handshake_failed",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::BadCertificate => "bad_certificate",
            Self::DeviceRevoked => "device_revoked",
            Self::BadRevocation => "bad_revocation",
            Self::UnknownDevice => "unknown_device",
            Self::BadUserProof => "bad_user_proof",
            Self::ChainLinkRefused => "chain_link_refused",
            Self::Conflict => "conflict",
            Self::InvalidSequence => "invalid_sequence",
            Self::ResyncRequired => "resync_required",
            Self::AppendExpired => "append_expired",
            Self::StaleEpoch => "stale_epoch",
            Self::RateLimited => "rate_limited",
            Self::TooManyDevices => "too_many_devices",
            Self::TooManyConnections => "too_many_connections",
            Self::SlowConsumer => "slow_consumer",
            Self::SessionReplaced => "session_replaced",
            Self::QuotaExceeded => "quota_exceeded",
            Self::PairingUnknownCode => "pairing_unknown_code",
            Self::PairingExpired => "pairing_expired",
            Self::PairingCodeUsed => "pairing_code_used",
            Self::PairingSlotTaken => "pairing_slot_taken",
            Self::PairingFailed => "pairing_failed",
            Self::HandleInvalid => "handle_invalid",
            Self::HandleTaken => "handle_taken",
            Self::NoSuchContact => "no_such_contact",
            Self::RequestLimit => "request_limit",
            Self::PendingLimit => "pending_limit",
            Self::ContactLimit => "contact_limit",
            Self::LookupLimit => "lookup_limit",
            Self::NotAContact => "not_a_contact",
            Self::BadIntro => "bad_intro",
            Self::BlockLimit => "block_limit",
            Self::NoSuchConversation => "no_such_conversation",
            Self::ConversationExists => "conversation_exists",
            Self::MlsRefused => "mls_refused",
            Self::MembershipRefused => "membership_refused",
            Self::KeyPackageLimit => "key_package_limit",
            Self::TurnUnavailable => "turn_unavailable",
            Self::PushTargetInvalid => "push_target_invalid",
            Self::AttachmentTooLarge => "attachment_too_large",
            Self::NoSuchAttachment => "no_such_attachment",
            Self::AttachmentIncomplete => "attachment_incomplete",
            Self::AttachmentCorrupt => "attachment_corrupt",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::Unknown(_) => "unknown",
        }
    }

    /// A sentence a developer can act on.
    pub const fn description(self) -> &'static str {
        match self {
            Self::MalformedFrame => {
                "A frame could not be decoded; the connection is closed. Check that client and relay run compatible Ferry versions."
            }
            Self::FrameTooLarge => {
                "A frame exceeded the relay's frame size limit; split the data into smaller events."
            }
            Self::PayloadTooLarge => {
                "An event payload or ephemeral body exceeded the size limit; store large blobs elsewhere and sync a reference."
            }
            Self::UnsupportedVersion => {
                "Client and relay share no protocol version; upgrade the older side."
            }
            Self::UnexpectedFrame => {
                "A frame arrived that is not allowed in this state (for example before the handshake finished, or a second ClientHello); the connection is closed."
            }
            Self::DecryptFailed => {
                "An encrypted frame was tampered with, replayed, reordered or truncated; the connection is closed. Reconnect."
            }
            Self::HandshakeFailed => {
                "A handshake signature did not verify or the relay key does not match the pinned key; check the pinned relay key."
            }
            Self::HandshakeTimeout => {
                "The handshake did not complete within the relay's time limit; check the network and retry."
            }
            Self::BadCertificate => {
                "Retired: device certificates were replaced by the device chain; upgrade the peer that sent it."
            }
            Self::DeviceRevoked => {
                "This device was revoked by its user and may no longer act for it; a revoked device key is never admitted again: pair the machine again as a new device."
            }
            Self::BadRevocation => {
                "Retired: revocations are device chain links now; upgrade the peer that sent it."
            }
            Self::UnknownDevice => {
                "This device is not admitted by the user's device chain (or a device named in the request is not the user's); pair it from another device, or recover with the recovery key."
            }
            Self::BadUserProof => {
                "The recovery proof does not verify: the user key derived from the recovery key is not this user's. Check the recovery key."
            }
            Self::ChainLinkRefused => {
                "The device chain link was refused: it does not extend the user's chain (another device extended it first), or its signer is revoked. Fetch the chain and try again."
            }
            Self::Conflict => {
                "This device sequence number was already used for a different payload; device sequences must never be reused."
            }
            Self::InvalidSequence => {
                "Device sequence numbers start at 1; 0 is not a valid device sequence."
            }
            Self::ResyncRequired => {
                "The device's cursor is older than the relay's retention, or beyond the relay's head (the relay's database went back in time); discard local state and resync from the earliest kept event."
            }
            Self::AppendExpired => {
                "This append was stored once and the relay's retention has removed it since; it is not stored again. Nothing needs resending."
            }
            Self::StaleEpoch => {
                "The event is sealed under a data-key epoch the user's device chain has replaced (a device was revoked or the key rotated); fetch the chain and seal it again under the current epoch."
            }
            Self::RateLimited => "Too many requests in too little time; back off and retry later.",
            Self::TooManyDevices => {
                "The user already has the maximum number of devices; revoke one before adding another."
            }
            Self::TooManyConnections => {
                "The relay is at its connection limit; retry later with backoff."
            }
            Self::SlowConsumer => {
                "The device did not read its frames fast enough and was disconnected; reconnect to resume from the cursor."
            }
            Self::SessionReplaced => {
                "Too many sessions of this device connected to this relay node, and this, the oldest, is closed. Never run two copies of one device's state folder."
            }
            Self::QuotaExceeded => {
                "The user's storage quota (events or bytes kept) is full; nothing more is stored until retention frees space or the operator raises the quota. Keep the event and retry later."
            }
            Self::PairingUnknownCode => {
                "No pairing is waiting for this code; check the code shown on the other device."
            }
            Self::PairingExpired => {
                "The pairing code expired; start pairing again on the other device for a new code."
            }
            Self::PairingCodeUsed => {
                "This pairing code was already used; start pairing again for a new code."
            }
            Self::PairingSlotTaken => {
                "The relay has no free pairing slot right now; start pairing again in a minute."
            }
            Self::PairingFailed => {
                "Pairing failed because the code did not match; the code is burned, start pairing again."
            }
            Self::HandleInvalid => {
                "The handle or name breaks the handle rules (3 to 24 letters a-z, digits or '_', see the docs); choose another."
            }
            Self::HandleTaken => "Every number of this name is taken; choose another name.",
            Self::NoSuchContact => {
                "There is no pending request or contact with this user to act on; refresh the contact list."
            }
            Self::RequestLimit => {
                "This user sent the most contact requests allowed in a day; try again tomorrow."
            }
            Self::PendingLimit => {
                "This user has the most unanswered contact requests allowed; cancel some before sending more."
            }
            Self::ContactLimit => {
                "This user has the most contacts allowed; remove some before adding more."
            }
            Self::LookupLimit => {
                "Too many handle lookups from this device or address in the last minute; wait a minute."
            }
            Self::NotAContact => {
                "This needs the other user to be a contact (profiles are shown to contacts only)."
            }
            Self::BadIntro => {
                "The request's introduction is not signed by this device for this user and its recipient, or is malformed; upgrade the client."
            }
            Self::BlockLimit => {
                "This user has blocked the most users allowed; unblock some before blocking more."
            }
            Self::NoSuchConversation => {
                "No such conversation, or this device is not a member of it (any more)."
            }
            Self::ConversationExists => {
                "A conversation with this id exists already; pick a new random id."
            }
            Self::MlsRefused => {
                "The relay's MLS checks refused the message (wrong group, epoch, signature or member); the message says which."
            }
            Self::MembershipRefused => {
                "The commit would add or remove only some of a user's devices, add a device its chain does not admit, or change members without the admin role."
            }
            Self::KeyPackageLimit => {
                "This device has the most KeyPackages the relay keeps; upload more once some are claimed."
            }
            Self::TurnUnavailable => {
                "This relay has no TURN server configured; calls connect only directly (peer to peer) or through the app's own TURN server."
            }
            Self::PushTargetInvalid => {
                "The push target was refused: the endpoint must be an https:// URL and the keys a P-256 public key and a 16-byte secret, as the browser's PushSubscription gives them."
            }
            Self::AttachmentTooLarge => {
                "The file is larger than this relay stores; send a smaller file or ask the operator to raise the limit."
            }
            Self::NoSuchAttachment => {
                "No such attachment, or it has expired or been deleted with its messages, or this device is not in a conversation that shares it."
            }
            Self::AttachmentIncomplete => {
                "The attachment is not completely uploaded yet; finish the upload before sending or fetching it."
            }
            Self::AttachmentCorrupt => {
                "The uploaded bytes do not match the attachment's digest (the file changed while it was uploaded, or the upload was corrupted); upload it again."
            }
            Self::Internal => {
                "The relay hit an internal error; retry, and report it to the operator if it persists."
            }
            Self::Unavailable => {
                "The relay is shutting down or its storage is unavailable; reconnect with backoff."
            }
            Self::Unknown(_) => "An error code this client does not know; upgrade the client.",
        }
    }

    /// The WebSocket close code a relay uses when it ends a connection for this reason.
    pub const fn close_code(self) -> u16 {
        let n = self.number();
        if n < 1000 {
            Self::CLOSE_CODE_BASE + n
        } else {
            Self::CLOSE_CODE_BASE
        }
    }

    /// The error code carried by a WebSocket close code, if it is one of Ferry's.
    pub fn from_close_code(close: u16) -> Option<Self> {
        (Self::CLOSE_CODE_BASE + 1..Self::CLOSE_CODE_BASE + 1000)
            .contains(&close)
            .then(|| Self::from(close - Self::CLOSE_CODE_BASE))
    }
}

impl From<u16> for ErrorCode {
    fn from(n: u16) -> Self {
        Self::ALL
            .into_iter()
            .find(|c| c.number() == n)
            .unwrap_or(Self::Unknown(n))
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> u16 {
        code.number()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.number()), "duplicate number for {code:?}");
            assert_eq!(ErrorCode::from(code.number()), code);
            assert!(!code.description().is_empty());
            assert_eq!(ErrorCode::from_close_code(code.close_code()), Some(code));
        }
        assert_eq!(ErrorCode::from(777), ErrorCode::Unknown(777));
        assert_eq!(ErrorCode::from_close_code(1000), None);
    }

    #[test]
    fn only_close_codes_4001_to_4999_carry_an_error_code() {
        // The edges of the range: 4000 + 0 is not a code, 4000 + 1000 is beyond the numbers.
        assert_eq!(
            ErrorCode::from_close_code(4001),
            Some(ErrorCode::Unknown(1))
        );
        assert_eq!(
            ErrorCode::from_close_code(4999),
            Some(ErrorCode::Unknown(999))
        );
        for close in [0, 1000, 1001, 3999, 4000, 5000, u16::MAX] {
            assert_eq!(ErrorCode::from_close_code(close), None, "{close}");
        }
        assert_eq!(
            ErrorCode::from_close_code(4203),
            Some(ErrorCode::DeviceRevoked)
        );
        // A code too large for the close-code range closes with the bare base.
        assert_eq!(ErrorCode::Unknown(999).close_code(), 4999);
        assert_eq!(ErrorCode::Unknown(1000).close_code(), 4000);
        assert_eq!(ErrorCode::Unknown(u16::MAX).close_code(), 4000);
    }

    #[test]
    fn display_shows_the_name_and_the_number() {
        assert_eq!(ErrorCode::DeviceRevoked.to_string(), "device_revoked (203)");
        assert_eq!(ErrorCode::Unknown(777).to_string(), "unknown (777)");
    }

    #[test]
    fn unknown_codes_survive_the_wire() {
        let bytes = postcard::to_allocvec(&ErrorCode::Unknown(4242)).unwrap();
        let back: ErrorCode = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ErrorCode::Unknown(4242));
    }
}
