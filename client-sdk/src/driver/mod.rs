//! The background task behind a [`Client`](crate::Client): it owns the state, the outbox
//! and the connection, reconnects by itself, and is driven by commands from the handles.
//!
//! ```text
//!  Client / ClientHandle ──Command (bounded)──▶ driver ──frames (bounded)──▶ writer task ─▶ relay
//!  Client::next_event ◀──Delivery (bounded)── driver ◀──────────── reader half ◀──────────── relay
//!                      ──received + notify──▶ driver: cursor to disk, then Ack to the relay
//! ```
//!
//! # Invariants
//!
//! 1. **Outbox before wire.** An event is sealed and flushed to the outbox (in batches:
//!    one `fsync` for every command waiting) before its `Append` is queued. It leaves the
//!    outbox on `Appended`. After every reconnect every entry is sent again, with the same
//!    device sequence and bytes; the relay answers a repeat with the original sequence.
//! 2. **Exactly once to the app.** `received` is the highest stream sequence handed to the
//!    app's queue; events at or below it are dropped, and each connection resumes after it.
//!    The relay delivers in order without gaps, so a gap is a protocol violation. An old
//!    event served again at a new place (a replay) is acknowledged but not shown, and the
//!    place the relay gave for each of this device's appends is checked when it is read
//!    (`checks.rs`).
//! 5. **Only the channel is believed.** A close code or a plaintext handshake refusal can be
//!    forged on the path: it ends the connection, never the client, and never takes an
//!    entry out of the outbox. Only frames inside the encrypted channel stop the client
//!    (`ResyncRequired`, an encrypted `SessionStart::Rejected`) or settle an append with an
//!    error (an `Error` frame naming its `device_seq`).
//! 3. **Acknowledge what the app has.** The app has an event once it asks for the next one
//!    (or closes). Only then does the cursor move: written to disk first, then sent as
//!    `Ack`, batched over [`Options::ack_delay`].
//! 4. **Bounded everywhere.** Commands, deliveries, the writer queue, appends in flight
//!    and requests are all bounded. When the app falls [`Options::event_buffer`] events
//!    behind, further events are dropped (not acknowledged), and once the app has drained
//!    half of its queue the driver reconnects to fetch them again.
//!
//! 6. **The chain before the keys.** At every session the relay says how long the user's
//!    device chain is; a longer chain than this device holds is fetched and every new link
//!    verified ([`Chain::apply`](ferry_protocol::Chain::apply)) before anything is believed:
//!    a link that does not verify stops the client ([`ClientError::ChainRejected`]), a
//!    revocation of this device stops it too ([`ClientError::Revoked`]), and a new epoch
//!    sealed to this device is opened and kept. `ChainGrew` fetches again. Events sealed
//!    under an epoch this device does not know yet wait for the fetch, in order. Appends
//!    are sealed under the newest epoch; device requests (list, revoke) wait until the
//!    chain is current. An append the relay refuses `stale_epoch` (sealed before this
//!    device learned of a revocation) fetches the chain, and it and every later outbox
//!    entry under an older epoch are sealed again under the newest one, with the same
//!    device sequence, and sent again lowest first; none leaves the outbox.
//!
//! This file holds the loop (offline: wait and serve commands; online: one session);
//! `appends.rs` the outbox side, `delivery.rs` the event and cursor side, `requests.rs`
//! the device requests, `chain.rs` the device chain.

mod appends;
mod chain;
pub(crate) mod checks;
mod delivery;
mod requests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use ferry_protocol::people::Notice;
use ferry_protocol::{
    ClientFrame, DeviceId, ErrorCode, Event, RelayId, SealedPayload, ServerFrame, UserId,
};
use rand_core::OsRng;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use zeroize::Zeroizing;

use crate::backoff::Backoff;
use crate::connection::{self, Connection, Incoming};
use crate::error::{ClientError, StateError};
use crate::event::{ClientEvent, Device, Status};
use crate::options::Options;
use crate::state::{ClientState, Keys};
use crate::trust::Trust;
use appends::AppendWindow;
use requests::{Reply, Request};

