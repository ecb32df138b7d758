//! Data-key epochs sealed to one recipient: how a revocation or rotation link of the device
//! chain ([`crate::chain`]) hands the new data key to each remaining device and to the
//! recovery key, without the relay learning it.
//!
//! Each device holds an X25519 **exchange key** (its public half is in the chain's `Admit`
//! link); the recovery key derives one too ([`RecoveryKey::exchange_secret`]). Sealing is an
//! ephemeral-static X25519 exchange, HKDF-SHA256 and XChaCha20-Poly1305:
//!
//! ```text
//! shared   = X25519(ephemeral secret, recipient public)       (all-zero refused)
//! key      = HKDF-SHA256(salt = ephemeral public ‖ recipient public, ikm = shared,
//!                        info = "ferry/v1/epoch-key", 32 bytes)
//! aad      = "ferry/v1/epoch-key" ‖ user ‖ epoch (u32 big-endian) ‖ recipient public
//! sealed   = ephemeral public (32) ‖ nonce (24) ‖ XChaCha20-Poly1305(key, nonce, data key, aad) (48)
//! ```
//!
//! The user and epoch are bound as associated data, so a relay cannot move a sealed key to
//! another epoch or another user's chain.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::chain::SealedKey;
use crate::identity::UserId;
use crate::recovery::RecoveryKey;
use crate::seal::DataKey;

/// Label of the key derivation and the associated data.
pub const EPOCH_KEY_LABEL: &[u8] = b"ferry/v1/epoch-key";
/// HKDF info of the recovery key's exchange key.
pub const RECOVERY_EXCHANGE_INFO: &[u8] = b"ferry/v1/recovery-exchange-key";
/// Bytes of a sealed epoch key.
pub const SEALED_EPOCH_KEY_LEN: usize = 32 + 24 + 32 + 16;

/// Why a sealed epoch key could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EpochKeyError {
    /// The recipient's public key is a low-order point: no secret would be shared.
    #[error("the recipient's exchange key is not usable")]
    WeakKey,
    /// The sealed key is not for this recipient, user or epoch, or was tampered with.
    #[error("the sealed epoch key does not open")]
    Authentication,
}

/// An X25519 exchange secret (a device's, or the recovery key's). Secret: not `Clone`,
/// zeroized on drop, redacted in `Debug`.
pub struct ExchangeSecret(Zeroizing<[u8; 32]>);

impl ExchangeSecret {
    /// A fresh secret from the caller's cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut());
        Self(secret)
    }

    /// Rebuilds a secret from its bytes (clamped when used, as RFC 7748 says).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// The secret's bytes, for the device's key file.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public half, published in the chain.
    pub fn public(&self) -> [u8; 32] {
        x25519_dalek::x25519(*self.0, x25519_dalek::X25519_BASEPOINT_BYTES)
    }
}

impl std::fmt::Debug for ExchangeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ExchangeSecret(public: {}, <redacted>)",
            hex::encode(self.public())
        )
    }
}

impl RecoveryKey {
    /// The recovery key's exchange secret: every epoch's key is sealed to its public half,
    /// so typing the recovery key opens the whole history.
    pub fn exchange_secret(&self) -> ExchangeSecret {
        ExchangeSecret(self.derive(RECOVERY_EXCHANGE_INFO))
    }
}

/// Seals epoch `epoch`'s data key of `user` to `recipient` (an exchange public key).
pub fn seal_epoch_key(
    rng: &mut impl CryptoRngCore,
    user: &UserId,
    epoch: u32,
    key: &DataKey,
    recipient: &[u8; 32],
) -> Result<SealedKey, EpochKeyError> {
    let context = epoch_context(user, epoch);
    seal_key_to(rng, EPOCH_KEY_LABEL, &context, key.bytes(), recipient)
}

/// Opens a key sealed to `secret` by [`seal_epoch_key`] for the same user and epoch.
pub fn open_epoch_key(
    secret: &ExchangeSecret,
    user: &UserId,
    epoch: u32,
    sealed: &SealedKey,
) -> Result<DataKey, EpochKeyError> {
    let context = epoch_context(user, epoch);
    let bytes = open_key_from(secret, EPOCH_KEY_LABEL, &context, sealed)?;
    Ok(DataKey::from_bytes(&bytes))
}

