//! Contact introductions: what a contact request (and its acceptance) carries from one user
//! to the other, sealed so that only the other user's devices read it.
//!
//! An [`Intro`] holds the sender's **profile key** (so the receiver can read the sender's
//! profile) and a short **note**. The body is sealed under a fresh content key; the content
//! key is sealed to each active device of the receiving user (the X25519 exchange keys of
//! their device chain, as the sender verified it), with the construction of
//! [`crate::epoch`] under the label `ferry/v1/contact-intro-key` and the two users as
//! context. The sending device signs the whole intro with its device key:
//!
//! ```text
//! body        = postcard(IntroBody { note, profile_key })
//! aad         = "ferry/v1/contact-intro" ‖ from ‖ to ‖ device
//! ciphertext  = XChaCha20-Poly1305(content key, nonce, body, aad)
//! recipients  = [(device of `to`, seal_key_to("ferry/v1/contact-intro-key", from ‖ to, content key))]
//! signature   = Ed25519(device key, "ferry/v1/contact-intro" ‖ postcard(from, device, to, recipients, nonce, ciphertext))
//! ```
//!
//! The relay checks the signature and that `from`/`device` are the session's (it refuses
//! anything else) but cannot open the body. The receiver checks that `device` is active in
//! `from`'s device chain, which it verifies itself from the user key (`from`).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::ProfileKey;
use crate::chain::{MAX_CHAIN_DEVICES, MAX_SEALED_KEY_LEN, SealedKey};
use crate::codec::{self, DecodeError, Wire, check_len};
use crate::epoch::{ExchangeSecret, open_key_from, seal_key_to};
use crate::identity::{DeviceId, DeviceKey, UserId};

/// Label of the intro's signature and body encryption.
pub const INTRO_LABEL: &[u8] = b"ferry/v1/contact-intro";
/// Label under which the content key is sealed to each receiving device.
pub const INTRO_KEY_LABEL: &[u8] = b"ferry/v1/contact-intro-key";
/// Longest note, in bytes (UTF-8).
pub const MAX_NOTE_LEN: usize = 280;
/// Longest intro ciphertext: the longest body and the tag.
pub const MAX_INTRO_CIPHERTEXT_LEN: usize = MAX_NOTE_LEN + 64;

/// Why an intro could not be made, verified or opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntroError {
    /// The note is longer than [`MAX_NOTE_LEN`] bytes.
    #[error("the note is longer than {MAX_NOTE_LEN} bytes")]
    NoteTooLong,
    /// No device of the receiver to seal to.
    #[error("the receiving user has no active device to seal the request to")]
    NoRecipients,
    /// A receiving device's exchange key is not usable.
    #[error("a receiving device's exchange key is not usable")]
    WeakKey,
    /// The signature does not verify with the named device's key.
    #[error("the intro's signature does not verify")]
    BadSignature,
    /// This device is not among the recipients.
    #[error("the intro is not sealed to this device")]
    NotForThisDevice,
    /// The body does not open (tampered with, or not for these users).
    #[error("the intro does not open")]
    Authentication,
}

/// What an intro says, once opened.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntroBody {
    /// A short note from the sender ("hi, it's Alice from the climbing club").
    pub note: String,
    /// The sender's profile key: it opens the sender's profile.
    pub profile_key: ProfileKey,
}

impl std::fmt::Debug for IntroBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntroBody")
            .field("note", &format_args!("<{} bytes>", self.note.len()))
            .finish_non_exhaustive()
    }
}

impl Wire for IntroBody {
    fn check_limits(&self) -> Result<(), DecodeError> {
        check_len("note", self.note.len(), MAX_NOTE_LEN)
    }
}

/// A signed, sealed introduction from one user's device to another user (see the module
/// docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intro {
    /// The sending user.
    pub from: UserId,
    /// The sending device (a device of `from`'s chain); it signed the intro.
    pub device: DeviceId,
    /// The receiving user.
    pub to: UserId,
    /// The content key, sealed to each device of `to`.
    pub recipients: Vec<(DeviceId, SealedKey)>,
    /// Nonce of the body's encryption.
    pub nonce: [u8; 24],
    /// The sealed [`IntroBody`].
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// The sending device's signature (see the module docs).
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

