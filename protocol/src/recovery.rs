//! The recovery key: the root of a user's identity, written down once by the user.
//!
//! A recovery key is 256 random bits. The user key (whose public half is the user id) is
//! derived from it with HKDF-SHA256, so typing the recovery key back gives the same user. It
//! is shown once, at account creation, as 55 characters of Crockford base32 in groups of five:
//! the 32 key bytes followed by a 2-byte checksum (the first two bytes of
//! `SHA-256(CHECKSUM_LABEL ‖ key)`), so a mistyped key is caught on the device (a random typo
//! passes with probability 2⁻¹⁶) before any network round trip.
//!
//! Reading is forgiving where it cannot be ambiguous: case does not matter, spaces and dashes
//! are ignored, `O` reads as `0` and `I`/`L` as `1` (Crockford's rules).
//!
//! ```
//! use ferry_protocol::recovery::RecoveryKey;
//! # use rand_core::SeedableRng;
//! # let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let key = RecoveryKey::generate(&mut rng);
//! let written = key.display().to_string();
//! let typed = written.to_lowercase().replace('-', " ");
//! let back = RecoveryKey::parse(&typed).unwrap();
//! assert_eq!(back.user_key().id(), key.user_key().id());
//! ```

use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::identity::UserKey;

/// Bytes of secret in a recovery key.
pub const RECOVERY_KEY_LEN: usize = 32;
/// Bytes of checksum written after the key.
pub const CHECKSUM_LEN: usize = 2;
/// Characters of a written recovery key, without separators.
pub const WRITTEN_LEN: usize = ((RECOVERY_KEY_LEN + CHECKSUM_LEN) * 8).div_ceil(5);
/// Characters per group when written.
pub const GROUP_LEN: usize = 5;

/// Prefix of the hashed checksum input.
pub const CHECKSUM_LABEL: &[u8] = b"ferry/v1/recovery-key-checksum";
/// HKDF salt of the user key's derivation.
pub const USER_KEY_SALT: &[u8] = b"ferry/v1/recovery-key";
/// HKDF info of the user key's derivation.
pub const USER_KEY_INFO: &[u8] = b"ferry/v1/user-signing-key";

/// Crockford's base32 alphabet: no I, L, O or U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Why a typed recovery key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryKeyError {
    /// A character that is not part of a recovery key.
    #[error("{0:?} is not a character of a recovery key")]
    BadCharacter(char),
    /// Too few or too many characters.
    #[error("a recovery key has {WRITTEN_LEN} characters; this has {0}")]
    WrongLength(usize),
    /// Every character is valid but the checksum does not match: a typo.
    #[error("the recovery key does not check out: a character is mistyped")]
    Checksum,
}

/// The recovery key. Secret: not `Clone`, zeroized on drop, redacted in `Debug`.
pub struct RecoveryKey(Zeroizing<[u8; RECOVERY_KEY_LEN]>);

