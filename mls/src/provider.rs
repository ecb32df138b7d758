//! The openmls provider both sides use, and how its storage is persisted.
//!
//! openmls keeps all group state in a `StorageProvider`; Ferry uses the in-memory one and
//! persists its whole key–value map. The map's values are openmls's own serde encodings, which
//! is why the workspace pins openmls exactly: a new openmls may not read an old map.

use std::collections::BTreeMap;
use std::sync::RwLock;

use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::HashType;

use crate::MlsRefusal;

/// Length of the digest that closes a persisted state.
const DIGEST_LEN: usize = 32;

/// Appends a SHA-256 digest of `payload`.
///
/// openmls_memory_storage 0.6.0 `unwrap`s the decoding of every value it reads, so a corrupted
/// byte in a stored map would panic deep inside openmls. The digest turns accidental
/// corruption into an error before openmls sees the map. It is no defence against someone who
/// can write the store on purpose: stored state is trusted input.
pub(crate) fn close_state(mut payload: Vec<u8>) -> Vec<u8> {
    let digest = RustCrypto::default()
        .hash(HashType::Sha2_256, &payload)
        .unwrap_or_default();
    payload.extend_from_slice(&digest);
    payload
}

/// Checks and strips the digest [`close_state`] appended.
pub(crate) fn open_state(bytes: &[u8]) -> Result<&[u8], MlsRefusal> {
    let split = bytes
        .len()
        .checked_sub(DIGEST_LEN)
        .ok_or_else(|| MlsRefusal::BadState("too short".into()))?;
    let (payload, digest) = bytes.split_at(split);
    let expected = RustCrypto::default()
        .hash(HashType::Sha2_256, payload)
        .map_err(|e| MlsRefusal::BadState(format!("cannot hash: {e:?}")))?;
    if expected != digest {
        return Err(MlsRefusal::BadState("the digest does not match".into()));
    }
    Ok(payload)
}

/// RustCrypto (which draws its randomness from the OS, seeded once) plus an in-memory store.
#[derive(Default)]
pub(crate) struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl Provider {
    /// A provider over a restored store.
    pub(crate) fn with_values(values: BTreeMap<Vec<u8>, Vec<u8>>) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage: MemoryStorage {
                values: RwLock::new(values.into_iter().collect()),
            },
        }
    }

    /// The store's entries in key order, so equal states serialize to equal bytes.
    pub(crate) fn values(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        // A poisoned lock only means another thread panicked mid-write; the map itself is
        // still a map, and openmls would have failed that operation anyway.
        let values = self
            .storage
            .values
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Removes every entry whose key starts with `prefix`.
    pub(crate) fn remove_prefixed(&self, prefix: &[u8]) {
        let mut values = self
            .storage
            .values
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        values.retain(|key, _| !key.starts_with(prefix));
    }
}

// Never print the store: on a device it holds private keys.
impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").finish_non_exhaustive()
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}
