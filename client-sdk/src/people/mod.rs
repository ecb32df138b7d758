//! People: handles, contacts, blocks, profiles and presence, as an app sees them.
//!
//! The relay keeps who is whose contact and writes a notice into each user's log when that
//! changes; [`Client::next_event`](crate::Client::next_event) turns each notice into a
//! [`PeopleEvent`], in log order, once every device of the user has it (including devices
//! offline at the time: the log is replayed). What the relay cannot be trusted with, this
//! layer checks itself:
//!
//! - **Who sent a request.** An intro is signed by a device of the sender; the sender's
//!   device chain is fetched and verified from the sender's user key (its user id), and the
//!   signing device must be active in it. Otherwise the event is
//!   [`PeopleEvent::Unverified`] and nothing is kept.
//! - **Identity pinning.** The first verified chain of each other user is pinned (its length
//!   and last link hash) in the state folder (`people`). Every later chain must extend the
//!   pinned one: one that does not, or a handle that now names another user, is surfaced as
//!   [`PeopleEvent::IdentityChanged`] and never accepted silently; a chain that grew by a
//!   link the user key signed (the contact used its recovery key, so its devices may be new)
//!   is surfaced too, then pinned. [`Contact::safety_number`] lets two people compare keys.
//! - **Profiles.** Sealed with the owner's profile key, which reaches contacts inside intros;
//!   a profile older than one this device opened is refused.
//!
//! Presence comes from the relay as per-node hints; this layer folds them into one
//! online/offline state per contact ([`PeopleEvent::PresenceChanged`]).

mod book;
mod safety;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ferry_protocol::people::{
    CardBody, ContactInfo, ContactState, Intro, IntroBody, IntroError, Notice, ProfileBody,
    ProfileKey,
};
use ferry_protocol::{Chain, ClientFrame, DeviceId, LinkBody, ServerFrame, Signer, UserId};
use rand_core::OsRng;

pub(crate) use book::Book;
pub use safety::safety_number;

use crate::error::{ClientError, PeopleError};
use crate::state::Keys;
use crate::trust::Trust;

/// What changed about the people around this user.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeopleEvent {
    /// `from` asks to become a contact. `note` is `None` when this device cannot open it (it
    /// was paired after the request was sealed).
    RequestReceived {
        /// The user asking (its device chain verified and pinned).
        from: UserId,
        /// Its note.
        note: Option<String>,
    },
    /// This user asked `to` (on this device or another of the user's).
    RequestSent {
        /// The user asked.
        to: UserId,
    },
    /// This user and `user` are contacts now.
    Accepted {
        /// The contact.
        user: UserId,
    },
    /// The request between this user and `user` was declined.
    Declined {
        /// The other user.
        user: UserId,
        /// Whether this user declined.
        by_me: bool,
    },
    /// The request between this user and `user` was withdrawn.
    Cancelled {
        /// The other user.
        user: UserId,
        /// Whether this user withdrew it.
        by_me: bool,
    },
    /// This user and `user` are no longer contacts.
    Removed {
        /// The other user.
        user: UserId,
        /// Whether this user removed the contact.
        by_me: bool,
    },
    /// This user blocked `user`.
    Blocked {
        /// The blocked user.
        user: UserId,
    },
    /// This user unblocked `user`.
    Unblocked {
        /// The unblocked user.
        user: UserId,
    },
    /// This user's handle changed.
    HandleChanged {
        /// The new handle, `name.NN` (`None`: none).
        handle: Option<String>,
    },
    /// A profile changed (a contact's, or this user's own).
    ProfileChanged {
        /// Whose profile.
        user: UserId,
        /// The profile, opened.
        profile: ProfileBody,
    },
    /// Whether this user shows presence (and so sees its contacts').
    PresenceVisibility {
        /// Shown or hidden.
        visible: bool,
    },
    /// A contact came online or went offline.
    PresenceChanged {
        /// The contact.
        user: UserId,
        /// Whether it has a session with the relay.
        online: bool,
        /// When it was last online (coarse), when known.
        last_seen: Option<u64>,
    },
    /// The identity of `user` is not the one this device pinned (see [`IdentityChange`]).
    IdentityChanged {
        /// The user.
        user: UserId,
        /// What changed.
        change: IdentityChange,
    },
    /// Something about `user` did not verify (an intro not signed by one of its devices, a
    /// chain that does not verify): nothing of it was kept.
    Unverified {
        /// The user it claimed to come from.
        user: UserId,
        /// Why.
        reason: String,
    },
}