/// Appends sent and not yet answered, per connection (the relay takes up to 1024).
const WINDOW: usize = 256;
/// Appends sealed and flushed to the outbox together.
const MAX_BATCH: usize = 256;
/// Device requests (list, revoke) waiting for an answer.
const MAX_REQUESTS: usize = 64;
/// Control frames (Pong, Ack, Ping) waiting for the writer.
const MAX_CONTROL: usize = 64;

/// What the handles ask of the driver.
pub(crate) enum Command {
    /// Seal, store in the outbox, send.
    Enqueue(Enqueue),
    /// List the user's devices (from the chain, with the relay's last-seen times).
    ListDevices(oneshot::Sender<Result<Vec<Device>, ClientError>>),
    /// Revoke a device.
    Revoke {
        device: DeviceId,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    /// A people request: one frame, one answer (`UserChainLinks` pages come back as one).
    People {
        frame: ClientFrame,
        reply: oneshot::Sender<Result<ServerFrame, ClientError>>,
    },
    /// A frame nobody answers (a conversation cursor, read marker, typing): sent on the
    /// current connection, dropped when there is none (each is cumulative or a hint).
    Tell(ClientFrame),
    /// Save the cursor, acknowledge, close the connection and stop.
    Close,
}

pub(crate) struct Enqueue {
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Answered with the device sequence once the event is in the outbox on disk.
    pub stored: oneshot::Sender<Result<u64, ClientError>>,
    /// Answered with the stream sequence once the relay committed it.
    pub appended: Option<oneshot::Sender<Result<u64, ClientError>>>,
}

/// One item for the app, with the stream sequence it acknowledges once the app is done.
/// An item of `None` is acknowledged without being shown (this device's own events).
#[derive(Debug)]
pub(crate) struct Delivery {
    pub seq: Option<u64>,
    pub item: Option<Item>,
}

/// What the driver hands the app's side.
#[derive(Debug)]
pub(crate) enum Item {
    /// For the app as it is.
    App(Result<ClientEvent, ClientError>),
    /// A notice the relay wrote into the log: the people layer makes an event of it.
    Notice(Notice),
    /// A contact's presence on one relay node (`source`; 0: every node).
    Presence {
        user: UserId,
        source: u64,
        online: bool,
        last_seen: Option<u64>,
    },
    /// A new session started: presence heard before it is stale.
    Session,
    /// A conversation frame the relay pushed (`ConvHead`, `ConvReadBy`, `ConvEphemeral`).
    Conversation(ServerFrame),
}

/// What the handles and the driver share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The highest stream sequence the app has received (see invariant 3).
    pub received: AtomicU64,
    /// Signalled whenever the app takes from its queue.
    pub consumed: Notify,
    pub status: watch::Sender<Status>,
}

impl Shared {
    pub fn new(pending: usize) -> Self {
        Self {
            received: AtomicU64::new(0),
            consumed: Notify::new(),
            status: watch::Sender::new(Status {
                pending,
                ..Status::default()
            }),
        }
    }

    /// Why the driver stopped (or [`ClientError::Closed`]).
    pub fn stopped(&self) -> ClientError {
        self.status
            .borrow()
            .stopped
            .clone()
            .unwrap_or(ClientError::Closed)
    }
}

/// What the task leaves behind: the state, and whether its last save worked.
#[derive(Debug)]
pub(crate) struct Finished {
    pub state: Arc<Mutex<ClientState>>,
    pub saved: Result<(), ClientError>,
}

/// An event waiting for the relay's acknowledgement.
struct Pending {
    payload: SealedPayload,
    waiters: Vec<oneshot::Sender<Result<u64, ClientError>>>,
}

/// Why a wait was cut short.
enum Interrupt {
    Close,
    Failed(ClientError),
}

/// How a session ended.
enum Ended {
    Close,
    /// Reconnect at once (to fetch events dropped while the app was behind).
    Refetch,
    Failed(ClientError),
}