impl RecoveryKey {
    /// A fresh key from the caller's cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut key = Zeroizing::new([0u8; RECOVERY_KEY_LEN]);
        rng.fill_bytes(key.as_mut());
        Self(key)
    }

    /// Rebuilds a key from its bytes.
    pub fn from_bytes(bytes: [u8; RECOVERY_KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The user key this recovery key stands for (the same every time).
    pub fn user_key(&self) -> UserKey {
        UserKey::from_secret_bytes(&self.derive(USER_KEY_INFO))
    }

    /// A 32-byte secret derived from the recovery key for one purpose (`info`).
    pub(crate) fn derive(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let hkdf = Hkdf::<Sha256>::new(Some(USER_KEY_SALT), self.0.as_ref());
        let mut out = Zeroizing::new([0u8; 32]);
        if hkdf.expand(info, out.as_mut()).is_err() {
            unreachable!("32 bytes is a valid HKDF-SHA256 output length");
        }
        out
    }

    /// The key as the user writes it down: groups of five characters joined by dashes.
    pub fn display(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(Vec::with_capacity(RECOVERY_KEY_LEN + CHECKSUM_LEN));
        raw.extend_from_slice(self.0.as_ref());
        raw.extend_from_slice(&checksum(&self.0));
        let chars = encode_base32(&raw);
        let mut out = Zeroizing::new(String::with_capacity(WRITTEN_LEN + WRITTEN_LEN / GROUP_LEN));
        for (i, c) in chars.iter().enumerate() {
            if i > 0 && i % GROUP_LEN == 0 {
                out.push('-');
            }
            out.push(char::from(*c));
        }
        out
    }

    /// Reads a key the user typed (see the module docs for what is forgiven).
    pub fn parse(text: &str) -> Result<Self, RecoveryKeyError> {
        let mut values = Zeroizing::new(Vec::with_capacity(WRITTEN_LEN));
        for c in text.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            values.push(base32_value(c).ok_or(RecoveryKeyError::BadCharacter(c))?);
        }
        if values.len() != WRITTEN_LEN {
            return Err(RecoveryKeyError::WrongLength(values.len()));
        }
        let raw = decode_base32(&values);
        let mut key = Zeroizing::new([0u8; RECOVERY_KEY_LEN]);
        key.copy_from_slice(&raw[..RECOVERY_KEY_LEN]);
        // The padding bits after the last full byte must be zero, or two spellings would
        // name one key and a typo there would pass the checksum.
        if raw[RECOVERY_KEY_LEN..] != checksum(&key) || !padding_is_zero(&values) {
            return Err(RecoveryKeyError::Checksum);
        }
        Ok(Self(key))
    }
}

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(<redacted>)")
    }
}

fn checksum(key: &[u8; RECOVERY_KEY_LEN]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new()
        .chain_update(CHECKSUM_LABEL)
        .chain_update(key)
        .finalize();
    [digest[0], digest[1]]
}

fn base32_value(c: char) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    ALPHABET
        .iter()
        .position(|&a| char::from(a) == c)
        .and_then(|i| u8::try_from(i).ok())
}

/// Big-endian bit stream of `bytes`, 5 bits per character, the last padded with zeros.
fn encode_base32(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity((bytes.len() * 8).div_ceil(5)));
    let (mut buffer, mut bits) = (0u16, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u16::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[usize::from((buffer >> bits) & 0x1f)]);
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[usize::from((buffer << (5 - bits)) & 0x1f)]);
    }
    out
}

/// The bytes of 5-bit `values` (the trailing partial byte dropped).
fn decode_base32(values: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(values.len() * 5 / 8));
    let (mut buffer, mut bits) = (0u16, 0u32);
    for &value in values {
        buffer = (buffer << 5) | u16::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
        buffer &= (1 << bits) - 1;
    }
    out
}