/// Seals a 32-byte secret to `recipient` (an X25519 exchange public key), bound to `label`
/// (also the HKDF info) and `context` (associated data): the construction of the module
/// docs, which an epoch key uses with its user and epoch as the context, and a contact
/// request ([`crate::people::Intro`]) with its two users.
pub fn seal_key_to(
    rng: &mut impl CryptoRngCore,
    label: &[u8],
    context: &[u8],
    secret: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<SealedKey, EpochKeyError> {
    let ephemeral = ExchangeSecret::generate(rng);
    let ephemeral_public = ephemeral.public();
    let cipher = cipher(&ephemeral, &ephemeral_public, recipient, label)?;
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let aad = associated_data(label, context, recipient);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: secret,
                aad: &aad,
            },
        )
        .map_err(|_| EpochKeyError::Authentication)?;
    let mut sealed = Vec::with_capacity(SEALED_EPOCH_KEY_LEN);
    sealed.extend_from_slice(&ephemeral_public);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Ok(SealedKey(sealed))
}

/// Opens a secret sealed to `secret` by [`seal_key_to`] with the same label and context.
pub fn open_key_from(
    secret: &ExchangeSecret,
    label: &[u8],
    context: &[u8],
    sealed: &SealedKey,
) -> Result<Zeroizing<[u8; 32]>, EpochKeyError> {
    if sealed.0.len() != SEALED_EPOCH_KEY_LEN {
        return Err(EpochKeyError::Authentication);
    }
    let (ephemeral_public, rest) = sealed.0.split_at(32);
    let (nonce, ciphertext) = rest.split_at(24);
    let ephemeral_public: [u8; 32] = ephemeral_public
        .try_into()
        .map_err(|_| EpochKeyError::Authentication)?;
    let recipient = secret.public();
    let cipher = cipher(secret, &ephemeral_public, &recipient, label)
        .map_err(|_| EpochKeyError::Authentication)?;
    let aad = associated_data(label, context, &recipient);
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| EpochKeyError::Authentication)?,
    );
    let bytes: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| EpochKeyError::Authentication)?;
    Ok(Zeroizing::new(bytes))
}

/// The AEAD keyed from a shared secret; both public keys salt the derivation.
fn cipher_for(
    shared: &Zeroizing<[u8; 32]>,
    ephemeral_public: &[u8; 32],
    recipient: &[u8; 32],
    label: &[u8],
) -> XChaCha20Poly1305 {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral_public);
    salt[32..].copy_from_slice(recipient);
    let hkdf = Hkdf::<Sha256>::new(Some(&salt), shared.as_ref());
    let mut key = Zeroizing::new([0u8; 32]);
    if hkdf.expand(label, key.as_mut()).is_err() {
        unreachable!("32 bytes is a valid HKDF-SHA256 output length");
    }
    XChaCha20Poly1305::new(key.as_ref().into())
}

/// The AEAD between `own` (the sender's ephemeral secret, or the recipient's secret) and the
/// other side's public key.
fn cipher(
    own: &ExchangeSecret,
    ephemeral_public: &[u8; 32],
    recipient: &[u8; 32],
    label: &[u8],
) -> Result<XChaCha20Poly1305, EpochKeyError> {
    // The sender pairs its ephemeral secret with the recipient; the recipient its secret
    // with the ephemeral public key. Both get the same shared secret.
    let peer = if own.public() == *recipient {
        ephemeral_public
    } else {
        recipient
    };
    let shared = Zeroizing::new(x25519_dalek::x25519(*own.0, *peer));
    if shared.iter().all(|&b| b == 0) {
        return Err(EpochKeyError::WeakKey);
    }
    Ok(cipher_for(&shared, ephemeral_public, recipient, label))
}

/// An epoch key's context: the user, then the epoch (u32 big-endian).
fn epoch_context(user: &UserId, epoch: u32) -> [u8; 36] {
    let mut context = [0u8; 36];
    context[..32].copy_from_slice(user.as_bytes());
    context[32..].copy_from_slice(&epoch.to_be_bytes());
    context
}

