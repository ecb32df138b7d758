//! Ferry's protocol: everything two Ferry peers must agree on, with no IO.
//!
//! This crate holds the wire types, the frame codec, the handshake state machines, the
//! encrypted channel, payload sealing and the error codes. It does no IO of any kind:
//! no sockets, no tokio, no clock and no OS random number generator. Bytes go in through
//! `handle_*`/`open` methods and come out as return values; time and randomness are
//! passed in. The relay and the client SDK are thin drivers around it, so the same code
//! runs in unit tests, fuzzers and production.
//!
//! # Data flow
//!
//! ```text
//!  client                                                        relay
//!  ClientHandshake::start ──ClientHello (plain)──────────────▶ ServerHandshake::handle_client_hello
//!  AwaitServerHello::handle_server_hello ◀──ServerHello (plain, signed)──
//!     ── ClientStart (encrypted: ClientAuth) ─────────────────▶ AwaitClientAuth::handle_client_start
//!  AwaitSession::handle_session ◀──SessionStart (encrypted)── PendingSession::accept
//!  ClientChannel::seal(ClientFrame) ─────────────────────────▶ ServerChannel::open
//!  ClientChannel::open ◀───────────────────────────────────── ServerChannel::seal(ServerFrame)
//! ```
//!
//! Event payloads are sealed end to end by the client with [`seal::seal`] under the user's
//! data key before they enter an [`Append`]; the relay only ever handles [`SealedPayload`].
//!
//! # Example
//!
//! ```
//! use ferry_protocol::{handshake, ClientFrame, DeviceKey, RelayKey, UserKey};
//! # use rand_core::SeedableRng;
//! # let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let relay_key = RelayKey::generate(&mut rng);
//! let user = UserKey::generate(&mut rng);
//! let device = DeviceKey::generate(&mut rng);
//!
//! // Client → relay: ClientHello.
//! let (client, hello) = handshake::ClientHandshake::start(relay_key.id(), &mut rng);
//! // Relay → client: ServerHello.
//! let (server, server_hello) =
//!     handshake::ServerHandshake::handle_client_hello(&relay_key, &hello, &mut rng).unwrap();
//! // Client → relay: ClientAuth, encrypted.
//! // (The relay then checks that the user's device chain admits the device.)
//! let credentials =
//!     handshake::Credentials::Device { key: &device, user: user.id(), resume: None, recovery: None };
//! let (client, auth) = client.handle_server_hello(&server_hello, credentials).unwrap();
//! let pending = server.handle_client_start(&auth).unwrap();
//! assert_eq!(pending.auth().unwrap().user, user.id());
//! // Relay → client: SessionEstablished, after the relay looked up the log head.
//! let (mut server_channel, established) = pending.accept(0, 0);
//! let (session, mut client_channel) = client.handle_session(&established).unwrap();
//! assert_eq!(session.head, 0);
//!
//! let wire = client_channel.seal(&ClientFrame::Ack { seq: 0 }).unwrap();
//! assert_eq!(server_channel.open(&wire).unwrap(), ClientFrame::Ack { seq: 0 });
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attachments;
pub mod chain;
pub mod channel;
pub mod codec;
pub mod conversations;
pub mod epoch;
mod error;
pub mod frames;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod handshake;
pub mod identity;
pub mod pairing;
pub mod people;
pub mod recovery;
pub mod seal;

pub use chain::{Chain, ChainError, Link, LinkBody, LinkHash, Signer, SigningKey};
pub use channel::{
    Channel, ChannelError, ClientChannel, Encoded, RecvHalf, SendHalf, ServerChannel,
};
pub use codec::{DecodeError, Wire};
pub use conversations::{ConvId, ConvMessage, ConvSend, ConvSummary, MessageClass};
pub use error::ErrorCode;
pub use frames::{
    Append, ClaimedKeyPackage, ClientFrame, DeviceInfo, ErrorFrame, Event, PushTarget,
    SealedPayload, ServerFrame, TurnCredentials,
};
pub use identity::{
    DeviceId, DeviceKey, IdentityError, RelayId, RelayKey, UserId, UserKey, check_device_name,
};

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Limits every peer enforces when decoding. A relay may configure lower ones.
pub mod limits {
    /// Largest frame (one WebSocket message, after decryption) in bytes.
    pub const MAX_FRAME_LEN: usize = 1024 * 1024;
    /// Largest sealed event payload in bytes.
    pub const MAX_PAYLOAD_LEN: usize = 256 * 1024;
    /// Largest ephemeral body (typing, presence, call signaling) in bytes.
    pub const MAX_EPHEMERAL_LEN: usize = 16 * 1024;
    /// Largest pairing message body in bytes (a grant carries every data-key epoch).
    pub const MAX_PAIRING_BODY_LEN: usize = 48 * 1024;
    /// Longest device name in bytes (UTF-8).
    pub const MAX_DEVICE_NAME_LEN: usize = 64;
    /// Longest human-readable error message in bytes.
    pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
    /// Most events in one `Events` frame.
    pub const MAX_EVENTS_PER_FRAME: usize = 4096;
    /// Most devices in one `Devices` frame.
    pub const MAX_DEVICES_PER_FRAME: usize = 1024;
    /// Bytes an encrypted frame adds to its plaintext (the Poly1305 tag).
    pub const CHANNEL_OVERHEAD: usize = 16;
}
