//! The relay's view of one conversation: an openmls `PublicGroup`.
//!
//! 1. The creator's device sends the group's first GroupInfo (epoch 0, ratchet tree inside);
//!    [`DsGroup::start`] verifies it and starts tracking.
//! 2. For each commit the relay receives, [`DsGroup::stage_commit`] validates it against the
//!    current epoch without changing anything and returns what it would change; the relay runs
//!    its own rules ([`crate::check_membership_change`], admin policy) on the
//!    [`CommitSummary`], then [`DsGroup::apply`]s it in the transaction that sequences the
//!    commit. [`DsGroup::process_commit`] does both at once.
//! 3. Standalone proposals (a device leaving) go through [`DsGroup::process_proposal`], which
//!    queues them so that a later commit may cover them by reference.
//! 4. Between operations the relay stores [`DsGroup::to_bytes`].
//!
//! The relay never holds a key that could read content: a `PublicGroup` has the tree's public
//! keys and the transcript, nothing from the key schedule.

use std::collections::BTreeMap;

use ferry_protocol::identity::{DeviceId, UserId};
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{ContentType, Proposal};
use openmls::prelude::{
    GroupId, MlsMessageBodyIn, ProcessedMessageContent, ProposalStore, ProtocolMessage,
    PublicGroup, Sender, StagedCommit,
};
use openmls_traits::OpenMlsProvider;
use serde::{Deserialize, Serialize};

use crate::credential::leaf_owner;
use crate::policy::{GroupPolicy, requires_policy};
use crate::provider::{Provider, close_state, open_state};
use crate::wire;
use crate::{CIPHERSUITE, MlsRefusal};

/// A device: `(user, device)`.
pub type Device = (UserId, DeviceId);

/// Version of [`DsGroup::to_bytes`]'s envelope.
const FORMAT: u8 = 1;

/// Key prefix of queued proposals in openmls_memory_storage 0.6.0.
///
/// Its `clear_proposal_queue` deletes the proposal refs but looks the proposals themselves up
/// under a key without this label, so merged commits would leave every proposal behind forever.
/// A DsGroup's store holds one group and its queue is empty after a merge, so dropping the
/// prefix then is exact.
const QUEUED_PROPOSAL_PREFIX: &[u8] = b"QueuedProposal";

/// The relay's view of one MLS group (see the module docs for the flow).
pub struct DsGroup {
    provider: Provider,
    group: PublicGroup,
}

/// What an accepted commit changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitSummary {
    /// The committer (for an external commit, the device that joined).
    pub sender: Device,
    /// Whether the committer joined by this commit (external commit from a GroupInfo).
    pub external: bool,
    /// The group's epoch after the commit.
    pub epoch: u64,
    /// Members before, sorted.
    pub before: Vec<Device>,
    /// Members after, sorted.
    pub after: Vec<Device>,
    /// Removed members whose removal they (or another device of their user) proposed: they
    /// left. Sorted.
    pub self_removed: Vec<Device>,
    /// Whether the group policy changed.
    pub policy_changed: bool,
}

/// A validated commit, not yet applied: see [`DsGroup::stage_commit`].
pub struct DsCommit {
    summary: CommitSummary,
    base_epoch: u64,
    base_transcript: Vec<u8>,
    next: DsGroup,
}

