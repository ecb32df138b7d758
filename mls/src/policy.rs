//! Ferry's group policy, carried in the MLS group context so every member agrees on it.
//!
//! The policy is a private-use group-context extension ([`FERRY_POLICY_EXTENSION`]) whose data
//! is the postcard encoding of [`GroupPolicy`]. Every Ferry leaf advertises the extension type
//! in its capabilities ([`leaf_capabilities`]) and every Ferry group requires it
//! ([`group_context_extensions`]), so openmls refuses to add a client that would not
//! understand the policy. Changing it takes a GroupContextExtensions proposal, i.e. a commit
//! the relay sees.

use ferry_protocol::identity::UserId;
use openmls::prelude::{
    Capabilities, CredentialType, Extension, ExtensionType, Extensions, GroupContext, ProposalType,
    RequiredCapabilitiesExtension, UnknownExtension,
};
use serde::{Deserialize, Serialize};

use crate::{CIPHERSUITE, MlsRefusal};

/// The extension type of the policy: from the private-use range (RFC 9420 §17.3, 0xF000–0xFFFF).
pub const FERRY_POLICY_EXTENSION: u16 = 0xF0A1;

/// Longest policy encoding accepted (a group of a few hundred admins fits easily).
const MAX_POLICY_LEN: usize = 16 * 1024;

/// What kind of conversation a group is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupKind {
    /// Two users (each with all their devices).
    OneToOne,
    /// A named group of any size.
    Group,
}

/// Ferry's policy for one group. Changing this struct changes the wire encoding every member
/// reads from the group context: append fields only behind a new extension version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    /// 1:1 or group.
    pub kind: GroupKind,
    /// Users allowed to change membership and policy (empty in a 1:1).
    pub admins: Vec<UserId>,
}

impl GroupPolicy {
    /// The postcard encoding stored in the extension.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A Vec sink cannot fail; an empty vector would be refused by `from_bytes` anyway.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes the extension data (total: every input gives a policy or an error).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MlsRefusal> {
        if bytes.len() > MAX_POLICY_LEN {
            return Err(MlsRefusal::Malformed("policy extension too long".into()));
        }
        match postcard::take_from_bytes::<GroupPolicy>(bytes) {
            Ok((policy, [])) => Ok(policy),
            Ok(_) => Err(MlsRefusal::Malformed(
                "trailing bytes after the policy".into(),
            )),
            Err(e) => Err(MlsRefusal::Malformed(format!("policy extension: {e}"))),
        }
    }

    /// The policy as a group-context extension.
    pub fn to_extension(&self) -> Extension {
        Extension::Unknown(FERRY_POLICY_EXTENSION, UnknownExtension(self.to_bytes()))
    }

    /// The policy in a group context, if present and well formed.
    pub fn from_context(context: &GroupContext) -> Option<GroupPolicy> {
        Self::from_extensions(context.extensions())
    }

    /// The policy among a group context's extensions, if present and well formed.
    pub fn from_extensions(extensions: &Extensions<GroupContext>) -> Option<GroupPolicy> {
        let data = extensions.unknown(FERRY_POLICY_EXTENSION)?;
        Self::from_bytes(&data.0).ok()
    }
}

/// The capabilities every Ferry leaf advertises: Ferry's ciphersuite, basic credentials, the
/// policy extension, and the last-resort KeyPackage extension (a KeyPackage may only carry
/// extensions its leaf lists).
pub fn leaf_capabilities() -> Capabilities {
    Capabilities::builder()
        .ciphersuites(vec![CIPHERSUITE])
        .extensions(vec![
            ExtensionType::Unknown(FERRY_POLICY_EXTENSION),
            ExtensionType::LastResort,
        ])
        .build()
}

/// The group-context extensions of a new Ferry group: the policy, and the requirement that
/// every member understands it.
pub fn group_context_extensions(
    policy: &GroupPolicy,
) -> Result<Extensions<GroupContext>, MlsRefusal> {
    let required = RequiredCapabilitiesExtension::new(
        &[ExtensionType::Unknown(FERRY_POLICY_EXTENSION)],
        &[] as &[ProposalType],
        &[CredentialType::Basic],
    );
    Extensions::from_vec(vec![
        Extension::RequiredCapabilities(required),
        policy.to_extension(),
    ])
    .map_err(|e| MlsRefusal::Malformed(format!("group context extensions: {e}")))
}

/// Whether a group context requires the policy extension of every member.
pub(crate) fn requires_policy(context: &GroupContext) -> bool {
    context.required_capabilities().is_some_and(|required| {
        required
            .extension_types()
            .contains(&ExtensionType::Unknown(FERRY_POLICY_EXTENSION))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_round_trips_and_decoding_is_total() {
        let policy = GroupPolicy {
            kind: GroupKind::Group,
            admins: vec![UserId([7; 32])],
        };
        assert_eq!(
            GroupPolicy::from_bytes(&policy.to_bytes()),
            Ok(policy.clone())
        );
        let mut long = policy.to_bytes();
        long.push(0);
        assert!(GroupPolicy::from_bytes(&long).is_err());
        assert!(GroupPolicy::from_bytes(&[]).is_err());
        assert!(GroupPolicy::from_bytes(&[9, 9, 9]).is_err());
        let extensions = group_context_extensions(&policy).unwrap();
        assert_eq!(GroupPolicy::from_extensions(&extensions), Some(policy));
    }
}