fn padding_is_zero(values: &[u8]) -> bool {
    let pad_bits = values.len() * 5 - (RECOVERY_KEY_LEN + CHECKSUM_LEN) * 8;
    values
        .last()
        .is_some_and(|last| last & ((1 << pad_bits) - 1) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn the_written_form_is_55_characters_in_groups_of_five_and_reads_back() {
        let key = RecoveryKey::generate(&mut ChaCha20Rng::seed_from_u64(3));
        let written = key.display();
        assert_eq!(WRITTEN_LEN, 55);
        assert_eq!(written.len(), 55 + 10);
        assert!(written.split('-').all(|group| group.len() == GROUP_LEN));
        let back = RecoveryKey::parse(&written).unwrap();
        assert_eq!(back.0.as_ref(), key.0.as_ref());
    }

    #[test]
    fn reading_forgives_case_separators_and_lookalikes() {
        let key = RecoveryKey::from_bytes([0; 32]);
        let written = key.display().to_string();
        // An all-zero key is written with zeros the user may read as the letter O.
        let typed = written.replace('0', "o").replace('-', "  ");
        assert_eq!(RecoveryKey::parse(&typed).unwrap().0.as_ref(), &[0; 32]);
        let ones = RecoveryKey::from_bytes([0xff; 32]).display().to_string();
        assert!(ones.contains('Z'));
        let one_key = RecoveryKey::from_bytes([0x08; 32]).display().to_string();
        assert!(one_key.contains('1'));
        let typed = one_key.replacen('1', "l", 1).replacen('1', "I", 1);
        assert_eq!(RecoveryKey::parse(&typed).unwrap().0.as_ref(), &[0x08; 32]);
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let key = RecoveryKey::generate(&mut ChaCha20Rng::seed_from_u64(4));
        let written: Vec<u8> = key.display().bytes().filter(|&c| c != b'-').collect();
        let mut passed = 0;
        for position in 0..written.len() {
            for &replacement in ALPHABET {
                if replacement == written[position] {
                    continue;
                }
                let mut typo = written.clone();
                typo[position] = replacement;
                let typo = String::from_utf8(typo).unwrap();
                match RecoveryKey::parse(&typo) {
                    Err(RecoveryKeyError::Checksum) => {}
                    Ok(_) => passed += 1,
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
        }
        // 55 × 31 typos; a 16-bit checksum lets about one in 65,536 through.
        assert!(passed <= 1, "{passed} typos passed the checksum");
    }

    #[test]
    fn wrong_lengths_and_characters_are_named() {
        let written = RecoveryKey::from_bytes([7; 32]).display().to_string();
        assert!(matches!(
            RecoveryKey::parse(&written[..written.len() - 1]),
            Err(RecoveryKeyError::WrongLength(54))
        ));
        assert!(matches!(
            RecoveryKey::parse(&format!("{written}0")),
            Err(RecoveryKeyError::WrongLength(56))
        ));
        assert!(matches!(
            RecoveryKey::parse(&written.replacen(|c: char| c.is_ascii_alphanumeric(), "U", 1)),
            Err(RecoveryKeyError::BadCharacter('U'))
        ));
        assert!(matches!(
            RecoveryKey::parse(""),
            Err(RecoveryKeyError::WrongLength(0))
        ));
    }

    #[test]
    fn nonzero_padding_bits_are_refused() {
        let written: Vec<u8> = RecoveryKey::from_bytes([1; 32])
            .display()
            .bytes()
            .filter(|&c| c != b'-')
            .collect();
        // 272 bits in 55 characters: the last character carries 2 bits and 3 of padding.
        let last = base32_value(char::from(written[54])).unwrap();
        assert_eq!(last & 0b111, 0);
        let mut tampered = written.clone();
        tampered[54] = ALPHABET[usize::from(last | 1)];
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(matches!(
            RecoveryKey::parse(&tampered),
            Err(RecoveryKeyError::Checksum)
        ));
    }

    #[test]
    fn base32_pads_only_a_partial_last_character() {
        // The written key is 34 bytes (272 bits: the 55th character holds 2 bits and 3 of
        // padding), but the helpers are general: a length of a multiple of 5 bytes fills its
        // last character exactly and gains no padding character (as it would if the key or
        // the checksum changed size). "foobar" is RFC 4648's example, in Crockford's alphabet.
        let cases: [(&[u8], &str); 9] = [
            (b"", ""),
            (&[0xff], "ZW"),
            (b"f", "CR"),
            (b"fo", "CSQG"),
            (b"foo", "CSQPY"),
            (b"foob", "CSQPYRG"),
            (b"fooba", "CSQPYRK1"),
            (b"foobar", "CSQPYRK1E8"),
            (&[0xff; 5], "ZZZZZZZZ"),
        ];
        for (bytes, written) in cases {
            let encoded = encode_base32(bytes);
            assert_eq!(encoded.as_slice(), written.as_bytes(), "{bytes:?}");
            let values: Vec<u8> = written.chars().map(|c| base32_value(c).unwrap()).collect();
            assert_eq!(decode_base32(&values).as_slice(), bytes, "{written}");
        }
    }

    #[test]
    fn the_user_key_is_derived_deterministically_and_differs_per_key() {
        let a = RecoveryKey::from_bytes([1; 32]);
        let b = RecoveryKey::from_bytes([2; 32]);
        assert_eq!(
            a.user_key().id(),
            RecoveryKey::from_bytes([1; 32]).user_key().id()
        );
        assert_ne!(a.user_key().id(), b.user_key().id());
        assert_eq!(format!("{a:?}"), "RecoveryKey(<redacted>)");
    }
}