/// How another user's identity changed (see [`PeopleEvent::IdentityChanged`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityChange {
    /// The chain served now does not extend the pinned one: the relay (or someone) shows a
    /// different history of the user's devices. Refused; the pin is kept.
    ChainMismatch,
    /// The user's chain grew by a link signed with its recovery key (`seqno`): it recovered
    /// its account, and its devices may be new. Accepted and pinned; worth a word with them.
    Recovered {
        /// The position of that link.
        seqno: u64,
    },
    /// The handle this device knew the user by now names another user (or nobody).
    HandleMoved {
        /// The handle.
        handle: String,
        /// Whom it names now.
        now: Option<UserId>,
    },
}

/// One entry of [`ClientHandle::contacts`](crate::ClientHandle::contacts).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Contact {
    /// The other user.
    pub user: UserId,
    /// Where this user stands with them.
    pub state: ContactState,
    /// The handle this device found them by, if it did.
    pub handle: Option<String>,
    /// Their profile as last opened, if this device holds their profile key.
    pub profile: Option<ProfileBody>,
    /// Whether they are online (contacts who both show presence).
    pub online: bool,
    /// When they were last online, coarse, when they show it.
    pub last_seen: Option<u64>,
    /// Sixty digits both users see alike when their keys are the ones they think.
    pub safety_number: String,
}

/// The people layer of one client: its book, presence, and events waiting for the app.
#[derive(Debug)]
pub(crate) struct People {
    me: UserId,
    device: DeviceId,
    keys: Arc<Keys>,
    trust: Arc<RwLock<Trust>>,
    book: Arc<Mutex<Book>>,
    presence: Mutex<Presence>,
    /// Events found outside the log (identity changes seen by a lookup, presence,
    /// profiles fetched at a sync), waiting for `next_event`.
    waiting: Mutex<VecDeque<PeopleEvent>>,
}

/// Presence as heard: per contact, the relay nodes that say it is online.
#[derive(Debug, Default)]
struct Presence {
    sources: BTreeMap<UserId, BTreeSet<u64>>,
    /// What the app was last told: online or not, per contact.
    told: BTreeMap<UserId, bool>,
    /// Contacts heard online since the current session started (the others are stale once
    /// it caught up).
    confirmed: BTreeSet<UserId>,
    last_seen: BTreeMap<UserId, u64>,
}

/// What a people request needs from the client: a way to ask the relay.
#[async_trait::async_trait]
pub(crate) trait Ask: Send + Sync {
    async fn ask(&self, frame: ClientFrame) -> Result<ServerFrame, ClientError>;

    /// Sends a frame the relay does not answer (a cursor, a read marker, typing) on the
    /// current connection; dropped when there is none.
    async fn tell(&self, frame: ClientFrame) -> Result<(), ClientError> {
        let _ = frame;
        Ok(())
    }

    /// Appends `plaintext` to this user's log (through the outbox: it is not lost), for
    /// the conversation archive; a failure is logged, the archive is best effort.
    async fn archive(&self, plaintext: Vec<u8>) {
        let _ = plaintext;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error for an answer that does not answer the request (people and conversations).
pub(crate) fn unexpected(answer: &ServerFrame) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {answer:?}"))
}

impl People {
    pub fn new(
        keys: Arc<Keys>,
        trust: Arc<RwLock<Trust>>,
        book: Arc<Mutex<Book>>,
        device: DeviceId,
    ) -> Self {
        Self {
            me: keys.user,
            device,
            keys,
            trust,
            book,
            presence: Mutex::default(),
            waiting: Mutex::default(),
        }
    }

    /// This user's profile key: derived from the data key of epoch 0, which every device
    /// of the user holds.
    fn own_profile_key(&self) -> Result<ProfileKey, ClientError> {
        let trust = self.trust.read().unwrap_or_else(PoisonError::into_inner);
        trust
            .key(0)
            .map(ProfileKey::derive)
            .ok_or(ClientError::EpochKeyUnavailable { epoch: 0 })
    }

    pub fn take_waiting(&self) -> Option<PeopleEvent> {
        lock(&self.waiting).pop_front()
    }

