//! The client side of the handshake, as a chain of states that each consume themselves.

use rand_core::CryptoRngCore;
use x25519_dalek::{EphemeralSecret, PublicKey};

use super::keys::{self, CLIENT_SIGNATURE_LABEL, SERVER_SIGNATURE_LABEL, USER_PROOF_LABEL};
use super::{
    AuthBody, ClientAuth, ClientHello, ClientStart, HandshakeError, ServerHandshakeMessage,
    ServerHelloBody, SessionStart,
};
use crate::channel::ClientChannel;
use crate::codec;
use crate::identity::{DeviceKey, RelayId, UserId, UserKey};
use crate::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Entry point of the client handshake.
#[derive(Debug)]
pub struct ClientHandshake;

impl ClientHandshake {
    /// Step 1: makes the ephemeral key and the `ClientHello` to send. `pinned` is the relay
    /// identity key the client trusts.
    pub fn start(pinned: RelayId, rng: &mut impl CryptoRngCore) -> (AwaitServerHello, Vec<u8>) {
        Self::start_with_versions(pinned, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, rng)
    }

    /// [`Self::start`] offering an explicit version range (for tests and future clients).
    pub fn start_with_versions(
        pinned: RelayId,
        min_version: u16,
        max_version: u16,
        rng: &mut impl CryptoRngCore,
    ) -> (AwaitServerHello, Vec<u8>) {
        let secret = EphemeralSecret::random_from_rng(&mut *rng);
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let hello = ClientHello {
            min_version,
            max_version,
            ephemeral: PublicKey::from(&secret).to_bytes(),
            nonce,
        };
        let bytes = codec::encode(&hello);
        (
            AwaitServerHello {
                pinned,
                secret,
                hello: bytes.clone(),
                min_version,
                max_version,
            },
            bytes,
        )
    }
}

/// What the client proves in step 4.
#[derive(Debug)]
pub enum Credentials<'a> {
    /// A device of `user` (admitted by the user's chain, or being admitted with `recovery`).
    Device {
        /// The device's key, which signs the transcript.
        key: &'a DeviceKey,
        /// The user it acts for.
        user: UserId,
        /// The local cursor to resume after (`None`: the relay's stored cursor).
        resume: Option<u64>,
        /// The user key, only while the user typed the recovery key: it signs the transcript
        /// too, so the relay opens a recovery session (see the module docs).
        recovery: Option<&'a UserKey>,
    },
    /// A device being paired, with no identity yet.
    Anonymous,
}

/// Waiting for the relay's `ServerHello`.
pub struct AwaitServerHello {
    pinned: RelayId,
    secret: EphemeralSecret,
    hello: Vec<u8>,
    min_version: u16,
    max_version: u16,
}

impl std::fmt::Debug for AwaitServerHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitServerHello")
            .field("pinned", &self.pinned)
            .finish_non_exhaustive()
    }
}

impl AwaitServerHello {
    /// Steps 2–4: checks the relay's identity and signature, derives the keys, and returns the
    /// encrypted `ClientStart` to send.
    pub fn handle_server_hello(
        self,
        bytes: &[u8],
        credentials: Credentials<'_>,
    ) -> Result<(AwaitSession, Vec<u8>), HandshakeError> {
        let (mut session, transcript) = self.verify_and_derive(bytes)?;
        let start = match credentials {
            Credentials::Anonymous => ClientStart::Anonymous,
            Credentials::Device {
                key,
                user,
                resume,
                recovery,
            } => {
                let user_proof = recovery.map(|user_key| {
                    user_key.sign(
                        USER_PROOF_LABEL,
                        &keys::user_proof_message(&transcript, &key.id()),
                    )
                });
                let body = codec::encode(&AuthBody {
                    user,
                    device: key.id(),
                    resume,
                    user_proof,
                });
                let signature = key.sign(
                    CLIENT_SIGNATURE_LABEL,
                    &keys::client_signed_message(&transcript, &body),
                );
                ClientStart::Auth(ClientAuth { body, signature })
            }
        };
        let wire = session.channel.seal_value(&start)?;
        Ok((session, wire))
    }

