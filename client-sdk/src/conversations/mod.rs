//! Conversations: 1:1 and group messaging, end to end encrypted with MLS (`ferry-mls`), one
//! leaf per device; the relay is MLS's Delivery Service (see docs/protocol.md §13).
//!
//! ```text
//!  app ─send_text─▶ encrypt (MLS, current epoch) ─ConvSend─▶ relay: one stream per conversation
//!  relay ─ConvHead─▶ catch_up: ConvFetch from the cursor ─▶ MLS process ─▶ ConversationEvent
//!  relay notice Welcome (in the user's log) ─▶ join ─▶ catch_up
//!  CaughtUp (every session) ─▶ KeyPackages topped up; every conversation read to its head;
//!     this user's devices reconciled: a device not yet in a conversation of its user joins
//!     by external commit, leaves of revoked devices are removed
//! ```
//!
//! Invariants:
//! - The device's MLS state and its conversation book (cursors, the `device_seq` counter,
//!   what it decrypted) are ONE file (`conversations` in the state folder, 0600, replaced
//!   atomically), written after every change: a crash never leaves an MLS state ahead of
//!   its cursor (a message processed twice cannot be opened again).
//! - Messages are delivered to the app once, in `conv_seq` order per conversation: the
//!   cursor moves only past messages processed, and only forward.
//! - A `device_seq` is taken (and written) before the frame leaves, never reused; a send cut
//!   off by a reconnect is sent again with the same bytes and answered with its place.
//! - A commit is merged only once the relay stored it; `ConvStale` discards it, reads the
//!   conversation to its head and makes the commit again.
//! - Every operation of this device's conversations runs under one lock, in order.
//!
//! History for devices that join later: MLS gives a new member nothing from before its
//! join, so each message is also archived in the user's own log (sealed with the data key
//! like every event), by exactly one device of the user: the sender's for what it sends,
//! and for what others send the user's device with the lowest id in the group. A device
//! that replays the log keeps the archived messages (deduplicated by conversation and
//! `conv_seq`) and shows them in [`history`](crate::ClientHandle::history) with its own.
//! Archiving is a setting of the user that all its devices follow
//! ([`ClientHandle::set_archive_history`](crate::ClientHandle::set_archive_history), a record
//! in its log, see [`crate::settings`]); until the user makes it,
//! [`Options::archive_history`](crate::Options::archive_history) decides (on by default). A
//! message is archived or not as the archiving device's setting says when it handles it.
//!
//! Titles: a group's title is an application message (`Control`), so a device reads only
//! titles sent after it joined. Whoever names the group sends it; whoever adds members sends
//! it again after the commit; and when a device joins by itself (external commit), one
//! member that reads the join sends it again: of the devices then in the group, the lowest
//! of the joiner's own user's, else the lowest of all (every member computes the same one).
//!
//! Blocks in groups: the relay cannot filter a group, so each device of a user who blocked
//! another hides that member there. Its messages are processed like anyone's (the group's
//! epoch and the cursor move on; they are kept, and archived) but are not handed to the app
//! nor returned by `history` while the block lasts; its typing is dropped. The filter is
//! applied when reading, so unblocking shows the kept messages in history again.

mod book;
mod ephemeral;

/// A call signal heard in a 1:1 conversation, for the calls layer.
#[derive(Debug)]
pub(crate) struct HeardSignal {
    pub conv: ConvId,
    /// The other user of the conversation.
    pub peer: UserId,
    /// Who sent it: `peer`, or this user (another of its devices).
    pub user: UserId,
    pub device: DeviceId,
    pub signal: CallSignal,
}

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use ferry_mls::{CommitOut, GroupKind, GroupPolicy, Incoming, Member};
use ferry_protocol::conversations::{ConvId, ConvSend, ConvSummary, Direction, MessageClass};
use ferry_protocol::people::Notice;
use ferry_protocol::{ClientFrame, DeviceId, ErrorCode, ServerFrame, UserId};
use rand_core::{OsRng, RngCore};
use tokio::sync::Mutex;

use crate::calls::CallSignal;
use crate::error::ClientError;
use crate::people::{Ask, unexpected};
use crate::settings::Settings;
use crate::state::Keys;
use crate::trust::Trust;
pub use book::{ARCHIVE_PREFIX, Content, StoredMessage, is_archive};
use book::{Book, ConvRecord, Saved, archive_record, read_archive};
use ephemeral::{Ephemeral, Opened};

/// KeyPackages a device keeps at the relay: topped up to [`KEY_PACKAGES_TARGET`] once fewer
/// than [`KEY_PACKAGES_LOW`] are left.
pub const KEY_PACKAGES_TARGET: u64 = 20;
/// See [`KEY_PACKAGES_TARGET`].
pub const KEY_PACKAGES_LOW: u64 = 8;
/// Commits made again after losing to another member's (`ConvStale`).
const COMMIT_ATTEMPTS: usize = 5;
/// Messages asked for per page when catching up.
const PAGE: u16 = 200;
/// A typing indicator nobody sends again ends by itself after this long (the app hears
/// `Typing { typing: false }`).
pub const TYPING_EXPIRY: std::time::Duration = std::time::Duration::from_secs(6);

/// Who among the other members has a message: see
/// [`ClientHandle::receipts`](crate::ClientHandle::receipts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Receipts {
    /// Members a device of which fetched it.
    pub delivered: Vec<UserId>,
    /// Members who read it (their read marker is at or past it).
    pub read: Vec<UserId>,
}

/// What happened in this user's conversations, for the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConversationEvent {
    /// This device is in a conversation now (created here, welcomed, or rejoined).
    Joined {
        /// The conversation.
        conv: ConvId,
        /// 1:1 or group.
        kind: GroupKind,
    },
    /// A message, decrypted (or sent by another device of this user, or the record of a
    /// call this device wrote by itself); never one of a user this user blocks (kept, and
    /// shown in history once unblocked).
    Message(StoredMessage),
    /// Users joined or left the conversation.
    MembersChanged {
        /// The conversation.
        conv: ConvId,
        /// Users now in it who were not.
        added: Vec<UserId>,
        /// Users no longer in it.
        removed: Vec<UserId>,
    },
    /// The conversation's title changed.
    Renamed {
        /// The conversation.
        conv: ConvId,
        /// The new title.
        title: String,
    },
    /// This user is no longer in the conversation (removed, or left).
    Left {
        /// The conversation.
        conv: ConvId,
    },
    /// A member started or stopped typing (never a user this user blocks).
    Typing {
        /// The conversation.
        conv: ConvId,
        /// Who.
        user: UserId,
        /// Started (true) or stopped.
        typing: bool,
    },
    /// A member read up to `seq`.
    ReadBy {
        /// The conversation.
        conv: ConvId,
        /// Who.
        user: UserId,
        /// Its read marker.
        seq: u64,
    },
}

