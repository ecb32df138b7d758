//! One device's MLS state: its key packages and the groups it is in.
//!
//! Flow for a commit this device makes (add, remove, self-update, covering proposals):
//!
//! 1. [`Member::add`] (or `remove`, ...) builds the commit and keeps it *pending*; the group
//!    does not move yet. Send [`CommitOut::commit`] (and the GroupInfo, and the Welcome once
//!    the commit is accepted) to the relay.
//! 2. The relay sequences commits: the first valid one per epoch wins. If ours won,
//!    [`Member::merge_pending`]; if another won (`StaleEpoch`), [`Member::discard_pending`],
//!    [`Member::process`] the winner, and try again.
//! 3. Everything else from the conversation's stream goes through [`Member::process`], in
//!    stream order.
//!
//! A queued proposal (a device leaving, [`Member::leave`]) blocks [`Member::encrypt`] on every
//! member until some member commits it ([`Member::commit_pending_proposals`]): openmls refuses
//! to send application messages while proposals are pending, so the SDK should commit them as
//! soon as it processes one. A proposal dies with its epoch: if another commit lands first, the
//! leaving device proposes again.
//!
//! Handshake messages (commits, proposals) are MLS PublicMessages so the relay can validate
//! them; application messages are PrivateMessages, which it cannot read.
//!
//! The whole state, private keys included, round-trips through [`Member::to_bytes`]: the SDK
//! must store it sealed.

use std::collections::BTreeMap;

use ferry_protocol::identity::{DeviceId, DeviceKey, UserId};
use openmls::prelude::{
    GroupId, KeyPackage, LeafNodeIndex, LeafNodeParameters, MlsGroup, MlsGroupCreateConfig,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageOut, PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
    ProcessedMessageContent, Proposal, ProtocolMessage, Sender, StagedWelcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use serde::{Deserialize, Serialize};

use crate::credential::{credential_owner, credential_with_key, leaf_owner, signer};
use crate::ds::{Device, validate_key_package};
use crate::policy::{GroupPolicy, group_context_extensions, leaf_capabilities, requires_policy};
use crate::provider::{Provider, close_state, open_state};
use crate::wire;
use crate::{CIPHERSUITE, MlsRefusal};

/// How many past epochs' keys a device keeps, so application messages sent just before a
/// commit still decrypt after it (the relay accepts a few past epochs too).
pub const PAST_EPOCHS: usize = 5;

/// Version of [`Member::to_bytes`]'s envelope.
const FORMAT: u8 = 1;

/// Why a device-side MLS operation failed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberError {
    /// This device has no group with that id.
    #[error("no such group on this device")]
    UnknownGroup,
    /// A message or key package was refused by Ferry's checks.
    #[error(transparent)]
    Refused(#[from] MlsRefusal),
    /// openmls refused the operation (pending commit, removed from the group, bad message...).
    #[error("MLS: {0}")]
    Mls(String),
}

fn mls(error: impl std::fmt::Display) -> MemberError {
    MemberError::Mls(error.to_string())
}

/// A commit this device made, not yet merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOut {
    /// The commit: an `MLSMessage` holding a PublicMessage, for [`crate::DsGroup::process_commit`].
    pub commit: Vec<u8>,
    /// The Welcome for the devices it adds, if any (`MLSMessage`).
    pub welcome: Option<Vec<u8>>,
    /// The GroupInfo of the new epoch, with ratchet tree and external public key (`MLSMessage`),
    /// for the relay to keep for rejoins.
    pub group_info: Vec<u8>,
    /// The epoch the group enters once the commit is accepted and merged.
    pub epoch: u64,
}

/// What [`Member::process`] did with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// An application message, decrypted.
    Application {
        /// The plaintext.
        plaintext: Vec<u8>,
        /// Who sent it.
        sender: Device,
    },
    /// Another member's commit, validated and merged.
    Commit {
        /// The committer.
        sender: Device,
        /// The group's epoch now.
        epoch: u64,
        /// Devices the commit added (including an external committer).
        added: Vec<Device>,
        /// Devices the commit removed.
        removed: Vec<Device>,
        /// Whether this device was removed (the group is then inactive: [`Member::forget`]).
        removed_us: bool,
    },
    /// This device's own pending commit came back from the relay and was merged.
    OwnCommit {
        /// The group's epoch now.
        epoch: u64,
    },
    /// This device's own application message came back (nothing to do).
    OwnApplication,
    /// A remove proposal, queued for the next commit.
    Proposal {
        /// The proposer.
        sender: Device,
        /// Who it proposes to remove.
        removes: Vec<Device>,
    },
}

