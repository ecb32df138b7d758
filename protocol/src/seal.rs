//! End-to-end sealing of event payloads (client side only; the relay never calls this).
//!
//! A payload is sealed with one epoch's [`DataKey`] (the device chain moves the data key to a
//! new epoch at every revocation: [`crate::chain`]) using XChaCha20-Poly1305 and a random
//! 24-byte nonce. The payload names its epoch in clear, so a reader picks the key without
//! trying them all. The event's slot, `(user, device, device_seq)`, and the epoch are bound as
//! associated data, so a relay that moves a payload to another user, device or sequence
//! number, or relabels its epoch, makes it fail to open.
//!
//! Sealed layout: `format(1) = 0x02 ‖ epoch(4, big-endian) ‖ nonce(24) ‖ ciphertext ‖ tag(16)`.
//! Associated data: `SEAL_LABEL ‖ format ‖ epoch(4) ‖ postcard(EventSlot)`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::CryptoRngCore;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::codec;
use crate::frames::SealedPayload;
use crate::identity::{DeviceId, UserId};
use crate::limits::MAX_PAYLOAD_LEN;

/// Label at the start of every payload's associated data.
pub const SEAL_LABEL: &[u8] = b"ferry/v1/event-payload";
/// The sealed-payload format: 2, with the epoch (format 1, without, is no longer read).
pub const FORMAT_V2: u8 = 2;
/// Bytes sealing adds to a plaintext.
pub const SEAL_OVERHEAD: usize = 1 + 4 + 24 + 16;
/// Largest plaintext that fits in one event.
pub const MAX_PLAINTEXT_LEN: usize = MAX_PAYLOAD_LEN - SEAL_OVERHEAD;

/// Why a payload could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The plaintext is larger than [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext of {0} bytes exceeds the {MAX_PLAINTEXT_LEN}-byte limit")]
    TooLarge(usize),
    /// The payload uses a format this build does not know.
    #[error("unknown sealed payload format {0}")]
    UnknownFormat(u8),
    /// The payload is too short, was tampered with, sealed under another key, or moved to
    /// another slot.
    #[error("payload does not authenticate")]
    Authentication,
}

/// The user's symmetric data key, shared end to end by the user's devices.
///
/// Secret: not `Clone`, not `Serialize`, zeroized on drop, redacted in `Debug`.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh key from the caller's cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        Self(key)
    }

    /// Rebuilds a key from its bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// The key bytes, for storing.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Where an event sits: bound into its payload as associated data.
///
/// Changing this struct, its field order or its encoding breaks every stored event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EventSlot {
    /// The user whose log holds the event.
    pub user: UserId,
    /// The device that appended it.
    pub device: DeviceId,
    /// The device's sequence number for it.
    pub device_seq: u64,
}

impl EventSlot {
    fn associated_data(&self, epoch: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(SEAL_LABEL.len() + 5 + 80);
        aad.extend_from_slice(SEAL_LABEL);
        aad.push(FORMAT_V2);
        aad.extend_from_slice(&epoch.to_be_bytes());
        codec::encode_into(self, &mut aad);
        aad
    }
}

/// Seals `plaintext` for `slot` under epoch `epoch`'s `key`, with a nonce drawn from `rng`.
pub fn seal(
    key: &DataKey,
    epoch: u32,
    slot: &EventSlot,
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<SealedPayload, SealError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(SealError::TooLarge(plaintext.len()));
    }
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let aad = slot.associated_data(epoch);
    let ciphertext = key
        .cipher()
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| SealError::TooLarge(plaintext.len()))?;
    let mut out = Vec::with_capacity(1 + 4 + 24 + ciphertext.len());
    out.push(FORMAT_V2);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(SealedPayload(out))
}

/// The epoch a payload says it is sealed under (not authenticated until it opens).
pub fn epoch_of(sealed: &SealedPayload) -> Result<u32, SealError> {
    let bytes = &sealed.0;
    match bytes.first() {
        Some(&FORMAT_V2) => {}
        Some(&other) => return Err(SealError::UnknownFormat(other)),
        None => return Err(SealError::Authentication),
    }
    if bytes.len() < SEAL_OVERHEAD {
        return Err(SealError::Authentication);
    }
    let mut epoch = [0u8; 4];
    epoch.copy_from_slice(&bytes[1..5]);
    Ok(u32::from_be_bytes(epoch))
}