impl Intro {
    /// Seals `body` from `device_key` (a device of `from`) to the devices of `to` given as
    /// `(device, exchange public key)`.
    pub fn seal(
        rng: &mut impl CryptoRngCore,
        from: UserId,
        device_key: &DeviceKey,
        to: UserId,
        recipients: &[(DeviceId, [u8; 32])],
        body: &IntroBody,
    ) -> Result<Self, IntroError> {
        if body.note.len() > MAX_NOTE_LEN {
            return Err(IntroError::NoteTooLong);
        }
        if recipients.is_empty() {
            return Err(IntroError::NoRecipients);
        }
        let device = device_key.id();
        let mut content_key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(content_key.as_mut());
        let context = users_context(&from, &to);
        let sealed_keys = recipients
            .iter()
            .map(|(id, public)| {
                seal_key_to(rng, INTRO_KEY_LABEL, &context, &content_key, public)
                    .map(|sealed| (*id, sealed))
                    .map_err(|_| IntroError::WeakKey)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let plain = Zeroizing::new(codec::encode(body));
        let ciphertext = XChaCha20Poly1305::new(content_key.as_ref().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &body_aad(&from, &to, &device),
                },
            )
            .map_err(|_| IntroError::Authentication)?;
        let mut intro = Self {
            from,
            device,
            to,
            recipients: sealed_keys,
            nonce,
            ciphertext,
            signature: [0; 64],
        };
        intro.signature = device_key.sign(INTRO_LABEL, &intro.signed_bytes());
        Ok(intro)
    }

    /// Checks the signature with the named device's key. Says nothing about whether that
    /// device acts for `from`: that is the sender's device chain's word.
    pub fn verify_signature(&self) -> Result<(), IntroError> {
        self.device
            .verify(INTRO_LABEL, &self.signed_bytes(), &self.signature)
            .map_err(|_| IntroError::BadSignature)
    }

    /// Opens the body as `device` of the receiving user, with its exchange secret. Checks
    /// the signature first.
    pub fn open(&self, device: DeviceId, secret: &ExchangeSecret) -> Result<IntroBody, IntroError> {
        self.verify_signature()?;
        let (_, sealed) = self
            .recipients
            .iter()
            .find(|(id, _)| *id == device)
            .ok_or(IntroError::NotForThisDevice)?;
        let context = users_context(&self.from, &self.to);
        let content_key = open_key_from(secret, INTRO_KEY_LABEL, &context, sealed)
            .map_err(|_| IntroError::Authentication)?;
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new(content_key.as_ref().into())
                .decrypt(
                    XNonce::from_slice(&self.nonce),
                    Payload {
                        msg: &self.ciphertext,
                        aad: &body_aad(&self.from, &self.to, &self.device),
                    },
                )
                .map_err(|_| IntroError::Authentication)?,
        );
        // Decoding checks the note's length (`IntroBody::check_limits`).
        codec::decode(&plain).map_err(|_| IntroError::Authentication)
    }

    /// The bytes the signature covers: everything but the signature.
    fn signed_bytes(&self) -> Vec<u8> {
        codec::encode(&(
            &self.from,
            &self.device,
            &self.to,
            &self.recipients,
            &self.nonce,
            serde_bytes::Bytes::new(&self.ciphertext),
        ))
    }
}

impl Wire for Intro {
    fn check_limits(&self) -> Result<(), DecodeError> {
        check_len("intro recipients", self.recipients.len(), MAX_CHAIN_DEVICES)?;
        self.recipients
            .iter()
            .try_for_each(|(_, key)| check_len("sealed key", key.0.len(), MAX_SEALED_KEY_LEN))?;
        check_len(
            "intro ciphertext",
            self.ciphertext.len(),
            MAX_INTRO_CIPHERTEXT_LEN,
        )
    }
}

fn users_context(from: &UserId, to: &UserId) -> [u8; 64] {
    let mut context = [0u8; 64];
    context[..32].copy_from_slice(from.as_bytes());
    context[32..].copy_from_slice(to.as_bytes());
    context
}