/// One device's MLS state (see the module docs).
pub struct Member {
    provider: Provider,
    signer: SignatureKeyPair,
    user: UserId,
    device: DeviceId,
    groups: BTreeMap<Vec<u8>, MlsGroup>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    format: u8,
    user: UserId,
    device: DeviceId,
    groups: Vec<Vec<u8>>,
    values: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What a commit does.
enum Change {
    Add(Vec<KeyPackage>),
    Remove(Vec<LeafNodeIndex>),
    Proposals,
    SelfUpdate,
}

impl Member {
    /// A device with no groups yet.
    pub fn new(user: UserId, device: &DeviceKey) -> Member {
        Member {
            provider: Provider::default(),
            signer: signer(device),
            user,
            device: device.id(),
            groups: BTreeMap::new(),
        }
    }

    /// The whole state, private keys included: store it sealed.
    ///
    /// Postcard of `{ format: u8 = 1, user, device, group ids, values }`, where `values` is the
    /// openmls memory-storage map in key order, followed by the SHA-256 of all that (openmls
    /// panics on a corrupted map; the digest catches it first).
    pub fn to_bytes(&self) -> Vec<u8> {
        let stored = Stored {
            format: FORMAT,
            user: self.user,
            device: self.device,
            groups: self.groups.keys().cloned().collect(),
            values: self.provider.values(),
        };
        // Serializing to a Vec cannot fail; an empty result would be refused by from_bytes.
        close_state(postcard::to_allocvec(&stored).unwrap_or_default())
    }

    /// Restores what [`Member::to_bytes`] stored, for the device whose key is `device`.
    pub fn from_bytes(bytes: &[u8], device: &DeviceKey) -> Result<Member, MlsRefusal> {
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
        if stored.device != device.id() {
            return Err(MlsRefusal::BadState(
                "the state belongs to another device".into(),
            ));
        }
        let provider = Provider::with_values(stored.values);
        let mut groups = BTreeMap::new();
        for id in stored.groups {
            let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(&id))
                .map_err(|e| MlsRefusal::BadState(e.to_string()))?
                .ok_or_else(|| MlsRefusal::BadState("a listed group is missing".into()))?;
            groups.insert(id, group);
        }
        Ok(Member {
            provider,
            signer: signer(device),
            user: stored.user,
            device: stored.device,
            groups,
        })
    }

    /// This device: `(user, device)`.
    pub fn id(&self) -> Device {
        (self.user, self.device)
    }

    /// The ids of the groups this device holds.
    pub fn groups(&self) -> Vec<Vec<u8>> {
        self.groups.keys().cloned().collect()
    }

    /// `n` fresh KeyPackages (`MLSMessage`s, as [`crate::check_key_package`] expects).
    pub fn key_packages(&mut self, n: usize) -> Result<Vec<Vec<u8>>, MemberError> {
        (0..n).map(|_| self.key_package(false)).collect()
    }

    /// A last-resort KeyPackage: reusable, handed out when the pool is empty.
    pub fn last_resort_key_package(&mut self) -> Result<Vec<u8>, MemberError> {
        self.key_package(true)
    }

