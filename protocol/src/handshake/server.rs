//! The relay side of the handshake, as a chain of states that each consume themselves.

use rand_core::CryptoRngCore;
use x25519_dalek::{EphemeralSecret, PublicKey};

use super::keys::{self, CLIENT_SIGNATURE_LABEL, SERVER_SIGNATURE_LABEL, USER_PROOF_LABEL};
use super::{
    AuthBody, ClientHello, ClientStart, HandshakeError, ServerHandshakeMessage, ServerHello,
    ServerHelloBody, SessionEstablished, SessionStart,
};
use crate::channel::ServerChannel;
use crate::codec;
use crate::identity::{DeviceId, RelayKey, UserId};
use crate::{ErrorFrame, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Entry point of the relay handshake.
#[derive(Debug)]
pub struct ServerHandshake;

impl ServerHandshake {
    /// Steps 1–3: reads a `ClientHello`, picks the version, and returns the signed
    /// `ServerHello` to send. On error the driver may send [`ServerHandshake::reject`].
    pub fn handle_client_hello(
        relay: &RelayKey,
        bytes: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(AwaitClientStart, Vec<u8>), HandshakeError> {
        let hello: ClientHello = codec::decode(bytes)?;
        let version = PROTOCOL_VERSION.min(hello.max_version);
        if version < hello.min_version || version < MIN_PROTOCOL_VERSION {
            return Err(HandshakeError::UnsupportedVersion {
                min: hello.min_version,
                max: hello.max_version,
            });
        }

        let secret = EphemeralSecret::random_from_rng(&mut *rng);
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let body = codec::encode(&ServerHelloBody {
            version,
            ephemeral: PublicKey::from(&secret).to_bytes(),
            nonce,
            relay: relay.id(),
        });
        let transcript = keys::transcript_hash(bytes, &body);
        let signature = relay.sign(SERVER_SIGNATURE_LABEL, &transcript);

        let shared = secret.diffie_hellman(&PublicKey::from(hello.ephemeral));
        if !shared.was_contributory() {
            return Err(HandshakeError::WeakKey);
        }
        let keys = keys::derive(shared.as_bytes(), &transcript);
        let channel = ServerChannel::new(&keys.server_to_client, &keys.client_to_server);
        let reply = codec::encode(&ServerHandshakeMessage::Hello(ServerHello {
            body,
            signature,
        }));
        let state = AwaitClientStart {
            channel,
            transcript,
            session_id: keys.session_id,
            version,
        };
        Ok((state, reply))
    }

    /// A plaintext refusal for errors before any key exists (such as no shared version).
    pub fn reject(error: &HandshakeError) -> Vec<u8> {
        let frame = ErrorFrame::with_message(error.code(), error.to_string());
        codec::encode(&ServerHandshakeMessage::Reject(frame))
    }
}

/// Waiting for the client's encrypted `ClientStart`.
#[derive(Debug)]
pub struct AwaitClientStart {
    channel: ServerChannel,
    transcript: [u8; 32],
    session_id: [u8; 16],
    version: u16,
}

/// A failed step 4: the error, and an encrypted refusal to send when the channel still works.
#[derive(Debug)]
pub struct AuthFailure {
    /// What went wrong.
    pub error: HandshakeError,
    /// An encrypted `SessionStart::Rejected` for the client, if one can be sent.
    pub reply: Option<Vec<u8>>,
}

/// A client identity whose transcript signature (and recovery proof, if any) were checked.
/// Whether the user's chain admits the device is the relay's to check next.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedAuth {
    /// The user the device claims to act for.
    pub user: UserId,
    /// The device, whose key signed the transcript.
    pub device: DeviceId,
    /// Where the device wants replay to start (after this sequence).
    pub resume: Option<u64>,
    /// The user key signed this transcript too: a recovery session, which may read and
    /// extend the chain before the chain admits the device.
    pub user_proven: bool,
}

impl AwaitClientStart {
    /// Step 4: decrypts and verifies the client's `ClientStart`.
    pub fn handle_client_start(mut self, bytes: &[u8]) -> Result<PendingSession, AuthFailure> {
        let start = match self.channel.open_value::<ClientStart>(bytes) {
            Ok(start) => start,
            Err(error) => {
                // A peer that repeats its ClientHello deserves a precise answer.
                let error = if codec::decode::<ClientHello>(bytes).is_ok() {
                    HandshakeError::Unexpected("ClientHello sent twice")
                } else {
                    error.into()
                };
                return Err(AuthFailure { error, reply: None });
            }
        };
        let auth = match start {
            ClientStart::Anonymous => None,
            ClientStart::Auth(auth) => match self.verify(&auth.body, &auth.signature) {
                Ok(verified) => Some(verified),
                Err(error) => {
                    let frame = ErrorFrame::with_message(error.code(), error.to_string());
                    let reply = self.channel.seal_value(&SessionStart::Rejected(frame)).ok();
                    return Err(AuthFailure { error, reply });
                }
            },
        };
        Ok(PendingSession {
            channel: self.channel,
            session_id: self.session_id,
            version: self.version,
            auth,
        })
    }

    fn verify(&self, body: &[u8], signature: &[u8; 64]) -> Result<VerifiedAuth, HandshakeError> {
        let AuthBody {
            user,
            device,
            resume,
            user_proof,
        } = codec::decode(body)?;
        device
            .verify(
                CLIENT_SIGNATURE_LABEL,
                &keys::client_signed_message(&self.transcript, body),
                signature,
            )
            .map_err(|_| HandshakeError::BadDeviceSignature)?;
        if let Some(proof) = &user_proof {
            user.verify(
                USER_PROOF_LABEL,
                &keys::user_proof_message(&self.transcript, &device),
                proof,
            )
            .map_err(|_| HandshakeError::BadUserProof)?;
        }
        Ok(VerifiedAuth {
            user,
            device,
            resume,
            user_proven: user_proof.is_some(),
        })
    }
}

/// A verified client waiting for the relay to look up its log and answer.
#[derive(Debug)]
pub struct PendingSession {
    channel: ServerChannel,
    session_id: [u8; 16],
    version: u16,
    auth: Option<VerifiedAuth>,
}

impl PendingSession {
    /// The verified identity, or `None` for an anonymous (pairing) session.
    pub fn auth(&self) -> Option<&VerifiedAuth> {
        self.auth.as_ref()
    }

    /// The session identifier.
    pub fn session_id(&self) -> [u8; 16] {
        self.session_id
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Step 5: opens the session with the user's log `head` and the device's stored `acked`
    /// cursor (and no stored device sequence, no chain: an anonymous session). Returns the
    /// channel and the encrypted `SessionEstablished`.
    pub fn accept(self, head: u64, acked: u64) -> (ServerChannel, Vec<u8>) {
        self.accept_device(head, acked, 0, 0)
    }

    /// [`accept`](Self::accept) for a device whose highest stored `device_seq` is
    /// `last_device_seq`, of a user whose chain has `chain_seqno` links.
    pub fn accept_device(
        mut self,
        head: u64,
        acked: u64,
        last_device_seq: u64,
        chain_seqno: u64,
    ) -> (ServerChannel, Vec<u8>) {
        let established = SessionEstablished {
            session_id: self.session_id,
            version: self.version,
            head,
            acked,
            last_device_seq,
            chain_seqno,
        };
        let reply = self.seal_start(&SessionStart::Established(established));
        (self.channel, reply)
    }

    /// Step 5, refused: the encrypted `SessionStart::Rejected` to send before closing.
    pub fn reject(mut self, frame: ErrorFrame) -> Vec<u8> {
        self.seal_start(&SessionStart::Rejected(frame))
    }

    fn seal_start(&mut self, start: &SessionStart) -> Vec<u8> {
        // The channel is fresh (one frame opened, none sealed) and the message is small,
        // so sealing cannot fail.
        match self.channel.seal_value(start) {
            Ok(bytes) => bytes,
            Err(e) => unreachable!("sealing the first frame of a fresh channel failed: {e}"),
        }
    }
}
