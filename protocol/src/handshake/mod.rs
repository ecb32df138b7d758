//! The handshake: MTProto-style key agreement, SIGMA-shaped authentication.
//!
//! # Message flow
//!
//! 1. Client → relay, plaintext: [`ClientHello`] `{ min_version, max_version, ephemeral, nonce }`
//!    with a fresh X25519 key and 32 random bytes.
//! 2. Relay → client, plaintext: [`ServerHandshakeMessage::Hello`] carrying the encoded
//!    [`ServerHelloBody`] `{ version, ephemeral, nonce, relay }` and the relay identity key's
//!    signature over `SERVER_SIGNATURE_LABEL ‖ th`, where
//!    `th = SHA-256(TRANSCRIPT_LABEL ‖ len ‖ ClientHello bytes ‖ len ‖ ServerHelloBody bytes)`
//!    (lengths as 4-byte big-endian). The transcript covers every handshake byte, so the
//!    signature binds both ephemeral keys, both nonces, the chosen version and the relay key.
//!    The client checks `relay` against the key it pinned and the signature against it.
//!    If no version is shared the relay sends [`ServerHandshakeMessage::Reject`] instead.
//! 3. Both sides compute the X25519 secret (refusing an all-zero result) and derive, with
//!    HKDF-SHA256 salted with `th`: the client-to-server key, the server-to-client key and the
//!    session id ([`keys`]). From here on everything travels in the encrypted [`Channel`].
//! 4. Client → relay, encrypted: [`ClientStart::Auth`] with the encoded [`AuthBody`]
//!    `{ user, device, resume, user_proof }` and the device key's signature over
//!    `CLIENT_SIGNATURE_LABEL ‖ th ‖ AuthBody bytes`. The relay checks that the device signed
//!    this very transcript, then (outside this crate) that the user's device chain admits the
//!    device and has not revoked it. `user_proof`, present only while the user typed the
//!    recovery key, is the user key's signature over `USER_PROOF_LABEL ‖ th ‖ device`: it
//!    opens a *recovery session* that may read and extend the chain although the device is not
//!    (yet) admitted. A device being paired sends [`ClientStart::Anonymous`] instead and may
//!    only use pairing frames.
//! 5. Relay → client, encrypted: [`SessionStart::Established`] `{ session_id, version, head,
//!    acked, last_device_seq, chain_seqno }` once the relay has looked up the log, or
//!    [`SessionStart::Rejected`].
//!
//! [`Channel`]: crate::Channel

mod client;
pub mod keys;
mod server;

pub use client::{AwaitServerHello, AwaitSession, ClientHandshake, Credentials, Session};
pub use server::{AuthFailure, AwaitClientStart, PendingSession, ServerHandshake, VerifiedAuth};

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Wire, check_len};
use crate::identity::{DeviceId, RelayId, UserId};
use crate::limits::MAX_ERROR_MESSAGE_LEN;
use crate::{ChannelError, ErrorCode, ErrorFrame};

/// Step 1, plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Oldest protocol version the client speaks.
    pub min_version: u16,
    /// Newest protocol version the client speaks.
    pub max_version: u16,
    /// The client's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// 32 random bytes.
    pub nonce: [u8; 32],
}

/// Step 2, plaintext: the relay's answer to a [`ClientHello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerHandshakeMessage {
    /// The relay's half of the key agreement.
    Hello(ServerHello),
    /// The relay refuses before any key exists (for example no shared version).
    Reject(ErrorFrame),
}

/// The signed part of step 2 travels as bytes, so the signature covers exactly what was sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// The postcard encoding of a [`ServerHelloBody`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The relay key's signature over `SERVER_SIGNATURE_LABEL ‖ th`.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

/// What the relay signs in step 2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHelloBody {
    /// The protocol version the relay chose.
    pub version: u16,
    /// The relay's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// 32 random bytes.
    pub nonce: [u8; 32],
    /// The relay's identity key, which the client compares with its pinned key.
    pub relay: RelayId,
}

/// Step 4, encrypted: how the client starts its session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientStart {
    /// A device of a user.
    Auth(ClientAuth),
    /// A device being paired: no identity yet; only pairing frames are allowed.
    Anonymous,
}

/// A device's proof that it holds its key and acts for its user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAuth {
    /// The postcard encoding of an [`AuthBody`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The device key's signature over `CLIENT_SIGNATURE_LABEL ‖ th ‖ body`.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

/// What the device signs in step 4.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthBody {
    /// The user the device acts for.
    pub user: UserId,
    /// The device's key.
    pub device: DeviceId,
    /// The device's local cursor: replay starts after it. `None` uses the cursor the relay stored.
    pub resume: Option<u64>,
    /// The user key's signature over `USER_PROOF_LABEL ‖ th ‖ device`, sent only by a device
    /// whose user typed the recovery key: it may then read and extend the chain before the
    /// chain admits it.
    #[serde(with = "option_signature")]
    pub user_proof: Option<[u8; 64]>,
}