/// What an accepted standalone proposal asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalSummary {
    /// The proposer.
    pub sender: Device,
    /// The members it proposes to remove.
    pub removes: Vec<Device>,
    /// Whether the proposer removes itself (leaves).
    pub self_remove: bool,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    format: u8,
    group_id: Vec<u8>,
    values: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl DsGroup {
    /// Starts tracking a group from its creator's first GroupInfo.
    ///
    /// The bytes are an `MLSMessage` holding a GroupInfo with the ratchet-tree extension (what
    /// [`crate::Member::create_group`] returns). Checks: the group id is `group_id`, Ferry's
    /// ciphersuite, epoch 0, the GroupInfo signature, tree hash and every leaf (openmls's
    /// `PublicGroup::from_external`), every leaf's credential ([`leaf_owner`]), and that the
    /// group carries and requires Ferry's policy extension.
    pub fn start(group_info: &[u8], group_id: &[u8]) -> Result<DsGroup, MlsRefusal> {
        let info = decode_group_info(group_info)?;
        if info.group_id().as_slice() != group_id {
            return Err(MlsRefusal::WrongGroup);
        }
        if info.epoch().as_u64() != 0 {
            return Err(MlsRefusal::WrongEpoch {
                message: info.epoch().as_u64(),
                group: 0,
            });
        }
        let provider = Provider::default();
        let group = verified_public_group(&provider, info)?;
        let ds = DsGroup { provider, group };
        ds.check_state()?;
        Ok(ds)
    }

    /// The state to store between operations (exact: `from_bytes(b).to_bytes() == b`).
    ///
    /// Postcard of `{ format: u8 = 1, group_id, values }` where `values` is the openmls
    /// memory-storage map (openmls's own serde encodings) in key order, followed by the
    /// SHA-256 of all that (openmls panics on a corrupted map; the digest catches it first).
    pub fn to_bytes(&self) -> Vec<u8> {
        let stored = Stored {
            format: FORMAT,
            group_id: self.group.group_id().to_vec(),
            values: self.provider.values(),
        };
        // Serializing to a Vec cannot fail; an empty result would be refused by from_bytes.
        close_state(postcard::to_allocvec(&stored).unwrap_or_default())
    }

    /// Restores what [`DsGroup::to_bytes`] stored.
    pub fn from_bytes(bytes: &[u8]) -> Result<DsGroup, MlsRefusal> {
        let stored: Stored = match postcard::take_from_bytes(open_state(bytes)?) {
            Ok((stored, [])) => stored,
            Ok(_) => return Err(MlsRefusal::BadState("trailing bytes".into())),
            Err(e) => return Err(MlsRefusal::BadState(e.to_string())),
        };
        if stored.format != FORMAT {
            return Err(MlsRefusal::BadState(format!(
                "unknown format {}",
                stored.format
            )));
        }
        let provider = Provider::with_values(stored.values);
        let group = PublicGroup::load(provider.storage(), &GroupId::from_slice(&stored.group_id))
            .map_err(|e| MlsRefusal::BadState(e.to_string()))?
            .ok_or_else(|| MlsRefusal::BadState("no group in the stored map".into()))?;
        Ok(DsGroup { provider, group })
    }

    /// The group id.
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// The members, sorted.
    pub fn members(&self) -> Vec<Device> {
        members(&self.group)
    }

    /// The group's policy.
    pub fn policy(&self) -> Option<GroupPolicy> {
        GroupPolicy::from_context(self.group.group_context())
    }

    /// Validates and applies a commit: [`DsGroup::stage_commit`] then [`DsGroup::apply`].
    pub fn process_commit(&mut self, message: &[u8]) -> Result<CommitSummary, MlsRefusal> {
        let staged = self.stage_commit(message)?;
        self.apply(staged)
    }

    /// Validates a commit without changing this group.
    ///
    /// The message is an `MLSMessage` holding a PublicMessage whose content is a Commit of
    /// this group at its current epoch. openmls checks the signature, membership tag,
    /// proposals (inline and by reference to proposals queued by
    /// [`DsGroup::process_proposal`]), update path and confirmation tag; then every leaf of
    /// the resulting tree must pass [`leaf_owner`] and the policy must still be there.
    pub fn stage_commit(&self, message: &[u8]) -> Result<DsCommit, MlsRefusal> {
        let message = self.public_message(message, ContentType::Commit)?;
        let processed = self
            .group
            .process_message(self.provider.crypto(), message)
            .map_err(|e| MlsRefusal::InvalidCommit(e.to_string()))?;
        let sender = processed.sender().clone();
        let staged = match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => staged,
            _ => return Err(MlsRefusal::NotACommit),
        };
        let (sender, external) = match sender {
            Sender::Member(index) => (self.leaf(index)?, false),
            Sender::NewMemberCommit => {
                let leaf = staged.update_path_leaf_node().ok_or_else(|| {
                    MlsRefusal::InvalidCommit("external commit without a path".into())
                })?;
                (
                    leaf_owner(leaf.credential(), leaf.signature_key().as_slice())?,
                    true,
                )
            }
            _ => {
                return Err(MlsRefusal::InvalidCommit(
                    "commit from an external sender".into(),
                ));
            }
        };
        let self_removed = self.self_removed(&staged)?;

        // Merge into a copy: the caller may still refuse, and an error must leave us unchanged.
        let provider = Provider::with_values(self.provider.values());
        let mut group = PublicGroup::load(provider.storage(), self.group.group_id())
            .map_err(|e| MlsRefusal::BadState(e.to_string()))?
            .ok_or_else(|| MlsRefusal::BadState("group vanished from its copy".into()))?;
        group
            .merge_commit(provider.storage(), *staged)
            .map_err(|e| MlsRefusal::InvalidCommit(format!("cannot merge: {e}")))?;
        provider.remove_prefixed(QUEUED_PROPOSAL_PREFIX);
        let next = DsGroup { provider, group };
        next.check_state()?;

        let summary = CommitSummary {
            sender,
            external,
            epoch: next.epoch(),
            before: self.members(),
            after: next.members(),
            self_removed,
            policy_changed: self.policy() != next.policy(),
        };
        Ok(DsCommit {
            summary,
            base_epoch: self.epoch(),
            base_transcript: self.transcript(),
            next,
        })
    }

    /// Applies a commit staged from this group's current state.
    ///
    /// Refused with [`MlsRefusal::WrongEpoch`] if the group moved on since it was staged.
    pub fn apply(&mut self, staged: DsCommit) -> Result<CommitSummary, MlsRefusal> {
        if staged.base_epoch != self.epoch() || staged.base_transcript != self.transcript() {
            return Err(MlsRefusal::WrongEpoch {
                message: staged.base_epoch,
                group: self.epoch(),
            });
        }
        *self = staged.next;
        Ok(staged.summary)
    }

    /// Validates a standalone proposal and queues it, so a later commit can cover it by
    /// reference.
    ///
    /// Ferry relays only Remove proposals (a device leaving proposes its own removal; a member
    /// may also propose removing another one); anything else is refused.
    pub fn process_proposal(&mut self, message: &[u8]) -> Result<ProposalSummary, MlsRefusal> {
        let message = self.public_message(message, ContentType::Proposal)?;
        let processed = self
            .group
            .process_message(self.provider.crypto(), message)
            .map_err(|e| MlsRefusal::InvalidProposal(e.to_string()))?;
        let sender_index = match processed.sender() {
            Sender::Member(index) => *index,
            _ => {
                return Err(MlsRefusal::InvalidProposal(
                    "proposal from a non-member".into(),
                ));
            }
        };
        let queued = match processed.into_content() {
            ProcessedMessageContent::ProposalMessage(queued) => queued,
            _ => return Err(MlsRefusal::NotAProposal),
        };
        let removed = match queued.proposal() {
            Proposal::Remove(remove) => remove.removed(),
            _ => {
                return Err(MlsRefusal::InvalidProposal(
                    "Ferry relays only remove proposals".into(),
                ));
            }
        };
        let summary = ProposalSummary {
            sender: self.leaf(sender_index)?,
            removes: vec![self.leaf(removed)?],
            self_remove: removed == sender_index,
        };
        self.group
            .add_proposal(self.provider.storage(), *queued)
            .map_err(|e| MlsRefusal::BadState(e.to_string()))?;
        Ok(summary)
    }

    /// Checks a GroupInfo a member uploads after a commit, fully: it must be this group at
    /// its current epoch, carry the ratchet tree and external public key (so a device can
    /// rejoin from it), be signed by a member, and describe exactly this group's state.
    pub fn check_group_info(&self, group_info: &[u8]) -> Result<(), MlsRefusal> {
        let info = decode_group_info(group_info)?;
        check_info_header(&info, self.group_id(), self.epoch())?;
        let scratch = Provider::default();
        let group = verified_public_group(&scratch, info)?;
        if group.group_context() != self.group.group_context() {
            return Err(MlsRefusal::InvalidGroupInfo(
                "the group info describes another state of the group".into(),
            ));
        }
        Ok(())
    }

    /// Decodes a public message of this group at this epoch with the given content type.
    fn public_message(
        &self,
        message: &[u8],
        expected: ContentType,
    ) -> Result<ProtocolMessage, MlsRefusal> {
        let wrong_kind = || match expected {
            ContentType::Proposal => MlsRefusal::NotAProposal,
            _ => MlsRefusal::NotACommit,
        };
        let public = match wire::decode(message)? {
            MlsMessageBodyIn::PublicMessage(public) => public,
            _ => return Err(wrong_kind()),
        };
        if public.group_id().as_slice() != self.group_id() {
            return Err(MlsRefusal::WrongGroup);
        }
        if public.epoch().as_u64() != self.epoch() {
            return Err(MlsRefusal::WrongEpoch {
                message: public.epoch().as_u64(),
                group: self.epoch(),
            });
        }
        if public.content_type() != expected {
            return Err(wrong_kind());
        }
        Ok(public.into())
    }

    /// The owner of a leaf in the current tree.
    fn leaf(&self, index: openmls::prelude::LeafNodeIndex) -> Result<Device, MlsRefusal> {
        let leaf = self.group.leaf(index).ok_or(MlsRefusal::NotAMember)?;
        leaf_owner(leaf.credential(), leaf.signature_key().as_slice())
    }

    /// Members removed by a remove proposal they sent themselves.
    fn self_removed(&self, staged: &StagedCommit) -> Result<Vec<Device>, MlsRefusal> {
        let mut out = Vec::new();
        for remove in staged.remove_proposals() {
            let removed = remove.remove_proposal().removed();
            // Proposed by the leaf itself, or by another device of the same user (a user
            // leaves with all its devices).
            if let Sender::Member(proposer) = remove.sender() {
                let leaving = self.leaf(removed)?;
                if self.leaf(*proposer)?.0 == leaving.0 {
                    out.push(leaving);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The confirmed transcript hash: names this exact epoch of this exact history.
    fn transcript(&self) -> Vec<u8> {
        self.group
            .group_context()
            .confirmed_transcript_hash()
            .to_vec()
    }

    /// Ferry's invariants on a group state: policy present and required, every leaf Ferry's.
    fn check_state(&self) -> Result<(), MlsRefusal> {
        let context = self.group.group_context();
        if context.ciphersuite() != CIPHERSUITE {
            return Err(MlsRefusal::WrongCiphersuite);
        }
        if GroupPolicy::from_context(context).is_none() || !requires_policy(context) {
            return Err(MlsRefusal::MissingPolicy);
        }
        for member in self.group.members() {
            leaf_owner(&member.credential, &member.signature_key)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for DsGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsGroup")
            .field("epoch", &self.epoch())
            .field("members", &self.members().len())
            .finish_non_exhaustive()
    }
}

impl DsCommit {
    /// What the commit changes.
    pub fn summary(&self) -> &CommitSummary {
        &self.summary
    }
}

impl std::fmt::Debug for DsCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsCommit")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// The members of a group, sorted (leaves that are not Ferry's cannot be in a checked group).
fn members(group: &PublicGroup) -> Vec<Device> {
    let mut out: Vec<Device> = group
        .members()
        .filter_map(|member| leaf_owner(&member.credential, &member.signature_key).ok())
        .collect();
    out.sort();
    out
}

pub(crate) fn decode_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, MlsRefusal> {
    match wire::decode(bytes)? {
        MlsMessageBodyIn::GroupInfo(info) => Ok(info),
        other => Err(MlsRefusal::Malformed(format!(
            "expected a group info, got {}",
            wire::kind(&other)
        ))),
    }
}

/// The checks that need no tree: group, epoch, ciphersuite, and the extensions a rejoin needs.
pub(crate) fn check_info_header(
    info: &VerifiableGroupInfo,
    group_id: &[u8],
    epoch: u64,
) -> Result<(), MlsRefusal> {
    if info.group_id().as_slice() != group_id {
        return Err(MlsRefusal::WrongGroup);
    }
    if info.epoch().as_u64() != epoch {
        return Err(MlsRefusal::WrongEpoch {
            message: info.epoch().as_u64(),
            group: epoch,
        });
    }
    if info.ciphersuite() != CIPHERSUITE {
        return Err(MlsRefusal::WrongCiphersuite);
    }
    if info.extensions().ratchet_tree().is_none() {
        return Err(MlsRefusal::InvalidGroupInfo(
            "no ratchet tree extension".into(),
        ));
    }
    if info.extensions().external_pub().is_none() {
        return Err(MlsRefusal::InvalidGroupInfo(
            "no external public key extension".into(),
        ));
    }
    Ok(())
}

/// Verifies a GroupInfo with its embedded tree into a PublicGroup stored in `provider`.
fn verified_public_group(
    provider: &Provider,
    info: VerifiableGroupInfo,
) -> Result<PublicGroup, MlsRefusal> {
    if info.ciphersuite() != CIPHERSUITE {
        return Err(MlsRefusal::WrongCiphersuite);
    }
    let tree = info
        .extensions()
        .ratchet_tree()
        .ok_or_else(|| MlsRefusal::InvalidGroupInfo("no ratchet tree extension".into()))?
        .ratchet_tree()
        .clone();
    let (group, _) = PublicGroup::from_external(
        provider.crypto(),
        provider.storage(),
        tree,
        info,
        ProposalStore::new(),
    )
    .map_err(|e| MlsRefusal::InvalidGroupInfo(e.to_string()))?;
    Ok(group)
}
