//! The app's side: [`Client`] (events in, appends out) and [`ClientHandle`] (appends and
//! device requests, from any task).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use ferry_protocol::seal::MAX_PLAINTEXT_LEN;
use ferry_protocol::{DeviceId, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::calls::Calls;
use crate::conversations::{ConversationInfo, Conversations, Receipts, StoredMessage};
use crate::driver::{Command, Delivery, Driver, Enqueue, Finished, Item, Shared};
use crate::error::ClientError;
use crate::error::PeopleError;
use crate::event::{ClientEvent, Device, Status};
use crate::options::Options;
use crate::pairing::{Invitation, InviterDevice, PairingError};
use crate::people::{Ask, Contact, People};
use crate::settings::{SETTINGS_PREFIX, Setting, Settings};
use crate::state::ClientState;
use ferry_mls::GroupKind;
use ferry_protocol::conversations::ConvId;
use ferry_protocol::people::ProfileBody;
use ferry_protocol::{ClientFrame, ServerFrame};

/// Commands waiting for the driver.
const COMMAND_QUEUE: usize = 256;
/// Times a notice's checks are tried before it is reported as an error item.
const NOTICE_ATTEMPTS: u32 = 4;

/// A device's connection to its user's log, kept up in the background.
///
/// [`start`](Self::start) or [`connect`](Self::connect) hands the [`ClientState`] to a
/// background task, which connects, reconnects with jittered exponential backoff, sends
/// the outbox and decrypts events. [`close`](Self::close) gives the state back.
///
/// Reading: [`next_event`](Self::next_event) returns the log's events in order, each once.
/// An event counts as received by the app when the app asks for the next one (or closes
/// the client): only then does the cursor move, on disk and at the relay. After a crash,
/// the events received in the last moments ([`Options::ack_delay`]) may come again;
/// an app that must never see one twice keeps [`ReceivedEvent::seq`] with its own data
/// and skips what it has.
///
/// Writing: [`append`](Self::append) and [`enqueue`](Self::enqueue) (also on
/// [`ClientHandle`], for other tasks).
///
/// [`ReceivedEvent::seq`]: crate::ReceivedEvent::seq
pub struct Client {
    handle: ClientHandle,
    deliveries: mpsc::Receiver<Delivery>,
    /// The stream sequence of the last item returned, acknowledged at the next call.
    returned: Option<u64>,
    /// A notice taken from the queue whose checks have not finished (the call that took it
    /// was cancelled): the next call finishes it before anything else, so it is neither
    /// acknowledged unchecked nor lost.
    unfinished: Option<(Option<u64>, ferry_protocol::people::Notice)>,
    task: JoinHandle<Finished>,
}

/// A cheap, cloneable handle for appending and device requests from any task.
#[derive(Clone)]
pub struct ClientHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    user: UserId,
    device: DeviceId,
    /// What [`ClientHandle::invite`] connects with.
    inviter: Arc<(InviterDevice, Options)>,
    /// Contacts, profiles, presence: see [`crate::people`].
    people: Arc<People>,
    /// 1:1 and group conversations: see [`crate::conversations`].
    pub(crate) conversations: Arc<Conversations>,
    /// The user's settings: see [`crate::settings`].
    settings: Arc<Settings>,
    /// This device's calls: see [`crate::calls`] (never locked across an await).
    pub(crate) calls: Arc<std::sync::Mutex<Calls>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("handle", &self.handle)
            .field("queued", &self.deliveries.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandle")
            .field("user", &self.user)
            .field("device", &self.device)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl Client {
    /// Starts the background task and returns at once, connected or not: appends go to
    /// the outbox and leave when the relay is reachable. Must be called within a tokio
    /// runtime.
    pub fn start(state: ClientState, options: Options) -> Self {
        let settings = Arc::new(Settings::open(state.dir(), state.device_id()));
        let conversations = Arc::new(Conversations::open(
            state.dir(),
            state.keys(),
            state.shared_trust(),
            Arc::clone(&settings),
            options.archive_history,
        ));
        let shared = Arc::new(Shared::new(state.pending()));
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (deliveries, delivery_rx) = mpsc::channel(options.event_buffer.max(1));
        let handle = ClientHandle {
            commands,
            shared: Arc::clone(&shared),
            user: state.user_id(),
            device: state.device_id(),
            inviter: Arc::new((InviterDevice::of(&state), options.clone())),
            people: Arc::new(People::new(
                state.keys(),
                state.shared_trust(),
                state.book(),
                state.device_id(),
            )),
            conversations,
            settings,
            calls: Arc::new(std::sync::Mutex::new(Calls::new(
                state.user_id(),
                state.device_id(),
                options.ring_timeout,
            ))),
        };
        let driver = Driver::new(state, options, command_rx, deliveries, shared);
        Self {
            handle,
            deliveries: delivery_rx,
            returned: None,
            unfinished: None,
            task: tokio::spawn(driver.run()),
        }
    }

    /// Starts the client and waits until the relay accepted this device, for at most
    /// [`Options::connect_timeout`]. Fails with the reason if it did not: the relay is
    /// unreachable, the pinned key does not match, the device was revoked...
    ///
    /// What the relay says once the session is open (such as
    /// [`ClientError::ResyncRequired`], the first thing it sends when the cursor is older
    /// than what it keeps) comes from [`next_event`](Self::next_event).
    pub async fn connect(state: ClientState, options: Options) -> Result<Self, ClientError> {
        let timeout = options.connect_timeout;
        let client = Self::start(state, options);
        let mut status = client.handle.shared.status.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            status.wait_for(|s| s.sessions > 0 || s.stopped.is_some()),
        )
        .await;
        let timed_out = waited.is_err();
        drop(waited);
        let now = status.borrow().clone();
        let error = if now.sessions > 0 {
            None
        } else if let Some(stopped) = now.stopped {
            Some(stopped)
        } else if timed_out {
            Some(now.last_error.unwrap_or_else(|| {
                ClientError::RelayUnreachable(format!("no session within {timeout:?}"))
            }))
        } else {
            Some(ClientError::Closed)
        };
        match error {
            None => Ok(client),
            Some(error) => {
                // Wait for the task to let go of the state folder before reporting.
                let _ = client.close().await;
                Err(error)
            }
        }
    }

    /// The next event of the log (or [`ClientEvent::CaughtUp`], or a
    /// [`ClientEvent::People`] change), waiting for one.
    ///
    /// Calling it acknowledges the item it returned last. An `Err` for one event
    /// ([`ClientError::Undecryptable`]) or one refused append is an item too: the next call
    /// moves past it. Once the client has stopped, every call returns why.
    ///
    /// A notice of the relay about contacts is checked before it is returned (the other
    /// user's device chain fetched and verified, see [`crate::people`]), so this may wait
    /// for the relay.
    pub async fn next_event(&mut self) -> Result<ClientEvent, ClientError> {
        loop {
            if let Some(event) = self.handle.people.take_waiting() {
                return Ok(ClientEvent::People(event));
            }
            if let Some(event) = self.handle.conversations.take_waiting() {
                return Ok(ClientEvent::Conversation(event));
            }
            if let Some(setting) = self.handle.settings.take_waiting() {
                return Ok(ClientEvent::Setting(setting));
            }
            if let Some(event) = self.handle.lock_calls().take_event() {
                return Ok(ClientEvent::Call(event));
            }
            if let Some((seq, notice)) = self.unfinished.clone() {
                // Not acknowledged until its checks are done (a cancelled call resumes here).
                let result = self.notice(notice).await;
                self.unfinished = None;
                self.returned = seq;
                match result {
                    Ok(Some(event)) => return Ok(event),
                    // A conversation notice with nothing to show (already a member): next.
                    Ok(None) => continue,
                    Err(error) => return Err(error),
                }
            }
            self.acknowledge();
            // A typing indicator nobody refreshed ends by itself (see TYPING_EXPIRY); a call
            // that rings or waits too long ends (see crate::calls).
            let typing = self.handle.conversations.next_typing_expiry();
            let calls = self.handle.lock_calls().next_deadline();
            let expiry = typing.into_iter().chain(calls).min();
            let received = tokio::select! {
                received = self.deliveries.recv() => received,
                () = sleep_until_or_never(expiry) => {
                    let now = tokio::time::Instant::now();
                    self.handle.conversations.expire_typing(now);
                    self.handle.expire_calls(now).await;
                    continue;
                }
            };
            let Some(delivery) = received else {
                return Err(self.handle.shared.stopped());
            };
            if let Some(Item::Notice(notice)) = delivery.item {
                self.unfinished = Some((delivery.seq, notice));
                continue;
            }
            self.returned = delivery.seq;
            match delivery.item {
                // This device's own event, acknowledged without being shown.
                None => {}
                Some(Item::App(Ok(ClientEvent::CaughtUp { head }))) => {
                    let conversations = &self.handle.conversations;
                    match self.handle.people.sync(&self.handle).await {
                        // Before the conversations are read: whose messages to hide.
                        Ok(blocked) => {
                            if let Err(error) = conversations.blocked_now(blocked).await {
                                tracing::warn!(%error, "could not keep this user's blocks");
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "could not refresh contacts' profiles");
                        }
                    }
                    if let Err(error) = conversations.on_caught_up(&self.handle).await {
                        tracing::warn!(%error, "could not bring conversations up to date");
                    }
                    return Ok(ClientEvent::CaughtUp { head });
                }
                Some(Item::App(Ok(ClientEvent::Event(event))))
                    if crate::conversations::is_archive(&event.plaintext) =>
                {
                    // A conversation message archived by a device of this user: history,
                    // not an event of the app's.
                    let conversations = &self.handle.conversations;
                    if let Err(error) = conversations.on_log_event(&event.plaintext).await {
                        tracing::warn!(%error, "could not keep an archived message");
                    }
                }
                Some(Item::App(Ok(ClientEvent::Event(event))))
                    if event.plaintext.starts_with(SETTINGS_PREFIX) =>
                {
                    // A setting of this user's, made on one of its devices: followed, and
                    // reported (from the queue) when it changes something.
                    let settings = &self.handle.settings;
                    if let Err(error) = settings.on_log_event(event.device, &event.plaintext) {
                        tracing::warn!(%error, "could not keep a setting");
                    }
                }
                Some(Item::App(item)) => return item,
                Some(Item::Notice(_)) => unreachable!("notices are taken above"),
                Some(Item::Presence {
                    user,
                    source,
                    online,
                    last_seen,
                }) => {
                    let people = &self.handle.people;
                    if let Some(event) = people.on_presence(user, source, online, last_seen) {
                        return Ok(ClientEvent::People(event));
                    }
                }
                Some(Item::Session) => self.handle.people.on_session(),
                Some(Item::Conversation(frame)) => {
                    let conversations = &self.handle.conversations;
                    match conversations.on_push(&self.handle, frame).await {
                        Ok(Some(signal)) => self.handle.on_call_signal(signal).await,
                        Ok(None) => {}
                        Err(error) => tracing::warn!(%error, "could not read a conversation"),
                    }
                }
            }
        }
    }

    /// A notice of the log as the app's event. Its checks ask the relay; a failure to reach
    /// it is tried again a few times before the notice is reported as an error item.
    async fn notice(
        &mut self,
        notice: ferry_protocol::people::Notice,
    ) -> Result<Option<ClientEvent>, ClientError> {
        use ferry_protocol::people::Notice;
        if matches!(
            notice,
            Notice::Welcome { .. } | Notice::RemovedFromConversation { .. }
        ) {
            let conversations = &self.handle.conversations;
            if let Err(error) = conversations.on_notice(&self.handle, notice).await {
                tracing::warn!(%error, "could not act on a conversation notice");
            }
            // Its events (Joined, messages read since) are taken from the queue.
            return Ok(None);
        }
        let mut attempt = 0;
        loop {
            match self
                .handle
                .people
                .on_notice(&self.handle, notice.clone())
                .await
            {
                Ok(event) => {
                    let conversations = &self.handle.conversations;
                    match &event {
                        crate::people::PeopleEvent::Blocked { user } => {
                            // A block ends the 1:1s with that user (a block is silence), and
                            // hides what it says in groups.
                            if let Err(error) = conversations.on_blocked(&self.handle, *user).await
                            {
                                tracing::warn!(%error, "could not end the 1:1 with a blocked user");
                            }
                        }
                        crate::people::PeopleEvent::Unblocked { user } => {
                            if let Err(error) = conversations.set_blocked(*user, false).await {
                                tracing::warn!(%error, "could not keep this user's blocks");
                            }
                        }
                        _ => {}
                    }
                    return Ok(Some(ClientEvent::People(event)));
                }
                Err(error) if error.is_permanent() || attempt >= NOTICE_ATTEMPTS => {
                    return Err(error);
                }
                Err(error) => {
                    attempt += 1;
                    tracing::debug!(%error, attempt, "could not check a notice yet; trying again");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    /// The people events found outside the log and not returned yet (identity changes seen
    /// by a lookup or a verification, profiles fetched at a catch-up), without waiting and
    /// without taking anything from the log: for a short-lived process that acts, then
    /// closes.
    pub fn take_people_events(&mut self) -> Vec<crate::people::PeopleEvent> {
        std::iter::from_fn(|| self.handle.people.take_waiting()).collect()
    }

    /// Stops the client: acknowledges the last event returned, saves the cursor, closes
    /// the connection, and gives the state back. What is still in the outbox stays on disk
    /// and is sent by the next client.
    pub async fn close(mut self) -> Result<ClientState, ClientError> {
        self.acknowledge();
        // Fails only if the task already stopped, which is what we want anyway.
        let _ = self.handle.commands.send(Command::Close).await;
        let Finished { state, saved } = self.task.await.map_err(|_| ClientError::Closed)?;
        saved?;
        let state = Arc::try_unwrap(state).map_err(|_| ClientError::Closed)?;
        Ok(state.into_inner().unwrap_or_else(PoisonError::into_inner))
    }

    /// A handle for other tasks.
    pub fn handle(&self) -> ClientHandle {
        self.handle.clone()
    }

    /// See [`ClientHandle::append`].
    pub async fn append(&self, plaintext: &[u8]) -> Result<u64, ClientError> {
        self.handle.append(plaintext).await
    }

    /// See [`ClientHandle::enqueue`].
    pub async fn enqueue(&self, plaintext: &[u8]) -> Result<u64, ClientError> {
        self.handle.enqueue(plaintext).await
    }

    /// See [`ClientHandle::flush`].
    pub async fn flush(&self, timeout: Duration) -> Result<(), ClientError> {
        self.handle.flush(timeout).await
    }

    /// See [`ClientHandle::list_devices`].
    pub async fn list_devices(&self) -> Result<Vec<Device>, ClientError> {
        self.handle.list_devices().await
    }

    /// See [`ClientHandle::revoke`].
    pub async fn revoke(&self, device: DeviceId) -> Result<(), ClientError> {
        self.handle.revoke(device).await
    }

    /// See [`ClientHandle::invite`].
    pub async fn invite(&self) -> Result<Invitation, PairingError> {
        self.handle.invite().await
    }

    /// See [`ClientHandle::status`].
    pub fn status(&self) -> Status {
        self.handle.status()
    }

    /// The user this device acts for.
    pub fn user_id(&self) -> UserId {
        self.handle.user
    }

    /// This device.
    pub fn device_id(&self) -> DeviceId {
        self.handle.device
    }

    fn acknowledge(&mut self) {
        if let Some(seq) = self.returned.take() {
            self.handle.shared.received.fetch_max(seq, Ordering::AcqRel);
        }
        // Also when nothing is acknowledged: the driver learns the app made room.
        self.handle.shared.consumed.notify_one();
    }
}

impl ClientHandle {
    /// Appends an event and waits until the relay has committed it; returns its stream
    /// sequence.
    ///
    /// The event is sealed and written to the outbox before it is sent, so once this is
    /// called and the outbox write succeeded, nothing loses it: not a dropped connection,
    /// not a crash. If the future is dropped (a timeout) the event stays in the outbox and
    /// is delivered anyway.
    pub async fn append(&self, plaintext: &[u8]) -> Result<u64, ClientError> {
        let (appended, answer) = oneshot::channel();
        self.store(plaintext, Some(appended)).await?;
        answer.await.map_err(|_| self.shared.stopped())?
    }

    /// Seals an event and writes it to the outbox, then returns its device sequence
    /// without waiting for the relay: it is sent as soon as there is a connection.
    pub async fn enqueue(&self, plaintext: &[u8]) -> Result<u64, ClientError> {
        self.store(plaintext, None).await
    }

    async fn store(
        &self,
        plaintext: &[u8],
        appended: Option<oneshot::Sender<Result<u64, ClientError>>>,
    ) -> Result<u64, ClientError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(ClientError::PayloadTooLarge {
                len: plaintext.len(),
            });
        }
        let (stored, answer) = oneshot::channel();
        let enqueue = Enqueue {
            plaintext: Zeroizing::new(plaintext.to_vec()),
            stored,
            appended,
        };
        self.send(Command::Enqueue(enqueue)).await?;
        answer.await.map_err(|_| self.shared.stopped())?
    }

    /// Waits until the outbox is empty (every event acknowledged by the relay), for at most
    /// `timeout`. On failure the events stay in the outbox; the error says why they could
    /// not be delivered (the relay unreachable, say) or [`ClientError::Timeout`].
    pub async fn flush(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut status = self.shared.status.subscribe();
        let _ = tokio::time::timeout(
            timeout,
            status.wait_for(|s| s.pending == 0 || s.stopped.is_some()),
        )
        .await;
        let status = status.borrow().clone();
        if status.pending == 0 {
            return Ok(());
        }
        if let Some(error) = status.stopped {
            return Err(error);
        }
        match status.last_error {
            Some(error) if !status.connected => Err(error),
            _ => Err(ClientError::Timeout {
                pending: status.pending,
            }),
        }
    }

    /// The user's devices, revoked ones included, as the device chain says (fetched and
    /// verified first if the relay holds a longer one), with when the relay last saw each.
    /// Waits for a connection.
    pub async fn list_devices(&self) -> Result<Vec<Device>, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ListDevices(reply)).await?;
        let mut devices = answer.await.map_err(|_| self.shared.stopped())??;
        for device in &mut devices {
            if let Some(name) = self.settings.device_name(&device.id) {
                device.name = name;
            }
        }
        Ok(devices)
    }

    /// Renames this device for every device of the user: a setting in the user's own log
    /// ([`Setting::DeviceName`]), which [`list_devices`](Self::list_devices) shows instead of
    /// the name it was paired with. Waits until the relay stored it.
    pub async fn rename_device(&self, name: &str) -> Result<(), ClientError> {
        ferry_protocol::check_device_name(name).map_err(crate::error::StateError::from)?;
        let record = self.settings.set(Setting::DeviceName {
            device: self.device,
            name: name.to_owned(),
        })?;
        self.append(&record).await.map(drop)
    }

    /// Revokes a device of the user: appends a revocation to the device chain, signed by
    /// this device, that moves the data key to a new epoch sealed to every device that stays
    /// (and to the recovery key). The relay closes the revoked device's sessions and refuses
    /// it from now on; it can read nothing appended after this. Waits for a connection and
    /// for the chain to be current; answered once the relay stored the link. Revoking a
    /// device the chain has revoked already succeeds.
    pub async fn revoke(&self, device: DeviceId) -> Result<(), ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Revoke { device, reply }).await?;
        answer.await.map_err(|_| self.shared.stopped())??;
        // The relay refuses the revoked device everything at once; its leaves also leave
        // every conversation (from now on MLS keys it out too). Best effort: the next
        // session of any device of this user finishes it.
        if let Err(error) = self.conversations.after_revocation(self).await {
            tracing::warn!(%error, "could not remove the revoked device from every conversation");
        }
        Ok(())
    }

    /// Opens a pairing slot for a new device of this user: see [`crate::pairing`] and
    /// [`pairing::invite`](crate::pairing::invite). The pairing runs on a connection of its
    /// own; this client keeps syncing meanwhile.
    pub async fn invite(&self) -> Result<Invitation, PairingError> {
        let (device, options) = &*self.inviter;
        Invitation::open(device.clone(), options).await
    }

    /// Whether the client is connected, how many events wait in the outbox, what failed.
    pub fn status(&self) -> Status {
        self.shared.status.borrow().clone()
    }

    /// Sets this user's handle to `name` with a number the relay picks (`alice` becomes
    /// `alice.07`); keeps the number if the name is the same. Returns the handle.
    pub async fn set_handle(&self, name: &str) -> Result<String, ClientError> {
        let handle = self.people.set_handle(self, Some(name)).await?;
        handle.ok_or_else(|| ClientError::Protocol("the relay set no handle".into()))
    }

    /// Removes this user's handle: nobody finds it any more.
    pub async fn clear_handle(&self) -> Result<(), ClientError> {
        self.people.set_handle(self, None).await.map(drop)
    }

    /// The user with exactly this handle (`name.NN`), if any. Rate-limited by the relay
    /// ([`PeopleError::LookupLimit`]). A handle this device knew a contact by that now names
    /// another user is reported as [`crate::PeopleEvent::IdentityChanged`].
    pub async fn whois(&self, handle: &str) -> Result<Option<UserId>, ClientError> {
        self.people.whois(self, handle).await
    }

    /// Asks `user` to become a contact, with a short note (at most 280 bytes) only its
    /// devices can read. Its device chain is verified and pinned first.
    pub async fn request_contact(&self, user: UserId, note: &str) -> Result<(), ClientError> {
        self.people.request(self, user, note, None).await
    }

    /// Finds `handle` and asks its user to become a contact; returns the user.
    pub async fn request_contact_by_handle(
        &self,
        handle: &str,
        note: &str,
    ) -> Result<UserId, ClientError> {
        let (user, shown) = self.find_handle(handle).await?;
        self.people.request(self, user, note, Some(shown)).await?;
        Ok(user)
    }

    /// Accepts `user`'s pending request: both become contacts, and `user` receives this
    /// user's profile key.
    pub async fn accept_contact(&self, user: UserId) -> Result<(), ClientError> {
        self.people.accept(self, user, None).await
    }

    /// Finds `handle` and accepts its user's pending request (as [`Self::accept_contact`]);
    /// the contact is then known by that handle on every device of this user. Returns the
    /// user.
    pub async fn accept_contact_by_handle(&self, handle: &str) -> Result<UserId, ClientError> {
        let (user, shown) = self.find_handle(handle).await?;
        self.people.accept(self, user, Some(shown)).await?;
        Ok(user)
    }

    /// The user `handle` names, and the handle as it is written (normalised).
    async fn find_handle(&self, handle: &str) -> Result<(UserId, String), ClientError> {
        let user = self
            .whois(handle)
            .await?
            .ok_or_else(|| PeopleError::NoSuchHandle(handle.to_owned()))?;
        let shown = handle
            .parse::<ferry_protocol::people::Handle>()
            .map_or_else(|_| handle.to_owned(), |h| h.to_string());
        Ok((user, shown))
    }

    /// Declines `user`'s pending request.
    pub async fn decline_contact(&self, user: UserId) -> Result<(), ClientError> {
        let frame = ClientFrame::ContactDecline { peer: user };
        self.people.simple(self, frame).await
    }

    /// Withdraws this user's pending request to `user`.
    pub async fn cancel_request(&self, user: UserId) -> Result<(), ClientError> {
        let frame = ClientFrame::ContactCancel { peer: user };
        self.people.simple(self, frame).await
    }

    /// Stops being contacts with `user`.
    pub async fn remove_contact(&self, user: UserId) -> Result<(), ClientError> {
        let frame = ClientFrame::ContactRemove { peer: user };
        self.people.simple(self, frame).await
    }

    /// Blocks `user`: nothing it directs at this user gets through, and it is not told. The
    /// 1:1s with it end; in groups shared with it (which the relay cannot filter) every
    /// device of this user hides its messages and typing (see
    /// [`ConversationEvent`](crate::ConversationEvent)).
    pub async fn block(&self, user: UserId) -> Result<(), ClientError> {
        self.people
            .simple(self, ClientFrame::Block { peer: user })
            .await?;
        // At once on this device; the others (and this one again) read the relay's notice.
        self.conversations.set_blocked(user, true).await
    }

    /// Unblocks `user` (a contact takes a new request). What it said in shared groups while
    /// blocked shows again in history; what it says next reaches the app.
    pub async fn unblock(&self, user: UserId) -> Result<(), ClientError> {
        self.people
            .simple(self, ClientFrame::Unblock { peer: user })
            .await?;
        self.conversations.set_blocked(user, false).await
    }

    /// Fetches `user`'s device chain and checks it against the one this device pinned: an
    /// identity change is returned as an error ([`PeopleError::Unverified`]) when the chain
    /// does not extend the pin, and also reported as
    /// [`crate::PeopleEvent::IdentityChanged`] (as is a recovery by the contact). Returns
    /// the user's active devices.
    pub async fn verify_contact(&self, user: UserId) -> Result<Vec<DeviceId>, ClientError> {
        self.people.verify(self, user).await
    }

    /// Contacts, requests both ways and blocks, with profiles, presence and safety numbers.
    pub async fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        self.people.contacts(self).await
    }

    /// Stores this user's profile, sealed with its profile key (contacts read it).
    pub async fn set_profile(&self, profile: &ProfileBody) -> Result<(), ClientError> {
        self.people.set_profile(self, profile).await
    }

    /// A contact's profile (or this user's own), fetched and opened; `None` if there is
    /// none or this device lacks the key.
    pub async fn profile(&self, user: UserId) -> Result<Option<ProfileBody>, ClientError> {
        self.people.profile(self, user).await
    }

    /// Shows or hides this user's presence; hidden, it sees nobody's either.
    pub async fn set_presence_visible(&self, visible: bool) -> Result<(), ClientError> {
        let frame = ClientFrame::PresenceSet { visible };
        self.people.simple(self, frame).await
    }

    /// Events in the outbox, not yet acknowledged by the relay.
    pub fn pending(&self) -> usize {
        self.shared.status.borrow().pending
    }

    /// The user this device acts for.
    pub fn user_id(&self) -> UserId {
        self.user
    }

    /// This device.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    /// Sets whether this user's devices archive conversation messages in its log, so that
    /// a device paired later reads what was said before it (sealed with the data key, like
    /// every event). A setting of the user: it applies here at once, and on each other device
    /// of the user as soon as it reads it from the log (each then reports
    /// [`ClientEvent::Setting`]); a device paired later follows it too. Messages archived
    /// before stay archived. Until the user sets it, [`Options::archive_history`] decides.
    /// Answered once the relay stored the setting.
    pub async fn set_archive_history(&self, archive: bool) -> Result<(), ClientError> {
        let record = self.settings.set(Setting::ArchiveHistory(archive))?;
        self.append(&record).await.map(drop)
    }

    /// Whether this device archives conversation messages now: the user's setting, or
    /// [`Options::archive_history`] if the user never made it.
    pub fn archive_history(&self) -> bool {
        self.conversations.archiving()
    }

    /// Opens a 1:1 conversation with `user` (a contact): both users' devices, all of them.
    pub async fn start_chat(&self, user: UserId) -> Result<ConvId, ClientError> {
        self.conversations
            .create(self, GroupKind::OneToOne, &[user], None)
            .await
    }

    /// The 1:1 conversation this user has with `user`, if there is one (start one with
    /// [`start_chat`](Self::start_chat): a second one would split the history).
    pub async fn find_chat(&self, user: UserId) -> Result<Option<ConvId>, ClientError> {
        let me = self.user;
        Ok(self.conversations().await?.into_iter().find_map(|info| {
            let one_to_one = info
                .policy
                .as_ref()
                .is_some_and(|p| p.kind == GroupKind::OneToOne);
            let members = &info.summary.members;
            (one_to_one
                && members.iter().any(|m| m.user == user)
                && members.iter().all(|m| m.user == user || m.user == me))
            .then_some(info.conv)
        }))
    }

    /// Creates a group with `users` (contacts), administered by this user, with a title
    /// every member sees (encrypted like the messages).
    pub async fn create_group(
        &self,
        title: Option<&str>,
        users: &[UserId],
    ) -> Result<ConvId, ClientError> {
        self.conversations
            .create(self, GroupKind::Group, users, title)
            .await
    }

    /// Gives a conversation a title, for every member.
    pub async fn rename(&self, conv: ConvId, title: &str) -> Result<(), ClientError> {
        self.conversations.rename(self, conv, title).await
    }

    /// Adds every device of `users` to a group (this user must be one of its admins).
    pub async fn add_members(&self, conv: ConvId, users: &[UserId]) -> Result<(), ClientError> {
        self.conversations.add(self, conv, users).await
    }

    /// Removes every device of `users` from a group (this user must be one of its admins).
    pub async fn remove_members(&self, conv: ConvId, users: &[UserId]) -> Result<(), ClientError> {
        self.conversations.remove(self, conv, users).await
    }

    /// Leaves a conversation with all of this user's devices (another member commits it;
    /// every device of this user then hears [`ConversationEvent::Left`](crate::ConversationEvent::Left)).
    pub async fn leave(&self, conv: ConvId) -> Result<(), ClientError> {
        self.conversations.leave(self, conv).await
    }

    /// Sends `text` to a conversation; returns its place (`conv_seq`).
    pub async fn send_text(&self, conv: ConvId, text: &str) -> Result<u64, ClientError> {
        self.conversations.send_text(self, conv, text).await
    }

    /// The messages of a conversation this device holds: up to `limit`, before `before`
    /// (0: the newest), oldest first.
    pub async fn history(&self, conv: ConvId, before: u64, limit: usize) -> Vec<StoredMessage> {
        self.conversations.history(conv, before, limit).await
    }

    /// This user's conversations, with unread counts and members' read and delivered marks.
    pub async fn conversations(&self) -> Result<Vec<ConversationInfo>, ClientError> {
        self.conversations.list(self).await
    }

    /// Marks a conversation read up to `seq` for this user (every member sees it).
    pub async fn mark_read(&self, conv: ConvId, seq: u64) -> Result<(), ClientError> {
        self.conversations.mark_read(self, conv, seq).await
    }

    /// Who among the members has received (a device of theirs fetched it) and read the
    /// message at `conv_seq`, from the relay's delivered and read marks.
    pub async fn receipts(&self, conv: ConvId, conv_seq: u64) -> Result<Receipts, ClientError> {
        let info = self
            .conversations()
            .await?
            .into_iter()
            .find(|info| info.conv == conv)
            .ok_or_else(|| {
                ClientError::from_code(
                    ferry_protocol::ErrorCode::NoSuchConversation,
                    ferry_protocol::ErrorCode::NoSuchConversation.description(),
                )
            })?;
        let members = info.summary.members.iter().filter(|m| m.user != self.user);
        let mut receipts = Receipts::default();
        for member in members {
            if member.delivered >= conv_seq {
                receipts.delivered.push(member.user);
            }
            if member.read >= conv_seq {
                receipts.read.push(member.user);
            }
        }
        Ok(receipts)
    }

    /// Tells the members' online devices this user is (or stopped) typing. An indicator
    /// ends by itself after [`TYPING_EXPIRY`](crate::conversations::TYPING_EXPIRY) unless
    /// sent again: send it every few seconds while the person types.
    pub async fn typing(&self, conv: ConvId, typing: bool) -> Result<(), ClientError> {
        self.conversations.typing(self, conv, typing).await
    }

    async fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| self.shared.stopped())
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[async_trait::async_trait]
impl Ask for ClientHandle {
    async fn ask(&self, frame: ClientFrame) -> Result<ServerFrame, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::People { frame, reply }).await?;
        answer.await.map_err(|_| self.shared.stopped())?
    }

    async fn tell(&self, frame: ClientFrame) -> Result<(), ClientError> {
        self.send(Command::Tell(frame)).await
    }

    async fn archive(&self, plaintext: Vec<u8>) {
        if let Err(error) = self.enqueue(&plaintext).await {
            tracing::warn!(%error, "could not archive a conversation message in the log");
        }
    }
}