/// `Option<[u8; 64]>` as an optional byte string (serde has no 64-byte arrays).
mod option_signature {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<[u8; 64]>, s: S) -> Result<S::Ok, S::Error> {
        value
            .as_ref()
            .map(|v| serde_bytes::Bytes::new(v.as_slice()))
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 64]>, D::Error> {
        let bytes: Option<serde_bytes::ByteBuf> = Option::deserialize(d)?;
        bytes
            .map(|b| {
                <[u8; 64]>::try_from(b.as_slice())
                    .map_err(|_| serde::de::Error::invalid_length(b.len(), &"64 bytes"))
            })
            .transpose()
    }
}

/// Step 5, encrypted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionStart {
    /// The session is open.
    Established(SessionEstablished),
    /// The relay refused the device.
    Rejected(ErrorFrame),
}

/// The relay's confirmation that the session is open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEstablished {
    /// Derived by both sides from the key schedule; the client checks it matches.
    pub session_id: [u8; 16],
    /// The negotiated protocol version.
    pub version: u16,
    /// The user's log head (0 for an empty log or an anonymous session).
    pub head: u64,
    /// The device's acknowledged sequence stored by the relay.
    pub acked: u64,
    /// The highest `device_seq` the relay holds (or has held and trimmed) from this device,
    /// 0 for none. A device whose own counter is not past it (its state folder was restored
    /// from a backup, or copied) numbers its next appends after it.
    pub last_device_seq: u64,
    /// The number of links in the user's device chain: a device whose copy is shorter
    /// fetches the rest (`ChainFetch`) before it trusts anything else.
    pub chain_seqno: u64,
}

impl Wire for ClientHello {}
impl Wire for ServerHelloBody {}
impl Wire for ClientStart {}

impl Wire for ServerHandshakeMessage {
    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Self::Hello(_) => Ok(()),
            Self::Reject(e) => check_len("error message", e.message.len(), MAX_ERROR_MESSAGE_LEN),
        }
    }
}

impl Wire for AuthBody {}

impl Wire for SessionStart {
    fn check_limits(&self) -> Result<(), DecodeError> {
        match self {
            Self::Established(_) => Ok(()),
            Self::Rejected(e) => check_len("error message", e.message.len(), MAX_ERROR_MESSAGE_LEN),
        }
    }
}

/// Why a handshake failed. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A plaintext handshake message did not decode.
    #[error("malformed handshake message: {0}")]
    Decode(#[from] DecodeError),
    /// An encrypted handshake message failed.
    #[error("encrypted handshake message: {0}")]
    Channel(#[from] ChannelError),
    /// No protocol version is spoken by both sides.
    #[error("no shared protocol version (peer speaks {min}..={max})")]
    UnsupportedVersion {
        /// Oldest version the peer speaks.
        min: u16,
        /// Newest version the peer speaks.
        max: u16,
    },
    /// The relay's identity key is not the pinned one.
    #[error("relay key {found} is not the pinned key {pinned}")]
    WrongRelayKey {
        /// The key the client pinned.
        pinned: RelayId,
        /// The key the relay presented.
        found: RelayId,
    },
    /// The relay's transcript signature did not verify.
    #[error("relay signature does not verify")]
    BadRelaySignature,
    /// The X25519 exchange gave an all-zero secret (a low-order public key).
    #[error("ephemeral key is of low order")]
    WeakKey,
    /// The user key's recovery proof does not verify.
    #[error("the user key's proof does not verify")]
    BadUserProof,
    /// The device's transcript signature did not verify.
    #[error("device signature does not verify")]
    BadDeviceSignature,
    /// A message arrived out of order (such as a second ClientHello).
    #[error("unexpected handshake message: {0}")]
    Unexpected(&'static str),
    /// The session id confirmed by the relay differs from the one derived locally.
    #[error("session id mismatch")]
    SessionMismatch,
    /// The relay refused the handshake.
    #[error("relay refused: {} ({})", .0.code, .0.message)]
    Rejected(ErrorFrame),
}

impl HandshakeError {
    /// The error code to report to the peer (or that the peer reported).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Decode(e) => e.code(),
            Self::Channel(e) => e.code(),
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::WrongRelayKey { .. }
            | Self::BadRelaySignature
            | Self::WeakKey
            | Self::BadDeviceSignature
            | Self::SessionMismatch => ErrorCode::HandshakeFailed,
            Self::BadUserProof => ErrorCode::BadUserProof,
            Self::Unexpected(_) => ErrorCode::UnexpectedFrame,
            Self::Rejected(frame) => frame.code,
        }
    }
}

#[cfg(test)]
mod tests;