/// One conversation as the app lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationInfo {
    /// The conversation.
    pub conv: ConvId,
    /// Its title, if one was given (groups).
    pub title: Option<String>,
    /// 1:1 or group, with its admins.
    pub policy: Option<GroupPolicy>,
    /// The relay's summary: head, last activity, unread count, members with their markers.
    pub summary: ConvSummary,
}

/// The conversations layer of a client (see the module docs).
pub(crate) struct Conversations {
    me: UserId,
    device: DeviceId,
    trust: Arc<std::sync::RwLock<Trust>>,
    path: PathBuf,
    /// Why the saved state could not be read: every operation fails with it, and the file
    /// is never overwritten.
    broken: Option<String>,
    /// The user's settings: whether messages are archived in its log for devices that
    /// join later.
    settings: Arc<Settings>,
    /// Whether they are until the user says
    /// ([`Options::archive_history`](crate::Options::archive_history)).
    archive_default: bool,
    inner: Mutex<Inner>,
    waiting: std::sync::Mutex<std::collections::VecDeque<ConversationEvent>>,
    /// When each typing indicator heard ends unless refreshed.
    typing: std::sync::Mutex<BTreeMap<(ConvId, UserId), tokio::time::Instant>>,
}

impl std::fmt::Debug for Conversations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversations")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// A change of a group's members, made into a commit at the epoch of each attempt.
enum Change {
    /// Every device of these users that is not in yet.
    Add(Vec<UserId>),
    /// Every device of these users.
    Remove(BTreeSet<UserId>),
    /// These devices (revoked ones of this user).
    RemoveDevices(Vec<(UserId, DeviceId)>),
    /// The proposals queued (a member leaving).
    Proposals,
}

/// The MLS state and the book, saved together.
struct Inner {
    member: Member,
    book: Book,
}

fn mls_error(error: impl std::fmt::Display) -> ClientError {
    ClientError::Mls(error.to_string())
}

fn refused(error: &ferry_protocol::ErrorFrame) -> ClientError {
    ClientError::from_code(error.code, error.message.clone())
}

impl Conversations {
    /// Opens the layer from the state folder (`conversations` file; a fresh state if none).
    /// A file that cannot be read leaves the layer refusing every operation (and the file
    /// untouched), while the rest of the client works.
    pub fn open(
        dir: &std::path::Path,
        keys: Arc<Keys>,
        trust: Arc<std::sync::RwLock<Trust>>,
        settings: Arc<Settings>,
        archive_default: bool,
    ) -> Self {
        let path = dir.join("conversations");
        let fresh = || (Member::new(keys.user, &keys.device), Book::default());
        let (broken, (member, book)) = match Saved::read(&path, &keys.device) {
            Ok(Some(saved)) => (None, saved),
            Ok(None) => (None, fresh()),
            Err(error) => {
                tracing::error!(%error, "the conversations state cannot be read");
                (Some(error.to_string()), fresh())
            }
        };
        Self {
            me: keys.user,
            device: keys.device.id(),
            trust,
            path,
            broken,
            settings,
            archive_default,
            inner: Mutex::new(Inner { member, book }),
            waiting: std::sync::Mutex::default(),
            typing: std::sync::Mutex::default(),
        }
    }

    /// Whether this device archives messages now: the user's setting, read at each message
    /// (a change made on another device applies from the moment this one reads it).
    pub fn archiving(&self) -> bool {
        self.settings
            .archive_history()
            .unwrap_or(self.archive_default)
    }

    fn save(&self, inner: &Inner) -> Result<(), ClientError> {
        if let Some(broken) = &self.broken {
            return Err(ClientError::Mls(format!(
                "this device's conversations state cannot be read ({broken}); nothing is saved"
            )));
        }
        Saved::write(&self.path, &inner.member, &inner.book)
    }

