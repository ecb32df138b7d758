//! The relay's handle key: handles are stored as `HMAC-SHA256(handle key, lookup key)`, so a
//! copy of the database does not list them (and cannot be searched without the key).
//!
//! The key is derived from the relay's identity key (`HKDF-SHA256(relay secret, info =
//! "ferry/v1/handle-key")`), which every node of a cluster shares already: no other secret
//! to distribute. Replacing the relay key therefore forgets every handle (users set them
//! again); nothing else is lost.

use ferry_protocol::RelayKey;
use ferry_protocol::people::Handle;
use ferry_protocol::people::handle::NUMBERS;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

/// HKDF info of the handle key.
pub const HANDLE_KEY_INFO: &[u8] = b"ferry/v1/handle-key";

/// Keys handles for storage (see the module docs).
pub struct HandleKey(Zeroizing<[u8; 32]>);

impl HandleKey {
    /// The handle key of this relay.
    pub fn derive(relay: &RelayKey) -> Self {
        let secret = relay.secret_bytes();
        let mut key = Zeroizing::new([0u8; 32]);
        if Hkdf::<Sha256>::new(None, secret.as_ref())
            .expand(HANDLE_KEY_INFO, key.as_mut())
            .is_err()
        {
            unreachable!("32 bytes is a valid HKDF-SHA256 output length");
        }
        Self(key)
    }

    /// The stored form of a handle.
    pub fn hash(&self, handle: &Handle) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(handle.lookup_key().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Every number of the normalised `name` with its stored form, in a random order: the
    /// store gives the first free one, so numbers are not handed out in sequence (which
    /// would tell how popular a name is).
    pub fn candidates(&self, name: &str) -> Vec<(u8, [u8; 32])> {
        let mut numbers: Vec<u8> = (0..NUMBERS).collect();
        // Fisher–Yates with the OS generator.
        for i in (1..numbers.len()).rev() {
            let j = (OsRng.next_u32() as usize) % (i + 1);
            numbers.swap(i, j);
        }
        numbers
            .into_iter()
            .filter_map(|n| Handle::new(name, n).ok().map(|h| (n, self.hash(&h))))
            .collect()
    }
}

impl std::fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alike_handles_hash_alike_and_keys_differ_per_relay() {
        let key = HandleKey::derive(&RelayKey::from_secret_bytes(&[1; 32]));
        let handle = |text: &str| text.parse::<Handle>().unwrap();
        assert_eq!(key.hash(&handle("alice.07")), key.hash(&handle("A1ice.07")));
        assert_ne!(key.hash(&handle("alice.07")), key.hash(&handle("alice.08")));
        let other = HandleKey::derive(&RelayKey::from_secret_bytes(&[2; 32]));
        assert_ne!(
            key.hash(&handle("alice.07")),
            other.hash(&handle("alice.07"))
        );
        assert_eq!(format!("{key:?}"), "HandleKey(<redacted>)");
    }

    #[test]
    fn candidates_cover_every_number_once_in_some_order() {
        let key = HandleKey::derive(&RelayKey::from_secret_bytes(&[1; 32]));
        let candidates = key.candidates("alice");
        let mut numbers: Vec<u8> = candidates.iter().map(|(n, _)| *n).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (0..100).collect::<Vec<u8>>());
        for (n, hash) in &candidates {
            assert_eq!(*hash, key.hash(&Handle::new("alice", *n).unwrap()));
        }
    }
}
