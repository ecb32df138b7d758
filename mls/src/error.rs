//! Why the relay (or a device) refuses an MLS object.
//!
//! Messages name what was wrong, never secret material: openmls's own errors, quoted in
//! [`MlsRefusal::InvalidCommit`] and friends, describe structure and validation steps only.

use ferry_protocol::identity::{DeviceId, UserId};

/// Why an MLS object was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MlsRefusal {
    /// The bytes are not the expected MLS structure (truncated, trailing bytes, wrong kind of
    /// `MLSMessage`, or a Ferry extension that does not decode).
    #[error("malformed MLS data: {0}")]
    Malformed(String),
    /// The object uses another ciphersuite than [`crate::CIPHERSUITE`].
    #[error("wrong ciphersuite: Ferry uses MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519")]
    WrongCiphersuite,
    /// The message belongs to another group.
    #[error("the message belongs to another group")]
    WrongGroup,
    /// A commit was expected and this is something else.
    #[error("not a commit in a public message")]
    NotACommit,
    /// A proposal was expected and this is something else.
    #[error("not a proposal in a public message")]
    NotAProposal,
    /// An application message was expected (a private message whose content type is
    /// application) and this is something else.
    #[error("not an application message in a private message")]
    NotApplication,
    /// The message was made for another epoch than the group's current one.
    #[error("message is for epoch {message}, the group is at epoch {group}")]
    WrongEpoch {
        /// The epoch the message names.
        message: u64,
        /// The group's current epoch.
        group: u64,
    },
    /// A leaf's credential does not follow Ferry's convention (basic credential naming
    /// `user || device`, signature key equal to the device id).
    #[error("bad credential: {0}")]
    BadCredential(String),
    /// The sender (or a named device) is not a member of the group.
    #[error("not a member of the group")]
    NotAMember,
    /// openmls refused the commit (signature, membership tag, proposals, path, confirmation).
    #[error("invalid commit: {0}")]
    InvalidCommit(String),
    /// openmls refused the proposal, or it is of a kind Ferry does not use.
    #[error("invalid proposal: {0}")]
    InvalidProposal(String),
    /// The KeyPackage does not validate or does not name the expected device.
    #[error("invalid key package: {0}")]
    InvalidKeyPackage(String),
    /// The GroupInfo does not validate (signature, tree, policy).
    #[error("invalid group info: {0}")]
    InvalidGroupInfo(String),
    /// The group has no Ferry policy extension (or a commit would drop it).
    #[error("the group has no Ferry policy extension")]
    MissingPolicy,
    /// A user would be left with some but not all of its active devices in the group.
    #[error("user {user} would have only part of its active devices in the group")]
    PartialUser {
        /// The user whose devices would be split.
        user: UserId,
    },
    /// A device that the user's chain does not admit (or has revoked) would be added.
    #[error("device {device} is not an active device of user {user}")]
    InactiveDevice {
        /// The user the leaf names.
        user: UserId,
        /// The device that is not active.
        device: DeviceId,
    },
    /// Stored state (a serialized [`crate::DsGroup`] or [`crate::Member`]) does not decode.
    #[error("stored MLS state is unreadable: {0}")]
    BadState(String),
}
