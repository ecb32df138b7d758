//! Ephemeral bodies (typing indicators, call signaling): sealed under a key exported from the
//! conversation's current MLS epoch, so only members in that epoch open them and the relay
//! never can.
//!
//! Layout: epoch (8 bytes, big endian) || nonce (24) || XChaCha20-Poly1305(plaintext), with
//! the conversation id and the epoch as associated data. The plaintext is `[0]` (stopped
//! typing), `[1]` (typing), or `[2]` followed by a call signal (postcard, see
//! [`crate::calls`]); a body of another kind is ignored by this version.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ferry_mls::Member;
use ferry_protocol::conversations::ConvId;
use rand_core::{OsRng, RngCore};

use crate::calls::CallSignal;
use crate::error::ClientError;

/// The exporter label of the ephemeral key.
const LABEL: &str = "ferry/v1/conv-ephemeral";

/// The kind byte of a call signal.
const CALL: u8 = 2;

/// What an ephemeral body says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ephemeral {
    /// A member started (true) or stopped typing.
    Typing(bool),
    /// Call signaling.
    Call(CallSignal),
}

impl Ephemeral {
    fn encode(&self) -> Vec<u8> {
        match self {
            Self::Typing(typing) => vec![u8::from(*typing)],
            Self::Call(signal) => {
                let mut plaintext = vec![CALL];
                plaintext.extend_from_slice(&postcard::to_allocvec(signal).unwrap_or_default());
                plaintext
            }
        }
    }

    fn decode(plaintext: &[u8]) -> Option<Self> {
        match plaintext {
            [0] => Some(Self::Typing(false)),
            [1] => Some(Self::Typing(true)),
            [CALL, signal @ ..] => postcard::from_bytes(signal).ok().map(Self::Call),
            _ => None,
        }
    }
}

/// What opening a body gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// It opened.
    Body(Ephemeral),
    /// It is sealed under a later epoch than this device is at: catch the conversation up
    /// and open it again.
    Ahead,
    /// Not one this device can open (an earlier epoch, tampered with, unknown kind).
    Unreadable,
}

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

/// Seals `ephemeral` for the members of `conv` in this device's current epoch.
pub(crate) fn seal(
    member: &Member,
    conv: ConvId,
    ephemeral: &Ephemeral,
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
                msg: &ephemeral.encode(),
                aad: &aad,
            },
        )
        .map_err(|_| ClientError::Mls("cannot seal an ephemeral body".into()))?;
    let mut body = epoch.to_be_bytes().to_vec();
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// Opens a body sealed by [`seal`].
pub(crate) fn open(member: &Member, conv: ConvId, body: &[u8]) -> Opened {
    let Some((epoch, cipher)) = cipher(member, conv) else {
        return Opened::Unreadable;
    };
    let Some((head, rest)) = body.split_first_chunk::<8>() else {
        return Opened::Unreadable;
    };
    let sealed_at = u64::from_be_bytes(*head);
    if sealed_at > epoch {
        return Opened::Ahead;
    }
    if sealed_at != epoch || rest.len() < 24 {
        return Opened::Unreadable;
    }
    let (nonce, sealed) = rest.split_at(24);
    let aad = aad(conv, epoch);
    let opened = cipher.decrypt(
        XNonce::from_slice(nonce),
        Payload {
            msg: sealed,
            aad: &aad,
        },
    );
    match opened
        .ok()
        .and_then(|plaintext| Ephemeral::decode(&plaintext))
    {
        Some(ephemeral) => Opened::Body(ephemeral),
        None => Opened::Unreadable,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::calls::CallId;
    use ferry_mls::{GroupKind, GroupPolicy};
    use ferry_protocol::{DeviceKey, UserId};

    #[test]
    fn a_body_from_a_later_epoch_asks_for_a_catch_up_and_an_earlier_one_is_unreadable() {
        let device = DeviceKey::generate(&mut OsRng);
        let mut ahead = Member::new(UserId([1; 32]), &device);
        let conv = ConvId([5; 16]);
        let policy = GroupPolicy {
            kind: GroupKind::OneToOne,
            admins: Vec::new(),
        };
        ahead.create_group(&conv.0, policy).unwrap();
        // The same device state before a commit it has not read yet.
        let behind = Member::from_bytes(&ahead.to_bytes(), &device).unwrap();
        ahead.self_update(&conv.0).unwrap();
        ahead.merge_pending(&conv.0).unwrap();
        assert_eq!(ahead.epoch(&conv.0).unwrap(), 1);

        let typing = Ephemeral::Typing(true);
        let new = seal(&ahead, conv, &typing).unwrap();
        assert_eq!(open(&ahead, conv, &new), Opened::Body(typing.clone()));
        assert_eq!(open(&behind, conv, &new), Opened::Ahead);
        let old = seal(&behind, conv, &typing).unwrap();
        assert_eq!(open(&ahead, conv, &old), Opened::Unreadable);
        // Tampered with, or for another conversation: unreadable.
        let mut tampered = new.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open(&ahead, conv, &tampered), Opened::Unreadable);
        assert_eq!(open(&ahead, ConvId([6; 16]), &new), Opened::Unreadable);
        assert_eq!(open(&ahead, conv, &new[..20]), Opened::Unreadable);
    }

    #[test]
    fn kinds_round_trip_and_unknown_kinds_are_ignored() {
        let signals = [
            Ephemeral::Typing(true),
            Ephemeral::Typing(false),
            Ephemeral::Call(CallSignal::Ringing {
                call: CallId([7; 16]),
            }),
        ];
        for ephemeral in signals {
            assert_eq!(Ephemeral::decode(&ephemeral.encode()), Some(ephemeral));
        }
        assert_eq!(Ephemeral::decode(&[3]), None);
        assert_eq!(Ephemeral::decode(&[1, 0]), None);
        assert_eq!(Ephemeral::decode(&[CALL, 0xff, 0xff]), None);
        assert_eq!(Ephemeral::decode(&[]), None);
    }
}