/// Opens a payload sealed for `slot` with `key`, the key of the epoch [`epoch_of`] names.
/// The plaintext is zeroized when dropped.
pub fn open(
    key: &DataKey,
    slot: &EventSlot,
    sealed: &SealedPayload,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let epoch = epoch_of(sealed)?;
    let (nonce, ciphertext) = sealed.0[5..].split_at(24);
    let aad = slot.associated_data(epoch);
    key.cipher()
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn slot() -> EventSlot {
        EventSlot {
            user: UserId([1; 32]),
            device: DeviceId([2; 32]),
            device_seq: 3,
        }
    }

    #[test]
    fn round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let key = DataKey::generate(&mut rng);
        let sealed = seal(&key, 7, &slot(), b"hello", &mut rng).unwrap();
        assert_eq!(sealed.0.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(&open(&key, &slot(), &sealed).unwrap()[..], b"hello");
    }

    #[test]
    fn moving_a_payload_to_another_slot_is_detected() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let key = DataKey::generate(&mut rng);
        let sealed = seal(&key, 7, &slot(), b"hello", &mut rng).unwrap();
        for moved in [
            EventSlot {
                user: UserId([9; 32]),
                ..slot()
            },
            EventSlot {
                device: DeviceId([9; 32]),
                ..slot()
            },
            EventSlot {
                device_seq: 4,
                ..slot()
            },
        ] {
            assert_eq!(open(&key, &moved, &sealed), Err(SealError::Authentication));
        }
    }

    #[test]
    fn tampering_and_wrong_keys_are_detected() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let key = DataKey::generate(&mut rng);
        let sealed = seal(&key, 7, &slot(), b"hello", &mut rng).unwrap();
        for i in 1..sealed.0.len() {
            let mut bad = sealed.clone();
            bad.0[i] ^= 0x40;
            assert_eq!(
                open(&key, &slot(), &bad),
                Err(SealError::Authentication),
                "byte {i}"
            );
        }
        let mut bad = sealed.clone();
        bad.0[0] = 1;
        assert_eq!(open(&key, &slot(), &bad), Err(SealError::UnknownFormat(1)));
        let truncated = SealedPayload(sealed.0[..sealed.0.len() - 1].to_vec());
        assert_eq!(
            open(&key, &slot(), &truncated),
            Err(SealError::Authentication)
        );
        assert_eq!(
            open(&key, &slot(), &SealedPayload(vec![])),
            Err(SealError::Authentication)
        );
        let other = DataKey::generate(&mut rng);
        assert_eq!(
            open(&other, &slot(), &sealed),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn the_epoch_is_named_in_clear_and_bound() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let key = DataKey::generate(&mut rng);
        let sealed = seal(&key, 0x0102_0304, &slot(), b"hello", &mut rng).unwrap();
        assert_eq!(&sealed.0[..5], &[FORMAT_V2, 1, 2, 3, 4]);
        assert_eq!(epoch_of(&sealed), Ok(0x0102_0304));
        // Relabelled to another epoch (a relay pointing a reader at an older key): refused.
        let mut relabelled = sealed.clone();
        relabelled.0[4] = 5;
        assert_eq!(epoch_of(&relabelled), Ok(0x0102_0305));
        assert_eq!(
            open(&key, &slot(), &relabelled),
            Err(SealError::Authentication)
        );
        assert_eq!(
            epoch_of(&SealedPayload(vec![FORMAT_V2; SEAL_OVERHEAD - 1])),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn limits() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let key = DataKey::generate(&mut rng);
        let big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
        assert_eq!(
            seal(&key, 7, &slot(), &big, &mut rng),
            Err(SealError::TooLarge(big.len()))
        );
        let max = seal(&key, 7, &slot(), &big[1..], &mut rng).unwrap();
        assert_eq!(max.0.len(), MAX_PAYLOAD_LEN);
        assert!(format!("{key:?}").contains("redacted"));
    }

    #[test]
    fn an_empty_plaintext_round_trips_and_anything_shorter_is_refused_cleanly() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let key = DataKey::generate(&mut rng);
        // The shortest valid payload: format byte, epoch, nonce and tag, no ciphertext.
        let empty = seal(&key, 7, &slot(), b"", &mut rng).unwrap();
        assert_eq!(empty.0.len(), SEAL_OVERHEAD);
        assert!(open(&key, &slot(), &empty).unwrap().is_empty());
        // Every shorter payload with a valid format byte is refused, without panicking on the
        // missing nonce or tag.
        for len in 1..SEAL_OVERHEAD {
            let short = SealedPayload(empty.0[..len].to_vec());
            assert_eq!(
                open(&key, &slot(), &short),
                Err(SealError::Authentication),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn a_key_restored_from_its_bytes_opens_what_it_sealed() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let key = DataKey::generate(&mut rng);
        let sealed = seal(&key, 7, &slot(), b"stored", &mut rng).unwrap();
        let restored = DataKey::from_bytes(key.bytes());
        assert_eq!(&open(&restored, &slot(), &sealed).unwrap()[..], b"stored");
        // Two generated keys differ, and one does not open the other's payloads.
        let other = DataKey::generate(&mut rng);
        assert_ne!(other.bytes(), key.bytes());
        assert_eq!(
            open(&DataKey::from_bytes(other.bytes()), &slot(), &sealed),
            Err(SealError::Authentication)
        );
    }
}
