//! Push wake-ups: waking a device whose app is asleep, with no content (issue 12, in
//! progress).
//!
//! Built so far: the Web Push message itself ([`web_push`]: RFC 8291 encryption for a
//! subscription and the RFC 8292 VAPID header, checked against the RFC's example) and the
//! relay's VAPID key ([`load_or_create_vapid_key`], `ferry-relay vapid-key` prints its public
//! half for client apps). Not yet: devices registering push targets, the queue in the store,
//! the sender (coalescing, backoff, unregistering on 404/410) and APNs.

pub mod sender;
pub mod web_push;

use std::path::Path;

use crate::relay_key::{KeyFileError, load_or_create_secret};
use web_push::VapidKey;

/// File name of the VAPID key inside the data folder (hex, mode 0600, like `relay.key`).
pub const VAPID_KEY_FILE: &str = "vapid.key";

/// Loads the relay's VAPID key from `data_dir`, creating it if there is none; returns it and
/// whether it was just created.
pub fn load_or_create_vapid_key(data_dir: &Path) -> Result<(VapidKey, bool), KeyFileError> {
    let path = data_dir.join(VAPID_KEY_FILE);
    let (secret, created) = load_or_create_secret(data_dir, VAPID_KEY_FILE, || {
        VapidKey::generate().secret_bytes()
    })?;
    // Any 32 bytes below the group order are a key; a file holding zero or more is corrupt.
    let key = VapidKey::from_secret_bytes(&secret).ok_or(KeyFileError::Corrupt(path))?;
    Ok((key, created))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_vapid_key_is_created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (key, created) = load_or_create_vapid_key(dir.path()).unwrap();
        assert!(created);
        let (again, created) = load_or_create_vapid_key(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(again.public(), key.public());
        // 65 bytes: an uncompressed point, as browsers take an applicationServerKey.
        assert_eq!(key.public().len(), 87);
        std::fs::write(dir.path().join(VAPID_KEY_FILE), "00".repeat(32)).unwrap();
        assert!(matches!(
            load_or_create_vapid_key(dir.path()),
            Err(KeyFileError::Corrupt(_))
        ));
    }
}
