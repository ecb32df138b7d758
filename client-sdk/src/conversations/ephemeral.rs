//! Typing indicators: ephemeral bodies sealed under a key exported from the conversation's
//! current MLS epoch, so only members in that epoch open them and the relay never can.
//!
//! Layout: epoch (8 bytes, big endian) || nonce (24) || XChaCha20-Poly1305(typing flag),
//! with the conversation id and the epoch as associated data.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ferry_mls::Member;
use ferry_protocol::conversations::ConvId;
use rand_core::{OsRng, RngCore};

use crate::error::ClientError;

/// The exporter label of the ephemeral key.
const LABEL: &str = "ferry/v1/conv-ephemeral";

fn cipher(member: &Member, conv: ConvId) -> Option<(u64, XChaCha20Poly1305)> {
    let epoch = member.epoch(&conv.0).ok()?;
    let key = member.export_secret(&conv.0, LABEL, 32).ok()?;
    let cipher = XChaCha20Poly1305::new_from_slice(&key).ok()?;
    Some((epoch, cipher))
}

fn aad(conv: ConvId, epoch: u64) -> Vec<u8> {
    let mut aad = conv.0.to_vec();
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

/// The body that says "typing" (or "stopped").
pub(crate) fn seal_typing(
    member: &Member,
    conv: ConvId,
    typing: bool,
) -> Result<Vec<u8>, ClientError> {
    let (epoch, cipher) = cipher(member, conv)
        .ok_or_else(|| ClientError::Mls(format!("not in conversation {conv}")))?;
    let mut nonce = [0; 24];
    OsRng.fill_bytes(&mut nonce);
    let aad = aad(conv, epoch);
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &[u8::from(typing)],
                aad: &aad,
            },
        )
        .map_err(|_| ClientError::Mls("cannot seal a typing indicator".into()))?;
    let mut body = epoch.to_be_bytes().to_vec();
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// Opens a typing body; `None` if it is not one this device can open (another epoch,
/// tampered with).
pub(crate) fn open_typing(member: &Member, conv: ConvId, body: &[u8]) -> Option<bool> {
    let (epoch, cipher) = cipher(member, conv)?;
    let (head, rest) = body.split_first_chunk::<8>()?;
    if u64::from_be_bytes(*head) != epoch || rest.len() < 24 {
        return None;
    }
    let (nonce, sealed) = rest.split_at(24);
    let aad = aad(conv, epoch);
    let opened = cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .ok()?;
    match opened.as_slice() {
        [0] => Some(false),
        [1] => Some(true),
        _ => None,
    }
}
