//! Contact cards: what a user's devices keep about one contact (its profile key, the device
//! chain they pinned for it, the handle they found it by), stored by the relay beside the
//! user's contact list and sealed under the user's data key. Every device of the user reads
//! them, including devices paired or recovered after the contact was made, which were not
//! among the recipients of the contact's intro; the relay reads nothing.
//!
//! ```text
//! key        = HKDF-SHA256(ikm = data key of `epoch`, info = "ferry/v1/contact-card")
//! aad        = "ferry/v1/contact-card" ‖ owner ‖ peer ‖ epoch (u32 big-endian)
//! ciphertext = XChaCha20-Poly1305(key, nonce, postcard(CardBody), aad)
//! ```
//!
//! The owner and the contact are bound, so a relay cannot move a card to another contact or
//! another user; it can serve an older card it kept, so a client takes from a card only what
//! it lacks.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::ProfileKey;
use super::handle::MAX_HANDLE_INPUT_LEN;
use crate::chain::LinkHash;
use crate::codec::{self, DecodeError, Wire, check_len};
use crate::identity::UserId;
use crate::seal::DataKey;

/// Label of the card key and of the associated data.
pub const CARD_LABEL: &[u8] = b"ferry/v1/contact-card";
/// Longest card ciphertext.
pub const MAX_CARD_CIPHERTEXT_LEN: usize = 512;

/// A card does not open: not this user's, not this contact's, not this epoch's, or tampered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the contact card does not open")]
pub struct CardError;

/// What a card says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardBody {
    /// The contact's profile key, once a device of the user opened the contact's intro.
    pub profile_key: Option<ProfileKey>,
    /// The contact's device chain as pinned: its length and the hash of its last link.
    pub pinned: Option<(u64, LinkHash)>,
    /// The handle the user found the contact by.
    pub handle: Option<String>,
}

impl Wire for CardBody {
    fn check_limits(&self) -> Result<(), DecodeError> {
        check_len(
            "handle",
            self.handle.as_ref().map_or(0, String::len),
            MAX_HANDLE_INPUT_LEN,
        )
    }
}

/// A sealed card as the relay stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCard {
    /// The data-key epoch it is sealed under.
    pub epoch: u32,
    /// Nonce of the encryption.
    pub nonce: [u8; 24],
    /// The sealed [`CardBody`].
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

impl Wire for SealedCard {
    fn check_limits(&self) -> Result<(), DecodeError> {
        check_len(
            "card ciphertext",
            self.ciphertext.len(),
            MAX_CARD_CIPHERTEXT_LEN,
        )
    }
}

impl CardBody {
    /// Seals the card `owner` keeps about `peer`, under the data key of `epoch`.
    pub fn seal(
        &self,
        rng: &mut impl CryptoRngCore,
        key: &DataKey,
        epoch: u32,
        owner: &UserId,
        peer: &UserId,
    ) -> SealedCard {
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let plain = Zeroizing::new(codec::encode(self));
        let ciphertext = cipher(key)
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad(owner, peer, epoch),
                },
            )
            .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 encrypts any length here"));
        SealedCard {
            epoch,
            nonce,
            ciphertext,
        }
    }
}

impl SealedCard {
    /// Opens the card `owner` keeps about `peer` with the data key of its epoch.
    pub fn open(
        &self,
        key: &DataKey,
        owner: &UserId,
        peer: &UserId,
    ) -> Result<CardBody, CardError> {
        let plain = Zeroizing::new(
            cipher(key)
                .decrypt(
                    XNonce::from_slice(&self.nonce),
                    Payload {
                        msg: &self.ciphertext,
                        aad: &aad(owner, peer, self.epoch),
                    },
                )
                .map_err(|_| CardError)?,
        );
        codec::decode(&plain).map_err(|_| CardError)
    }
}

fn cipher(key: &DataKey) -> XChaCha20Poly1305 {
    let mut card_key = Zeroizing::new([0u8; 32]);
    if Hkdf::<Sha256>::new(None, key.bytes())
        .expand(CARD_LABEL, card_key.as_mut())
        .is_err()
    {
        unreachable!("32 bytes is a valid HKDF-SHA256 output length");
    }
    XChaCha20Poly1305::new(card_key.as_ref().into())
}

fn aad(owner: &UserId, peer: &UserId, epoch: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(CARD_LABEL.len() + 68);
    aad.extend_from_slice(CARD_LABEL);
    aad.extend_from_slice(owner.as_bytes());
    aad.extend_from_slice(peer.as_bytes());
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn a_card_opens_only_for_its_owner_contact_and_epoch_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let key = DataKey::from_bytes(&[4; 32]);
        let (owner, peer) = (UserId([1; 32]), UserId([2; 32]));
        let body = CardBody {
            profile_key: Some(ProfileKey::from_bytes(&[9; 32])),
            pinned: Some((3, LinkHash([7; 32]))),
            handle: Some("x".repeat(MAX_HANDLE_INPUT_LEN)),
        };
        let sealed = body.seal(&mut rng, &key, 2, &owner, &peer);
        assert!(sealed.check_limits().is_ok(), "the largest card fits");
        assert_eq!(sealed.open(&key, &owner, &peer), Ok(body));
        assert_eq!(sealed.open(&key, &peer, &owner), Err(CardError));
        assert_eq!(sealed.open(&key, &owner, &UserId([3; 32])), Err(CardError));
        assert_eq!(
            sealed.open(&DataKey::from_bytes(&[5; 32]), &owner, &peer),
            Err(CardError)
        );
        let mut relabelled = sealed.clone();
        relabelled.epoch = 3;
        assert_eq!(relabelled.open(&key, &owner, &peer), Err(CardError));
        let mut tampered = sealed;
        tampered.ciphertext[0] ^= 1;
        assert_eq!(tampered.open(&key, &owner, &peer), Err(CardError));
    }
}