/// One open connection, as the driver drives it.
struct Link {
    outgoing: mpsc::Sender<ClientFrame>,
    incoming: Incoming,
    writer: JoinHandle<Result<(), ClientError>>,
    writer_done: bool,
    control: VecDeque<ClientFrame>,
    /// The appends on this connection: to send, in flight, and the wait after a refusal.
    appends: AppendWindow,
    ping: Option<u64>,
    next_ping: Instant,
    ack_sent: u64,
    /// The chain's length as the relay last said it.
    relay_chain: u64,
    /// A `ChainFetch` is unanswered.
    fetching: bool,
    /// Fetch the chain as soon as no chain request is in flight.
    want_fetch: bool,
    /// A fetch for an event of an unknown epoch finished since the last `ChainGrew`: such
    /// events are not held again (they do not open).
    unknown_fetched: bool,
    /// Events waiting for the chain fetch (their epoch is not known yet), in order.
    held: VecDeque<Event>,
    /// Appends the relay refused `stale_epoch` (304): sealed under an epoch the chain has
    /// replaced, or held back behind one that was. While any is here no append is sent;
    /// once the chain is current and no append is in flight, every outbox entry from the lowest of them on that is
    /// sealed under an older epoch is sealed again under the newest one (same device
    /// sequence: none was stored) and they are sent again, lowest first.
    stale: BTreeSet<u64>,
}

pub(crate) struct Driver {
    state: Arc<Mutex<ClientState>>,
    keys: Arc<Keys>,
    /// The verified chain and the epoch keys (shared with the state and the handles).
    trust: Arc<RwLock<Trust>>,
    /// The chain or epochs changed since they were last written.
    trust_dirty: bool,
    url: String,
    relay_key: RelayId,
    user: UserId,
    device: DeviceId,
    options: Options,
    commands: mpsc::Receiver<Command>,
    deliveries: mpsc::Sender<Delivery>,
    shared: Arc<Shared>,
    pending: BTreeMap<u64, Pending>,
    requests: VecDeque<Request>,
    /// How many of `requests` went out on the current connection.
    requests_sent: usize,
    /// Highest stream sequence put in the app's queue (invariant 2).
    received: u64,
    /// Events were dropped because the app's queue was full.
    overflowed: bool,
    cursor_saved: u64,
    /// Outbox entries acknowledged, to mark done at the next save.
    done: Vec<u64>,
    save_at: Option<Instant>,
    append_backoff: Backoff,
    ping_nonce: u64,
    /// Appends the relay answered `Conflict`: to re-seal under new device sequences.
    conflicted: Vec<u64>,
    /// Replays and misplaced appends (see `checks.rs`).
    checks: checks::LogChecks,
}

impl Driver {
    /// Takes the state; the handles talk to the driver through `commands` and `shared`.
    pub fn new(
        state: ClientState,
        options: Options,
        commands: mpsc::Receiver<Command>,
        deliveries: mpsc::Sender<Delivery>,
        shared: Arc<Shared>,
    ) -> Self {
        let pending = state
            .outbox
            .entries()
            .map(|(seq, payload)| {
                let pending = Pending {
                    payload: payload.clone(),
                    waiters: Vec::new(),
                };
                (seq, pending)
            })
            .collect();
        let cursor = state.cursor();
        let checks = checks::LogChecks::new(state.seen().clone());
        shared.received.store(cursor, Ordering::Release);
        Self {
            keys: state.keys(),
            trust: state.shared_trust(),
            trust_dirty: false,
            url: state.relay_url().to_owned(),
            relay_key: state.relay_key(),
            user: state.user_id(),
            device: state.device_id(),
            state: Arc::new(Mutex::new(state)),
            append_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            options,
            commands,
            deliveries,
            shared,
            pending,
            requests: VecDeque::new(),
            requests_sent: 0,
            received: cursor,
            overflowed: false,
            cursor_saved: cursor,
            done: Vec::new(),
            save_at: None,
            ping_nonce: 0,
            conflicted: Vec::new(),
            checks,
        }
    }

