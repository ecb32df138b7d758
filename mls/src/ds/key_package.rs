//! KeyPackages as the relay receives them from a device's upload.

use ferry_protocol::identity::{DeviceId, UserId};
use openmls::prelude::{ExtensionType, KeyPackage, MlsMessageBodyIn, ProtocolVersion};

use crate::credential::leaf_owner;
use crate::policy::FERRY_POLICY_EXTENSION;
use crate::provider::Provider;
use crate::wire;
use crate::{CIPHERSUITE, MlsRefusal};
use openmls_traits::OpenMlsProvider;

/// What the relay records about an accepted KeyPackage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPackageInfo {
    /// The KeyPackage's hash reference (RFC 9420 `KeyPackageRef`, SHA-256): the id a Welcome
    /// names it by.
    pub reference: [u8; 32],
    /// Whether it carries the last-resort extension (kept after a claim, not deleted).
    pub last_resort: bool,
}

/// Checks a KeyPackage uploaded by `device` of `user`.
///
/// The bytes are an `MLSMessage` whose body is a KeyPackage (what
/// [`crate::Member::key_packages`] makes). Checks: the KeyPackage and leaf signatures, the
/// protocol version and lifetime (openmls's `validate`), the ciphersuite, that the leaf
/// credential names exactly `(user, device)` with the device id as signature key, and that the
/// leaf advertises Ferry's policy extension.
pub fn check_key_package(
    bytes: &[u8],
    user: UserId,
    device: DeviceId,
) -> Result<KeyPackageInfo, MlsRefusal> {
    let (key_package, owner) = validate_key_package(bytes)?;
    if owner != (user, device) {
        return Err(MlsRefusal::BadCredential(
            "the key package names another user or device".into(),
        ));
    }
    let provider = Provider::default();
    let reference = key_package
        .hash_ref(provider.crypto())
        .map_err(|e| MlsRefusal::InvalidKeyPackage(format!("cannot hash: {e}")))?;
    let reference = <[u8; 32]>::try_from(reference.as_slice())
        .map_err(|_| MlsRefusal::InvalidKeyPackage("unexpected reference length".into()))?;
    Ok(KeyPackageInfo {
        reference,
        last_resort: key_package.last_resort(),
    })
}

/// Decodes and validates a Ferry KeyPackage and says whose it is.
pub(crate) fn validate_key_package(
    bytes: &[u8],
) -> Result<(KeyPackage, (UserId, DeviceId)), MlsRefusal> {
    let key_package = match wire::decode(bytes)? {
        MlsMessageBodyIn::KeyPackage(key_package) => key_package,
        other => {
            return Err(MlsRefusal::Malformed(format!(
                "expected a key package, got {}",
                wire::kind(&other)
            )));
        }
    };
    let provider = Provider::default();
    let key_package = key_package
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| MlsRefusal::InvalidKeyPackage(e.to_string()))?;
    if key_package.ciphersuite() != CIPHERSUITE {
        return Err(MlsRefusal::WrongCiphersuite);
    }
    let leaf = key_package.leaf_node();
    let owner = leaf_owner(leaf.credential(), leaf.signature_key().as_slice())?;
    if !leaf
        .capabilities()
        .extensions()
        .contains(&ExtensionType::Unknown(FERRY_POLICY_EXTENSION))
    {
        return Err(MlsRefusal::InvalidKeyPackage(
            "the leaf does not advertise Ferry's policy extension".into(),
        ));
    }
    Ok((key_package, owner))
}