    /// The next event waiting for the app.
    pub fn take_waiting(&self) -> Option<ConversationEvent> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }

    fn queue(&self, events: impl IntoIterator<Item = ConversationEvent>) {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(events);
    }

    // ------------------------------------------------------------------------------------
    // Sessions.

    /// A session caught up: KeyPackages topped up, every conversation read to its head,
    /// this user's devices reconciled in each. Failures are logged: the next session tries
    /// again.
    pub async fn on_caught_up(&self, ask: &dyn Ask) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        self.top_up(ask, &mut inner).await?;
        let listed = self.list_locked(ask).await?;
        for summary in listed {
            let conv = summary.conv;
            let result = if inner.book.convs.contains_key(&conv) {
                self.catch_up(ask, &mut inner, conv).await
            } else {
                self.rejoin(ask, &mut inner, conv).await
            };
            if let Err(error) = result {
                tracing::warn!(%conv, %error, "could not bring a conversation up to date");
                continue;
            }
            if let Err(error) = self.reconcile(ask, &mut inner, conv).await {
                tracing::warn!(%conv, %error, "could not reconcile this user's devices");
            }
        }
        Ok(())
    }

    /// After this user revoked a device: its leaves leave every conversation now (the
    /// relay already refuses it everything; this takes it out of the groups' keys).
    pub async fn after_revocation(&self, ask: &dyn Ask) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        let convs: Vec<ConvId> = inner.book.convs.keys().copied().collect();
        for conv in convs {
            self.catch_up(ask, &mut inner, conv).await?;
            self.reconcile(ask, &mut inner, conv).await?;
        }
        Ok(())
    }

    /// This user blocked `user`: every 1:1 with it ends (its devices are removed, so
    /// nothing it sends there reaches this user). Groups stay: the relay cannot filter a
    /// group, and the block does not remove anyone from one; from now on this device hides
    /// what `user` says there (see [`set_blocked`](Self::set_blocked)).
    pub async fn on_blocked(&self, ask: &dyn Ask, user: UserId) -> Result<(), ClientError> {
        self.set_blocked(user, true).await?;
        let mut inner = self.inner.lock().await;
        let chats: Vec<ConvId> = inner
            .book
            .convs
            .iter()
            .filter(|(_, record)| record.kind == GroupKind::OneToOne)
            .map(|(conv, _)| *conv)
            .collect();
        for conv in chats {
            let with_user = users_in(&inner.member, conv)?.contains(&user);
            if with_user {
                let change = Change::Remove([user].into_iter().collect());
                self.commit(ask, &mut inner, conv, &change).await?;
            }
        }
        Ok(())
    }

    /// Whether this user blocks `user`: while it does, the messages and typing of `user` in
    /// a group shared with it are processed (the group's state and this device's cursor move
    /// on as for anyone's) and its messages kept, but none is handed to the app, and
    /// [`history`](Self::history) leaves them out. Unblocking shows the kept ones again in
    /// history (not as events) and hands the app what `user` says next.
    pub async fn set_blocked(&self, user: UserId, blocked: bool) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        let changed = if blocked {
            inner.book.blocked.insert(user)
        } else {
            inner.book.blocked.remove(&user)
        };
        if changed {
            self.save(&inner)?;
        }
        Ok(())
    }

    /// The users this user blocks, as the relay's contact list says at a catch-up: it
    /// replaces what this device had (a device that missed notices, or was paired after
    /// the log lost them, learns its user's blocks here).
    pub async fn blocked_now(&self, users: BTreeSet<UserId>) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        if inner.book.blocked != users {
            inner.book.blocked = users;
            self.save(&inner)?;
        }
        Ok(())
    }

    /// Uploads KeyPackages when fewer than [`KEY_PACKAGES_LOW`] are left (and the
    /// last-resort package the first time). The MLS state that holds their private keys is
    /// saved before they leave.
    async fn top_up(&self, ask: &dyn Ask, inner: &mut Inner) -> Result<(), ClientError> {
        let count = match ask
            .ask(ClientFrame::KeyPackagesUpload {
                packages: Vec::new(),
                last_resort: None,
            })
            .await?
        {
            ServerFrame::KeyPackageCount { count } => count,
            ServerFrame::Error(e) => return Err(refused(&e)),
            other => return Err(unexpected(&other)),
        };
        if count >= KEY_PACKAGES_LOW && inner.book.last_resort_uploaded {
            return Ok(());
        }
        let n = KEY_PACKAGES_TARGET.saturating_sub(count) as usize;
        let packages = inner.member.key_packages(n).map_err(mls_error)?;
        let last_resort = if inner.book.last_resort_uploaded {
            None
        } else {
            Some(inner.member.last_resort_key_package().map_err(mls_error)?)
        };
        self.save(inner)?;
        let frame = ClientFrame::KeyPackagesUpload {
            packages: packages.into_iter().map(Into::into).collect(),
            last_resort: last_resort.map(Into::into),
        };
        match ask.ask(frame).await? {
            ServerFrame::KeyPackageCount { .. } => {
                inner.book.last_resort_uploaded = true;
                self.save(inner)
            }
            ServerFrame::Error(e) => Err(refused(&e)),
            other => Err(unexpected(&other)),
        }
    }

    // ------------------------------------------------------------------------------------
    // Creating and changing conversations.

    /// Creates a conversation with `users` (all their devices, and this user's other
    /// devices): a 1:1 (`GroupKind::OneToOne`, one other user) or a group this user
    /// administers.
    pub async fn create(
        &self,
        ask: &dyn Ask,
        kind: GroupKind,
        users: &[UserId],
        title: Option<&str>,
    ) -> Result<ConvId, ClientError> {
        if kind == GroupKind::OneToOne && users.len() != 1 {
            return Err(ClientError::Mls(
                "a 1:1 conversation has exactly one other user".into(),
            ));
        }
        let mut inner = self.inner.lock().await;
        let mut id = [0; 16];
        OsRng.fill_bytes(&mut id);
        let conv = ConvId(id);
        let admins = match kind {
            GroupKind::OneToOne => Vec::new(),
            GroupKind::Group => vec![self.me],
        };
        let policy = GroupPolicy { kind, admins };
        let group_info = inner
            .member
            .create_group(&conv.0, policy)
            .map_err(mls_error)?;
        inner.book.convs.insert(conv, ConvRecord::new(kind, 0));
        self.save(&inner)?;
        match ask
            .ask(ClientFrame::ConvCreate { conv, group_info })
            .await?
        {
            ServerFrame::ConvCreated { .. } => {}
            ServerFrame::Error(e) => return Err(refused(&e)),
            other => return Err(unexpected(&other)),
        }
        self.queue([ConversationEvent::Joined { conv, kind }]);
        if let Some(title) = title
            && let Some(record) = inner.book.convs.get_mut(&conv)
        {
            record.title = Some(title.to_owned());
        }
        let mut everyone = vec![self.me];
        everyone.extend(users.iter().filter(|u| **u != self.me));
        self.add_locked(ask, &mut inner, conv, &everyone).await?;
        Ok(conv)
    }

    /// Gives `conv` a title, for every member.
    pub async fn rename(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        title: &str,
    ) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        self.catch_up(ask, &mut inner, conv).await?;
        if let Some(record) = inner.book.convs.get_mut(&conv) {
            record.title = Some(title.to_owned());
        }
        let body = book::Body::Title(title.to_owned());
        self.send_body(ask, &mut inner, conv, MessageClass::Control, &body)
            .await
            .map(|_| ())
    }

    /// Adds every device of `users` to `conv`.
    pub async fn add(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        users: &[UserId],
    ) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        self.catch_up(ask, &mut inner, conv).await?;
        self.add_locked(ask, &mut inner, conv, users).await
    }

    async fn add_locked(
        &self,
        ask: &dyn Ask,
        inner: &mut Inner,
        conv: ConvId,
        users: &[UserId],
    ) -> Result<(), ClientError> {
        self.commit(ask, inner, conv, &Change::Add(users.to_vec()))
            .await?;
        // The new members cannot read what was said before: the title again, for them.
        let title = inner.book.convs.get(&conv).and_then(|r| r.title.clone());
        if let Some(title) = title {
            let body = book::Body::Title(title);
            self.send_body(ask, inner, conv, MessageClass::Control, &body)
                .await?;
        }
        Ok(())
    }

    /// Removes every device of `users` from `conv` (an admin's act in a group).
    pub async fn remove(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        users: &[UserId],
    ) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        self.catch_up(ask, &mut inner, conv).await?;
        let change = Change::Remove(users.iter().copied().collect());
        self.commit(ask, &mut inner, conv, &change).await
    }

    /// This user leaves `conv` with all its devices: this device proposes their removal and
    /// another member commits it (this device hears `Left` then).
    pub async fn leave(&self, ask: &dyn Ask, conv: ConvId) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        self.catch_up(ask, &mut inner, conv).await?;
        let epoch = inner.member.epoch(&conv.0).map_err(mls_error)?;
        let proposals = inner.member.propose_leave(&conv.0).map_err(mls_error)?;
        for proposal in proposals {
            let class = MessageClass::Proposal;
            let answer = self
                .send_one(
                    ask,
                    &mut inner,
                    conv,
                    epoch,
                    class,
                    proposal,
                    None,
                    None,
                    Vec::new(),
                )
                .await?;
            match answer {
                ServerFrame::ConvSent { .. } => {}
                ServerFrame::ConvStale { .. } => {
                    return Err(ClientError::Mls(
                        "the group changed while leaving; try again".into(),
                    ));
                }
                ServerFrame::ConvRefused { error, .. } => return Err(refused(&error)),
                other => return Err(unexpected(&other)),
            }
        }
        Ok(())
    }

    /// The commit for `change` at the group's current epoch; `None` when there is nothing
    /// left to do (the group already is as asked).
    async fn make(
        &self,
        ask: &dyn Ask,
        inner: &mut Inner,
        conv: ConvId,
        change: &Change,
    ) -> Result<Option<CommitOut>, ClientError> {
        let present = present_devices(&inner.member, conv)?;
        let made = match change {
            Change::Add(users) => {
                // Claimed again at every attempt: the devices in the group may have changed.
                let mut packages = Vec::new();
                for user in users {
                    for (device, package) in claim(ask, *user).await? {
                        if !present.contains(&(*user, device)) {
                            packages.push(package);
                        }
                    }
                }
                if packages.is_empty() {
                    return Ok(None);
                }
                inner.member.add(&conv.0, &packages)
            }
            Change::Remove(users) => {
                let leaves: Vec<_> = present
                    .into_iter()
                    .filter(|(user, _)| users.contains(user))
                    .collect();
                if leaves.is_empty() {
                    return Ok(None);
                }
                inner.member.remove(&conv.0, &leaves)
            }
            Change::RemoveDevices(devices) => {
                let leaves: Vec<_> = devices
                    .iter()
                    .filter(|d| present.contains(d))
                    .copied()
                    .collect();
                if leaves.is_empty() {
                    return Ok(None);
                }
                inner.member.remove(&conv.0, &leaves)
            }
            Change::Proposals => {
                // Another member may have committed them first.
                if !inner
                    .member
                    .has_pending_proposals(&conv.0)
                    .map_err(mls_error)?
                {
                    return Ok(None);
                }
                inner.member.commit_pending_proposals(&conv.0)
            }
        };
        made.map(Some).map_err(mls_error)
    }

    /// Makes the commit for `change` (at the group's current epoch), sends it, and merges it
    /// once the relay stored it; on `ConvStale` reads the conversation to its head and makes
    /// it again.
    async fn commit(
        &self,
        ask: &dyn Ask,
        inner: &mut Inner,
        conv: ConvId,
        change: &Change,
    ) -> Result<(), ClientError> {
        // Read to the head first: a device whose commits keep winning would otherwise move
        // its epoch past messages it has not read, beyond the past epochs it keeps keys for
        // (found by mls/tests/interleavings.rs).
        Box::pin(self.catch_up(ask, inner, conv)).await?;
        for _ in 0..COMMIT_ATTEMPTS {
            let epoch = inner.member.epoch(&conv.0).map_err(mls_error)?;
            let Some(out) = self.make(ask, inner, conv, change).await? else {
                return Ok(());
            };
            // The pending commit and the taken device_seq are on disk before the frame leaves.
            let (class, info) = (MessageClass::Commit, Some(out.group_info));
            let answer = self
                .send_one(
                    ask,
                    inner,
                    conv,
                    epoch,
                    class,
                    out.commit,
                    out.welcome,
                    info,
                    Vec::new(),
                )
                .await?;
            match answer {
                ServerFrame::ConvSent { .. } => {
                    let before = users_in(&inner.member, conv)?;
                    inner.member.merge_pending(&conv.0).map_err(mls_error)?;
                    let after = users_in(&inner.member, conv)?;
                    self.save(inner)?;
                    self.queue(members_changed(conv, &before, &after));
                    return Ok(());
                }
                ServerFrame::ConvStale { .. } => {
                    inner.member.discard_pending(&conv.0).map_err(mls_error)?;
                    self.save(inner)?;
                    Box::pin(self.catch_up(ask, inner, conv)).await?;
                }
                ServerFrame::ConvRefused { error, .. } => {
                    inner.member.discard_pending(&conv.0).map_err(mls_error)?;
                    self.save(inner)?;
                    return Err(refused(&error));
                }
                other => return Err(unexpected(&other)),
            }
        }
        Err(ClientError::Mls(format!(
            "other members' commits won {COMMIT_ATTEMPTS} times in a row; try again"
        )))
    }

    /// Sends one MLS message of this device with the next `device_seq`, taken and saved
    /// (with whatever MLS state made the message) before the frame leaves.
    #[allow(clippy::too_many_arguments)]
    async fn send_one(
        &self,
        ask: &dyn Ask,
        inner: &mut Inner,
        conv: ConvId,
        epoch: u64,
        class: MessageClass,
        message: Vec<u8>,
        welcome: Option<Vec<u8>>,
        group_info: Option<Vec<u8>>,
        attachments: Vec<ferry_protocol::attachments::BlobId>,
    ) -> Result<ServerFrame, ClientError> {
        let device_seq = inner.book.take_seq();
        self.save(inner)?;
        let send = ConvSend {
            conv,
            device_seq,
            epoch,
            class,
            message,
            welcome: welcome.map(Into::into),
            group_info: group_info.map(Into::into),
            attachments,
        };
        ask.ask(ClientFrame::ConvSend(Box::new(send))).await
    }

    /// This device is in `conv` now, from the message at `conv_seq` on: its record, saved,
    /// and `Joined` for the app.
    fn enter(&self, inner: &mut Inner, conv: ConvId, conv_seq: u64) -> Result<(), ClientError> {
        let epoch = inner.member.epoch(&conv.0).map_err(mls_error)?;
        let kind = inner
            .member
            .policy(&conv.0)
            .ok()
            .flatten()
            .map_or(GroupKind::Group, |p| p.kind);
        let mut record = ConvRecord::new(kind, epoch);
        record.cursor = conv_seq;
        inner.book.convs.insert(conv, record);
        self.save(inner)?;
        self.queue([ConversationEvent::Joined { conv, kind }]);
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // Messages.

    /// Sends `text` to `conv`; returns its `conv_seq`.
    pub async fn send_text(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        text: &str,
    ) -> Result<u64, ClientError> {
        self.send_content(ask, conv, Content::Text(text.to_owned()))
            .await
            .map(|sent| sent.conv_seq)
    }

    /// Sends the record of a call this device placed (see [`crate::calls`]); a missed call
    /// counts as unread. The app did not write it, so it hears of it as a message too.
    pub async fn send_call_record(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        record: crate::calls::CallRecord,
    ) -> Result<u64, ClientError> {
        let sent = self.send_content(ask, conv, Content::Call(record)).await?;
        let conv_seq = sent.conv_seq;
        self.queue([ConversationEvent::Message(sent)]);
        Ok(conv_seq)
    }

    /// Sends a file already uploaded (see [`crate::attachments`]); the message refers to
    /// its blob, which the conversation's members may then fetch.
    pub async fn send_file_ref(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        file: crate::attachments::FileRef,
    ) -> Result<u64, ClientError> {
        self.send_content(ask, conv, Content::File(file))
            .await
            .map(|sent| sent.conv_seq)
    }

    /// Sends a message and keeps it (and archives it) as sent; returns it.
    async fn send_content(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        content: Content,
    ) -> Result<StoredMessage, ClientError> {
        let mut inner = self.inner.lock().await;
        let (class, body) = match &content {
            Content::Text(text) => (MessageClass::Content, book::Body::Text(text.clone())),
            Content::Call(record) => (record.class(), book::Body::Call(record.clone())),
            Content::File(file) => (MessageClass::Content, book::Body::File(file.clone())),
        };
        let conv_seq = self.send_body(ask, &mut inner, conv, class, &body).await?;
        let stored = StoredMessage {
            conv,
            conv_seq,
            user: self.me,
            device: self.device,
            sent_at: now_ms(),
            content,
        };
        if let Some(record) = inner.book.convs.get_mut(&conv) {
            record.keep(stored.clone());
        }
        self.save(&inner)?;
        if self.archiving() {
            ask.archive(archive_record(&stored)).await;
        }
        Ok(stored)
    }

    /// Encrypts and sends one application message; returns its `conv_seq`. An epoch the
    /// relay no longer takes (members changed) is caught up and the message encrypted again.
    async fn send_body(
        &self,
        ask: &dyn Ask,
        inner: &mut Inner,
        conv: ConvId,
        class: MessageClass,
        body: &book::Body,
    ) -> Result<u64, ClientError> {
        if !inner.book.convs.contains_key(&conv) {
            return Err(ClientError::from_code(
                ErrorCode::NoSuchConversation,
                ErrorCode::NoSuchConversation.description(),
            ));
        }
        let attachments = body.attachments();
        let body = body.encode();
        for attempt in 0..2 {
            let epoch = inner.member.epoch(&conv.0).map_err(mls_error)?;
            let message = inner.member.encrypt(&conv.0, &body).map_err(mls_error)?;
            let answer = self
                .send_one(
                    ask,
                    inner,
                    conv,
                    epoch,
                    class,
                    message,
                    None,
                    None,
                    attachments.clone(),
                )
                .await?;
            match answer {
                ServerFrame::ConvSent { conv_seq, .. } => return Ok(conv_seq),
                ServerFrame::ConvRefused { error, .. }
                    if error.code == ErrorCode::MlsRefused && attempt == 0 =>
                {
                    self.catch_up(ask, inner, conv).await?;
                }
                ServerFrame::ConvRefused { error, .. } => return Err(refused(&error)),
                other => return Err(unexpected(&other)),
            }
        }
        Err(ClientError::Mls("the message was refused twice".into()))
    }

    /// The messages of `conv` this device holds, oldest first: up to `limit` before
    /// `before` (0: the newest).
    pub async fn history(&self, conv: ConvId, before: u64, limit: usize) -> Vec<StoredMessage> {
        let inner = self.inner.lock().await;
        let mut all: BTreeMap<u64, &StoredMessage> = BTreeMap::new();
        let archived = inner.book.archive.get(&conv).into_iter().flatten();
        let own = inner
            .book
            .convs
            .get(&conv)
            .into_iter()
            .flat_map(|r| &r.messages);
        for message in archived.chain(own) {
            all.insert(message.conv_seq, message);
        }
        // A blocked user's messages stay in the book, hidden while the block lasts.
        let older: Vec<StoredMessage> = all
            .into_values()
            .filter(|m| !inner.book.blocked.contains(&m.user))
            .filter(|m| before == 0 || m.conv_seq < before)
            .cloned()
            .collect();
        let skip = older.len().saturating_sub(limit);
        older.into_iter().skip(skip).collect()
    }

    /// Moves this user's read marker in `conv` to `seq` (every member is told).
    pub async fn mark_read(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        seq: u64,
    ) -> Result<(), ClientError> {
        ask.tell(ClientFrame::ConvRead { conv, seq }).await
    }

    /// Tells the members' online devices this user started or stopped typing (sealed under
    /// a key exported from the current epoch).
    pub async fn typing(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        typing: bool,
    ) -> Result<(), ClientError> {
        self.send_ephemeral(ask, conv, &Ephemeral::Typing(typing))
            .await
    }

    /// Seals and sends a call signal to the members' online devices.
    pub(crate) async fn signal_call(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        signal: CallSignal,
    ) -> Result<(), ClientError> {
        self.send_ephemeral(ask, conv, &Ephemeral::Call(signal))
            .await
    }

    async fn send_ephemeral(
        &self,
        ask: &dyn Ask,
        conv: ConvId,
        ephemeral: &Ephemeral,
    ) -> Result<(), ClientError> {
        let body = {
            let inner = self.inner.lock().await;
            ephemeral::seal(&inner.member, conv, ephemeral)?
        };
        ask.tell(ClientFrame::ConvEphemeral { conv, body }).await
    }

    /// The other user of the 1:1 conversation `conv` (calls are 1:1).
    pub async fn one_to_one_peer(&self, conv: ConvId) -> Result<UserId, ClientError> {
        let inner = self.inner.lock().await;
        let kind = inner.book.convs.get(&conv).map(|record| record.kind);
        match kind {
            None => Err(ClientError::from_code(
                ErrorCode::NoSuchConversation,
                ErrorCode::NoSuchConversation.description(),
            )),
            Some(GroupKind::OneToOne) => one_to_one_peer(&inner.member, conv, self.me),
            Some(GroupKind::Group) => Err(ClientError::Call(
                "calls are between the two users of a 1:1 conversation".into(),
            )),
        }
    }

    /// This user's conversations with the relay's summaries.
    pub async fn list(&self, ask: &dyn Ask) -> Result<Vec<ConversationInfo>, ClientError> {
        let listed = self.list_locked(ask).await?;
        let inner = self.inner.lock().await;
        Ok(listed
            .into_iter()
            .map(|summary| ConversationInfo {
                conv: summary.conv,
                title: inner
                    .book
                    .convs
                    .get(&summary.conv)
                    .and_then(|r| r.title.clone()),
                policy: inner.member.policy(&summary.conv.0).ok().flatten(),
                summary,
            })
            .collect())
    }

    async fn list_locked(&self, ask: &dyn Ask) -> Result<Vec<ConvSummary>, ClientError> {
        match ask.ask(ClientFrame::ConvList).await? {
            ServerFrame::Conversations { convs, .. } => Ok(convs),
            ServerFrame::Error(e) => Err(refused(&e)),
            other => Err(unexpected(&other)),
        }
    }

    // ------------------------------------------------------------------------------------
    // What the relay says.

    /// When the next typing indicator ends unless refreshed.
    pub fn next_typing_expiry(&self) -> Option<tokio::time::Instant> {
        self.typing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .min()
            .copied()
    }

    /// Ends the typing indicators whose time passed (`Typing { typing: false }`).
    pub fn expire_typing(&self, now: tokio::time::Instant) {
        let ended: Vec<(ConvId, UserId)> = {
            let mut deadlines = self
                .typing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ended: Vec<_> = deadlines
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(key, _)| *key)
                .collect();
            for key in &ended {
                deadlines.remove(key);
            }
            ended
        };
        self.queue(
            ended
                .into_iter()
                .map(|(conv, user)| ConversationEvent::Typing {
                    conv,
                    user,
                    typing: false,
                }),
        );
    }

    /// A log event another device of this user wrote, if it archives a conversation
    /// message: kept for [`history`](Self::history). Returns whether it was one.
    pub async fn on_log_event(&self, plaintext: &[u8]) -> Result<bool, ClientError> {
        let Some(message) = read_archive(plaintext) else {
            return Ok(false);
        };
        let mut inner = self.inner.lock().await;
        let kept = inner.book.archive.entry(message.conv).or_default();
        if let Err(at) = kept.binary_search_by_key(&message.conv_seq, |m| m.conv_seq) {
            kept.insert(at, message);
            self.save(&inner)?;
        }
        Ok(true)
    }

    /// A frame the relay pushed; a call signal is returned for the calls layer.
    pub async fn on_push(
        &self,
        ask: &dyn Ask,
        frame: ServerFrame,
    ) -> Result<Option<HeardSignal>, ClientError> {
        match frame {
            ServerFrame::ConvHead { conv, head } => {
                let mut inner = self.inner.lock().await;
                let behind = inner
                    .book
                    .convs
                    .get(&conv)
                    .is_some_and(|record| record.cursor < head);
                if behind {
                    self.catch_up(ask, &mut inner, conv).await?;
                }
                Ok(None)
            }
            ServerFrame::ConvReadBy { conv, user, seq } => {
                self.queue([ConversationEvent::ReadBy { conv, user, seq }]);
                Ok(None)
            }
            ServerFrame::ConvEphemeral {
                conv,
                user,
                from,
                body,
            } => {
                let mut inner = self.inner.lock().await;
                if inner.book.blocked.contains(&user) {
                    // The relay drops a blocked user's ephemerals for its blocker already;
                    // a relay that does not is not believed either.
                    return Ok(None);
                }
                let mut opened = ephemeral::open(&inner.member, conv, &body);
                if opened == Opened::Ahead && inner.book.convs.contains_key(&conv) {
                    // Sealed after a commit this device has not read yet (a call signal
                    // must not be lost to it): read the conversation, then open again.
                    self.catch_up(ask, &mut inner, conv).await?;
                    opened = ephemeral::open(&inner.member, conv, &body);
                }
                let typing = match opened {
                    Opened::Body(Ephemeral::Typing(typing)) => typing,
                    Opened::Body(Ephemeral::Call(signal)) => {
                        let kind = inner.book.convs.get(&conv).map(|record| record.kind);
                        if kind != Some(GroupKind::OneToOne) {
                            return Ok(None);
                        }
                        let peer = one_to_one_peer(&inner.member, conv, self.me)?;
                        return Ok(Some(HeardSignal {
                            conv,
                            peer,
                            user,
                            device: from,
                            signal,
                        }));
                    }
                    Opened::Ahead | Opened::Unreadable => return Ok(None),
                };
                {
                    let mut deadlines = self
                        .typing
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let was = if typing {
                        deadlines
                            .insert((conv, user), tokio::time::Instant::now() + TYPING_EXPIRY)
                            .is_some()
                    } else {
                        deadlines.remove(&(conv, user)).is_some()
                    };
                    // A refresh of a running indicator says nothing new.
                    if typing != was {
                        self.queue([ConversationEvent::Typing { conv, user, typing }]);
                    }
                }
                Ok(None)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// A relay notice about conversations, from this user's log.
    pub async fn on_notice(&self, ask: &dyn Ask, notice: Notice) -> Result<(), ClientError> {
        let mut inner = self.inner.lock().await;
        match notice {
            Notice::Welcome {
                conv,
                conv_seq,
                welcome,
            } => {
                if inner.book.convs.contains_key(&conv) {
                    // Another device of this user was welcomed (this one is a member already).
                    return Ok(());
                }
                match inner.member.join(&welcome) {
                    Ok(_) => {}
                    Err(error) => {
                        // Not for this device (it was added by another commit, or is not
                        // named): it joins on its own at the next catch-up if it belongs.
                        tracing::debug!(%conv, %error, "a Welcome this device cannot open");
                        return Ok(());
                    }
                }
                self.enter(&mut inner, conv, conv_seq)?;
                self.catch_up(ask, &mut inner, conv).await
            }
            Notice::RemovedFromConversation { conv, .. } => {
                if inner.book.convs.remove(&conv).is_some() {
                    let _ = inner.member.forget(&conv.0);
                    self.save(&inner)?;
                    self.queue([ConversationEvent::Left { conv }]);
                }
                Ok(())
            }
            other => Err(ClientError::Protocol(format!(
                "not a conversation notice: {other:?}"
            ))),
        }
    }

    /// Reads `conv` from this device's cursor to the head, processing every message in
    /// order; saves after each page and acknowledges the cursor.
    async fn catch_up(
        &self,
        ask: &dyn Ask,
        inner: &mut Inner,
        conv: ConvId,
    ) -> Result<(), ClientError> {
        loop {
            let Some(record) = inner.book.convs.get(&conv) else {
                return Ok(());
            };
            let frame = ClientFrame::ConvFetch {
                conv,
                from: record.cursor,
                direction: Direction::Forward,
                limit: PAGE,
            };
            let (messages, more) = match ask.ask(frame).await? {
                ServerFrame::ConvMessages { messages, more, .. } => (messages, more),
                ServerFrame::ConvTrimmed {
                    earliest, rejoin, ..
                } => {
                    if rejoin {
                        // A commit this device had not read is gone: it rejoins by external
                        // commit and reads on from there (what it held stays in its history).
                        tracing::info!(%conv, "retention passed this device; rejoining");
                        let kept = inner.book.convs.remove(&conv);
                        let _ = inner.member.forget(&conv.0);
                        self.save(inner)?;
                        let rejoined = Box::pin(self.rejoin(ask, inner, conv)).await;
                        if let (Some(kept), Some(record)) = (kept, inner.book.convs.get_mut(&conv))
                        {
                            for message in kept.messages {
                                record.keep(message);
                            }
                            record.title = record.title.take().or(kept.title);
                        }
                        self.save(inner)?;
                        return rejoined;
                    }
                    // Only application messages expired: read on from what is kept.
                    if let Some(record) = inner.book.convs.get_mut(&conv) {
                        record.cursor = earliest - 1;
                    }
                    self.save(inner)?;
                    continue;
                }
                ServerFrame::Error(e) if e.code == ErrorCode::NoSuchConversation => {
                    // Removed (the notice may still be on its way): nothing more to read.
                    return Ok(());
                }
                ServerFrame::Error(e) => return Err(refused(&e)),
                other => return Err(unexpected(&other)),
            };
            let mut events = Vec::new();
            // Every text read, shown or not (the archive keeps a blocked user's too).
            let mut texts = Vec::new();
            for message in messages {
                let Some(record) = inner.book.convs.get(&conv) else {
                    break;
                };
                if message.conv_seq != record.cursor + 1 {
                    return Err(ClientError::Protocol(format!(
                        "the relay skipped from {} to {} in {conv}",
                        record.cursor, message.conv_seq
                    )));
                }
                let joined_epoch = record.joined_epoch;
                let result = if message.device == self.device || message.epoch < joined_epoch {
                    // Its own messages are known (commits merged, texts kept when sent);
                    // messages of epochs before this device joined cannot be opened.
                    None
                } else {
                    let before = users_in(&inner.member, conv)?;
                    match inner.member.process(&conv.0, &message.message) {
                        Ok(incoming) => Some((incoming, before)),
                        Err(error) => {
                            tracing::warn!(%conv, seq = message.conv_seq, %error, "a conversation message could not be processed; skipped");
                            None
                        }
                    }
                };
                let record = inner.book.convs.get_mut(&conv).ok_or(ClientError::Closed)?;
                record.cursor = message.conv_seq;
                match result {
                    Some((Incoming::Application { plaintext, .. }, _))
                        if matches!(book::Body::decode(&plaintext), Some(book::Body::Title(_))) =>
                    {
                        if let Some(book::Body::Title(title)) = book::Body::decode(&plaintext)
                            && record.title.as_ref() != Some(&title)
                        {
                            record.title = Some(title.clone());
                            events.push(ConversationEvent::Renamed { conv, title });
                        }
                    }
                    Some((Incoming::Application { plaintext, sender }, _)) => {
                        let content = match book::Body::decode(&plaintext) {
                            Some(book::Body::Text(text)) => Some(Content::Text(text)),
                            Some(book::Body::Call(record)) => Some(Content::Call(record)),
                            Some(book::Body::File(file)) => Some(Content::File(file)),
                            // Titles are handled above; unknown bodies are skipped.
                            Some(book::Body::Title(_)) | None => None,
                        };
                        if let Some(content) = content {
                            let stored = StoredMessage {
                                conv,
                                conv_seq: message.conv_seq,
                                user: sender.0,
                                device: sender.1,
                                sent_at: message.sent_at,
                                content,
                            };
                            record.keep(stored.clone());
                            // A blocked user's message is kept (unblocking shows it in
                            // history), never handed to the app.
                            if !inner.book.blocked.contains(&sender.0) {
                                events.push(ConversationEvent::Message(stored.clone()));
                            }
                            texts.push(stored);
                        }
                    }
                    Some((
                        Incoming::Commit {
                            removed_us: true, ..
                        },
                        _,
                    )) => {
                        inner.book.convs.remove(&conv);
                        let _ = inner.member.forget(&conv.0);
                        events.push(ConversationEvent::Left { conv });
                        break;
                    }
                    Some((Incoming::Commit { sender, added, .. }, before)) => {
                        let present = present_devices(&inner.member, conv)?;
                        let after = present.iter().map(|(user, _)| *user).collect();
                        events.extend(members_changed(conv, &before, &after));
                        // A device that joined by itself (an external commit) cannot read
                        // the title sent before: one member sends it again.
                        if added.contains(&sender)
                            && title_sender(&present, sender) == Some((self.me, self.device))
                        {
                            record.title_owed = record.title.is_some();
                        }
                    }
                    Some((Incoming::Proposal { .. }, _)) => {
                        // A member leaving: committed by whoever reads it first (the relay
                        // takes one commit per epoch; the others catch up).
                        record.leave_proposed = true;
                    }
                    Some(_) | None => {}
                }
            }
            self.save(inner)?;
            // This user's device with the lowest id in the group archives what others said.
            let archiver = present_devices(&inner.member, conv)
                .ok()
                .and_then(|leaves| leaves.into_iter().find(|(user, _)| *user == self.me))
                .map(|(_, device)| device);
            if archiver == Some(self.device) && self.archiving() {
                for message in texts.iter().filter(|m| m.user != self.me) {
                    ask.archive(archive_record(message)).await;
                }
            }
            self.queue(events);
            if let Some(record) = inner.book.convs.get(&conv) {
                let seq = record.cursor;
                // A hint for delivery state; lost with the connection at worst.
                let _ = ask.tell(ClientFrame::ConvAck { conv, seq }).await;
            }
            if !more {
                break;
            }
        }
        let proposed = inner
            .book
            .convs
            .get_mut(&conv)
            .map(|record| std::mem::take(&mut record.leave_proposed))
            .unwrap_or(false);
        if proposed {
            Box::pin(self.commit(ask, inner, conv, &Change::Proposals)).await?;
        }
        let title = inner
            .book
            .convs
            .get_mut(&conv)
            .filter(|record| record.title_owed)
            .and_then(|record| {
                record.title_owed = false;
                record.title.clone()
            });
        if let Some(title) = title {
            // At the head's epoch, which the device that joined can open.
            let body = book::Body::Title(title);
            let sent = Box::pin(self.send_body(ask, inner, conv, MessageClass::Control, &body));
            if let Err(error) = sent.await {
                // Not this caller's failure: the device that joined lacks only the title.
                tracing::warn!(%conv, %error, "could not send the title again for a device that joined");
            }
        }
        Ok(())
    }

    /// Joins `conv`, a conversation of this user this device is not in (it was paired
    /// later, or lost its state), by external commit from the relay's GroupInfo.
    async fn rejoin(
        &self,
        ask: &dyn Ask,
        inner: &mut Inner,
        conv: ConvId,
    ) -> Result<(), ClientError> {
        for _ in 0..COMMIT_ATTEMPTS {
            let (epoch, group_info) = match ask.ask(ClientFrame::GroupInfoFetch { conv }).await? {
                ServerFrame::GroupInfo {
                    epoch, group_info, ..
                } => (epoch, group_info),
                ServerFrame::Error(e) => return Err(refused(&e)),
                other => return Err(unexpected(&other)),
            };
            let (_, out) = inner.member.join_external(&group_info).map_err(mls_error)?;
            let (class, info) = (MessageClass::Commit, Some(out.group_info));
            let answer = self
                .send_one(
                    ask,
                    inner,
                    conv,
                    epoch,
                    class,
                    out.commit,
                    None,
                    info,
                    Vec::new(),
                )
                .await?;
            match answer {
                ServerFrame::ConvSent { conv_seq, .. } => {
                    // External commits are merged when made.
                    self.enter(inner, conv, conv_seq)?;
                    return self.catch_up(ask, inner, conv).await;
                }
                ServerFrame::ConvStale { .. } => {
                    let _ = inner.member.forget(&conv.0);
                    self.save(inner)?;
                }
                ServerFrame::ConvRefused { error, .. } => {
                    let _ = inner.member.forget(&conv.0);
                    self.save(inner)?;
                    return Err(refused(&error));
                }
                other => return Err(unexpected(&other)),
            }
        }
        Err(ClientError::Mls(format!(
            "could not rejoin {conv}: other commits won {COMMIT_ATTEMPTS} times"
        )))
    }

    /// Removes the leaves of this user's revoked devices from `conv` (its chain's word).
    async fn reconcile(
        &self,
        ask: &dyn Ask,
        inner: &mut Inner,
        conv: ConvId,
    ) -> Result<(), ClientError> {
        let revoked: Vec<(UserId, DeviceId)> = {
            let trust = self
                .trust
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            present_devices(&inner.member, conv)?
                .into_iter()
                .filter(|(user, device)| *user == self.me && !trust.chain().is_active(device))
                .collect()
        };
        if revoked.is_empty() {
            return Ok(());
        }
        self.commit(ask, inner, conv, &Change::RemoveDevices(revoked))
            .await
    }
}

/// One KeyPackage per device of `user` (this device's own left out by the relay).
async fn claim(ask: &dyn Ask, user: UserId) -> Result<Vec<(DeviceId, Vec<u8>)>, ClientError> {
    match ask.ask(ClientFrame::KeyPackagesClaim { user }).await? {
        ServerFrame::KeyPackagesClaimed { packages, .. } => Ok(packages
            .into_iter()
            .map(|p| (p.device, p.package))
            .collect()),
        ServerFrame::Error(e) => Err(refused(&e)),
        other => Err(unexpected(&other)),
    }
}

fn present_devices(
    member: &Member,
    conv: ConvId,
) -> Result<BTreeSet<(UserId, DeviceId)>, ClientError> {
    Ok(member
        .members(&conv.0)
        .map_err(mls_error)?
        .into_iter()
        .collect())
}

/// Who sends the title again after `joined` joined by itself: of the devices now in the
/// group but `joined`, the lowest of its own user's (the user pairing a device is likely
/// online), else the lowest of all. Every member reads the same group, so all agree.
fn title_sender(
    present: &BTreeSet<(UserId, DeviceId)>,
    joined: (UserId, DeviceId),
) -> Option<(UserId, DeviceId)> {
    let others = || present.iter().filter(move |leaf| **leaf != joined);
    others()
        .find(|(user, _)| *user == joined.0)
        .or_else(|| others().next())
        .copied()
}

/// The other user of a 1:1 conversation.
fn one_to_one_peer(member: &Member, conv: ConvId, me: UserId) -> Result<UserId, ClientError> {
    users_in(member, conv)?
        .into_iter()
        .find(|user| *user != me)
        .ok_or_else(|| ClientError::Call("the other user left this conversation".into()))
}

fn users_in(member: &Member, conv: ConvId) -> Result<BTreeSet<UserId>, ClientError> {
    Ok(present_devices(member, conv)?
        .into_iter()
        .map(|(user, _)| user)
        .collect())
}

fn members_changed(
    conv: ConvId,
    before: &BTreeSet<UserId>,
    after: &BTreeSet<UserId>,
) -> Option<ConversationEvent> {
    let added: Vec<_> = after.difference(before).copied().collect();
    let removed: Vec<_> = before.difference(after).copied().collect();
    (!added.is_empty() || !removed.is_empty()).then_some(ConversationEvent::MembersChanged {
        conv,
        added,
        removed,
    })
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_title_is_sent_again_by_the_joiners_own_lowest_device_else_the_lowest_of_all() {
        let user = |n: u8| UserId([n; 32]);
        let device = |n: u8| ferry_protocol::DeviceKey::from_secret_bytes(&[n; 32]).id();
        let mut ids = [device(1), device(2), device(3)];
        ids.sort();
        let [low, mid, high] = ids;
        let joined = (user(2), high);
        let mut present: BTreeSet<_> = [(user(1), low), (user(2), mid), joined].into();
        assert_eq!(title_sender(&present, joined), Some((user(2), mid)));
        present.remove(&(user(2), mid));
        assert_eq!(title_sender(&present, joined), Some((user(1), low)));
        present.remove(&(user(1), low));
        assert_eq!(title_sender(&present, joined), None, "alone in the group");
    }
}