    /// Connects, serves, reconnects, until closed or stopped by a permanent error.
    pub async fn run(mut self) -> Finished {
        let mut backoff = Backoff::new(self.options.backoff_min, self.options.backoff_max);
        // A device that learned its revocation from the chain before does not try again.
        let revoked = !self.trust().chain().is_active(&self.device);
        let stop = loop {
            if revoked {
                break Interrupt::Failed(ClientError::Revoked);
            }
            let (url, keys, relay_key, resume) = (
                self.url.clone(),
                Arc::clone(&self.keys),
                self.relay_key,
                self.received,
            );
            let timeout = self.options.connect_timeout;
            let ca_file = self.options.ca_file.clone();
            let attempt = async move {
                match tokio::time::timeout(
                    timeout,
                    connection::open(&url, relay_key, &keys, resume, ca_file.as_deref()),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(ClientError::RelayUnreachable(format!(
                        "no session within {timeout:?}"
                    ))),
                }
            };
            let ended = match self.offline_until(attempt).await {
                Err(interrupt) => break interrupt,
                Ok(Ok(connection)) => self.online(connection, &mut backoff).await,
                Ok(Err(error)) => Ended::Failed(self.pin_failure_after_a_session(error)),
            };
            match ended {
                Ended::Close => break Interrupt::Close,
                Ended::Refetch => continue,
                Ended::Failed(error) if error.is_permanent() => {
                    break Interrupt::Failed(error);
                }
                Ended::Failed(error) => {
                    tracing::debug!(%error, "relay connection lost; retrying");
                    self.shared
                        .status
                        .send_modify(|s| s.last_error = Some(error));
                    let wait = backoff.next_delay(&mut OsRng);
                    if let Err(interrupt) = self.offline_until(sleep(wait)).await {
                        break interrupt;
                    }
                }
            }
        };
        let saved = self.stop(stop).await;
        Finished {
            state: self.state,
            saved,
        }
    }

    /// A relay key that does not match the pin, or a ServerHello whose signature does not
    /// verify, stops a client that never had a session (a misconfigured URL or key: the app
    /// should hear at once). Once this client has had a session with the pinned key, the
    /// same failure is somebody on the path answering in the relay's place: nothing the
    /// relay said, so it is retried like any other unauthenticated failure.
    fn pin_failure_after_a_session(&self, error: ClientError) -> ClientError {
        let had_session = self.shared.status.borrow().sessions > 0;
        match error {
            ClientError::WrongRelayKey { pinned, found } if had_session => {
                tracing::warn!(%pinned, %found, "the relay presented another key than the pinned one; retrying");
                ClientError::RelayUnreachable(format!(
                    "the relay presented key {found}, not the pinned key {pinned} (someone on the path?)"
                ))
            }
            ClientError::HandshakeFailed(why) if had_session => {
                tracing::warn!(%why, "the relay's handshake did not verify; retrying");
                ClientError::RelayUnreachable(format!(
                    "handshake did not verify: {why} (someone on the path?)"
                ))
            }
            other => other,
        }
    }

    /// Waits for `future` while serving commands (appends go to the outbox, requests queue).
    async fn offline_until<F: Future>(&mut self, future: F) -> Result<F::Output, Interrupt> {
        tokio::pin!(future);
        loop {
            tokio::select! {
                output = &mut future => return Ok(output),
                command = self.commands.recv() => {
                    let Some(command) = command else { return Err(Interrupt::Close) };
                    self.command(command, None).await?;
                }
                () = self.shared.consumed.notified() => {
                    self.consumed();
                }
                () = sleep_until(self.save_at.unwrap_or_else(far_future)), if self.save_at.is_some() => {
                    self.save(None).await.map_err(Interrupt::Failed)?;
                }
            }
        }
    }

