//! The conversations domain of storage: the relay as MLS's Delivery Service, and the
//! KeyPackage directory. Every statement here is written once for both backends.
//!
//! # One stream per conversation
//!
//! A conversation row holds the epoch, the head (last `conv_seq`), the content count (for
//! unread counts), the relay's openmls `PublicGroup` (`group_state`: public tree and group
//! context, no secrets) and the latest GroupInfo. Messages are stored once and read by every
//! member device from its own cursor. `conv_leaves` mirrors the group's leaves (one per
//! device) and `conv_members` the users having at least one, with their read markers; both are
//! rewritten from the validated group by every commit, in its transaction.
//!
//! # Invariants
//!
//! - A send runs in a transaction that first locks the conversation row, so two sends to
//!   one conversation, on any relay nodes, run one after the other; `conv_seq = head + 1`,
//!   gapless, in commit order. Application messages are group-committed: a run of them, to
//!   several conversations, shares one transaction that locks those conversation rows in id
//!   order and nothing else. A commit or proposal has its own transaction; the only other
//!   rows it locks are those of users receiving a Welcome or a removal notice, after the
//!   conversation row and in user order (the order of the append batch and the people
//!   domain), so no two transactions wait in a cycle.
//! - **First valid commit per epoch wins**: a commit is stored only if its epoch equals the
//!   conversation's, and only after `ferry_mls::DsGroup` validated it against the stored group
//!   (sender a member, signatures, proposals, every leaf a Ferry credential) and the
//!   whole-user rule held (`ferry_mls::check_membership_change` against the devices the
//!   users' chains admit now and that can be added: see `joinable_devices`); the epoch, the group state, the GroupInfo, the leaves and the
//!   members change in the same transaction. Anything else is [`SendOutcome::Stale`] or
//!   refused, and stores nothing.
//! - Only a current leaf whose device the chain still admits sends, reads or acknowledges;
//!   a device removed from the group or revoked is refused at once (the check is in the same
//!   transaction as the store, on every node). Another active device of a member user (one
//!   paired later) may fetch the GroupInfo and send one thing: the external commit that
//!   brings it in.
//! - `(conv, device, device_seq)` is unique: a retry with the same bytes is
//!   [`SendOutcome::Duplicate`], different bytes are refused with `conflict`.
//! - Application messages (content, control) are accepted for the current epoch and the
//!   [`PAST_EPOCHS_ACCEPTED`] before it, but never for an epoch before the last commit that
//!   added, removed or (external commit) replaced a leaf (`floor_epoch`): a removed or revoked device cannot read what is
//!   said after its removal, and a new device can read everything stored after its join;
//!   their MLS header must name this group and the epoch the frame names;
//!   the relay reads nothing else of them.
//! - A member reads only messages after the commit that added it (`joined_seq`).
//! - Retention ([`ConversationStore::trim_conversations`]) deletes only a prefix, so a
//!   conversation keeps `earliest..=head`, gapless; it keeps every commit and proposal some
//!   member device has not read for `lag` (the latest GroupInfo always). A device reading on
//!   from before `earliest` is told (`ConvPage::Trimmed`), with whether a handshake message
//!   it had not read is gone (then it rejoins by external commit).
//! - A KeyPackage is handed out once (deleted by the claim in the same statement that reads
//!   it), except a device's last-resort package; claims are for contacts only, never across
//!   a block either way.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use ferry_mls::{DsGroup, MlsRefusal};
use ferry_protocol::conversations::{
    ConvId, ConvMessage, ConvSend, ConvSummary, Direction, MAX_CONV_MESSAGES_PER_FRAME,
    MAX_CONV_PAGE_BYTES, MemberState, MessageClass, PAST_EPOCHS_ACCEPTED,
};
use ferry_protocol::people::Notice;
use ferry_protocol::{ClaimedKeyPackage, DeviceId, ErrorCode, UserId};

use super::people::{Notified, append_notice};
use super::sql::{SqlStore, Tx, db_int, from_db_int, in_tx, key32, on_reader};
use super::{StoreError, check_device_seq};

/// What the conversation domain lets one device or user do; a relay's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvLimits {
    /// One-use KeyPackages a device may keep at the relay.
    pub key_packages_per_device: u64,
}

impl Default for ConvLimits {
    fn default() -> Self {
        Self {
            key_packages_per_device: 100,
        }
    }
}

/// A KeyPackage a device uploads, checked by the caller (`ferry_mls::check_key_package`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPackageRow {
    /// Its MLS hash reference.
    pub reference: Vec<u8>,
    /// The package as uploaded.
    pub package: Vec<u8>,
}

/// A page of a conversation, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub enum ConvPage {
    /// The messages, and whether more follow.
    Messages {
        /// The page.
        messages: Vec<ConvMessage>,
        /// Whether more follow in that direction.
        more: bool,
    },
    /// Retention deleted messages after `from` (see `ServerFrame::ConvTrimmed`).
    Trimmed {
        /// The first message kept.
        earliest: u64,
        /// Whether a commit or proposal after `from` is gone (the device must rejoin).
        rejoin: bool,
    },
}

/// A message a member device sends, as the store takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvSendRequest {
    /// The sending user.
    pub user: UserId,
    /// The sending device.
    pub device: DeviceId,
    /// The frame.
    pub send: ConvSend,
}

/// How far a member device has read a conversation (`ClientFrame::ConvAck`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvCursor {
    /// The conversation.
    pub conv: ConvId,
    /// The device.
    pub device: DeviceId,
    /// The last message it has.
    pub seq: u64,
}

/// How a send ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored at `conv_seq`; wake `members`, deliver `notified`.
    Stored {
        /// Its position.
        conv_seq: u64,
        /// Every member user after the message (for wake-ups).
        members: Vec<UserId>,
        /// Welcomes and removal notices written into users' logs.
        notified: Notified,
    },
    /// A retry of a message stored at `conv_seq`; nothing stored.
    Duplicate {
        /// Where the original sits.
        conv_seq: u64,
    },
    /// A commit for an epoch that is not the conversation's (first valid commit wins).
    Stale {
        /// The conversation's epoch.
        epoch: u64,
        /// Its head.
        head: u64,
    },
}

/// Storage of the conversations domain (see the module docs).
#[async_trait]
pub trait ConversationStore: Send + Sync {
    /// Adds KeyPackages to `device`'s pool (and replaces its last-resort package); returns
    /// the pool's size. `Refused(key_package_limit)` when the pool would pass the limit.
    async fn put_key_packages(
        &self,
        user: UserId,
        device: DeviceId,
        packages: &[KeyPackageRow],
        last_resort: Option<&KeyPackageRow>,
        limits: &ConvLimits,
        now_ms: u64,
    ) -> Result<u64, StoreError>;

    /// One KeyPackage per active device of `target` that has one (a one-use package, deleted,
    /// or else its last-resort package), `claimer_device` left out (a device adds its user's
    /// other devices). `Refused(not_a_contact)` unless `target` is `claimer` itself or a
    /// contact in both users' views, and neither blocked the other.
    async fn claim_key_packages(
        &self,
        claimer: UserId,
        claimer_device: DeviceId,
        target: UserId,
    ) -> Result<Vec<ClaimedKeyPackage>, StoreError>;

    /// Creates `conv` from the creator's group at epoch 0 (validated by the caller), whose
    /// only leaves are the creator's. `Refused(conversation_exists)` when the id is taken.
    async fn create_conversation(
        &self,
        conv: ConvId,
        group: &DsGroup,
        group_info: &[u8],
        now_ms: u64,
    ) -> Result<(), StoreError>;