    /// Seals arbitrary bytes as the `ClientStart`, so tests and fuzzers reach the relay's
    /// verification with messages an honest client would never build.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn seal_raw_start(self, server_hello: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        let (mut session, _) = self.verify_and_derive(server_hello).ok()?;
        session
            .channel
            .seal_encoded(&crate::channel::Encoded::from_raw(plaintext.to_vec()))
            .ok()
    }

    /// Steps 2–3: checks the `ServerHello` and derives the channel.
    fn verify_and_derive(self, bytes: &[u8]) -> Result<(AwaitSession, [u8; 32]), HandshakeError> {
        let hello = match codec::decode::<ServerHandshakeMessage>(bytes)? {
            ServerHandshakeMessage::Hello(hello) => hello,
            ServerHandshakeMessage::Reject(frame) => return Err(HandshakeError::Rejected(frame)),
        };
        let body: ServerHelloBody = codec::decode(&hello.body)?;
        if body.relay != self.pinned {
            return Err(HandshakeError::WrongRelayKey {
                pinned: self.pinned,
                found: body.relay,
            });
        }
        let transcript = keys::transcript_hash(&self.hello, &hello.body);
        body.relay
            .verify(SERVER_SIGNATURE_LABEL, &transcript, &hello.signature)
            .map_err(|_| HandshakeError::BadRelaySignature)?;
        // The version is signed, so a downgrade would have broken the signature; a relay
        // that picks outside our range is simply broken.
        if !(self.min_version..=self.max_version).contains(&body.version) {
            return Err(HandshakeError::UnsupportedVersion {
                min: body.version,
                max: body.version,
            });
        }

        let shared = self.secret.diffie_hellman(&PublicKey::from(body.ephemeral));
        if !shared.was_contributory() {
            return Err(HandshakeError::WeakKey);
        }
        let keys = keys::derive(shared.as_bytes(), &transcript);
        let channel = ClientChannel::new(&keys.client_to_server, &keys.server_to_client);
        Ok((
            AwaitSession {
                channel,
                session_id: keys.session_id,
                version: body.version,
            },
            transcript,
        ))
    }
}

/// Waiting for the relay's `SessionStart`.
#[derive(Debug)]
pub struct AwaitSession {
    channel: ClientChannel,
    session_id: [u8; 16],
    version: u16,
}

/// An open session, as the relay confirmed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Session identifier derived by both sides.
    pub session_id: [u8; 16],
    /// Negotiated protocol version.
    pub version: u16,
    /// The user's log head at connect time.
    pub head: u64,
    /// The cursor the relay holds for this device.
    pub acked: u64,
    /// The highest `device_seq` the relay holds (or trimmed) from this device.
    pub last_device_seq: u64,
    /// The number of links in the user's device chain at the relay.
    pub chain_seqno: u64,
}

impl AwaitSession {
    /// Step 5: the relay's answer. Returns the session and the channel for everything after.
    pub fn handle_session(
        mut self,
        bytes: &[u8],
    ) -> Result<(Session, ClientChannel), HandshakeError> {
        match self.channel.open_value::<SessionStart>(bytes)? {
            SessionStart::Rejected(frame) => Err(HandshakeError::Rejected(frame)),
            SessionStart::Established(established) => {
                if established.session_id != self.session_id || established.version != self.version
                {
                    return Err(HandshakeError::SessionMismatch);
                }
                let session = Session {
                    session_id: self.session_id,
                    version: self.version,
                    head: established.head,
                    acked: established.acked,
                    last_device_seq: established.last_device_seq,
                    chain_seqno: established.chain_seqno,
                };
                Ok((session, self.channel))
            }
        }
    }

    /// The session id derived locally.
    pub fn session_id(&self) -> [u8; 16] {
        self.session_id
    }
}