    /// Serves one session until it ends.
    async fn online(&mut self, connection: Connection, backoff: &mut Backoff) -> Ended {
        let Connection {
            session,
            outgoing,
            incoming,
            writer,
        } = connection;
        tracing::debug!(head = session.head, acked = session.acked, "session open");
        self.overflowed = false;
        self.requests_sent = 0;
        self.shared.status.send_modify(|s| {
            s.connected = true;
            s.sessions += 1;
            s.last_error = None;
        });
        let mut link = Link {
            outgoing,
            incoming,
            writer,
            writer_done: false,
            control: VecDeque::new(),
            appends: AppendWindow::new(self.pending.keys().copied()),
            ping: None,
            next_ping: Instant::now() + self.options.ping_interval,
            ack_sent: session.acked,
            relay_chain: session.chain_seqno,
            fetching: false,
            want_fetch: false,
            unknown_fetched: false,
            held: VecDeque::new(),
            stale: BTreeSet::new(),
        };
        if session.chain_seqno < self.trust().seqno() {
            tracing::warn!(
                relay = session.chain_seqno,
                held = self.trust().seqno(),
                "the relay holds a shorter device chain than this device verified"
            );
        }
        // Presence heard on an earlier session may be stale now.
        let _ = self.deliveries.try_send(Delivery {
            seq: None,
            item: Some(Item::Session),
        });
        // A longer chain at the relay: fetch and verify it before anything else.
        self.maybe_fetch(&mut link);
        // The relay may hold an older cursor than the one on disk.
        if self.cursor_saved > link.ack_sent {
            link.ack_sent = self.cursor_saved;
            link.control.push_back(ClientFrame::Ack {
                seq: self.cursor_saved,
            });
        }

        // A restored or copied state folder may be behind what the relay holds from this
        // device: number new appends past it.
        if let Err(error) = self.advance_past(session.last_device_seq).await {
            self.disconnect(link, &Ended::Failed(error.clone())).await;
            return Ended::Failed(error);
        }

        let ended = loop {
            tokio::select! {
                frame = link.incoming.next() => {
                    let result = match frame {
                        Ok(frame) => self.frame(frame, &mut link, backoff),
                        Err(error) => Err(Ended::Failed(error)),
                    };
                    if let Err(ended) = result {
                        break ended;
                    }
                    if self.trust_dirty
                        && let Err(error) = self.save_trust().await
                    {
                        break Ended::Failed(error);
                    }
                    if !self.conflicted.is_empty()
                        && let Err(error) = self.reseal_conflicted(&mut link).await
                    {
                        break Ended::Failed(error);
                    }
                    // Once the chain is current and every append in flight is back: the
                    // relay refuses each one sent after a refused one, so sending again
                    // before they are all back could store later ones ahead of them.
                    if !link.stale.is_empty()
                        && link.appends.idle()
                        && self.chain_current(&link)
                        && let Err(error) = self.reseal_stale(&mut link).await
                    {
                        break Ended::Failed(error);
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { break Ended::Close };
                    match self.command(command, Some(&mut link)).await {
                        Ok(()) => {}
                        Err(Interrupt::Close) => break Ended::Close,
                        Err(Interrupt::Failed(error)) => break Ended::Failed(error),
                    }
                }
                permit = link.outgoing.clone().reserve_owned(), if self.has_output(&link) => {
                    match permit {
                        Ok(permit) => {
                            if let Some(frame) = self.next_output(&mut link) {
                                permit.send(frame);
                            }
                        }
                        Err(_) => break Ended::Failed(ClientError::RelayUnreachable(
                            "the connection's writer stopped".to_owned(),
                        )),
                    }
                }
                () = self.shared.consumed.notified() => {
                    if self.consumed() {
                        break Ended::Refetch;
                    }
                }
                () = sleep_until(self.save_at.unwrap_or_else(far_future)), if self.save_at.is_some() => {
                    if let Err(error) = self.save(Some(&mut link)).await {
                        break Ended::Failed(error);
                    }
                }
                () = sleep_until(link.appends.resume_at().unwrap_or_else(far_future)), if link.appends.resume_at().is_some() => {
                    link.appends.resume();
                }
                () = sleep_until(link.next_ping) => {
                    if link.ping.is_some() {
                        break Ended::Failed(ClientError::RelayUnreachable(format!(
                            "no answer to a ping within {:?}",
                            self.options.ping_interval
                        )));
                    }
                    self.ping_nonce += 1;
                    link.ping = Some(self.ping_nonce);
                    link.control.push_back(ClientFrame::Ping { nonce: self.ping_nonce });
                    link.next_ping = Instant::now() + self.options.ping_interval;
                }
                result = &mut link.writer, if !link.writer_done => {
                    link.writer_done = true;
                    let error = match result {
                        Ok(Err(error)) => error,
                        _ => ClientError::RelayUnreachable("the connection's writer stopped".to_owned()),
                    };
                    break Ended::Failed(error);
                }
            }
        };
        self.disconnect(link, &ended).await;
        ended
    }

    /// Ends a session: on close, saves and acknowledges first, then lets the writer say
    /// goodbye.
    async fn disconnect(&mut self, mut link: Link, ended: &Ended) {
        if let Ended::Close = ended {
            if let Err(error) = self.save(Some(&mut link)).await {
                tracing::warn!(%error, "could not save the cursor while closing");
            }
            let outgoing = link.outgoing.clone();
            let frames: Vec<_> = link.control.drain(..).collect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async move {
                for frame in frames {
                    if outgoing.send(frame).await.is_err() {
                        break;
                    }
                }
            })
            .await;
        }
        drop(link.outgoing);
        if !link.writer_done {
            // The writer flushes what is queued and closes; it is bounded by its timeouts.
            let _ = tokio::time::timeout(Duration::from_secs(3), link.writer).await;
        }
        self.shared.status.send_modify(|s| s.connected = false);
    }