fn associated_data(label: &[u8], context: &[u8], recipient: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(label.len() + context.len() + 32);
    aad.extend_from_slice(label);
    aad.extend_from_slice(context);
    aad.extend_from_slice(recipient);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn a_sealed_key_opens_only_for_its_recipient_user_and_epoch() {
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let device = ExchangeSecret::generate(&mut rng);
        let other = ExchangeSecret::generate(&mut rng);
        let user = UserId([1; 32]);
        let key = DataKey::generate(&mut rng);
        let sealed = seal_epoch_key(&mut rng, &user, 3, &key, &device.public()).unwrap();
        assert_eq!(sealed.0.len(), SEALED_EPOCH_KEY_LEN);
        assert!(sealed.0.len() <= crate::chain::MAX_SEALED_KEY_LEN);
        let opened = open_epoch_key(&device, &user, 3, &sealed).unwrap();
        assert_eq!(opened.bytes(), key.bytes());

        let refused = Err(EpochKeyError::Authentication);
        assert_eq!(
            open_epoch_key(&other, &user, 3, &sealed).map(|_| ()),
            refused
        );
        assert_eq!(
            open_epoch_key(&device, &user, 4, &sealed).map(|_| ()),
            refused
        );
        assert_eq!(
            open_epoch_key(&device, &UserId([2; 32]), 3, &sealed).map(|_| ()),
            refused
        );
        for i in [0, 31, 32, 55, 56, SEALED_EPOCH_KEY_LEN - 1] {
            let mut tampered = sealed.clone();
            tampered.0[i] ^= 1;
            assert_eq!(
                open_epoch_key(&device, &user, 3, &tampered).map(|_| ()),
                refused,
                "byte {i}"
            );
        }
        let mut short = sealed.clone();
        short.0.pop();
        assert_eq!(
            open_epoch_key(&device, &user, 3, &short).map(|_| ()),
            refused
        );
    }

    #[test]
    fn the_recovery_key_opens_what_was_sealed_to_its_exchange_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(22);
        let recovery = RecoveryKey::generate(&mut rng);
        let user = recovery.user_key().id();
        let key = DataKey::generate(&mut rng);
        let public = recovery.exchange_secret().public();
        let sealed = seal_epoch_key(&mut rng, &user, 0, &key, &public).unwrap();
        // Typed back in later: the same exchange secret is derived.
        let typed = RecoveryKey::parse(&recovery.display()).unwrap();
        let opened = open_epoch_key(&typed.exchange_secret(), &user, 0, &sealed).unwrap();
        assert_eq!(opened.bytes(), key.bytes());
        assert_ne!(public, recovery.user_key().id().0, "distinct derivations");
    }

    #[test]
    fn an_exchange_secret_round_trips_through_its_bytes() {
        // What a device writes to its key file must rebuild the same secret.
        let secret = ExchangeSecret::from_bytes(&[0x5c; 32]);
        assert_eq!(secret.bytes(), &[0x5c; 32]);
        let fresh = ExchangeSecret::generate(&mut ChaCha20Rng::seed_from_u64(24));
        let reloaded = ExchangeSecret::from_bytes(fresh.bytes());
        assert_eq!(reloaded.bytes(), fresh.bytes());
        assert_eq!(reloaded.public(), fresh.public());
        // A key sealed to the fresh secret opens with the reloaded one.
        let mut rng = ChaCha20Rng::seed_from_u64(25);
        let user = UserId([1; 32]);
        let key = DataKey::generate(&mut rng);
        let sealed = seal_epoch_key(&mut rng, &user, 2, &key, &fresh.public()).unwrap();
        let opened = open_epoch_key(&reloaded, &user, 2, &sealed).unwrap();
        assert_eq!(opened.bytes(), key.bytes());
    }

    #[test]
    fn low_order_recipients_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(23);
        let key = DataKey::generate(&mut rng);
        assert_eq!(
            seal_epoch_key(&mut rng, &UserId([1; 32]), 1, &key, &[0; 32]).map(|_| ()),
            Err(EpochKeyError::WeakKey)
        );
        let secret = ExchangeSecret::generate(&mut rng);
        assert!(format!("{secret:?}").contains("redacted"));
        assert!(!format!("{secret:?}").contains(&hex::encode(secret.bytes())));
    }
}
