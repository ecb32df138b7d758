//! Leaves and signing: one leaf per device, signed with the device's own Ferry key.
//!
//! A leaf's credential is a `BasicCredential` whose identity is 64 bytes, `user id (32) ||
//! device id (32)`, and whose signature public key is the device id itself. Reading a leaf
//! back ([`leaf_owner`]) checks all three, so "this leaf belongs to device D of user U" is a
//! fact the relay and every member can check without any other lookup; whether U's device
//! chain still admits D is the caller's question.
//!
//! # Why the device key can sign MLS too
//!
//! MLS signs `SignContent { opaque label<V> = "MLS 1.0 " || Label; opaque content<V> }`
//! (RFC 9420 §5.1.2): the signed bytes start with the variable-length-vector prefix of a label
//! shorter than 64 bytes, i.e. a single byte below `0x40`. Every Ferry signature
//! ([`ferry_protocol::identity::DeviceKey::sign`]) covers `"ferry/v1/..." || message`, which
//! starts with `f` (`0x66`). The two message spaces are disjoint, so a signature made for one
//! can never be replayed as the other, and a device needs no second key.

use ferry_protocol::identity::{DeviceId, DeviceKey, UserId};
use openmls::prelude::{BasicCredential, Credential, CredentialType, CredentialWithKey};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::types::SignatureScheme;

use crate::MlsRefusal;

/// Length of a Ferry leaf identity: user id || device id.
pub const IDENTITY_LEN: usize = 64;

/// The credential and signature key of `device`'s leaf.
pub fn credential_with_key(user: UserId, device: DeviceId) -> CredentialWithKey {
    let mut identity = Vec::with_capacity(IDENTITY_LEN);
    identity.extend_from_slice(user.as_bytes());
    identity.extend_from_slice(device.as_bytes());
    CredentialWithKey {
        credential: BasicCredential::new(identity).into(),
        signature_key: device.as_bytes().to_vec().into(),
    }
}

/// The openmls signer for `device`: the device's Ed25519 key.
///
/// openmls_basic_credential signs Ed25519 with `ed25519_dalek::SigningKey::try_from(private)`,
/// which takes the 32-byte seed, exactly what [`DeviceKey::secret_bytes`] gives.
pub fn signer(device: &DeviceKey) -> SignatureKeyPair {
    // The copy moves into openmls's SecretVLBytes, which zeroizes on drop.
    SignatureKeyPair::from_raw(
        SignatureScheme::ED25519,
        device.secret_bytes().to_vec(),
        device.id().as_bytes().to_vec(),
    )
}

/// Whose leaf this is: checks the Ferry convention and returns `(user, device)`.
pub fn leaf_owner(
    credential: &Credential,
    signature_key: &[u8],
) -> Result<(UserId, DeviceId), MlsRefusal> {
    let (user, device) = credential_owner(credential)?;
    if signature_key != device.as_bytes() {
        return Err(MlsRefusal::BadCredential(
            "signature key differs from the device id".into(),
        ));
    }
    Ok((user, device))
}

/// The `(user, device)` a credential names, without the signature-key check (for a sender
/// whose leaf was checked when it entered the group, possibly in a past epoch).
pub(crate) fn credential_owner(credential: &Credential) -> Result<(UserId, DeviceId), MlsRefusal> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(MlsRefusal::BadCredential("not a basic credential".into()));
    }
    let identity = credential.serialized_content();
    if identity.len() != IDENTITY_LEN {
        return Err(MlsRefusal::BadCredential(format!(
            "identity is {} bytes, expected {IDENTITY_LEN}",
            identity.len()
        )));
    }
    let mut user = [0u8; 32];
    user.copy_from_slice(&identity[..32]);
    let mut device = [0u8; 32];
    device.copy_from_slice(&identity[32..]);
    Ok((UserId(user), DeviceId(device)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use openmls_traits::signatures::Signer;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn an_mls_signature_verifies_with_the_device_id() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let device = DeviceKey::generate(&mut rng);
        let signer = signer(&device);
        assert_eq!(signer.public(), device.id().as_bytes());
        let payload = b"\x18MLS 1.0 FramedContentTBS...";
        let signature = signer.sign(payload).unwrap();
        let signature = ed25519_dalek::Signature::from_slice(&signature).unwrap();
        device
            .id()
            .verifying_key()
            .unwrap()
            .verify_strict(payload, &signature)
            .unwrap();
    }

    #[test]
    fn leaf_owner_reads_back_the_credential_and_checks_the_key() {
        let user = UserId([1; 32]);
        let device = DeviceId([2; 32]);
        let cwk = credential_with_key(user, device);
        assert_eq!(
            leaf_owner(&cwk.credential, cwk.signature_key.as_slice()),
            Ok((user, device))
        );
        assert!(matches!(
            leaf_owner(&cwk.credential, &[3; 32]),
            Err(MlsRefusal::BadCredential(_))
        ));
        let short = BasicCredential::new(vec![1; 63]).into();
        assert!(matches!(
            leaf_owner(&short, &[2; 32]),
            Err(MlsRefusal::BadCredential(_))
        ));
        let x509 = Credential::new(CredentialType::X509, vec![0; 64]);
        assert!(matches!(
            leaf_owner(&x509, &[2; 32]),
            Err(MlsRefusal::BadCredential(_))
        ));
    }
}