    /// Handles one frame from the relay.
    fn frame(
        &mut self,
        frame: ServerFrame,
        link: &mut Link,
        backoff: &mut Backoff,
    ) -> Result<(), Ended> {
        match frame {
            ServerFrame::Appended { device_seq, seq } => {
                link.appends.answered(device_seq);
                self.append_backoff.reset();
                self.appended(device_seq, seq);
                self.finish_append(device_seq, Ok(seq));
            }
            ServerFrame::Events(events) => self.receive(events, link).map_err(Ended::Failed)?,
            ServerFrame::CaughtUp { head } => {
                // The connection works end to end: start over with short waits.
                backoff.reset();
                if !self.overflowed {
                    let caught_up = Delivery {
                        seq: None,
                        item: Some(Item::App(Ok(ClientEvent::CaughtUp { head }))),
                    };
                    if self.deliveries.try_send(caught_up).is_err() {
                        // Not lost: the refetch after the app catches up says it again.
                        self.overflowed = true;
                    }
                }
            }
            ServerFrame::ResyncRequired { earliest } => {
                return Err(Ended::Failed(ClientError::ResyncRequired { earliest }));
            }
            ServerFrame::Error(error) => self.relay_error(error, link)?,
            ServerFrame::Ping { nonce } => {
                if link.control.len() < MAX_CONTROL {
                    link.control.push_back(ClientFrame::Pong { nonce });
                }
            }
            ServerFrame::Pong { nonce } => {
                if link.ping == Some(nonce) {
                    link.ping = None;
                }
            }
            ServerFrame::Devices(devices) => self.answer_devices(devices),
            ServerFrame::Presence {
                user,
                source,
                online,
                last_seen,
            } => {
                // Best effort, like the frame itself: a full queue drops it.
                let _ = self.deliveries.try_send(Delivery {
                    seq: None,
                    item: Some(Item::Presence {
                        user,
                        source,
                        online,
                        last_seen,
                    }),
                });
            }
            answer @ (ServerFrame::HandleIs { .. }
            | ServerFrame::WhoisResult { .. }
            | ServerFrame::UserChainLinks { .. }
            | ServerFrame::Done
            | ServerFrame::Contacts { .. }
            | ServerFrame::Profile { .. }
            | ServerFrame::KeyPackageCount { .. }
            | ServerFrame::KeyPackagesClaimed { .. }
            | ServerFrame::ConvCreated { .. }
            | ServerFrame::ConvSent { .. }
            | ServerFrame::ConvStale { .. }
            | ServerFrame::ConvRefused { .. }
            | ServerFrame::ConvMessages { .. }
            | ServerFrame::ConvTrimmed { .. }
            | ServerFrame::Conversations { .. }
            | ServerFrame::GroupInfo { .. }
            | ServerFrame::TurnCredentials(_)
            | ServerFrame::BlobCreated { .. }
            | ServerFrame::BlobStored { .. }
            | ServerFrame::BlobPart { .. }) => self.answer_people(answer),
            pushed @ (ServerFrame::ConvHead { .. }
            | ServerFrame::ConvReadBy { .. }
            | ServerFrame::ConvEphemeral { .. }) => {
                // A hint, like presence: a full queue drops it (the next catch-up reads the
                // conversation from its cursor anyway).
                let _ = self.deliveries.try_send(Delivery {
                    seq: None,
                    item: Some(Item::Conversation(pushed)),
                });
            }
            ServerFrame::ChainAppended { seqno } => self.chain_appended(seqno, link)?,
            ServerFrame::ChainLinks { links, more } => self.chain_links(links, more, link)?,
            ServerFrame::ChainGrew { seqno } => {
                link.relay_chain = link.relay_chain.max(seqno);
                link.unknown_fetched = false;
                self.maybe_fetch(link);
            }
            other @ (ServerFrame::Ephemeral { .. }
            | ServerFrame::PairOpened { .. }
            | ServerFrame::PairPeer { .. }
            | ServerFrame::PairClosed { .. }) => {
                tracing::debug!(frame = ?other, "ignoring a frame this client does not use");
            }
        }
        Ok(())
    }