    fn queue(&self, event: PeopleEvent) {
        lock(&self.waiting).push_back(event);
    }

    fn save(&self) -> Result<(), ClientError> {
        lock(&self.book).save()?;
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // Other users' chains.

    /// Fetches `user`'s device chain, verifies it from its user key and checks it extends
    /// the pinned one; pins it. An identity change is queued for the app (and a mismatch
    /// refused).
    async fn verified_chain(&self, ask: &dyn Ask, user: UserId) -> Result<Chain, ClientError> {
        let answer = ask
            .ask(ClientFrame::UserChainFetch { user, after: 0 })
            .await?;
        let ServerFrame::UserChainLinks {
            user: of, links, ..
        } = answer
        else {
            return Err(unexpected(&answer));
        };
        if of != user {
            return Err(ClientError::Protocol("a chain of another user".into()));
        }
        if links.is_empty() {
            return Err(PeopleError::Unverified(
                "the relay shows no device chain for this user".into(),
            )
            .into());
        }
        let chain = Chain::verify(user, &links).map_err(|(i, e)| {
            PeopleError::Unverified(format!("link {} of the chain does not verify: {e}", i + 1))
        })?;
        let mut book = lock(&self.book);
        let entry = book.entry(user);
        if let Some((seqno, hash)) = entry.pinned {
            let at_pin = usize::try_from(seqno)
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| links.get(i));
            if at_pin.map(|link| link.hash()) != Some(hash) {
                drop(book);
                self.queue(PeopleEvent::IdentityChanged {
                    user,
                    change: IdentityChange::ChainMismatch,
                });
                return Err(PeopleError::Unverified(
                    "this user's device chain does not extend the one pinned on this device".into(),
                )
                .into());
            }
            // Links signed with the user key after the pin: the recovery key was used.
            let recovered = links
                .iter()
                .skip(usize::try_from(seqno).unwrap_or(usize::MAX))
                .filter(|link| link.signer == Signer::User)
                .filter(|link| !matches!(link.body, LinkBody::Create { .. }))
                .map(|link| link.seqno)
                .next_back();
            entry.pinned = Some((chain.seqno(), chain.head()));
            drop(book);
            if let Some(seqno) = recovered {
                self.queue(PeopleEvent::IdentityChanged {
                    user,
                    change: IdentityChange::Recovered { seqno },
                });
            }
        } else {
            entry.pinned = Some((chain.seqno(), chain.head()));
            drop(book);
        }
        self.save()?;
        Ok(chain)
    }

    /// `user`'s active devices, from its chain verified against the pin.
    pub async fn verify(&self, ask: &dyn Ask, user: UserId) -> Result<Vec<DeviceId>, ClientError> {
        let chain = self.verified_chain(ask, user).await?;
        Ok(chain.active_devices().map(|(device, _)| *device).collect())
    }

    /// Verifies an intro from another user and opens it with this device's exchange key.
    /// `Ok(None)`: verified, but not sealed to this device.
    async fn open_intro(
        &self,
        ask: &dyn Ask,
        intro: &Intro,
    ) -> Result<Option<IntroBody>, ClientError> {
        intro
            .verify_signature()
            .map_err(|e| PeopleError::Unverified(e.to_string()))?;
        let chain = self.verified_chain(ask, intro.from).await?;
        if !chain.is_active(&intro.device) {
            return Err(PeopleError::Unverified(
                "signed by a device the sender's chain does not admit".into(),
            )
            .into());
        }
        if intro.to != self.me {
            return Err(PeopleError::Unverified("an intro for another user".into()).into());
        }
        match intro.open(self.device, &self.keys.exchange) {
            Ok(body) => Ok(Some(body)),
            Err(IntroError::NotForThisDevice) => Ok(None),
            Err(e) => Err(PeopleError::Unverified(e.to_string()).into()),
        }
    }

    /// Seals this user's intro to `to`'s active devices (its chain verified and pinned).
    async fn intro_for(&self, ask: &dyn Ask, to: UserId, note: &str) -> Result<Intro, ClientError> {
        let chain = self.verified_chain(ask, to).await?;
        let recipients: Vec<(DeviceId, [u8; 32])> = chain
            .active_devices()
            .map(|(device, member)| (*device, member.exchange))
            .collect();
        let body = IntroBody {
            note: note.to_owned(),
            profile_key: self.own_profile_key()?,
        };
        Intro::seal(
            &mut OsRng,
            self.me,
            &self.keys.device,
            to,
            &recipients,
            &body,
        )
        .map_err(|e| match e {
            IntroError::NoteTooLong => ClientError::People(PeopleError::Invalid(e.to_string())),
            other => PeopleError::Unverified(other.to_string()).into(),
        })
    }

