//! Identities: users, devices and relays are Ed25519 keys.
//!
//! - A **user** is a key pair derived from the user's recovery key
//!   ([`crate::recovery::RecoveryKey`]); [`UserId`] is its public key.
//! - A **device** has its own key pair ([`DeviceKey`], [`DeviceId`]) and acts for a user only
//!   while the user's device chain ([`crate::chain`]) admits it and has not revoked it.
//! - A **relay** has an identity key ([`RelayKey`]) that clients pin ([`RelayId`]).
//!
//! Every signature is made over a versioned label followed by the postcard encoding of the
//! signed fields, so a signature made for one purpose can never be replayed for another.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::limits::MAX_DEVICE_NAME_LEN;

/// A device name is at most [`MAX_DEVICE_NAME_LEN`] bytes and has no control characters
/// (checked when a certificate is issued and whenever one is verified).
pub fn check_device_name(name: &str) -> Result<(), IdentityError> {
    if name.len() > MAX_DEVICE_NAME_LEN {
        return Err(IdentityError::NameTooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(IdentityError::NameHasControl);
    }
    Ok(())
}

/// Why an identity could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a valid Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A device name is longer than [`MAX_DEVICE_NAME_LEN`] bytes.
    #[error("device name is longer than {MAX_DEVICE_NAME_LEN} bytes")]
    NameTooLong,
    /// A device name holds a control character (NUL, escape, newline...): it would break
    /// storage or the terminals that print it.
    #[error("device name contains a control character")]
    NameHasControl,
    /// Text was not 64 hexadecimal digits.
    #[error("expected 64 hexadecimal digits")]
    BadHex,
}

macro_rules! public_key_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw public key bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hexadecimal, as printed to users.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 64 hexadecimal digits.
            pub fn from_hex(text: &str) -> Result<Self, IdentityError> {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| IdentityError::BadHex)?;
                Ok(Self(bytes))
            }

            /// The key as an Ed25519 verifying key, if it is a valid point.
            pub fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
                VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::InvalidKey)
            }

            /// Verifies `signature` over `label || message` with this key (strict verification:
            /// no small-order keys, no malleable signatures).
            pub fn verify(&self, label: &[u8], message: &[u8], signature: &[u8; 64]) -> Result<(), IdentityError> {
                let key = self.verifying_key()?;
                let signature = ed25519_dalek::Signature::from_bytes(signature);
                key.verify_strict(&labeled(label, message), &signature)
                    .map_err(|_| IdentityError::BadSignature)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), &self.to_hex()[..12])
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdentityError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::from_hex(text)
            }
        }
    };
}

macro_rules! secret_signing_key {
    ($(#[$doc:meta])* $name:ident => $id:ident) => {
        $(#[$doc])*
        ///
        /// Secret: not `Clone`, not `Serialize`, zeroized on drop, redacted in `Debug`.
        pub struct $name(SigningKey);

        impl $name {
            /// Makes a new key from the caller's cryptographic RNG.
            pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
                Self(SigningKey::generate(rng))
            }

            /// Rebuilds a key from its 32 secret bytes (as stored on disk).
            pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
                Self(SigningKey::from_bytes(secret))
            }

            /// The 32 secret bytes, for storing; zeroized when dropped.
            pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
                Zeroizing::new(self.0.to_bytes())
            }

            /// The public half.
            pub fn id(&self) -> $id {
                $id(self.0.verifying_key().to_bytes())
            }

            /// Signs `label || message`.
            pub fn sign(&self, label: &[u8], message: &[u8]) -> [u8; 64] {
                self.0.sign(&labeled(label, message)).to_bytes()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({:?}, secret: <redacted>)"), self.id())
            }
        }
    };
}

public_key_id!(
    /// A user: the public half of the user key.
    UserId
);
public_key_id!(
    /// A device: the public half of the device key.
    DeviceId
);
public_key_id!(
    /// A relay's identity: the public key clients pin.
    RelayId
);

secret_signing_key!(
    /// The user key, derived from the recovery key: signs the chain's first links and
    /// recovery links. No device keeps it; it exists while the user types the recovery key.
    UserKey => UserId
);
secret_signing_key!(
    /// A device's own key: signs the handshake transcript and the chain links it makes.
    DeviceKey => DeviceId
);
secret_signing_key!(
    /// The relay's identity key: signs the handshake transcript.
    RelayKey => RelayId
);

fn labeled(label: &[u8], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + message.len());
    out.extend_from_slice(label);
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn names_with_control_characters_or_too_long_are_refused() {
        assert_eq!(check_device_name(&"x".repeat(MAX_DEVICE_NAME_LEN)), Ok(()));
        assert_eq!(
            check_device_name(&"x".repeat(MAX_DEVICE_NAME_LEN + 1)),
            Err(IdentityError::NameTooLong)
        );
        assert_eq!(check_device_name("téléphone ✓"), Ok(()));
        for name in [
            "nul\0",
            "esc\u{1b}[2J",
            "new\nline",
            "del\u{7f}",
            "c1\u{9b}",
        ] {
            assert_eq!(
                check_device_name(name),
                Err(IdentityError::NameHasControl),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_signature_is_bound_to_its_label() {
        let mut rng = rng();
        let key = DeviceKey::generate(&mut rng);
        let signature = key.sign(b"label-a", b"message");
        assert_eq!(key.id().verify(b"label-a", b"message", &signature), Ok(()));
        assert_eq!(
            key.id().verify(b"label-b", b"message", &signature),
            Err(IdentityError::BadSignature)
        );
    }

    #[test]
    fn secrets_are_redacted_and_round_trip() {
        let mut rng = rng();
        let key = UserKey::generate(&mut rng);
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&hex::encode(*key.secret_bytes())));
        let again = UserKey::from_secret_bytes(&key.secret_bytes());
        assert_eq!(again.id(), key.id());
        assert_eq!(UserId::from_hex(&key.id().to_hex()), Ok(key.id()));
        assert_eq!(UserId::from_hex("zz"), Err(IdentityError::BadHex));
    }
}