    /// Handles commands, taking every waiting `Enqueue` into one outbox write.
    async fn command(
        &mut self,
        first: Command,
        mut link: Option<&mut Link>,
    ) -> Result<(), Interrupt> {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Enqueue(enqueue) => {
                    let mut batch = vec![enqueue];
                    while batch.len() < MAX_BATCH {
                        match self.commands.try_recv() {
                            Ok(Command::Enqueue(enqueue)) => batch.push(enqueue),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.enqueue(batch, link.as_deref_mut()).await;
                }
                Command::ListDevices(reply) => {
                    self.request(Some(ClientFrame::ListDevices), Reply::Devices(reply))
                }
                Command::People { frame, reply } => self.request(
                    Some(frame),
                    Reply::People {
                        reply,
                        links: Vec::new(),
                        contacts: Vec::new(),
                        convs: Vec::new(),
                    },
                ),
                // The link is signed when it is sent, against the chain as it is then.
                Command::Revoke { device, reply } => self.request(
                    None,
                    Reply::Revoke {
                        device,
                        reply,
                        sent: None,
                        attempts: 0,
                    },
                ),
                Command::Tell(frame) => {
                    if let Some(link) = link.as_deref_mut()
                        && link.control.len() < MAX_CONTROL
                    {
                        link.control.push_back(frame);
                    }
                }
                Command::Close => return Err(Interrupt::Close),
            }
        }
        Ok(())
    }

    /// The chain and epochs (read-locked briefly; never held across an await).
    fn trust(&self) -> RwLockReadGuard<'_, Trust> {
        self.trust.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_pending(&self) {
        let pending = self.pending.len();
        self.shared.status.send_if_modified(|s| {
            let changed = s.pending != pending;
            s.pending = pending;
            changed
        });
    }

    /// Runs file IO on the blocking pool with the state locked.
    async fn on_disk<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut ClientState) -> R + Send + 'static,
    ) -> Result<R, ClientError> {
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut state)
        })
        .await
        .map_err(|e| {
            ClientError::State(StateError::io(
                "(state folder)",
                std::io::Error::other(format!("disk task failed: {e}")),
            ))
        })
    }

    /// Stops: saves what the app received, answers everyone still waiting.
    async fn stop(&mut self, why: Interrupt) -> Result<(), ClientError> {
        let saved = self.save(None).await;
        let error = match why {
            Interrupt::Close => ClientError::Closed,
            Interrupt::Failed(error) => {
                tracing::warn!(%error, "client stopped");
                error
            }
        };
        for pending in self.pending.values_mut() {
            for waiter in pending.waiters.drain(..) {
                let _ = waiter.send(Err(error.clone()));
            }
        }
        for request in self.requests.drain(..) {
            request.reply.fail(error.clone());
        }
        self.shared.status.send_modify(|s| {
            s.connected = false;
            s.stopped = Some(error);
        });
        saved
    }
}

/// Whether an `Error` frame is the relay's encrypted word that this device is revoked.
fn is_revoked(code: ErrorCode) -> bool {
    code == ErrorCode::DeviceRevoked
}

/// A deadline that never comes (for timers that are off).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