    fn key_package(&mut self, last_resort: bool) -> Result<Vec<u8>, MemberError> {
        let mut builder = KeyPackage::builder().leaf_node_capabilities(leaf_capabilities());
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                credential_with_key(self.user, self.device),
            )
            .map_err(mls)?;
        Ok(wire::encode(&MlsMessageOut::from(
            bundle.key_package().clone(),
        ))?)
    }

    /// Creates a group at epoch 0 with this device as its only member, and returns its
    /// GroupInfo (an `MLSMessage` with the ratchet tree), for [`crate::DsGroup::start`].
    pub fn create_group(
        &mut self,
        group_id: &[u8],
        policy: GroupPolicy,
    ) -> Result<Vec<u8>, MemberError> {
        if self.groups.contains_key(group_id) {
            return Err(MemberError::Mls("a group with this id exists".into()));
        }
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(PAST_EPOCHS)
            .capabilities(leaf_capabilities())
            .with_group_context_extensions(group_context_extensions(&policy)?)
            .build();
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &config,
            GroupId::from_slice(group_id),
            credential_with_key(self.user, self.device),
        )
        .map_err(mls)?;
        let info = group
            .export_group_info(self.provider.crypto(), &self.signer, true)
            .map_err(mls)?;
        self.groups.insert(group_id.to_vec(), group);
        Ok(wire::encode(&info)?)
    }

    /// Commits adding the devices whose KeyPackages are given (each checked like the relay
    /// does, [`crate::check_key_package`]; whether the devices are the right ones is the
    /// caller's question). Pending until [`Member::merge_pending`].
    pub fn add(
        &mut self,
        group_id: &[u8],
        key_packages: &[Vec<u8>],
    ) -> Result<CommitOut, MemberError> {
        let key_packages = key_packages
            .iter()
            .map(|bytes| validate_key_package(bytes).map(|(key_package, _)| key_package))
            .collect::<Result<Vec<_>, _>>()?;
        self.commit(group_id, Change::Add(key_packages))
    }

    /// Commits removing the given devices. Pending until [`Member::merge_pending`].
    pub fn remove(
        &mut self,
        group_id: &[u8],
        devices: &[Device],
    ) -> Result<CommitOut, MemberError> {
        let leaves = leaves_of(self.group(group_id)?, devices)?;
        self.commit(group_id, Change::Remove(leaves))
    }

    /// Commits the queued proposals (a device that left). Pending until
    /// [`Member::merge_pending`].
    pub fn commit_pending_proposals(&mut self, group_id: &[u8]) -> Result<CommitOut, MemberError> {
        self.commit(group_id, Change::Proposals)
    }

    /// Commits a fresh leaf key for this device (post-compromise security). Pending until
    /// [`Member::merge_pending`].
    pub fn self_update(&mut self, group_id: &[u8]) -> Result<CommitOut, MemberError> {
        self.commit(group_id, Change::SelfUpdate)
    }

    fn commit(&mut self, group_id: &[u8], change: Change) -> Result<CommitOut, MemberError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(MemberError::UnknownGroup)?;
        // Every commit carries a path (fresh keys for the committer), with the leaf keeping
        // Ferry's capabilities.
        let builder = group
            .commit_builder()
            .force_self_update(true)
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(leaf_capabilities())
                    .build(),
            );
        let builder = match change {
            Change::Add(key_packages) => builder.propose_adds(key_packages),
            Change::Remove(leaves) => builder.propose_removals(leaves),
            Change::Proposals | Change::SelfUpdate => builder,
        };
        let bundle = builder
            .load_psks(self.provider.storage())
            .map_err(mls)?
            .create_group_info(true)
            .use_ratchet_tree_extension(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .map_err(mls)?
            .stage_commit(&self.provider)
            .map_err(mls)?;
        let epoch = group.epoch().as_u64() + 1;
        let (commit, welcome, group_info) = bundle.into_messages();
        let group_info = group_info.ok_or_else(|| MemberError::Mls("no group info".into()))?;
        Ok(CommitOut {
            commit: wire::encode(&commit)?,
            welcome: welcome.as_ref().map(wire::encode).transpose()?,
            group_info: wire::encode(&group_info)?,
            epoch,
        })
    }

    /// Merges this device's pending commit (the relay accepted it).
    pub fn merge_pending(&mut self, group_id: &[u8]) -> Result<(), MemberError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(MemberError::UnknownGroup)?;
        group.merge_pending_commit(&self.provider).map_err(mls)
    }

    /// Drops this device's pending commit (the relay refused it: another commit won the
    /// epoch).
    pub fn discard_pending(&mut self, group_id: &[u8]) -> Result<(), MemberError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(MemberError::UnknownGroup)?;
        group
            .clear_pending_commit(self.provider.storage())
            .map_err(mls)
    }

    /// Proposes this device's own removal (an `MLSMessage` PublicMessage for
    /// [`crate::DsGroup::process_proposal`]); another member commits it.
    pub fn leave(&mut self, group_id: &[u8]) -> Result<Vec<u8>, MemberError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(MemberError::UnknownGroup)?;
        let proposal = group
            .leave_group(&self.provider, &self.signer)
            .map_err(mls)?;
        Ok(wire::encode(&proposal)?)
    }

    /// Whether proposals wait to be committed in the group.
    pub fn has_pending_proposals(&self, group_id: &[u8]) -> Result<bool, MemberError> {
        Ok(self.group(group_id)?.pending_proposals().next().is_some())
    }

    /// Proposes the removal of the given devices (an admin's; the relay takes only proposals
    /// that can be committed). Returns the proposals (`MLSMessage` PublicMessages).
    pub fn propose_remove(
        &mut self,
        group_id: &[u8],
        devices: &[Device],
    ) -> Result<Vec<Vec<u8>>, MemberError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(MemberError::UnknownGroup)?;
        let indexes = leaves_of(group, devices)?;
        let mut out = Vec::with_capacity(indexes.len());
        for index in indexes {
            let (proposal, _) = group
                .propose_remove_member(&self.provider, &self.signer, index)
                .map_err(mls)?;
            out.push(wire::encode(&proposal)?);
        }
        Ok(out)
    }

    /// Proposes the removal of every leaf of this device's user (its own and its user's other
    /// devices'): a user leaves with all its devices, committed by another member. Returns
    /// the proposals (`MLSMessage` PublicMessages), this device's own last.
    pub fn propose_leave(&mut self, group_id: &[u8]) -> Result<Vec<Vec<u8>>, MemberError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(MemberError::UnknownGroup)?;
        let others: Vec<LeafNodeIndex> = group
            .members()
            .filter(|member| {
                leaf_owner(&member.credential, &member.signature_key)
                    .is_ok_and(|(user, device)| user == self.user && device != self.device)
            })
            .map(|member| member.index)
            .collect();
        let mut out = Vec::with_capacity(others.len() + 1);
        for index in others {
            let (proposal, _) = group
                .propose_remove_member(&self.provider, &self.signer, index)
                .map_err(mls)?;
            out.push(wire::encode(&proposal)?);
        }
        let own = group
            .leave_group(&self.provider, &self.signer)
            .map_err(mls)?;
        out.push(wire::encode(&own)?);
        Ok(out)
    }

    /// Joins a group from a Welcome (the ratchet tree travels in its GroupInfo). Every leaf must
    /// follow Ferry's credential convention and the group must carry Ferry's policy. Returns the
    /// group id.
    pub fn join(&mut self, welcome: &[u8]) -> Result<Vec<u8>, MemberError> {
        let welcome = match wire::decode(welcome)? {
            MlsMessageBodyIn::Welcome(welcome) => welcome,
            other => {
                return Err(MlsRefusal::Malformed(format!(
                    "expected a welcome, got {}",
                    wire::kind(&other)
                ))
                .into());
            }
        };
        if welcome.ciphersuite() != CIPHERSUITE {
            return Err(MlsRefusal::WrongCiphersuite.into());
        }
        let staged = StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, None)
            .map_err(mls)?;
        for member in staged.members() {
            leaf_owner(&member.credential, &member.signature_key)?;
        }
        let context = staged.group_context();
        if GroupPolicy::from_context(context).is_none() || !requires_policy(context) {
            return Err(MlsRefusal::MissingPolicy.into());
        }
        let group = staged.into_group(&self.provider).map_err(mls)?;
        let id = group.group_id().to_vec();
        self.groups.insert(id.clone(), group);
        Ok(id)
    }

    /// Rejoins a group by external commit from its latest GroupInfo (an `MLSMessage` with the
    /// ratchet tree and external public key, as the relay keeps it). Any local copy of the
    /// group is dropped first: a device rejoins because that copy is stale. The commit also
    /// removes this device's old leaf.
    ///
    /// Unlike other commits this one is merged at once (openmls has no pending state for an
    /// external join); if the relay refuses it, fetch the newer GroupInfo and call this again.
    pub fn join_external(
        &mut self,
        group_info: &[u8],
    ) -> Result<(Vec<u8>, CommitOut), MemberError> {
        let info = crate::ds::decode_group_info(group_info)?;
        if info.ciphersuite() != CIPHERSUITE {
            return Err(MlsRefusal::WrongCiphersuite.into());
        }
        let id = info.group_id().to_vec();
        if let Some(mut old) = self.groups.remove(&id) {
            old.delete(self.provider.storage()).map_err(mls)?;
        }
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config())
            .build_group(
                &self.provider,
                info,
                credential_with_key(self.user, self.device),
            )
            .map_err(mls)?
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(leaf_capabilities())
                    .build(),
            )
            .load_psks(self.provider.storage())
            .map_err(mls)?
            .create_group_info(true)
            .use_ratchet_tree_extension(true)
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .map_err(mls)?
            .finalize(&self.provider)
            .map_err(mls)?;
        for member in group.members() {
            leaf_owner(&member.credential, &member.signature_key)?;
        }
        let context = group.public_group().group_context();
        if GroupPolicy::from_context(context).is_none() || !requires_policy(context) {
            return Err(MlsRefusal::MissingPolicy.into());
        }
        let epoch = group.epoch().as_u64();
        let (commit, _, group_info) = bundle.into_messages();
        let group_info = group_info.ok_or_else(|| MemberError::Mls("no group info".into()))?;
        let out = CommitOut {
            commit: wire::encode(&commit)?,
            welcome: None,
            group_info: wire::encode(&group_info)?,
            epoch,
        };
        self.groups.insert(id.clone(), group);
        Ok((id, out))
    }

    /// Encrypts an application message (an `MLSMessage` PrivateMessage).
    pub fn encrypt(&mut self, group_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, MemberError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(MemberError::UnknownGroup)?;
        let message = group
            .create_message(&self.provider, &self.signer, plaintext)
            .map_err(mls)?;
        Ok(wire::encode(&message)?)
    }

    /// Processes a message from the group's stream, in stream order: decrypts application
    /// messages, validates and merges other members' commits (every new leaf must follow
    /// Ferry's convention and the policy must stay), merges this device's own commit when it
    /// comes back, and queues remove proposals.
    pub fn process(&mut self, group_id: &[u8], message: &[u8]) -> Result<Incoming, MemberError> {
        let message: ProtocolMessage = match wire::decode(message)? {
            MlsMessageBodyIn::PublicMessage(public) => public.into(),
            MlsMessageBodyIn::PrivateMessage(private) => private.into(),
            other => {
                return Err(MlsRefusal::Malformed(format!(
                    "expected a public or private message, got {}",
                    wire::kind(&other)
                ))
                .into());
            }
        };
        if message.group_id().as_slice() != group_id {
            return Err(MlsRefusal::WrongGroup.into());
        }
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(MemberError::UnknownGroup)?;
        let processed = group
            .process_message(&self.provider, message)
            .map_err(mls)?;
        // openmls found the sender's credential in the leaves of the message's epoch.
        let sender = credential_owner(processed.credential());
        let sender_index = match processed.sender() {
            Sender::Member(index) => Some(*index),
            _ => None,
        };
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(message) => Ok(Incoming::Application {
                plaintext: message.into_bytes(),
                sender: sender?,
            }),
            ProcessedMessageContent::ProposalMessage(queued) => {
                let removed = match queued.proposal() {
                    Proposal::Remove(remove) => remove.removed(),
                    _ => {
                        return Err(MlsRefusal::InvalidProposal(
                            "Ferry uses only remove proposals".into(),
                        )
                        .into());
                    }
                };
                let removes = vec![owner_at(group, removed)?];
                group
                    .store_pending_proposal(self.provider.storage(), *queued)
                    .map_err(mls)?;
                Ok(Incoming::Proposal {
                    sender: sender?,
                    removes,
                })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let mut added = Vec::new();
                for add in staged.add_proposals() {
                    let leaf = add.add_proposal().key_package().leaf_node();
                    added.push(leaf_owner(
                        leaf.credential(),
                        leaf.signature_key().as_slice(),
                    )?);
                }
                let committer = match (sender_index, staged.update_path_leaf_node()) {
                    (None, Some(leaf)) => {
                        // An external commit: the committer is the new leaf.
                        let owner = leaf_owner(leaf.credential(), leaf.signature_key().as_slice())?;
                        added.push(owner);
                        owner
                    }
                    (_, Some(leaf)) => {
                        leaf_owner(leaf.credential(), leaf.signature_key().as_slice())?
                    }
                    (_, None) => sender?,
                };
                let mut removed = Vec::new();
                for remove in staged.remove_proposals() {
                    removed.push(owner_at(group, remove.remove_proposal().removed())?);
                }
                let context = staged.group_context();
                if GroupPolicy::from_context(context).is_none() || !requires_policy(context) {
                    return Err(MlsRefusal::MissingPolicy.into());
                }
                let removed_us = staged.self_removed();
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .map_err(mls)?;
                added.sort();
                removed.sort();
                Ok(Incoming::Commit {
                    sender: committer,
                    epoch: group.epoch().as_u64(),
                    added,
                    removed,
                    removed_us,
                })
            }
            ProcessedMessageContent::OwnPendingCommit => {
                group.merge_pending_commit(&self.provider).map_err(mls)?;
                Ok(Incoming::OwnCommit {
                    epoch: group.epoch().as_u64(),
                })
            }
            ProcessedMessageContent::OwnPrivateMessage => Ok(Incoming::OwnApplication),
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(
                MlsRefusal::InvalidProposal("Ferry uses no external join proposals".into()).into(),
            ),
            // Draft content kinds exist only when another crate enables openmls features.
            #[allow(unreachable_patterns)]
            _ => Err(MemberError::Mls("unsupported message content".into())),
        }
    }

    /// The group's current epoch.
    pub fn epoch(&self, group_id: &[u8]) -> Result<u64, MemberError> {
        Ok(self.group(group_id)?.epoch().as_u64())
    }

    /// The group's members, sorted.
    pub fn members(&self, group_id: &[u8]) -> Result<Vec<Device>, MemberError> {
        let mut out: Vec<Device> = self
            .group(group_id)?
            .members()
            .filter_map(|member| leaf_owner(&member.credential, &member.signature_key).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// The group's policy.
    pub fn policy(&self, group_id: &[u8]) -> Result<Option<GroupPolicy>, MemberError> {
        Ok(GroupPolicy::from_context(
            self.group(group_id)?.public_group().group_context(),
        ))
    }

    /// The epoch authenticator: equal on every device in the same epoch of the same history
    /// (compare it out of band or across devices to detect a split group).
    pub fn epoch_authenticator(&self, group_id: &[u8]) -> Result<Vec<u8>, MemberError> {
        Ok(self
            .group(group_id)?
            .epoch_authenticator()
            .as_slice()
            .to_vec())
    }

    /// A secret exported from the current epoch (MLS exporter, empty context), e.g. to seal
    /// typing indicators and call signaling.
    pub fn export_secret(
        &self,
        group_id: &[u8],
        label: &str,
        len: usize,
    ) -> Result<Vec<u8>, MemberError> {
        self.group(group_id)?
            .export_secret(self.provider.crypto(), label, &[], len)
            .map_err(mls)
    }

    /// Whether this device is still a member of the group (false once a commit removed it).
    pub fn is_active(&self, group_id: &[u8]) -> Result<bool, MemberError> {
        Ok(self.group(group_id)?.is_active())
    }

    /// Deletes the group's state from this device.
    pub fn forget(&mut self, group_id: &[u8]) -> Result<(), MemberError> {
        let mut group = self
            .groups
            .remove(group_id)
            .ok_or(MemberError::UnknownGroup)?;
        group.delete(self.provider.storage()).map_err(mls)
    }

    fn group(&self, group_id: &[u8]) -> Result<&MlsGroup, MemberError> {
        self.groups.get(group_id).ok_or(MemberError::UnknownGroup)
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("user", &self.user)
            .field("device", &self.device)
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(PAST_EPOCHS)
        .build()
}

/// The leaves of `devices` in the group's current tree (`NotAMember` for one not in it).
fn leaves_of(group: &MlsGroup, devices: &[Device]) -> Result<Vec<LeafNodeIndex>, MlsRefusal> {
    devices
        .iter()
        .map(|device| {
            group
                .members()
                .find(|m| leaf_owner(&m.credential, &m.signature_key).ok() == Some(*device))
                .map(|m| m.index)
                .ok_or(MlsRefusal::NotAMember)
        })
        .collect()
}

/// The owner of a leaf in the group's current tree.
fn owner_at(group: &MlsGroup, index: LeafNodeIndex) -> Result<Device, MlsRefusal> {
    let member = group.member_at(index).ok_or(MlsRefusal::NotAMember)?;
    leaf_owner(&member.credential, &member.signature_key)
}