fn body_aad(from: &UserId, to: &UserId, device: &DeviceId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(INTRO_LABEL.len() + 96);
    aad.extend_from_slice(INTRO_LABEL);
    aad.extend_from_slice(from.as_bytes());
    aad.extend_from_slice(to.as_bytes());
    aad.extend_from_slice(device.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    struct Fixture {
        rng: ChaCha20Rng,
        sender: DeviceKey,
        receiver: DeviceKey,
        receiver_secret: ExchangeSecret,
        from: UserId,
        to: UserId,
    }

    fn fixture() -> Fixture {
        let mut rng = ChaCha20Rng::seed_from_u64(41);
        Fixture {
            sender: DeviceKey::generate(&mut rng),
            receiver: DeviceKey::generate(&mut rng),
            receiver_secret: ExchangeSecret::generate(&mut rng),
            from: UserId([1; 32]),
            to: UserId([2; 32]),
            rng,
        }
    }

    fn body() -> IntroBody {
        IntroBody {
            note: "hi, it's Alice".into(),
            profile_key: ProfileKey::from_bytes(&[7; 32]),
        }
    }

    fn sealed(f: &mut Fixture) -> Intro {
        let recipients = [(f.receiver.id(), f.receiver_secret.public())];
        Intro::seal(&mut f.rng, f.from, &f.sender, f.to, &recipients, &body()).unwrap()
    }

    #[test]
    fn an_intro_opens_for_its_recipient_only() {
        let mut f = fixture();
        let intro = sealed(&mut f);
        assert!(intro.check_limits().is_ok());
        assert_eq!(
            intro.open(f.receiver.id(), &f.receiver_secret).unwrap(),
            body()
        );
        // Another device (not a recipient), or the right id with the wrong secret.
        let other = ExchangeSecret::generate(&mut f.rng);
        assert_eq!(
            intro.open(f.sender.id(), &other),
            Err(IntroError::NotForThisDevice)
        );
        assert_eq!(
            intro.open(f.receiver.id(), &other),
            Err(IntroError::Authentication)
        );
    }

    #[test]
    fn a_body_prints_the_length_of_its_note_not_the_note_nor_the_key() {
        let shown = format!("{:?}", body());
        assert!(shown.contains("<14 bytes>"), "{shown}");
        assert!(
            !shown.contains("Alice") && !shown.contains("7, 7"),
            "{shown}"
        );
    }

    #[test]
    fn every_field_is_covered_by_the_signature() {
        let mut f = fixture();
        let intro = sealed(&mut f);
        let mut tampered = Vec::new();
        let mut t = intro.clone();
        t.from = UserId([9; 32]);
        tampered.push(t);
        let mut t = intro.clone();
        t.to = UserId([9; 32]);
        tampered.push(t);
        let mut t = intro.clone();
        t.device = f.receiver.id();
        tampered.push(t);
        let mut t = intro.clone();
        t.nonce[0] ^= 1;
        tampered.push(t);
        let mut t = intro.clone();
        t.ciphertext[0] ^= 1;
        tampered.push(t);
        let mut t = intro.clone();
        t.recipients.clear();
        tampered.push(t);
        let mut t = intro.clone();
        t.signature[5] ^= 1;
        tampered.push(t);
        for t in tampered {
            assert_eq!(t.verify_signature(), Err(IntroError::BadSignature));
            assert!(t.open(f.receiver.id(), &f.receiver_secret).is_err());
        }
    }

    #[test]
    fn a_resigned_intro_for_other_users_does_not_open() {
        // A sender that re-signs an intro with the users swapped cannot move its body: the
        // users are bound in the body's associated data and the sealed key's context.
        let mut f = fixture();
        let mut intro = sealed(&mut f);
        intro.to = UserId([3; 32]);
        intro.signature = f.sender.sign(INTRO_LABEL, &intro.signed_bytes());
        assert!(intro.verify_signature().is_ok());
        assert_eq!(
            intro.open(f.receiver.id(), &f.receiver_secret),
            Err(IntroError::Authentication)
        );
    }

    #[test]
    fn notes_and_recipients_are_bounded() {
        let mut f = fixture();
        let recipients = [(f.receiver.id(), f.receiver_secret.public())];
        let long = IntroBody {
            note: "x".repeat(MAX_NOTE_LEN + 1),
            ..body()
        };
        assert_eq!(
            Intro::seal(&mut f.rng, f.from, &f.sender, f.to, &recipients, &long),
            Err(IntroError::NoteTooLong)
        );
        let longest = IntroBody {
            note: "é".repeat(MAX_NOTE_LEN / 2),
            ..body()
        };
        let intro =
            Intro::seal(&mut f.rng, f.from, &f.sender, f.to, &recipients, &longest).unwrap();
        assert!(
            intro.check_limits().is_ok(),
            "the longest note fits the limit"
        );
        assert_eq!(
            intro.open(f.receiver.id(), &f.receiver_secret).unwrap(),
            longest,
            "and opens"
        );
        assert_eq!(
            Intro::seal(&mut f.rng, f.from, &f.sender, f.to, &[], &body()),
            Err(IntroError::NoRecipients)
        );
    }
}
