//! The key schedule and its labels. Every label is versioned; changing one is a new protocol
//! version.
//!
//! ```text
//! th         = SHA-256(TRANSCRIPT_LABEL ‖ be32(|ch|) ‖ ch ‖ be32(|sb|) ‖ sb)
//!              ch = ClientHello bytes, sb = ServerHelloBody bytes
//! prk        = HKDF-Extract(salt = th, ikm = X25519(e_c, e_s))
//! k_c2s      = HKDF-Expand(prk, C2S_KEY_LABEL, 32)
//! k_s2c      = HKDF-Expand(prk, S2C_KEY_LABEL, 32)
//! session_id = HKDF-Expand(prk, SESSION_ID_LABEL, 16)
//! ```

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Prefix of the transcript hash.
pub const TRANSCRIPT_LABEL: &[u8] = b"ferry/v1/transcript";
/// Prefix of the message the relay signs in step 2.
pub const SERVER_SIGNATURE_LABEL: &[u8] = b"ferry/v1/server-hello-signature";
/// Prefix of the message the device signs in step 4.
pub const CLIENT_SIGNATURE_LABEL: &[u8] = b"ferry/v1/client-auth-signature";
/// Prefix of the user key's recovery proof over the transcript.
pub const USER_PROOF_LABEL: &[u8] = b"ferry/v1/user-proof";
/// HKDF info for the client-to-server channel key.
pub const C2S_KEY_LABEL: &[u8] = b"ferry/v1/channel-key/client-to-server";
/// HKDF info for the server-to-client channel key.
pub const S2C_KEY_LABEL: &[u8] = b"ferry/v1/channel-key/server-to-client";
/// HKDF info for the session id.
pub const SESSION_ID_LABEL: &[u8] = b"ferry/v1/session-id";

/// The transcript hash of steps 1 and 2.
pub fn transcript_hash(client_hello: &[u8], server_hello_body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(TRANSCRIPT_LABEL);
    for part in [client_hello, server_hello_body] {
        hash.update((part.len() as u32).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// The secrets derived in step 3. Zeroized on drop, never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    /// Key for frames the client sends.
    pub client_to_server: [u8; 32],
    /// Key for frames the relay sends.
    pub server_to_client: [u8; 32],
    /// Public session identifier (not secret, but derived here).
    pub session_id: [u8; 16],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("session_id", &hex::encode(self.session_id))
            .finish_non_exhaustive()
    }
}

/// Derives the session keys from the X25519 secret and the transcript hash.
pub fn derive(shared_secret: &[u8; 32], transcript: &[u8; 32]) -> SessionKeys {
    let hkdf = Hkdf::<Sha256>::new(Some(transcript), shared_secret);
    let mut keys = SessionKeys {
        client_to_server: [0; 32],
        server_to_client: [0; 32],
        session_id: [0; 16],
    };
    // Expand fails only for outputs longer than 255 hash lengths.
    for (label, out) in [
        (C2S_KEY_LABEL, &mut keys.client_to_server[..]),
        (S2C_KEY_LABEL, &mut keys.server_to_client[..]),
        (SESSION_ID_LABEL, &mut keys.session_id[..]),
    ] {
        if hkdf.expand(label, out).is_err() {
            unreachable!("HKDF output of {} bytes is within limits", out.len());
        }
    }
    keys
}

/// The message the device signs (after its label).
pub(crate) fn client_signed_message(transcript: &[u8; 32], auth_body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(32 + auth_body.len());
    message.extend_from_slice(transcript);
    message.extend_from_slice(auth_body);
    message
}

/// The message the user key signs for a recovery session (after its label): the transcript
/// and the device it vouches for, so the proof is good for this session and device only.
pub(crate) fn user_proof_message(transcript: &[u8; 32], device: &crate::DeviceId) -> Vec<u8> {
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(transcript);
    message.extend_from_slice(device.as_bytes());
    message
}
