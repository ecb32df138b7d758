//! Profiles: a display name and an optional avatar reference, sealed with the user's
//! profile key, which the relay never holds.
//!
//! The **profile key** is derived from the user's data key of epoch 0, which every device
//! of the user holds (a new device is granted every epoch at pairing):
//! `HKDF-SHA256(ikm = epoch-0 data key, info = "ferry/v1/profile-key")`. A contact receives
//! it in the [`Intro`](super::Intro) of a request or an acceptance.
//!
//! ```text
//! aad       = "ferry/v1/profile" ‖ user ‖ version (u64 big-endian)
//! sealed    = XChaCha20-Poly1305(profile key, nonce, postcard(ProfileBody), aad)
//! ```
//!
//! The user and the version are bound, so a relay cannot serve one user's profile as
//! another's, nor relabel an old version as new. It can still serve an older version it
//! kept: a client remembers the highest version it opened and refuses lower ones.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::codec::{self, DecodeError, Wire, check_len};
use crate::identity::UserId;
use crate::seal::DataKey;

/// Label of the profile's encryption.
pub const PROFILE_LABEL: &[u8] = b"ferry/v1/profile";
/// HKDF info of the profile key.
pub const PROFILE_KEY_INFO: &[u8] = b"ferry/v1/profile-key";
/// Longest display name, in bytes (UTF-8).
pub const MAX_DISPLAY_NAME_LEN: usize = 64;
/// Longest avatar reference, in bytes.
pub const MAX_AVATAR_REF_LEN: usize = 512;
/// Longest sealed profile ciphertext: the longest body and the tag.
pub const MAX_PROFILE_CIPHERTEXT_LEN: usize = MAX_DISPLAY_NAME_LEN + MAX_AVATAR_REF_LEN + 32;

/// Why a profile could not be sealed or opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The display name is longer than [`MAX_DISPLAY_NAME_LEN`] bytes or holds a control
    /// character.
    #[error("a display name has at most {MAX_DISPLAY_NAME_LEN} bytes and no control characters")]
    BadDisplayName,
    /// The avatar reference is longer than [`MAX_AVATAR_REF_LEN`] bytes.
    #[error("an avatar reference has at most {MAX_AVATAR_REF_LEN} bytes")]
    AvatarTooLong,
    /// The sealed profile does not open with this key for this user and version.
    #[error("the profile does not open")]
    Authentication,
}

/// A user's profile key (secret: zeroized on drop, redacted in `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct ProfileKey(Zeroizing<[u8; 32]>);

impl Serialize for ProfileKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes: &[u8; 32] = &self.0;
        bytes.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ProfileKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = Zeroizing::new(<[u8; 32]>::deserialize(deserializer)?);
        Ok(Self(bytes))
    }
}

impl ProfileKey {
    /// The user's profile key, from the data key of epoch 0.
    pub fn derive(epoch_zero: &DataKey) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        if Hkdf::<Sha256>::new(None, epoch_zero.bytes())
            .expand(PROFILE_KEY_INFO, key.as_mut())
            .is_err()
        {
            unreachable!("32 bytes is a valid HKDF-SHA256 output length");
        }
        Self(key)
    }

    /// A key from its bytes (as kept by a contact).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// The key's bytes, for the state folder.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ProfileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProfileKey(<redacted>)")
    }
}

/// What a profile says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileBody {
    /// The name shown to contacts.
    pub display_name: String,
    /// Where the avatar image is (an attachment reference), if there is one.
    pub avatar: Option<String>,
}

impl ProfileBody {
    /// Checks the lengths and characters of the module docs.
    pub fn check(&self) -> Result<(), ProfileError> {
        if self.display_name.len() > MAX_DISPLAY_NAME_LEN
            || self.display_name.chars().any(char::is_control)
        {
            return Err(ProfileError::BadDisplayName);
        }
        if self
            .avatar
            .as_ref()
            .is_some_and(|a| a.len() > MAX_AVATAR_REF_LEN)
        {
            return Err(ProfileError::AvatarTooLong);
        }
        Ok(())
    }

    /// Seals the profile of `user` as `version`.
    pub fn seal(
        &self,
        rng: &mut impl CryptoRngCore,
        key: &ProfileKey,
        user: &UserId,
        version: u64,
    ) -> Result<SealedProfile, ProfileError> {
        self.check()?;
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let plain = Zeroizing::new(codec::encode(self));
        let ciphertext = XChaCha20Poly1305::new(key.0.as_ref().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad(user, version),
                },
            )
            .map_err(|_| ProfileError::Authentication)?;
        Ok(SealedProfile {
            version,
            nonce,
            ciphertext,
        })
    }
}

