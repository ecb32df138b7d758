//! Safety numbers: sixty digits two users compare (aloud, or side by side) to check that
//! each holds the other's real user key, the way Signal's safety numbers work.
//!
//! `SHA-512("ferry/v1/safety-number" ‖ lower user id ‖ higher user id)`, its first 60
//! bytes read as twelve 5-byte big-endian numbers, each modulo 100 000, printed as twelve
//! groups of five digits. Both users compute the same number (the ids are sorted).

use ferry_protocol::UserId;
use sha2::{Digest, Sha512};

/// Label hashed before the two user ids.
pub const SAFETY_NUMBER_LABEL: &[u8] = b"ferry/v1/safety-number";

/// The safety number of two users (the same whichever order they are given in).
pub fn safety_number(a: &UserId, b: &UserId) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let digest = Sha512::new()
        .chain_update(SAFETY_NUMBER_LABEL)
        .chain_update(low.as_bytes())
        .chain_update(high.as_bytes())
        .finalize();
    digest[..60]
        .chunks(5)
        .map(|chunk| {
            let value = chunk.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            format!("{:05}", value % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_see_the_same_sixty_digits_and_other_keys_change_them() {
        let (a, b, c) = (UserId([1; 32]), UserId([2; 32]), UserId([3; 32]));
        let number = safety_number(&a, &b);
        assert_eq!(number, safety_number(&b, &a));
        assert_eq!(number.split(' ').count(), 12);
        assert_eq!(number.chars().filter(char::is_ascii_digit).count(), 60);
        assert_ne!(number, safety_number(&a, &c));
    }
}
