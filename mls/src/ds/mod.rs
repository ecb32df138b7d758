//! The relay as MLS's Delivery Service: it validates what it sequences, and reads no content.
//!
//! - [`check_key_package`]: a device's KeyPackage upload.
//! - [`DsGroup`]: one conversation's public state; validates commits and proposals.
//! - [`check_membership_change`]: Ferry's whole-user rule on a commit's member lists.
//! - [`inspect_application`], [`check_welcome`], [`check_group_info`]: header checks on what
//!   the relay stores without tracking.

mod group;
mod inspect;
mod key_package;
mod membership;

pub(crate) use group::decode_group_info;
pub use group::{CommitSummary, Device, DsCommit, DsGroup, ProposalSummary};
pub use inspect::{check_group_info, check_welcome, inspect_application};
pub(crate) use key_package::validate_key_package;
pub use key_package::{KeyPackageInfo, check_key_package};
pub use membership::check_membership_change;