/// A sealed profile as the relay stores it: only the version is readable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedProfile {
    /// Grows with every update; contacts fetch a profile whose version they have not seen.
    pub version: u64,
    /// Nonce of the encryption.
    pub nonce: [u8; 24],
    /// The sealed [`ProfileBody`].
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

impl SealedProfile {
    /// Opens the profile of `user` with its profile key.
    pub fn open(&self, key: &ProfileKey, user: &UserId) -> Result<ProfileBody, ProfileError> {
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new(key.0.as_ref().into())
                .decrypt(
                    XNonce::from_slice(&self.nonce),
                    Payload {
                        msg: &self.ciphertext,
                        aad: &aad(user, self.version),
                    },
                )
                .map_err(|_| ProfileError::Authentication)?,
        );
        let body: ProfileBody = codec::decode(&plain).map_err(|_| ProfileError::Authentication)?;
        body.check()?;
        Ok(body)
    }
}

impl Wire for ProfileBody {
    fn check_limits(&self) -> Result<(), DecodeError> {
        check_len(
            "display name",
            self.display_name.len(),
            MAX_DISPLAY_NAME_LEN,
        )?;
        check_len(
            "avatar reference",
            self.avatar.as_ref().map_or(0, String::len),
            MAX_AVATAR_REF_LEN,
        )
    }
}

impl Wire for SealedProfile {
    fn check_limits(&self) -> Result<(), DecodeError> {
        check_len(
            "profile ciphertext",
            self.ciphertext.len(),
            MAX_PROFILE_CIPHERTEXT_LEN,
        )
    }
}

fn aad(user: &UserId, version: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(PROFILE_LABEL.len() + 40);
    aad.extend_from_slice(PROFILE_LABEL);
    aad.extend_from_slice(user.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn a_profile_opens_for_its_user_and_version_only() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let key = ProfileKey::derive(&DataKey::from_bytes(&[3; 32]));
        let user = UserId([1; 32]);
        let body = ProfileBody {
            display_name: "Alice Liddell".into(),
            avatar: Some("blob:1234".into()),
        };
        let sealed = body.seal(&mut rng, &key, &user, 4).unwrap();
        assert!(sealed.check_limits().is_ok());
        assert_eq!(sealed.open(&key, &user).unwrap(), body);
        assert_eq!(
            sealed.open(&key, &UserId([2; 32])),
            Err(ProfileError::Authentication)
        );
        let mut relabelled = sealed.clone();
        relabelled.version = 5;
        assert_eq!(
            relabelled.open(&key, &user),
            Err(ProfileError::Authentication)
        );
        let other = ProfileKey::derive(&DataKey::from_bytes(&[4; 32]));
        assert_eq!(
            sealed.open(&other, &user),
            Err(ProfileError::Authentication)
        );
    }

    #[test]
    fn the_profile_key_is_derived_not_the_data_key() {
        let data = DataKey::from_bytes(&[3; 32]);
        let key = ProfileKey::derive(&data);
        assert_ne!(key.bytes(), data.bytes());
        assert_eq!(key, ProfileKey::derive(&DataKey::from_bytes(&[3; 32])));
        assert_eq!(format!("{key:?}"), "ProfileKey(<redacted>)");
    }

    #[test]
    fn the_longest_profile_fits_and_bad_ones_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let key = ProfileKey::from_bytes(&[1; 32]);
        let user = UserId([1; 32]);
        let longest = ProfileBody {
            display_name: "n".repeat(MAX_DISPLAY_NAME_LEN),
            avatar: Some("a".repeat(MAX_AVATAR_REF_LEN)),
        };
        assert!(
            longest
                .seal(&mut rng, &key, &user, 1)
                .unwrap()
                .check_limits()
                .is_ok()
        );
        let long_name = ProfileBody {
            display_name: "n".repeat(MAX_DISPLAY_NAME_LEN + 1),
            avatar: None,
        };
        assert_eq!(
            long_name.seal(&mut rng, &key, &user, 1),
            Err(ProfileError::BadDisplayName)
        );
        let control = ProfileBody {
            display_name: "a\u{1b}[2J".into(),
            avatar: None,
        };
        assert_eq!(control.check(), Err(ProfileError::BadDisplayName));
        let long_avatar = ProfileBody {
            display_name: String::new(),
            avatar: Some("a".repeat(MAX_AVATAR_REF_LEN + 1)),
        };
        assert_eq!(long_avatar.check(), Err(ProfileError::AvatarTooLong));
    }
}