    /// Stores messages from member devices (see the module docs for the rules), answering
    /// each, in order. Consecutive application messages, to any conversations, share one
    /// transaction (group commit: one durable write for many senders); a commit or proposal
    /// has one of its own. A refusal (`Err(Refused*)`, `InvalidSequence`) is one message's
    /// answer; a transaction that fails fails every message in it.
    async fn send_batch(
        &self,
        sends: &[ConvSendRequest],
        now_ms: u64,
    ) -> Vec<Result<SendOutcome, StoreError>>;

    /// Stores one message from `(user, device)` (a batch of one).
    async fn send(
        &self,
        user: UserId,
        device: DeviceId,
        send: &ConvSend,
        now_ms: u64,
    ) -> Result<SendOutcome, StoreError> {
        let request = ConvSendRequest {
            user,
            device,
            send: send.clone(),
        };
        self.send_batch(std::slice::from_ref(&request), now_ms)
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("no answer for a send".into())))
    }

    /// A page of messages for a member device.
    async fn read_messages(
        &self,
        conv: ConvId,
        device: DeviceId,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<ConvPage, StoreError>;

    /// Retention: deletes a prefix of each conversation's messages older than `max_age_ms`,
    /// but never a commit or proposal younger than `lag_ms` that a member device's cursor
    /// has not passed. Returns the messages deleted.
    async fn trim_conversations(
        &self,
        max_age_ms: u64,
        lag_ms: u64,
        now_ms: u64,
    ) -> Result<u64, StoreError>;

    /// Raises member devices' cursors, each to `min(seq, head)`, in one transaction (a
    /// cursor never moves back; one that is not a leaf's is ignored).
    async fn ack_conversations(&self, cursors: &[ConvCursor]) -> Result<(), StoreError>;

    /// Raises `user`'s read marker to `min(seq, head)`; returns the marker if it moved.
    async fn mark_read(
        &self,
        conv: ConvId,
        user: UserId,
        seq: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// `user`'s conversations, most recently active first.
    async fn conversations(&self, user: UserId) -> Result<Vec<ConvSummary>, StoreError>;

    /// The member users of `conv`, if `device` is one of its leaves and not revoked (for the
    /// frames pushed to members); with `unblocked_by`, members who blocked that user are left
    /// out (a block is silence), in the same query.
    async fn conversation_members(
        &self,
        conv: ConvId,
        device: DeviceId,
        unblocked_by: Option<UserId>,
    ) -> Result<Vec<UserId>, StoreError>;

    /// The latest GroupInfo and its epoch, for an active device of a member user.
    async fn group_info(
        &self,
        conv: ConvId,
        device: DeviceId,
    ) -> Result<(u64, Vec<u8>), StoreError>;
}

fn refused(code: ErrorCode, reason: impl Into<String>) -> StoreError {
    StoreError::RefusedBecause(code, reason.into())
}

fn mls_refused(refusal: MlsRefusal) -> StoreError {
    let code = match refusal {
        MlsRefusal::PartialUser { .. } => ErrorCode::MembershipRefused,
        _ => ErrorCode::MlsRefused,
    };
    refused(code, refusal.to_string())
}

/// The conversation row as a send sees it.
struct ConvRow {
    epoch: u64,
    head: u64,
    content_count: u64,
    floor_epoch: u64,
    group_state: Vec<u8>,
}

type ConvRowDb = (i64, i64, i64, i64, Vec<u8>);

/// Locks the conversation row until commit and reads it (an UPDATE that changes nothing takes
/// the row lock on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already serialises writers).
async fn lock_conversation(tx: &mut Tx, conv: ConvId) -> Result<Option<ConvRow>, StoreError> {
    let row: Option<ConvRowDb> = in_tx!(tx, |conn| {
        sqlx::query_as(
            "UPDATE conversations SET head = head WHERE conv_id = $1
             RETURNING epoch, head, content_count, floor_epoch, group_state",
        )
        .bind(conv.0.as_slice())
        .fetch_optional(&mut *conn)
        .await?
    });
    row.map(|(epoch, head, content_count, floor_epoch, group_state)| {
        Ok(ConvRow {
            epoch: from_db_int(epoch, "epoch")?,
            head: from_db_int(head, "head")?,
            content_count: from_db_int(content_count, "content_count")?,
            floor_epoch: from_db_int(floor_epoch, "floor_epoch")?,
            group_state,
        })
    })
    .transpose()
}

/// The user owning `device` if it is a leaf of `conv` and its chain has not revoked it.
async fn active_leaf(
    tx: &mut Tx,
    conv: ConvId,
    device: DeviceId,
) -> Result<Option<UserId>, StoreError> {
    let user: Option<Vec<u8>> = in_tx!(tx, |conn| {
        sqlx::query_scalar(
            "SELECT l.user_id FROM conv_leaves l
             JOIN devices d ON d.user_id = l.user_id AND d.device_id = l.device_id
             WHERE l.conv_id = $1 AND l.device_id = $2
               AND d.admitted_seqno IS NOT NULL AND d.revoked_at IS NULL",
        )
        .bind(conv.0.as_slice())
        .bind(device.as_bytes().as_slice())
        .fetch_optional(&mut *conn)
        .await?
    });
    user.map(|u| Ok(UserId(key32(&u, "user_id")?))).transpose()
}

/// The devices of `user` the whole-user rule counts: active ones that can be added (they
/// have a KeyPackage at the relay), are in the group already, or are the sender joining by
/// external commit. A device that never uploaded a KeyPackage cannot be added by anyone, so
/// it does not hold its user out of conversations: it joins them itself, by external commit,
/// once it connects.
async fn joinable_devices(
    tx: &mut Tx,
    conv: ConvId,
    user: UserId,
    sender: DeviceId,
) -> Result<BTreeSet<DeviceId>, StoreError> {
    let rows: Vec<Vec<u8>> = in_tx!(tx, |conn| {
        sqlx::query_scalar(
            "SELECT d.device_id FROM devices d
             WHERE d.user_id = $1 AND d.admitted_seqno IS NOT NULL AND d.revoked_at IS NULL
               AND (d.device_id = $3
                    OR EXISTS (SELECT 1 FROM key_packages k WHERE k.device_id = d.device_id)
                    OR EXISTS (SELECT 1 FROM conv_leaves l
                               WHERE l.conv_id = $2 AND l.device_id = d.device_id))",
        )
        .bind(user.as_bytes().as_slice())
        .bind(conv.0.as_slice())
        .bind(sender.as_bytes().as_slice())
        .fetch_all(&mut *conn)
        .await?
    });
    rows.iter()
        .map(|d| Ok(DeviceId(key32(d, "device_id")?)))
        .collect()
}

/// Whether `device` is an active device of `user` and `user` a member of `conv`.
async fn member_device(
    tx: &mut Tx,
    conv: ConvId,
    user: UserId,
    device: DeviceId,
) -> Result<bool, StoreError> {
    let found: Option<i64> = in_tx!(tx, |conn| {
        sqlx::query_scalar(
            "SELECT m.read_seq FROM conv_members m
             JOIN devices d ON d.user_id = m.user_id
             WHERE m.conv_id = $1 AND m.user_id = $2 AND d.device_id = $3
               AND d.admitted_seqno IS NOT NULL AND d.revoked_at IS NULL",
        )
        .bind(conv.0.as_slice())
        .bind(user.as_bytes().as_slice())
        .bind(device.as_bytes().as_slice())
        .fetch_optional(&mut *conn)
        .await?
    });
    Ok(found.is_some())
}

/// The devices `user`'s chain admits and has not revoked.
async fn active_devices(tx: &mut Tx, user: UserId) -> Result<BTreeSet<DeviceId>, StoreError> {
    let rows: Vec<Vec<u8>> = in_tx!(tx, |conn| {
        sqlx::query_scalar(
            "SELECT device_id FROM devices
             WHERE user_id = $1 AND admitted_seqno IS NOT NULL AND revoked_at IS NULL",
        )
        .bind(user.as_bytes().as_slice())
        .fetch_all(&mut *conn)
        .await?
    });
    rows.iter()
        .map(|d| Ok(DeviceId(key32(d, "device_id")?)))
        .collect()
}

/// The users with a device in `after` that is not in `before`.
fn welcomed_users(before: &[(UserId, DeviceId)], after: &[(UserId, DeviceId)]) -> BTreeSet<UserId> {
    let before: BTreeSet<_> = before.iter().collect();
    after
        .iter()
        .filter(|leaf| !before.contains(leaf))
        .map(|(user, _)| *user)
        .collect()
}

fn users_of(leaves: &[(UserId, DeviceId)]) -> BTreeSet<UserId> {
    leaves.iter().map(|(user, _)| *user).collect()
}

/// Rewrites the leaves and members of `conv` from the group's leaves after a commit (or at
/// creation): removed leaves and members go, new ones come with `joined_seq`; markers and
/// cursors of those who stay are kept.
async fn mirror_members(
    tx: &mut Tx,
    conv: ConvId,
    before: &[(UserId, DeviceId)],
    after: &[(UserId, DeviceId)],
    joined_seq: u64,
) -> Result<(), StoreError> {
    let old: BTreeSet<_> = before.iter().copied().collect();
    let new: BTreeSet<_> = after.iter().copied().collect();
    let id = conv.0.as_slice();
    for (user, device) in old.difference(&new) {
        in_tx!(tx, |conn| {
            sqlx::query("DELETE FROM conv_leaves WHERE conv_id = $1 AND device_id = $2")
                .bind(id)
                .bind(device.as_bytes().as_slice())
                .execute(&mut *conn)
                .await?;
        });
        let _ = user;
    }
    for (user, device) in new.difference(&old) {
        in_tx!(tx, |conn| {
            sqlx::query(
                "INSERT INTO conv_leaves (conv_id, device_id, user_id, acked) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(device.as_bytes().as_slice())
            .bind(user.as_bytes().as_slice())
            .bind(db_int(joined_seq))
            .execute(&mut *conn)
            .await?;
        });
    }
    let (old_users, new_users) = (users_of(before), users_of(after));
    for user in old_users.difference(&new_users) {
        in_tx!(tx, |conn| {
            sqlx::query("DELETE FROM conv_members WHERE conv_id = $1 AND user_id = $2")
                .bind(id)
                .bind(user.as_bytes().as_slice())
                .execute(&mut *conn)
                .await?;
        });
    }
    for user in new_users.difference(&old_users) {
        in_tx!(tx, |conn| {
            sqlx::query(
                "INSERT INTO conv_members (conv_id, user_id, read_seq, read_index, joined_seq)
                 SELECT $1, $2, $3, content_count, $3 FROM conversations WHERE conv_id = $1",
            )
            .bind(id)
            .bind(user.as_bytes().as_slice())
            .bind(db_int(joined_seq))
            .execute(&mut *conn)
            .await?;
        });
    }
    Ok(())
}

/// What a validated commit changes, applied by [`SqlStore::send`].
struct CommitEffects {
    external: bool,
    welcomed: BTreeSet<UserId>,
    group_state: Vec<u8>,
    group_info: Vec<u8>,
    epoch: u64,
    before: Vec<(UserId, DeviceId)>,
    after: Vec<(UserId, DeviceId)>,
}

/// Validates a commit against the stored group and the users' chains (see the module docs).
async fn validate_commit(
    tx: &mut Tx,
    conv: ConvId,
    row: &ConvRow,
    sender: (UserId, DeviceId),
    send: &ConvSend,
) -> Result<CommitEffects, StoreError> {
    let mut group = DsGroup::from_bytes(&row.group_state)
        .map_err(|e| StoreError::Corrupt(format!("group state of {conv}: {e}")))?;
    let summary = group.process_commit(&send.message).map_err(mls_refused)?;
    if summary.sender != sender {
        return Err(refused(
            ErrorCode::MlsRefused,
            "the commit is signed by another member than the sending device",
        ));
    }
    let mut active = BTreeMap::new();
    for user in users_of(&summary.before).union(&users_of(&summary.after)) {
        active.insert(*user, joinable_devices(tx, conv, *user, sender.1).await?);
    }
    ferry_mls::check_membership_change(&summary.before, &summary.after, sender.0, |user| {
        active.get(user).cloned().unwrap_or_default()
    })
    .map_err(mls_refused)?;
    check_admin(&group, &summary, sender.0)?;
    // Every device the commit adds gets the Welcome (an external committer joins itself).
    let mut welcomed = welcomed_users(&summary.before, &summary.after);
    if summary.external {
        let others_added = summary
            .after
            .iter()
            .any(|leaf| leaf.0 == sender.0 && *leaf != sender && !summary.before.contains(leaf));
        if !others_added {
            welcomed.remove(&sender.0);
        }
    }
    match (&send.welcome, welcomed.is_empty()) {
        (None, true) => {}
        (Some(welcome), false) => ferry_mls::check_welcome(welcome).map_err(mls_refused)?,
        (None, false) => {
            return Err(refused(
                ErrorCode::MlsRefused,
                "a commit that adds devices needs their Welcome",
            ));
        }
        (Some(_), true) => {
            return Err(refused(
                ErrorCode::MlsRefused,
                "a Welcome without a device to welcome",
            ));
        }
    }
    let Some(group_info) = &send.group_info else {
        return Err(refused(
            ErrorCode::MlsRefused,
            "a commit needs the new epoch's GroupInfo",
        ));
    };
    // Signature, tree and context checked against the group as the commit left it.
    group.check_group_info(group_info).map_err(mls_refused)?;
    Ok(CommitEffects {
        external: summary.external,
        welcomed,
        group_state: group.to_bytes(),
        group_info: group_info.to_vec(),
        epoch: summary.epoch,
        before: summary.before,
        after: summary.after,
    })
}

/// In a group whose policy names admins, only admins change other users' membership or the
/// group context; anyone may change its own user's devices or commit others' own removals.
fn check_admin(
    group: &DsGroup,
    summary: &ferry_mls::CommitSummary,
    sender: UserId,
) -> Result<(), StoreError> {
    let Some(policy) = group.policy() else {
        return Ok(());
    };
    if policy.admins.is_empty() || policy.admins.contains(&sender) {
        return Ok(());
    }
    let before: BTreeSet<_> = summary.before.iter().copied().collect();
    let after: BTreeSet<_> = summary.after.iter().copied().collect();
    let self_removed: BTreeSet<_> = summary.self_removed.iter().copied().collect();
    let others_changed = before
        .symmetric_difference(&after)
        .any(|leaf| leaf.0 != sender && !self_removed.contains(leaf));
    if others_changed || summary.policy_changed {
        return Err(refused(
            ErrorCode::MembershipRefused,
            "only the group's admins add or remove other members or change the group",
        ));
    }
    Ok(())
}

/// The stored message with this sender and `device_seq`, if any: (conv_seq, message).
async fn find_sent(
    tx: &mut Tx,
    conv: ConvId,
    device: DeviceId,
    device_seq: u64,
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let row: Option<(i64, Vec<u8>)> = in_tx!(tx, |conn| {
        sqlx::query_as(
            "SELECT conv_seq, message FROM conv_messages
             WHERE conv_id = $1 AND device_id = $2 AND device_seq = $3",
        )
        .bind(conv.0.as_slice())
        .bind(device.as_bytes().as_slice())
        .bind(db_int(device_seq))
        .fetch_optional(&mut *conn)
        .await?
    });
    row.map(|(seq, message)| Ok((from_db_int(seq, "conv_seq")?, message)))
        .transpose()
}

async fn member_users(tx: &mut Tx, conv: ConvId) -> Result<Vec<UserId>, StoreError> {
    let rows: Vec<Vec<u8>> = in_tx!(tx, |conn| {
        sqlx::query_scalar("SELECT user_id FROM conv_members WHERE conv_id = $1 ORDER BY user_id")
            .bind(conv.0.as_slice())
            .fetch_all(&mut *conn)
            .await?
    });
    rows.iter()
        .map(|u| Ok(UserId(key32(u, "user_id")?)))
        .collect()
}

/// Whether an application message may be stored in `conv` as `row` stands: its MLS header
/// names this group and the frame's epoch, which is one the relay still accepts.
fn check_application(conv: ConvId, row: &ConvRow, send: &ConvSend) -> Result<(), StoreError> {
    let (group_id, epoch) = ferry_mls::inspect_application(&send.message).map_err(mls_refused)?;
    if group_id != conv.0 || epoch != send.epoch {
        return Err(refused(
            ErrorCode::MlsRefused,
            "the message's MLS header names another group or epoch than the frame",
        ));
    }
    let oldest = row
        .epoch
        .saturating_sub(PAST_EPOCHS_ACCEPTED)
        .max(row.floor_epoch);
    if epoch > row.epoch || epoch < oldest {
        return Err(refused(
            ErrorCode::MlsRefused,
            format!(
                "application messages are accepted for epochs {oldest}..={} only \
                 (a removal or too many commits since): process the new commits \
                 and encrypt again",
                row.epoch
            ),
        ));
    }
    Ok(())
}

/// Stores `send` at `row.head + 1` and moves `row`'s head and content count on (the row
/// itself is written by [`set_head`]); a member's own content message is read by it.
async fn insert_message(
    tx: &mut Tx,
    row: &mut ConvRow,
    (user, device): (UserId, DeviceId),
    send: &ConvSend,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let conv_seq = row.head + 1;
    let content = send.class == MessageClass::Content;
    let content_count = row.content_count + u64::from(content);
    let id = send.conv.0.as_slice();
    in_tx!(tx, |conn| {
        sqlx::query(
            "INSERT INTO conv_messages
               (conv_id, conv_seq, device_id, device_seq, epoch, class, content_index,
                sent_at, message)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(db_int(conv_seq))
        .bind(device.as_bytes().as_slice())
        .bind(db_int(send.device_seq))
        .bind(db_int(send.epoch))
        .bind(i64::from(send.class.number()))
        .bind(db_int(content_count))
        .bind(db_int(now_ms))
        .bind(send.message.as_slice())
        .execute(&mut *conn)
        .await?;
    });
    if content {
        in_tx!(tx, |conn| {
            sqlx::query(
                "UPDATE conv_members SET read_seq = $3, read_index = $4
                 WHERE conv_id = $1 AND user_id = $2",
            )
            .bind(id)
            .bind(user.as_bytes().as_slice())
            .bind(db_int(conv_seq))
            .bind(db_int(content_count))
            .execute(&mut *conn)
            .await?;
        });
    }
    row.head = conv_seq;
    row.content_count = content_count;
    Ok(conv_seq)
}

/// Writes the head and content count of `row` back to the conversation.
async fn set_head(tx: &mut Tx, conv: ConvId, row: &ConvRow, now_ms: u64) -> Result<(), StoreError> {
    in_tx!(tx, |conn| {
        sqlx::query(
            "UPDATE conversations SET head = $2, content_count = $3, last_activity = $4
             WHERE conv_id = $1",
        )
        .bind(conv.0.as_slice())
        .bind(db_int(row.head))
        .bind(db_int(row.content_count))
        .bind(db_int(now_ms))
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Whether `error` is one message's refusal (decided before anything of it was written),
/// rather than a failure of its transaction.
fn is_refusal(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Refused(_) | StoreError::RefusedBecause(..) | StoreError::InvalidSequence(_)
    )
}

impl SqlStore {
    /// One attempt at a page of [`ConversationStore::read_messages`]; `None` when retention
    /// deleted messages of the page while it was read.
    async fn read_page(
        &self,
        conv: ConvId,
        device: DeviceId,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Option<ConvPage>, StoreError> {
        let limit = limit.clamp(1, MAX_CONV_MESSAGES_PER_FRAME);
        let id = conv.0.as_slice();
        let joined: Option<(i64, i64, i64)> = on_reader!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT m.joined_seq, c.earliest, c.trimmed_handshake FROM conv_leaves l
                 JOIN conv_members m ON m.conv_id = l.conv_id AND m.user_id = l.user_id
                 JOIN devices d ON d.user_id = l.user_id AND d.device_id = l.device_id
                 JOIN conversations c ON c.conv_id = l.conv_id
                 WHERE l.conv_id = $1 AND l.device_id = $2 AND d.revoked_at IS NULL",
            )
            .bind(id)
            .bind(device.as_bytes().as_slice())
            .fetch_optional(pool)
            .await?
        });
        let Some((joined, earliest, trimmed_handshake)) = joined else {
            return Err(StoreError::Refused(ErrorCode::NoSuchConversation));
        };
        let earliest = from_db_int(earliest, "earliest")?;
        // A device reading on from before what retention kept (and after its join) is told,
        // never handed a silent gap.
        let next = from
            .max(from_db_int(joined, "joined_seq")?)
            .saturating_add(1);
        if direction == Direction::Forward && next < earliest {
            return Ok(Some(ConvPage::Trimmed {
                earliest,
                rejoin: from_db_int(trimmed_handshake, "trimmed_handshake")? >= next,
            }));
        }
        // The page's positions and sizes first: it ends at `limit` messages or at
        // MAX_CONV_PAGE_BYTES (at least one message), so a page of large messages fits a
        // frame and the relay never loads more than it sends.
        let sql = match direction {
            Direction::Forward => {
                "SELECT conv_seq, CAST(LENGTH(message) AS BIGINT) FROM conv_messages
                 WHERE conv_id = $1 AND conv_seq > $2 AND conv_seq > $3
                 ORDER BY conv_seq LIMIT $4"
            }
            Direction::Backward => {
                "SELECT conv_seq, CAST(LENGTH(message) AS BIGINT) FROM conv_messages
                 WHERE conv_id = $1 AND ($2 = 0 OR conv_seq < $2) AND conv_seq > $3
                 ORDER BY conv_seq DESC LIMIT $4"
            }
        };
        let sizes: Vec<(i64, i64)> = on_reader!(&self.db, |pool| {
            sqlx::query_as(sql)
                .bind(id)
                .bind(db_int(from))
                .bind(joined)
                .bind(db_int(limit as u64 + 1))
                .fetch_all(pool)
                .await?
        });
        let mut taken = 0;
        let mut bytes = 0;
        for (_, len) in sizes.iter().take(limit) {
            let len = usize::try_from(*len).unwrap_or(usize::MAX);
            if taken > 0 && bytes + len > MAX_CONV_PAGE_BYTES {
                break;
            }
            bytes += len;
            taken += 1;
        }
        let more = sizes.len() > taken;
        let (Some(first), Some(last)) = (sizes.first(), sizes.get(taken.wrapping_sub(1))) else {
            return Ok(Some(ConvPage::Messages {
                messages: Vec::new(),
                more: false,
            }));
        };
        let (low, high) = (first.0.min(last.0), first.0.max(last.0));
        let order = match direction {
            Direction::Forward => "ASC",
            Direction::Backward => "DESC",
        };
        let sql = format!(
            "SELECT conv_seq, device_id, device_seq, epoch, class, sent_at, message
             FROM conv_messages WHERE conv_id = $1 AND conv_seq BETWEEN $2 AND $3
             ORDER BY conv_seq {order}"
        );
        type Row = (i64, Vec<u8>, i64, i64, i64, i64, Vec<u8>);
        let rows: Vec<Row> = on_reader!(&self.db, |pool| {
            sqlx::query_as(&sql)
                .bind(id)
                .bind(low)
                .bind(high)
                .fetch_all(pool)
                .await?
        });
        let messages = rows
            .into_iter()
            .map(|(seq, dev, dseq, epoch, class, sent_at, message)| {
                let class = u8::try_from(class)
                    .ok()
                    .and_then(MessageClass::from_number)
                    .ok_or_else(|| StoreError::Corrupt(format!("message class {class}")))?;
                Ok(ConvMessage {
                    conv_seq: from_db_int(seq, "conv_seq")?,
                    device: DeviceId(key32(&dev, "device_id")?),
                    device_seq: from_db_int(dseq, "device_seq")?,
                    epoch: from_db_int(epoch, "epoch")?,
                    class,
                    sent_at: from_db_int(sent_at, "sent_at")?,
                    message,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let gap = match direction {
            Direction::Forward => messages.first().is_some_and(|m| m.conv_seq != next),
            Direction::Backward => false,
        };
        if messages.len() != taken || gap {
            return Ok(None);
        }
        Ok(Some(ConvPage::Messages { messages, more }))
    }

    /// A commit or proposal, in a transaction of its own (it locks users after the
    /// conversation: see the module docs on lock order).
    async fn send_handshake(
        &self,
        request: &ConvSendRequest,
        now_ms: u64,
    ) -> Result<SendOutcome, StoreError> {
        let ConvSendRequest { user, device, send } = request;
        let (user, device, conv) = (*user, *device, send.conv);
        check_device_seq(send.device_seq)?;
        if !send.attachments.is_empty() {
            return Err(refused(
                ErrorCode::MlsRefused,
                "commits and proposals refer to no attachment",
            ));
        }
        let mut tx = self.db.begin().await?;
        let Some(row) = lock_conversation(&mut tx, conv).await? else {
            return Err(StoreError::Refused(ErrorCode::NoSuchConversation));
        };
        // A leaf sends anything; another active device of a member user only an external
        // commit that brings it in (a device paired later joins its user's conversations).
        let leaf = active_leaf(&mut tx, conv, device).await? == Some(user);
        let may_join = send.class == MessageClass::Commit
            && member_device(&mut tx, conv, user, device).await?;
        if !leaf && !may_join {
            return Err(StoreError::Refused(ErrorCode::NoSuchConversation));
        }
        if let Some((conv_seq, stored)) = find_sent(&mut tx, conv, device, send.device_seq).await? {
            return if stored == send.message {
                Ok(SendOutcome::Duplicate { conv_seq })
            } else {
                Err(StoreError::Refused(ErrorCode::Conflict))
            };
        }
        let mut effects = None;
        let mut new_state = None;
        match send.class {
            MessageClass::Commit => {
                if send.epoch != row.epoch {
                    return Ok(SendOutcome::Stale {
                        epoch: row.epoch,
                        head: row.head,
                    });
                }
                let validated = validate_commit(&mut tx, conv, &row, (user, device), send).await?;
                if !leaf && !validated.external {
                    return Err(StoreError::Refused(ErrorCode::NoSuchConversation));
                }
                effects = Some(validated);
            }
            MessageClass::Proposal => {
                if send.epoch != row.epoch {
                    return Ok(SendOutcome::Stale {
                        epoch: row.epoch,
                        head: row.head,
                    });
                }
                let mut group = DsGroup::from_bytes(&row.group_state)
                    .map_err(|e| StoreError::Corrupt(format!("group state of {conv}: {e}")))?;
                let proposal = group.process_proposal(&send.message).map_err(mls_refused)?;
                if proposal.sender != (user, device) {
                    return Err(refused(
                        ErrorCode::MlsRefused,
                        "the proposal is signed by another member than the sending device",
                    ));
                }
                // A queued proposal holds every member's application messages until it is
                // committed: only ones that can be committed are taken (a user's own
                // leaving, or an admin's removals), so nobody can jam a group.
                let admin = group.policy().is_some_and(|p| p.admins.contains(&user));
                if !admin && proposal.removes.iter().any(|(owner, _)| *owner != user) {
                    return Err(refused(
                        ErrorCode::MembershipRefused,
                        "only a user's own devices, or the group's admins, propose removals",
                    ));
                }
                new_state = Some(group.to_bytes());
            }
            MessageClass::Content | MessageClass::Control => {
                return Err(StoreError::Corrupt(
                    "an application message sent as a handshake message".into(),
                ));
            }
        }
        let mut row = row;
        let conv_seq = insert_message(&mut tx, &mut row, (user, device), send, now_ms).await?;
        set_head(&mut tx, conv, &row, now_ms).await?;
        let id = conv.0.as_slice();
        if let Some(state) = new_state {
            in_tx!(&mut tx, |conn| {
                sqlx::query("UPDATE conversations SET group_state = $2 WHERE conv_id = $1")
                    .bind(id)
                    .bind(state)
                    .execute(&mut *conn)
                    .await?;
            });
        }
        let mut notified = Notified::default();
        if let Some(effects) = effects {
            // A commit that adds or removes a leaf raises the floor: nothing sealed under an
            // epoch a removed device knew is accepted afterwards, nor anything a new device
            // could not open (it has no key of earlier epochs). Senders that lag are refused,
            // catch up and encrypt again, so no member ever holds a message it cannot read.
            // An external commit counts although the leaves look the same: it replaces the
            // joining device's leaf with one that holds no key of earlier epochs.
            let changed = effects.before != effects.after || effects.external;
            let floor = if changed {
                effects.epoch
            } else {
                row.floor_epoch
            };
            in_tx!(&mut tx, |conn| {
                sqlx::query(
                    "UPDATE conversations
                     SET epoch = $2, group_state = $3, group_info = $4, group_info_epoch = $2,
                         floor_epoch = $5
                     WHERE conv_id = $1",
                )
                .bind(id)
                .bind(db_int(effects.epoch))
                .bind(effects.group_state.as_slice())
                .bind(effects.group_info.as_slice())
                .bind(db_int(floor))
                .execute(&mut *conn)
                .await?;
            });
            mirror_members(&mut tx, conv, &effects.before, &effects.after, conv_seq).await?;
            let (before, after) = (users_of(&effects.before), users_of(&effects.after));
            // Welcomes into the new members' logs, removal notices into the removed ones',
            // in user order (see the module docs on lock order).
            let mut told: Vec<(UserId, Notice)> = Vec::new();
            if let Some(welcome) = &send.welcome {
                for added in &effects.welcomed {
                    told.push((
                        *added,
                        Notice::Welcome {
                            conv,
                            conv_seq,
                            welcome: welcome.to_vec(),
                        },
                    ));
                }
            }
            for removed in before.difference(&after) {
                told.push((*removed, Notice::RemovedFromConversation { conv, conv_seq }));
            }
            told.sort_by_key(|(user, _)| *user);
            for (user, notice) in told {
                tx.lock_user(user.as_bytes()).await?;
                notified
                    .0
                    .push((user, append_notice(&mut tx, user, &notice, now_ms).await?));
            }
        }
        let members = member_users(&mut tx, conv).await?;
        tx.commit().await?;
        Ok(SendOutcome::Stored {
            conv_seq,
            members,
            notified,
        })
    }

    /// Stores a run of application messages in one transaction and answers each into
    /// `answers`; empties `run`. Conversation rows are locked in id order (see the module
    /// docs on lock order); nothing else is locked.
    async fn send_applications(
        &self,
        run: &mut Vec<&ConvSendRequest>,
        answers: &mut Vec<Result<SendOutcome, StoreError>>,
        now_ms: u64,
    ) {
        if run.is_empty() {
            return;
        }
        match self.application_transaction(run, now_ms).await {
            Ok(outcomes) => answers.extend(outcomes),
            Err(error) => answers.extend(run.iter().map(|_| Err(error.clone()))),
        }
        run.clear();
    }

    async fn application_transaction(
        &self,
        run: &[&ConvSendRequest],
        now_ms: u64,
    ) -> Result<Vec<Result<SendOutcome, StoreError>>, StoreError> {
        let mut tx = self.db.begin().await?;
        let mut rows: BTreeMap<ConvId, Option<ConvRow>> = BTreeMap::new();
        for request in run {
            rows.insert(request.send.conv, None);
        }
        for (conv, row) in &mut rows {
            *row = lock_conversation(&mut tx, *conv).await?;
        }
        let mut outcomes = Vec::with_capacity(run.len());
        let mut grown = BTreeSet::new();
        for request in run {
            let row = rows.get_mut(&request.send.conv).and_then(Option::as_mut);
            let outcome = match application_message(&mut tx, row, request, now_ms).await {
                Err(error) if !is_refusal(&error) => return Err(error),
                outcome => outcome,
            };
            if let Ok(SendOutcome::Stored { .. }) = outcome {
                grown.insert(request.send.conv);
            }
            outcomes.push(outcome);
        }
        let mut members = BTreeMap::new();
        for conv in grown {
            if let Some(Some(row)) = rows.get(&conv) {
                set_head(&mut tx, conv, row, now_ms).await?;
            }
            members.insert(conv, member_users(&mut tx, conv).await?);
        }
        tx.commit().await?;
        for (request, outcome) in run.iter().zip(&mut outcomes) {
            if let Ok(SendOutcome::Stored { members: to, .. }) = outcome {
                to.clone_from(&members[&request.send.conv]);
            }
        }
        Ok(outcomes)
    }
}

/// One application message of a run: every refusal is decided before its first write.
async fn application_message(
    tx: &mut Tx,
    row: Option<&mut ConvRow>,
    request: &ConvSendRequest,
    now_ms: u64,
) -> Result<SendOutcome, StoreError> {
    let ConvSendRequest { user, device, send } = request;
    let conv = send.conv;
    check_device_seq(send.device_seq)?;
    let Some(row) = row else {
        return Err(StoreError::Refused(ErrorCode::NoSuchConversation));
    };
    if active_leaf(tx, conv, *device).await? != Some(*user) {
        return Err(StoreError::Refused(ErrorCode::NoSuchConversation));
    }
    if let Some((conv_seq, stored)) = find_sent(tx, conv, *device, send.device_seq).await? {
        return if stored == send.message {
            Ok(SendOutcome::Duplicate { conv_seq })
        } else {
            Err(StoreError::Refused(ErrorCode::Conflict))
        };
    }
    check_application(conv, row, send)?;
    super::attachments::refer(tx, *user, conv, row.head + 1, &send.attachments).await?;
    let conv_seq = insert_message(tx, row, (*user, *device), send, now_ms).await?;
    // Members are filled in once the run is committed.
    Ok(SendOutcome::Stored {
        conv_seq,
        members: Vec::new(),
        notified: Notified::default(),
    })
}

#[async_trait]
impl ConversationStore for SqlStore {
    async fn put_key_packages(
        &self,
        user: UserId,
        device: DeviceId,
        packages: &[KeyPackageRow],
        last_resort: Option<&KeyPackageRow>,
        limits: &ConvLimits,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.db.begin().await?;
        let dev = device.as_bytes().as_slice();
        let count: i64 = in_tx!(&mut tx, |conn| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM key_packages WHERE device_id = $1 AND NOT last_resort",
            )
            .bind(dev)
            .fetch_one(&mut *conn)
            .await?
        });
        let count = from_db_int(count, "count")?;
        if count + packages.len() as u64 > limits.key_packages_per_device {
            return Err(refused(
                ErrorCode::KeyPackageLimit,
                format!(
                    "this device has {count} KeyPackages at the relay; at most {} are kept",
                    limits.key_packages_per_device
                ),
            ));
        }
        if last_resort.is_some() {
            in_tx!(&mut tx, |conn| {
                sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort")
                    .bind(dev)
                    .execute(&mut *conn)
                    .await?;
            });
        }
        let all = packages
            .iter()
            .map(|p| (p, false))
            .chain(last_resort.map(|p| (p, true)));
        // The pool grows by the one-use packages actually inserted (a repeat is not).
        let mut pool = count;
        for (row, is_last_resort) in all {
            let inserted = in_tx!(&mut tx, |conn| {
                // A package uploaded twice is stored once.
                sqlx::query(
                    "INSERT INTO key_packages
                       (device_id, reference, user_id, last_resort, package, uploaded_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (device_id, reference) DO NOTHING",
                )
                .bind(dev)
                .bind(row.reference.as_slice())
                .bind(user.as_bytes().as_slice())
                .bind(is_last_resort)
                .bind(row.package.as_slice())
                .bind(db_int(now_ms))
                .execute(&mut *conn)
                .await?
                .rows_affected()
            });
            if !is_last_resort {
                pool += inserted;
            }
        }
        tx.commit().await?;
        Ok(pool)
    }

    async fn claim_key_packages(
        &self,
        claimer: UserId,
        claimer_device: DeviceId,
        target: UserId,
    ) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        let mut tx = self.db.begin().await?;
        let (me, them) = (claimer.as_bytes().as_slice(), target.as_bytes().as_slice());
        // Contacts in both views, and no block either way (a block ends a contact in the
        // blocker's view only, so the blocked user's view alone would still say contact).
        let allowed: i64 = in_tx!(&mut tx, |conn| {
            sqlx::query_scalar(
                "SELECT
                   (SELECT COUNT(*) FROM contacts WHERE owner = $1 AND peer = $2 AND state = 1)
                 + (SELECT COUNT(*) FROM contacts WHERE owner = $2 AND peer = $1 AND state = 1)
                 - (SELECT COUNT(*) FROM blocks
                    WHERE (owner = $1 AND peer = $2) OR (owner = $2 AND peer = $1))",
            )
            .bind(me)
            .bind(them)
            .fetch_one(&mut *conn)
            .await?
        });
        if allowed != 2 && claimer != target {
            return Err(StoreError::Refused(ErrorCode::NotAContact));
        }
        // A revoked device (whose session outlived the revocation) opens nothing new.
        if !active_devices(&mut tx, claimer)
            .await?
            .contains(&claimer_device)
        {
            return Err(StoreError::UnknownDevice);
        }
        let mut claimed = Vec::new();
        let mut devices = active_devices(&mut tx, target).await?;
        devices.remove(&claimer_device);
        for device in devices {
            let dev = device.as_bytes().as_slice();
            // A one-use package first (deleted as it is read), else the last-resort one.
            let one_use: Option<Vec<u8>> = in_tx!(&mut tx, |conn| {
                sqlx::query_scalar(
                    "DELETE FROM key_packages WHERE device_id = $1 AND reference = (
                       SELECT reference FROM key_packages
                       WHERE device_id = $1 AND NOT last_resort
                       ORDER BY uploaded_at, reference LIMIT 1)
                     RETURNING package",
                )
                .bind(dev)
                .fetch_optional(&mut *conn)
                .await?
            });
            let package = match one_use {
                Some(package) => Some(package),
                None => in_tx!(&mut tx, |conn| {
                    sqlx::query_scalar(
                        "SELECT package FROM key_packages WHERE device_id = $1 AND last_resort",
                    )
                    .bind(dev)
                    .fetch_optional(&mut *conn)
                    .await?
                }),
            };
            if let Some(package) = package {
                claimed.push(ClaimedKeyPackage { device, package });
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn create_conversation(
        &self,
        conv: ConvId,
        group: &DsGroup,
        group_info: &[u8],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let inserted = in_tx!(&mut tx, |conn| {
            sqlx::query(
                "INSERT INTO conversations
                   (conv_id, epoch, head, content_count, created_at, last_activity,
                    group_state, group_info, group_info_epoch)
                 VALUES ($1, $2, 0, 0, $3, $3, $4, $5, $2)
                 ON CONFLICT (conv_id) DO NOTHING",
            )
            .bind(conv.0.as_slice())
            .bind(db_int(group.epoch()))
            .bind(db_int(now_ms))
            .bind(group.to_bytes())
            .bind(group_info)
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        if inserted == 0 {
            return Err(StoreError::Refused(ErrorCode::ConversationExists));
        }
        mirror_members(&mut tx, conv, &[], &group.members(), 0).await?;
        tx.commit().await
    }

    async fn send_batch(
        &self,
        sends: &[ConvSendRequest],
        now_ms: u64,
    ) -> Vec<Result<SendOutcome, StoreError>> {
        let mut answers = Vec::with_capacity(sends.len());
        let mut run: Vec<&ConvSendRequest> = Vec::new();
        for request in sends {
            if !request.send.class.is_handshake() {
                run.push(request);
                continue;
            }
            self.send_applications(&mut run, &mut answers, now_ms).await;
            answers.push(self.send_handshake(request, now_ms).await);
        }
        self.send_applications(&mut run, &mut answers, now_ms).await;
        answers
    }

    async fn read_messages(
        &self,
        conv: ConvId,
        device: DeviceId,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<ConvPage, StoreError> {
        // Retention may delete a prefix between the page's reads: read it again then (the
        // next attempt sees the new `earliest`), never hand out a silent gap.
        for _ in 0..3 {
            if let Some(page) = self.read_page(conv, device, from, direction, limit).await? {
                return Ok(page);
            }
        }
        Err(StoreError::Refused(ErrorCode::Unavailable))
    }

    async fn trim_conversations(
        &self,
        max_age_ms: u64,
        lag_ms: u64,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let old = db_int(now_ms.saturating_sub(max_age_ms));
        let stale = db_int(now_ms.saturating_sub(lag_ms));
        // Conversations with something old enough to delete.
        let convs: Vec<Vec<u8>> = on_reader!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT c.conv_id FROM conversations c
                 WHERE EXISTS (SELECT 1 FROM conv_messages m
                               WHERE m.conv_id = c.conv_id AND m.conv_seq >= c.earliest
                                 AND m.sent_at < $1)",
            )
            .bind(old)
            .fetch_all(pool)
            .await?
        });
        let mut deleted = 0;
        for conv in convs {
            let mut tx = self.db.begin().await?;
            let id = conv.as_slice();
            // The conversation row is locked: sends wait (they never write below the head).
            let row: Option<(i64, i64)> = in_tx!(&mut tx, |conn| {
                sqlx::query_as(
                    "UPDATE conversations SET head = head WHERE conv_id = $1
                     RETURNING earliest, trimmed_handshake",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
            });
            let Some((earliest, trimmed_handshake)) = row else {
                continue;
            };
            // The last message old enough, and the first commit or proposal a device still
            // needs (its cursor has not passed it, and it is not older than the lag).
            let (age_cut, needed): (Option<i64>, Option<i64>) = in_tx!(&mut tx, |conn| {
                sqlx::query_as(
                    "SELECT
                       (SELECT MAX(conv_seq) FROM conv_messages
                        WHERE conv_id = $1 AND sent_at < $2),
                       (SELECT MIN(m.conv_seq) FROM conv_messages m
                        WHERE m.conv_id = $1 AND m.class IN (0, 1) AND m.sent_at >= $3
                          AND m.conv_seq > (SELECT COALESCE(MIN(acked), 0) FROM conv_leaves
                                            WHERE conv_id = $1))",
                )
                .bind(id)
                .bind(old)
                .bind(stale)
                .fetch_one(&mut *conn)
                .await?
            });
            let Some(mut cutoff) = age_cut else {
                continue;
            };
            if let Some(needed) = needed {
                cutoff = cutoff.min(needed - 1);
            }
            if cutoff < earliest {
                continue;
            }
            let (count, handshake): (i64, Option<i64>) = in_tx!(&mut tx, |conn| {
                let found = sqlx::query_as(
                    "SELECT COUNT(*),
                            MAX(CASE WHEN class IN (0, 1) THEN conv_seq END)
                     FROM conv_messages WHERE conv_id = $1 AND conv_seq <= $2",
                )
                .bind(id)
                .bind(cutoff)
                .fetch_one(&mut *conn)
                .await?;
                sqlx::query("DELETE FROM conv_messages WHERE conv_id = $1 AND conv_seq <= $2")
                    .bind(id)
                    .bind(cutoff)
                    .execute(&mut *conn)
                    .await?;
                found
            });
            let trimmed_handshake = handshake.unwrap_or(0).max(trimmed_handshake);
            in_tx!(&mut tx, |conn| {
                sqlx::query(
                    "UPDATE conversations SET earliest = $2, trimmed_handshake = $3
                     WHERE conv_id = $1",
                )
                .bind(id)
                .bind(cutoff + 1)
                .bind(trimmed_handshake)
                .execute(&mut *conn)
                .await?;
            });
            tx.commit().await?;
            deleted += from_db_int(count, "count")?;
        }
        Ok(deleted)
    }

    async fn ack_conversations(&self, cursors: &[ConvCursor]) -> Result<(), StoreError> {
        if cursors.is_empty() {
            return Ok(());
        }
        let dialect = self.dialect();
        let sql = format!(
            "UPDATE conv_leaves SET acked = {greatest}(acked, {least}($3,
                (SELECT head FROM conversations WHERE conv_id = $1)))
             WHERE conv_id = $1 AND device_id = $2 AND EXISTS (
               SELECT 1 FROM devices d WHERE d.user_id = conv_leaves.user_id
                 AND d.device_id = conv_leaves.device_id AND d.revoked_at IS NULL)",
            greatest = dialect.greatest(),
            least = dialect.least(),
        );
        let mut tx = self.db.begin().await?;
        for cursor in cursors {
            in_tx!(&mut tx, |conn| {
                sqlx::query(&sql)
                    .bind(cursor.conv.0.as_slice())
                    .bind(cursor.device.as_bytes().as_slice())
                    .bind(db_int(cursor.seq))
                    .execute(&mut *conn)
                    .await?;
            });
        }
        tx.commit().await
    }

    async fn mark_read(
        &self,
        conv: ConvId,
        user: UserId,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        // The marker moves only forward, to a message that exists; `read_index` is the
        // content count at that message.
        let mut tx = self.db.begin().await?;
        let id = conv.0.as_slice();
        let at: Option<(i64, i64)> = in_tx!(&mut tx, |conn| {
            sqlx::query_as(
                "SELECT conv_seq, content_index FROM conv_messages
                 WHERE conv_id = $1 AND conv_seq <= $2 ORDER BY conv_seq DESC LIMIT 1",
            )
            .bind(id)
            .bind(db_int(seq))
            .fetch_optional(&mut *conn)
            .await?
        });
        let Some((read_seq, read_index)) = at else {
            return Ok(None);
        };
        let moved = in_tx!(&mut tx, |conn| {
            sqlx::query(
                "UPDATE conv_members SET read_seq = $3, read_index = $4
                 WHERE conv_id = $1 AND user_id = $2 AND read_seq < $3",
            )
            .bind(id)
            .bind(user.as_bytes().as_slice())
            .bind(read_seq)
            .bind(read_index)
            .execute(&mut *conn)
            .await?
            .rows_affected()
        });
        tx.commit().await?;
        (moved > 0)
            .then(|| from_db_int(read_seq, "read_seq"))
            .transpose()
    }

    async fn conversations(&self, user: UserId) -> Result<Vec<ConvSummary>, StoreError> {
        let me = user.as_bytes().as_slice();
        type ConvDb = (Vec<u8>, i64, i64, i64, i64);
        let convs: Vec<ConvDb> = on_reader!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT c.conv_id, c.epoch, c.head, c.last_activity,
                        c.content_count - m.read_index
                 FROM conv_members m JOIN conversations c ON c.conv_id = m.conv_id
                 WHERE m.user_id = $1
                 ORDER BY c.last_activity DESC, c.conv_id",
            )
            .bind(me)
            .fetch_all(pool)
            .await?
        });
        type MemberDb = (Vec<u8>, Vec<u8>, i64);
        let members: Vec<MemberDb> = on_reader!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT o.conv_id, o.user_id, o.read_seq
                 FROM conv_members m JOIN conv_members o ON o.conv_id = m.conv_id
                 WHERE m.user_id = $1 ORDER BY o.conv_id, o.user_id",
            )
            .bind(me)
            .fetch_all(pool)
            .await?
        });
        type LeafDb = (Vec<u8>, Vec<u8>, Vec<u8>, i64);
        let leaves: Vec<LeafDb> = on_reader!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT l.conv_id, l.user_id, l.device_id, l.acked
                 FROM conv_members m JOIN conv_leaves l ON l.conv_id = m.conv_id
                 WHERE m.user_id = $1 ORDER BY l.conv_id, l.user_id, l.device_id",
            )
            .bind(me)
            .fetch_all(pool)
            .await?
        });
        let mut by_conv: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, MemberState>> = BTreeMap::new();
        for (conv, member, read) in members {
            let state = MemberState {
                user: UserId(key32(&member, "user_id")?),
                devices: Vec::new(),
                read: from_db_int(read, "read_seq")?,
                delivered: 0,
            };
            by_conv.entry(conv).or_default().insert(member, state);
        }
        for (conv, member, device, acked) in leaves {
            if let Some(state) = by_conv.get_mut(&conv).and_then(|m| m.get_mut(&member)) {
                state.devices.push(DeviceId(key32(&device, "device_id")?));
                state.delivered = state.delivered.max(from_db_int(acked, "acked")?);
            }
        }
        convs
            .into_iter()
            .map(|(conv, epoch, head, last_activity, unread)| {
                let members = by_conv
                    .remove(&conv)
                    .map(|m| m.into_values().collect())
                    .unwrap_or_default();
                let id: [u8; 16] = conv
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("conv_id length".into()))?;
                Ok(ConvSummary {
                    conv: ConvId(id),
                    epoch: from_db_int(epoch, "epoch")?,
                    head: from_db_int(head, "head")?,
                    last_activity: from_db_int(last_activity, "last_activity")?,
                    unread: from_db_int(unread, "unread")?,
                    members,
                })
            })
            .collect()
    }

    async fn conversation_members(
        &self,
        conv: ConvId,
        device: DeviceId,
        unblocked_by: Option<UserId>,
    ) -> Result<Vec<UserId>, StoreError> {
        let sender = unblocked_by.map(|user| user.as_bytes().to_vec());
        let rows: Vec<Vec<u8>> = on_reader!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT m.user_id FROM conv_members m
                 WHERE m.conv_id = $1 AND EXISTS (
                   SELECT 1 FROM conv_leaves l
                   JOIN devices d ON d.user_id = l.user_id AND d.device_id = l.device_id
                   WHERE l.conv_id = $1 AND l.device_id = $2 AND d.revoked_at IS NULL)
                   AND NOT EXISTS (
                   SELECT 1 FROM blocks b WHERE b.owner = m.user_id AND b.peer = $3
                     AND b.owner <> b.peer)
                 ORDER BY m.user_id",
            )
            .bind(conv.0.as_slice())
            .bind(device.as_bytes().as_slice())
            .bind(sender)
            .fetch_all(pool)
            .await?
        });
        if rows.is_empty() {
            return Err(StoreError::Refused(ErrorCode::NoSuchConversation));
        }
        rows.iter()
            .map(|u| Ok(UserId(key32(u, "user_id")?)))
            .collect()
    }

    async fn group_info(
        &self,
        conv: ConvId,
        device: DeviceId,
    ) -> Result<(u64, Vec<u8>), StoreError> {
        let row: Option<(i64, Vec<u8>)> = on_reader!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT c.group_info_epoch, c.group_info FROM conversations c
                 JOIN conv_members m ON m.conv_id = c.conv_id
                 JOIN devices d ON d.user_id = m.user_id
                 WHERE c.conv_id = $1 AND d.device_id = $2
                   AND d.admitted_seqno IS NOT NULL AND d.revoked_at IS NULL",
            )
            .bind(conv.0.as_slice())
            .bind(device.as_bytes().as_slice())
            .fetch_optional(pool)
            .await?
        });
        let Some((epoch, info)) = row else {
            return Err(StoreError::Refused(ErrorCode::NoSuchConversation));
        };
        Ok((from_db_int(epoch, "group_info_epoch")?, info))
    }
}