    // ------------------------------------------------------------------------------------
    // Requests.

    pub async fn set_handle(
        &self,
        ask: &dyn Ask,
        name: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        let answer = ask
            .ask(ClientFrame::HandleSet {
                name: name.map(str::to_owned),
            })
            .await?;
        match answer {
            ServerFrame::HandleIs { handle } => Ok(handle),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn whois(&self, ask: &dyn Ask, handle: &str) -> Result<Option<UserId>, ClientError> {
        let parsed: ferry_protocol::people::Handle =
            handle
                .parse()
                .map_err(|e: ferry_protocol::people::HandleError| {
                    PeopleError::HandleInvalid(e.to_string())
                })?;
        let shown = parsed.to_string();
        let answer = ask
            .ask(ClientFrame::Whois {
                handle: shown.clone(),
            })
            .await?;
        let ServerFrame::WhoisResult { user, .. } = answer else {
            return Err(unexpected(&answer));
        };
        // A handle this device knew someone by that now names someone else.
        let moved: Vec<UserId> = lock(&self.book)
            .entries
            .iter()
            .filter(|(known, entry)| {
                entry.handle.as_deref() == Some(shown.as_str()) && Some(**known) != user
            })
            .map(|(known, _)| *known)
            .collect();
        for known in moved {
            self.queue(PeopleEvent::IdentityChanged {
                user: known,
                change: IdentityChange::HandleMoved {
                    handle: shown.clone(),
                    now: user,
                },
            });
        }
        Ok(user)
    }

    pub async fn request(
        &self,
        ask: &dyn Ask,
        to: UserId,
        note: &str,
        handle: Option<String>,
    ) -> Result<(), ClientError> {
        let intro = self.intro_for(ask, to, note).await?;
        if handle.is_some() {
            lock(&self.book).entry(to).handle = handle;
            self.save()?;
        }
        done(
            ask.ask(ClientFrame::ContactRequest(Box::new(intro)))
                .await?,
        )?;
        self.publish_card(ask, to).await;
        Ok(())
    }

    pub async fn accept(
        &self,
        ask: &dyn Ask,
        from: UserId,
        handle: Option<String>,
    ) -> Result<(), ClientError> {
        let intro = self.intro_for(ask, from, "").await?;
        // The handle the user typed names the contact on every device (in its card).
        if handle.is_some() {
            lock(&self.book).entry(from).handle = handle;
            self.save()?;
        }
        done(ask.ask(ClientFrame::ContactAccept(Box::new(intro))).await?)?;
        self.publish_card(ask, from).await;
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // Cards: what this user's devices know of each other user, kept at the relay sealed
    // under the user's data key, so a device paired or recovered later knows it too.

    /// Stores what this device knows of `user` as the user's card for it, after taking in
    /// what the stored cards know (so a device that knows less never overwrites a better
    /// card). Best effort: a card not stored now is stored with the next change.
    async fn publish_card(&self, ask: &dyn Ask, user: UserId) {
        if let Err(error) = self.list(ask).await {
            tracing::debug!(%error, "could not read the contact cards");
            return;
        }
        let body = {
            let book = lock(&self.book);
            let Some(entry) = book.entries.get(&user) else {
                return;
            };
            CardBody {
                profile_key: entry.profile_key.clone(),
                pinned: entry.pinned,
                handle: entry.handle.clone(),
            }
        };
        let card = {
            let trust = self.trust.read().unwrap_or_else(PoisonError::into_inner);
            let (epoch, Some(key)) = trust.newest() else {
                return;
            };
            body.seal(&mut OsRng, key, epoch, &self.me, &user)
        };
        if let Err(error) = ask.ask(ClientFrame::ContactCard { peer: user, card }).await {
            tracing::debug!(%error, "could not store a contact card");
        }
    }

    /// Takes from the cards of `list` what this device lacks (a card the relay kept from
    /// before adds nothing this device knows better: it never replaces what is here).
    fn merge_cards(&self, list: &[ContactInfo]) -> Result<(), ClientError> {
        let mut changed = false;
        {
            let trust = self.trust.read().unwrap_or_else(PoisonError::into_inner);
            let mut book = lock(&self.book);
            for info in list {
                let Some(card) = &info.card else { continue };
                let Some(key) = trust.key(card.epoch) else {
                    continue;
                };
                let body = match card.open(key, &self.me, &info.user) {
                    Ok(body) => body,
                    Err(error) => {
                        tracing::warn!(user = %info.user, %error, "a contact card does not open; ignored");
                        continue;
                    }
                };
                let entry = book.entry(info.user);
                if entry.profile_key.is_none() && body.profile_key.is_some() {
                    entry.profile_key = body.profile_key;
                    changed = true;
                }
                if entry.pinned.is_none() && body.pinned.is_some() {
                    entry.pinned = body.pinned;
                    changed = true;
                }
                if entry.handle.is_none() && body.handle.is_some() {
                    entry.handle = body.handle;
                    changed = true;
                }
            }
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    pub async fn simple(&self, ask: &dyn Ask, frame: ClientFrame) -> Result<(), ClientError> {
        done(ask.ask(frame).await?)
    }

    pub async fn set_profile(&self, ask: &dyn Ask, body: &ProfileBody) -> Result<(), ClientError> {
        body.check()
            .map_err(|e| PeopleError::Invalid(e.to_string()))?;
        let key = self.own_profile_key()?;
        // The next version after what this device knows; if another device stored one
        // since, read it and go past it.
        for _ in 0..2 {
            let version = lock(&self.book).own_profile_version + 1;
            let sealed = body
                .seal(&mut OsRng, &key, &self.me, version)
                .map_err(|e| PeopleError::Invalid(e.to_string()))?;
            match ask.ask(ClientFrame::ProfileSet(sealed)).await {
                Ok(ServerFrame::Done) => {
                    lock(&self.book).own_profile_version = version;
                    return self.save();
                }
                Ok(other) => return Err(unexpected(&other)),
                Err(ClientError::Relay {
                    code: ferry_protocol::ErrorCode::Conflict,
                    ..
                }) => {
                    let stored = self.fetch_profile_version(ask, self.me).await?;
                    let mut book = lock(&self.book);
                    book.own_profile_version = book.own_profile_version.max(stored);
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Protocol(
            "the relay refused every profile version".into(),
        ))
    }

    async fn fetch_profile_version(&self, ask: &dyn Ask, user: UserId) -> Result<u64, ClientError> {
        match ask.ask(ClientFrame::ProfileFetch { user }).await? {
            ServerFrame::Profile { profile, .. } => Ok(profile.map_or(0, |p| p.version)),
            other => Err(unexpected(&other)),
        }
    }

    /// `user`'s profile (a contact's, or this user's own), fetched and opened.
    pub async fn profile(
        &self,
        ask: &dyn Ask,
        user: UserId,
    ) -> Result<Option<ProfileBody>, ClientError> {
        let answer = ask.ask(ClientFrame::ProfileFetch { user }).await?;
        let ServerFrame::Profile { user: of, profile } = answer else {
            return Err(unexpected(&answer));
        };
        let Some(sealed) = profile.filter(|_| of == user) else {
            return Ok(None);
        };
        let key = if user == self.me {
            self.own_profile_key()?
        } else {
            match lock(&self.book)
                .entries
                .get(&user)
                .and_then(|e| e.profile_key.clone())
            {
                Some(key) => key,
                None => return Ok(None),
            }
        };
        let body = sealed
            .open(&key, &user)
            .map_err(|e| PeopleError::Unverified(format!("the profile does not open: {e}")))?;
        let mut book = lock(&self.book);
        let entry = book.entry(user);
        if sealed.version < entry.profile_version {
            // An older version than one this device opened: the relay rolled it back.
            return Err(PeopleError::Unverified(format!(
                "the relay served profile version {} after version {}",
                sealed.version, entry.profile_version
            ))
            .into());
        }
        entry.profile_version = sealed.version;
        entry.profile = Some(body.clone());
        drop(book);
        self.save()?;
        Ok(Some(body))
    }

    /// The contact list, with what this device knows of each.
    pub async fn contacts(&self, ask: &dyn Ask) -> Result<Vec<Contact>, ClientError> {
        let (list, _) = self.list(ask).await?;
        let book = lock(&self.book);
        let presence = lock(&self.presence);
        Ok(list
            .into_iter()
            .map(|info| {
                let entry = book.entries.get(&info.user);
                Contact {
                    user: info.user,
                    state: info.state,
                    handle: entry.and_then(|e| e.handle.clone()),
                    profile: entry.and_then(|e| e.profile.clone()),
                    online: presence.told.get(&info.user).copied().unwrap_or(false),
                    last_seen: info
                        .last_seen
                        .or_else(|| presence.last_seen.get(&info.user).copied()),
                    safety_number: safety_number(&self.me, &info.user),
                }
            })
            .collect())
    }

    async fn list(&self, ask: &dyn Ask) -> Result<(Vec<ContactInfo>, bool), ClientError> {
        match ask.ask(ClientFrame::ContactsList).await? {
            ServerFrame::Contacts {
                contacts,
                presence_visible,
                ..
            } => {
                self.merge_cards(&contacts)?;
                Ok((contacts, presence_visible))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// At each catch-up: fetches the profiles of contacts whose version moved (queued as
    /// [`PeopleEvent::ProfileChanged`]), and forgets presence not heard again since the
    /// session started. Returns the users this user blocks, as the relay's list says.
    pub async fn sync(&self, ask: &dyn Ask) -> Result<BTreeSet<UserId>, ClientError> {
        self.expire_presence();
        let (list, _) = self.list(ask).await?;
        let blocked = list
            .iter()
            .filter(|info| info.state == ContactState::Blocked)
            .map(|info| info.user)
            .collect();
        for info in list {
            let stale = info.state == ContactState::Contact && {
                let book = lock(&self.book);
                book.entries.get(&info.user).is_some_and(|e| {
                    e.profile_key.is_some() && e.profile_version < info.profile_version
                })
            };
            if !stale {
                continue;
            }
            match self.profile(ask, info.user).await {
                Ok(Some(profile)) => self.queue(PeopleEvent::ProfileChanged {
                    user: info.user,
                    profile,
                }),
                Ok(None) => {}
                // The others are still worth fetching; this one is tried at the next sync.
                Err(error) => tracing::warn!(%error, "could not refresh a contact's profile"),
            }
        }
        Ok(blocked)
    }

    // ------------------------------------------------------------------------------------
    // Notices from the log.

    /// Turns a notice of this user's log into the app's event.
    pub async fn on_notice(
        &self,
        ask: &dyn Ask,
        notice: Notice,
    ) -> Result<PeopleEvent, ClientError> {
        Ok(match notice {
            Notice::Welcome { .. } | Notice::RemovedFromConversation { .. } => {
                return Err(ClientError::Protocol(
                    "a conversation notice is not a people notice".into(),
                ));
            }
            Notice::RequestSent { intro } => {
                // Another device of this user may have sent it: pin the other user too.
                if let Err(error) = self.verified_chain(ask, intro.to).await {
                    tracing::debug!(%error, "could not pin the user asked");
                }
                PeopleEvent::RequestSent { to: intro.to }
            }
            Notice::RequestReceived { intro } if intro.from == self.me => {
                return Ok(PeopleEvent::Unverified {
                    user: self.me,
                    reason: "a request from this user to itself".into(),
                });
            }
            Notice::RequestReceived { intro } => {
                let from = intro.from;
                match self.open_intro(ask, &intro).await {
                    Ok(body) => {
                        let note = self.keep_intro(from, body)?;
                        if note.is_some() {
                            self.publish_card(ask, from).await;
                        }
                        PeopleEvent::RequestReceived { from, note }
                    }
                    Err(ClientError::People(PeopleError::Unverified(reason))) => {
                        PeopleEvent::Unverified { user: from, reason }
                    }
                    Err(e) => return Err(e),
                }
            }
            Notice::Accepted { peer, intro } => {
                if intro.from != self.me {
                    if intro.from != peer {
                        return Ok(PeopleEvent::Unverified {
                            user: peer,
                            reason: "an acceptance carrying another user's intro".into(),
                        });
                    }
                    match self.open_intro(ask, &intro).await {
                        Ok(body) => {
                            if self.keep_intro(peer, body)?.is_some() {
                                self.publish_card(ask, peer).await;
                            }
                        }
                        Err(ClientError::People(PeopleError::Unverified(reason))) => {
                            return Ok(PeopleEvent::Unverified { user: peer, reason });
                        }
                        Err(e) => return Err(e),
                    }
                }
                PeopleEvent::Accepted { user: peer }
            }
            Notice::Declined { peer, by_me } => PeopleEvent::Declined { user: peer, by_me },
            Notice::Cancelled { peer, by_me } => PeopleEvent::Cancelled { user: peer, by_me },
            Notice::Removed { peer, by_me } => {
                self.forget_presence(peer);
                PeopleEvent::Removed { user: peer, by_me }
            }
            Notice::Blocked { peer } => {
                self.forget_presence(peer);
                PeopleEvent::Blocked { user: peer }
            }
            Notice::Unblocked { peer } => PeopleEvent::Unblocked { user: peer },
            Notice::HandleChanged { handle } => PeopleEvent::HandleChanged { handle },
            Notice::ProfileChanged { version } => {
                {
                    let mut book = lock(&self.book);
                    book.own_profile_version = book.own_profile_version.max(version);
                }
                self.save()?;
                match self.profile(ask, self.me).await? {
                    Some(profile) => PeopleEvent::ProfileChanged {
                        user: self.me,
                        profile,
                    },
                    None => PeopleEvent::ProfileChanged {
                        user: self.me,
                        profile: ProfileBody::default(),
                    },
                }
            }
            Notice::PresenceVisibility { visible } => {
                if !visible {
                    let users: Vec<UserId> = lock(&self.presence).told.keys().copied().collect();
                    users.into_iter().for_each(|u| self.forget_presence(u));
                }
                PeopleEvent::PresenceVisibility { visible }
            }
        })
    }

    /// Keeps the profile key of a verified intro; returns its note.
    fn keep_intro(
        &self,
        from: UserId,
        body: Option<IntroBody>,
    ) -> Result<Option<String>, ClientError> {
        let Some(body) = body else {
            return Ok(None);
        };
        lock(&self.book).entry(from).profile_key = Some(body.profile_key.clone());
        self.save()?;
        Ok(Some(body.note))
    }

    // ------------------------------------------------------------------------------------
    // Presence.

    /// A presence hint from one relay node; returns the event if the contact's state moved.
    pub fn on_presence(
        &self,
        user: UserId,
        source: u64,
        online: bool,
        last_seen: Option<u64>,
    ) -> Option<PeopleEvent> {
        let mut presence = lock(&self.presence);
        let sources = presence.sources.entry(user).or_default();
        if source == 0 {
            sources.clear();
        } else if online {
            sources.insert(source);
        } else {
            sources.remove(&source);
        }
        let now_online = !sources.is_empty();
        if now_online {
            presence.confirmed.insert(user);
        }
        if let Some(seen) = last_seen {
            presence.last_seen.insert(user, seen);
        }
        let was = presence.told.insert(user, now_online).unwrap_or(false);
        (was != now_online || (!now_online && last_seen.is_some() && source != 0)).then(|| {
            PeopleEvent::PresenceChanged {
                user,
                online: now_online,
                last_seen: presence.last_seen.get(&user).copied(),
            }
        })
    }

    /// A new session: what is heard from now on is current.
    pub fn on_session(&self) {
        lock(&self.presence).confirmed.clear();
    }

    /// Contacts told online and not heard again since the session started are offline.
    fn expire_presence(&self) {
        let stale: Vec<UserId> = {
            let presence = lock(&self.presence);
            presence
                .told
                .iter()
                .filter(|(user, online)| **online && !presence.confirmed.contains(user))
                .map(|(user, _)| *user)
                .collect()
        };
        for user in stale {
            self.forget_presence(user);
        }
    }

    fn forget_presence(&self, user: UserId) {
        let mut presence = lock(&self.presence);
        presence.sources.remove(&user);
        if presence.told.insert(user, false) == Some(true) {
            let last_seen = presence.last_seen.get(&user).copied();
            drop(presence);
            self.queue(PeopleEvent::PresenceChanged {
                user,
                online: false,
                last_seen,
            });
        }
    }
}

fn done(answer: ServerFrame) -> Result<(), ClientError> {
    match answer {
        ServerFrame::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

#[cfg(test)]
mod tests;
