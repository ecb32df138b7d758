//! The hub: this node's registry of connected device sessions, and the bridge to the bus.
//!
//! ```text
//!  commit (this node) ──▶ Hub::committed ──▶ each local session's Inbox ──▶ its writer task
//!                                    └────▶ Bus::publish(user) ──▶ other nodes' Hub::dispatch
//! ```
//!
//! Invariants:
//! - The log is the truth. A wake-up only tells a session "the log grew"; it may carry the
//!   events to save a read, but a session that finds a gap, an overflowing inbox or a bus
//!   outage reads the log from its own `delivered` position instead. So nothing is skipped and,
//!   because `delivered` only grows, nothing is sent twice — even when the same event arrives
//!   both directly and through the bus.
//! - Inboxes are bounded: a slow device makes its inbox overflow into "read from the log",
//!   never grows memory.
//! - A node subscribes to a user's bus topic once, while at least one of the user's devices
//!   is connected to it, and ignores messages it published itself. Every session holds one
//!   reference on the subscription (the bus counts them) and waits until it is in effect
//!   before replaying, even when another session of the user asked for it first.
//! - Revocations are hints too: a stored chain link that revokes devices closes their sessions
//!   here and, through the bus, on other nodes (`ChainGrew`). The store is the truth: every
//!   session re-reads its device's record right after joining, at every safety poll and when
//!   the bus comes back after an outage ([`Peer::take_recheck`]), and the append transaction
//!   refuses a revoked device's appends whatever reached its sessions.
//! - Presence travels on the same topics and is only ever a hint, never stored: when a
//!   session starts, the node tells the user's presence peers (mutual contacts who both show
//!   presence, read from the store by the caller) that the user is online on this node and
//!   asks those online anywhere to say so back (a *probe*, answered by every node holding a
//!   session of the peer); when the user's last session here ends, it says offline with a
//!   coarse last-seen time. Each message names its node (`source`); clients keep one online
//!   flag per node, and source 0 means every node (the user hid its presence). A peer with no
//!   session anywhere costs one publish that no node receives. A node that dies says nothing:
//!   its users stay online for contacts connected elsewhere until those reconnect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use ferry_protocol::codec::{self, Wire};
use ferry_protocol::{DeviceId, ErrorCode, Event, ServerFrame, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};

use crate::bus::Bus;
use crate::mailbox::Mailbox;
use crate::metrics::Metrics;
use crate::sync::lock;

/// Most events a session's inbox holds before it falls back to reading the log.
pub const INBOX_CAPACITY: usize = 1024;
/// Events are carried inside a bus message only up to this many payload bytes in total;
/// larger commits send a bare wake-up and receivers read the log.
pub const BUS_INLINE_BYTES: usize = 64 * 1024;
/// Bus messages waiting to be published. When Redis is too slow to keep up the oldest
/// wake-ups are dropped (and counted): remote sessions then catch up on their next wake-up
/// or safety poll, since the log is the truth.
pub const PUBLISH_QUEUE: usize = 65_536;
/// Bytes of bus messages waiting to be published; beyond it new ones are dropped (and
/// counted), as when the queue is full: ephemerals and wake-ups are hints, the log is the truth.
pub const PUBLISH_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Publishes in flight at once.
const PUBLISH_CONCURRENCY: usize = 64;

/// What travels on the bus between relay nodes (postcard-encoded).
#[derive(Debug, Serialize, Deserialize)]
enum BusMessage {
    /// The user's log grew to `head`; `events` are the new events when small enough.
    Committed {
        origin: u64,
        head: u64,
        events: Vec<Event>,
    },
    /// An ephemeral body from one of the user's devices.
    Ephemeral {
        origin: u64,
        from: DeviceId,
        body: Vec<u8>,
    },
    /// A device was revoked: close its sessions. Sent by relays from before the device
    /// chain (kept so that a mixed cluster still closes them); see `ChainGrew`.
    Revoked { origin: u64, device: DeviceId },
    /// The user's device chain grew to `seqno` links; the last one revoked `revoked`:
    /// close their sessions, and tell every other session of the user.
    ChainGrew {
        origin: u64,
        seqno: u64,
        revoked: Vec<DeviceId>,
    },
    /// On the topic of a user who may see `of`'s presence: `of` has (or no longer has) a
    /// session on node `origin`. With `probe`, nodes holding sessions of the topic's user
    /// answer with its own presence on `of`'s topic.
    Presence {
        origin: u64,
        of: UserId,
        online: bool,
        last_seen: Option<u64>,
        probe: bool,
    },
    /// On the topic of a user who could see `of`'s presence: `of` hides it now, on every node.
    PresenceHidden { origin: u64, of: UserId },
    /// On a user's own topic: the user shows its presence again; every node holding a
    /// session of it announces it to `peers`.
    PresenceShown { origin: u64, peers: Vec<UserId> },
    /// A conversation frame (`ConvHead`, `ConvReadBy`, `ConvEphemeral`, encoded) for every
    /// session of the topic's user except those of device `skip`.
    Conversation {
        origin: u64,
        frame: Vec<u8>,
        skip: Option<DeviceId>,
    },
}

impl Wire for BusMessage {}

/// What a session hears when `user` hides its presence: forget every source.
fn hidden_frame(user: UserId) -> ServerFrame {
    ServerFrame::Presence {
        user,
        source: 0,
        online: false,
        last_seen: None,
    }
}

/// An event waiting for a session's writer, with its commit time for the latency metric.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// The event.
    pub event: Arc<Event>,
    /// When it was committed (on this node) or received (from the bus).
    pub committed_at: Instant,
}

#[derive(Debug, Default)]
struct Inbox {
    events: Vec<LiveEvent>,
    overflowed: bool,
}

/// One connected device session, as the hub sees it.
#[derive(Debug)]
pub struct Peer {
    id: u64,
    device: DeviceId,
    inbox: Mutex<Inbox>,
    wake: Notify,
    direct: Arc<Mailbox>,
    close: watch::Sender<Option<ErrorCode>>,
    /// Set when the bus came back after an outage: a revocation may have been lost with it,
    /// so the session re-reads its device's record (see [`Peer::take_recheck`]).
    recheck: AtomicBool,
}

impl Peer {
    /// Whether the session must re-read its device's record (the bus came back after being
    /// down, and a revocation may have been lost meanwhile); clears the flag.
    pub fn take_recheck(&self) -> bool {
        self.recheck.swap(false, Ordering::AcqRel)
    }

    /// Waits until there is something in the inbox (or it overflowed).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Takes everything waiting: the events, and whether the log must be read instead
    /// (the inbox overflowed or the bus may have dropped a wake-up).
    pub fn take(&self) -> (Vec<LiveEvent>, bool) {
        let mut inbox = lock(&self.inbox);
        (
            std::mem::take(&mut inbox.events),
            std::mem::take(&mut inbox.overflowed),
        )
    }

    /// This session's id, unique on the node.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The mailbox of frames addressed to this session from elsewhere (ephemerals, calls,
    /// pairing): bounded, dropped when full, closed when the session leaves the hub.
    pub fn direct(&self) -> &Arc<Mailbox> {
        &self.direct
    }

    /// A receiver that yields the reason once the hub decides this session must close.
    pub fn close_signal(&self) -> watch::Receiver<Option<ErrorCode>> {
        self.close.subscribe()
    }

    fn push(&self, events: &[LiveEvent]) {
        {
            let mut inbox = lock(&self.inbox);
            if inbox.events.len() + events.len() > INBOX_CAPACITY {
                inbox.overflowed = true;
                inbox.events.clear();
            } else if !inbox.overflowed {
                inbox.events.extend_from_slice(events);
            }
        }
        self.wake.notify_one();
    }

    fn poll(&self) {
        lock(&self.inbox).overflowed = true;
        self.wake.notify_one();
    }
}

/// This node's sessions, grouped by user.
#[derive(Debug)]
pub struct Hub {
    node: u64,
    next_peer: AtomicU64,
    users: Mutex<HashMap<UserId, Vec<Arc<Peer>>>>,
    bus: Arc<dyn Bus>,
    bus_up: AtomicBool,
    publish_queue: mpsc::Sender<(UserId, Bytes)>,
    publish_rx: Mutex<Option<mpsc::Receiver<(UserId, Bytes)>>>,
    /// Bytes waiting in `publish_queue` (bounded by [`PUBLISH_QUEUE_BYTES`]).
    publish_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// A session's registration; unregisters (and unsubscribes when last) via [`Hub::leave`].
#[derive(Debug)]
pub struct Membership {
    /// The registered peer.
    pub peer: Arc<Peer>,
    user: UserId,
}

/// Sessions one device may have on one node. More than one: an app's connection and the
/// second one its pairing (`invite`) opens, or a command-line run beside a running app, are
/// the same device. The oldest beyond it is closed with `SessionReplaced`.
pub const MAX_SESSIONS_PER_DEVICE: usize = 4;

/// Capacity of a session's queue of frames from elsewhere.
const DIRECT_QUEUE: usize = 64;

impl Hub {
    /// A hub publishing through `bus`; `node` identifies this relay process on the bus.
    pub fn new(bus: Arc<dyn Bus>, node: u64, metrics: Arc<Metrics>) -> Arc<Self> {
        let up = *bus.health().borrow();
        metrics.bus_up.set(i64::from(up));
        let (publish_queue, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        Arc::new(Self {
            node,
            next_peer: AtomicU64::new(1),
            users: Mutex::new(HashMap::new()),
            bus,
            bus_up: AtomicBool::new(up),
            publish_queue,
            publish_rx: Mutex::new(Some(publish_rx)),
            publish_bytes: Arc::new(AtomicUsize::new(0)),
            metrics,
        })
    }

    /// Starts the tasks that feed bus messages and bus health into the hub, and the one that
    /// publishes this node's messages. Call once.
    pub fn start(self: &Arc<Self>, mut messages: mpsc::Receiver<(UserId, Bytes)>) {
        if let Some(mut queue) = lock(&self.publish_rx).take() {
            let bus = Arc::clone(&self.bus);
            let queued_bytes = Arc::clone(&self.publish_bytes);
            tokio::spawn(async move {
                let limit = Arc::new(tokio::sync::Semaphore::new(PUBLISH_CONCURRENCY));
                while let Some((user, bytes)) = queue.recv().await {
                    queued_bytes.fetch_sub(bytes.len(), Ordering::AcqRel);
                    let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                        break;
                    };
                    let bus = Arc::clone(&bus);
                    tokio::spawn(async move {
                        if let Err(e) = bus.publish(&user, bytes).await {
                            // Other nodes' sessions catch up by polling: the log is the truth.
                            tracing::debug!(error = %e, "bus publish failed");
                        }
                        drop(permit);
                    });
                }
            });
        }
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            while let Some((user, bytes)) = messages.recv().await {
                hub.dispatch(user, &bytes);
            }
        });
        let hub = Arc::clone(self);
        let mut health = self.bus.health();
        tokio::spawn(async move {
            while health.changed().await.is_ok() {
                let up = *health.borrow_and_update();
                hub.set_bus_up(up);
            }
        });
    }

    /// Asks the bus whether it can be used now (for `/readyz`).
    pub async fn ping_bus(&self) -> Result<(), crate::bus::BusError> {
        self.bus.ping().await
    }

    /// Whether the bus is delivering; while it is not, sessions poll the log.
    pub fn bus_up(&self) -> bool {
        self.bus_up.load(Ordering::Relaxed)
    }

    /// Registers a session of `device`. Call before reading the log for replay, so that no
    /// commit can fall between the replay and the first wake-up.
    ///
    /// Frames addressed to the session from elsewhere arrive in its peer's
    /// [`Peer::direct`] mailbox.
    pub async fn join(&self, user: UserId, device: DeviceId) -> Membership {
        let peer = Arc::new(Peer {
            id: self.next_session_id(),
            device,
            inbox: Mutex::default(),
            wake: Notify::new(),
            direct: Arc::new(Mailbox::new(DIRECT_QUEUE)),
            close: watch::Sender::new(None),
            recheck: AtomicBool::new(false),
        });
        {
            // At most MAX_SESSIONS_PER_DEVICE sessions per device on this node: beyond it the
            // oldest is closed and told why (a reconnect whose old connection the relay has not
            // noticed yet, or a copied state folder), so one device's replays stay bounded.
            let mut users = lock(&self.users);
            let peers = users.entry(user).or_default();
            let mut same: Vec<&Arc<Peer>> = peers
                .iter()
                .filter(|p| p.device == device && p.close.borrow().is_none())
                .collect();
            same.sort_by_key(|p| p.id);
            let excess = (same.len() + 1).saturating_sub(MAX_SESSIONS_PER_DEVICE);
            for old in same.into_iter().take(excess) {
                old.close.send_replace(Some(ErrorCode::SessionReplaced));
            }
            peers.push(Arc::clone(&peer));
        }
        // Every session subscribes, not only the user's first on this node: `subscribe` returns
        // once the subscription is in effect, and a session that skipped it could replay while
        // the first session's SUBSCRIBE is still on its way and miss the wake-ups in between.
        if let Err(e) = self.bus.subscribe(&user).await {
            // The session still works: it polls the log while the bus is unhealthy.
            tracing::warn!(error = %e, "bus subscribe failed");
        }
        Membership { peer, user }
    }

    /// A fresh session id (also used for anonymous pairing sessions).
    pub fn next_session_id(&self) -> u64 {
        self.next_peer.fetch_add(1, Ordering::Relaxed)
    }

    /// `user` is online on this node (a session started, or it shows its presence again):
    /// tells the sessions of `peers` (the users who may see it, see
    /// [`crate::store::PeopleStore::presence_peers`]) here and on other nodes, and asks those
    /// online to say so back. A peer with no session anywhere costs one bus message nobody
    /// receives: no subscription, no state.
    pub fn presence_online(&self, user: UserId, peers: &[UserId]) {
        for peer in peers {
            let frame = ServerFrame::Presence {
                user,
                source: self.node,
                online: true,
                last_seen: None,
            };
            if self.deliver_direct(peer, &frame) {
                let back = ServerFrame::Presence {
                    user: *peer,
                    source: self.node,
                    online: true,
                    last_seen: None,
                };
                self.deliver_direct(&user, &back);
            }
            self.enqueue_publish(
                *peer,
                &BusMessage::Presence {
                    origin: self.node,
                    of: user,
                    online: true,
                    last_seen: None,
                    probe: true,
                },
            );
        }
    }

    /// `user` shows its presence again: every node holding a session of it (this one and,
    /// through the bus, the others) announces it to `peers`, so it is online for them
    /// wherever it is connected.
    pub fn presence_shown(&self, user: UserId, peers: &[UserId]) {
        if self.is_online_here(&user) {
            self.presence_online(user, peers);
        }
        self.enqueue_publish(
            user,
            &BusMessage::PresenceShown {
                origin: self.node,
                peers: peers.to_vec(),
            },
        );
    }

    /// `user` has no session left on this node: tells `peers`, with its coarse last-seen time.
    pub fn presence_offline(&self, user: UserId, peers: &[UserId], last_seen: u64) {
        for peer in peers {
            let frame = ServerFrame::Presence {
                user,
                source: self.node,
                online: false,
                last_seen: Some(last_seen),
            };
            self.deliver_direct(peer, &frame);
            self.enqueue_publish(
                *peer,
                &BusMessage::Presence {
                    origin: self.node,
                    of: user,
                    online: false,
                    last_seen: Some(last_seen),
                    probe: false,
                },
            );
        }
    }

    /// `user` hides its presence now: `peers` forget it, on every node (source 0).
    pub fn presence_hidden(&self, user: UserId, peers: &[UserId]) {
        for peer in peers {
            self.deliver_direct(peer, &hidden_frame(user));
            self.enqueue_publish(
                *peer,
                &BusMessage::PresenceHidden {
                    origin: self.node,
                    of: user,
                },
            );
        }
    }

    /// Whether `user` has a session on this node.
    pub fn is_online_here(&self, user: &UserId) -> bool {
        lock(&self.users).contains_key(user)
    }

    /// Queues `frame` for every session of `user` on this node (best effort: a full queue
    /// drops it). Returns whether the user has any session here.
    fn deliver_direct(&self, user: &UserId, frame: &ServerFrame) -> bool {
        self.for_each_peer(user, |peer| {
            let _ = peer.direct.try_send(frame.clone());
        })
    }

    /// Unregisters a session. Returns whether it was the user's last session on this node.
    pub async fn leave(&self, membership: Membership) -> bool {
        membership.peer.direct.close();
        let mut last = false;
        let registered = {
            let mut users = lock(&self.users);
            match users.get_mut(&membership.user) {
                Some(peers) => {
                    let before = peers.len();
                    peers.retain(|p| p.id != membership.peer.id);
                    let removed = peers.len() < before;
                    if peers.is_empty() {
                        users.remove(&membership.user);
                        last = removed;
                    }
                    removed
                }
                None => false,
            }
        };
        // Releases the reference `join` took; the bus unsubscribes with the last one.
        if registered && let Err(e) = self.bus.unsubscribe(&membership.user).await {
            tracing::warn!(error = %e, "bus unsubscribe failed");
        }
        last
    }

    /// New events were committed on this node, in commit order. Wakes local sessions now and
    /// queues the bus message; never blocks (it runs inside the committer).
    pub fn committed(&self, user: UserId, events: Vec<Event>) {
        let Some(head) = events.last().map(|e| e.seq) else {
            return;
        };
        let inline = events.iter().map(|e| e.payload.0.len()).sum::<usize>() <= BUS_INLINE_BYTES;
        let carried = if inline { events.clone() } else { Vec::new() };
        self.push_live(&user, events);
        let events = carried;
        self.enqueue_publish(
            user,
            &BusMessage::Committed {
                origin: self.node,
                head,
                events,
            },
        );
    }

    /// The user's log may have grown without a wake-up (a commit whose outcome was unknown,
    /// or a retry answered `Duplicate` whose first attempt's wake-up may never have gone out):
    /// every session of the user, here and on other nodes, reads the log once.
    pub fn maybe_committed(&self, user: UserId) {
        self.for_each_peer(&user, Peer::poll);
        self.enqueue_publish(
            user,
            &BusMessage::Committed {
                origin: self.node,
                head: 0,
                events: Vec::new(),
            },
        );
    }

    /// An ephemeral body from `from`: to the user's other sessions, here and on other nodes.
    pub fn ephemeral(&self, user: UserId, from: DeviceId, sender: &Peer, body: Vec<u8>) {
        self.deliver_ephemeral(&user, from, Some(sender.id), &body);
        self.enqueue_publish(
            user,
            &BusMessage::Ephemeral {
                origin: self.node,
                from,
                body,
            },
        );
    }

    /// A conversation frame for the sessions of every user in `members` (except device
    /// `skip`'s), here and on other nodes: one bus message per member user, however many
    /// devices it has. A hint like every wake-up: a full queue drops it, and devices catch up
    /// from their conversation cursors (the conversation list names every head).
    pub fn conversation_frame(
        &self,
        members: &[UserId],
        frame: &ServerFrame,
        skip: Option<DeviceId>,
    ) {
        let encoded = codec::encode(frame);
        for user in members {
            self.deliver_conversation(user, frame, skip);
            self.enqueue_publish(
                *user,
                &BusMessage::Conversation {
                    origin: self.node,
                    frame: encoded.clone(),
                    skip,
                },
            );
        }
    }

    fn deliver_conversation(&self, user: &UserId, frame: &ServerFrame, skip: Option<DeviceId>) {
        self.for_each_peer(user, |peer| {
            if Some(peer.device) != skip {
                let _ = peer.direct.try_send(frame.clone());
            }
        });
    }

    /// The user's chain grew to `seqno` links (stored by the session `sender` on this node, if
    /// any) and revoked `revoked`: the revoked devices' sessions close, here and on other
    /// nodes, and every other session of the user hears `ChainGrew { seqno }`.
    pub async fn chain_grew(
        &self,
        user: UserId,
        seqno: u64,
        revoked: &[DeviceId],
        sender: Option<u64>,
    ) {
        self.apply_chain_grew(&user, seqno, revoked, sender);
        self.publish(
            &user,
            &BusMessage::ChainGrew {
                origin: self.node,
                seqno,
                revoked: revoked.to_vec(),
            },
        )
        .await;
    }

    /// Asks every session on this node to close with `code` (used at shutdown).
    pub fn close_all(&self, code: ErrorCode) {
        for peers in lock(&self.users).values() {
            for peer in peers {
                peer.close.send_replace(Some(code));
            }
        }
    }

    /// Number of sessions on this node.
    pub fn sessions(&self) -> usize {
        lock(&self.users).values().map(Vec::len).sum()
    }

    fn dispatch(&self, user: UserId, bytes: &[u8]) {
        let message = match codec::decode::<BusMessage>(bytes) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable bus message");
                return;
            }
        };
        match message {
            BusMessage::Committed { origin, .. }
            | BusMessage::Ephemeral { origin, .. }
            | BusMessage::Revoked { origin, .. }
            | BusMessage::ChainGrew { origin, .. }
            | BusMessage::Presence { origin, .. }
            | BusMessage::PresenceHidden { origin, .. }
            | BusMessage::PresenceShown { origin, .. }
            | BusMessage::Conversation { origin, .. }
                if origin == self.node => {}
            BusMessage::Committed { events, .. } if events.is_empty() => {
                self.for_each_peer(&user, Peer::poll);
            }
            BusMessage::Committed { events, .. } => self.push_live(&user, events),
            BusMessage::Ephemeral { from, body, .. } => {
                self.deliver_ephemeral(&user, from, None, &body)
            }
            BusMessage::Revoked { device, .. } => self.close_devices(&user, &[device]),
            BusMessage::ChainGrew { seqno, revoked, .. } => {
                self.apply_chain_grew(&user, seqno, &revoked, None)
            }
            BusMessage::Presence {
                origin,
                of,
                online,
                last_seen,
                probe,
            } => {
                let frame = ServerFrame::Presence {
                    user: of,
                    source: origin,
                    online,
                    last_seen,
                };
                let here = self.deliver_direct(&user, &frame);
                if probe && here {
                    // `user` is online on this node: `of` may see it (its node checked that
                    // the two are contacts who both show presence), so say so: to `of`'s
                    // sessions here (this node skips its own publishes) and elsewhere.
                    let back = ServerFrame::Presence {
                        user,
                        source: self.node,
                        online: true,
                        last_seen: None,
                    };
                    self.deliver_direct(&of, &back);
                    self.enqueue_publish(
                        of,
                        &BusMessage::Presence {
                            origin: self.node,
                            of: user,
                            online: true,
                            last_seen: None,
                            probe: false,
                        },
                    );
                }
            }
            BusMessage::PresenceHidden { of, .. } => {
                self.deliver_direct(&user, &hidden_frame(of));
            }
            BusMessage::PresenceShown { peers, .. } => {
                if self.is_online_here(&user) {
                    self.presence_online(user, &peers);
                }
            }
            BusMessage::Conversation { frame, skip, .. } => {
                match codec::decode::<ServerFrame>(&frame) {
                    Ok(frame) => self.deliver_conversation(&user, &frame, skip),
                    Err(e) => tracing::warn!(error = %e, "undecodable conversation frame"),
                }
            }
        }
    }

    fn set_bus_up(&self, up: bool) {
        let was = self.bus_up.swap(up, Ordering::Relaxed);
        self.metrics.bus_up.set(i64::from(up));
        if up {
            // Every report of "up" may follow a down we never saw (a watch keeps only the
            // latest value): wake-ups may have been lost, so every session reads the log once.
            if !was {
                tracing::info!("wake-up bus is back; every session re-reads the log once");
            }
            // A revocation published meanwhile may be lost too: every session re-reads its
            // device's record.
            for peers in lock(&self.users).values() {
                for peer in peers {
                    peer.recheck.store(true, Ordering::Release);
                    peer.poll();
                }
            }
        } else if was {
            tracing::warn!("wake-up bus is down; sessions poll the log until it returns");
        }
    }

    fn deliver_ephemeral(&self, user: &UserId, from: DeviceId, skip: Option<u64>, body: &[u8]) {
        let frame = ServerFrame::Ephemeral {
            from,
            body: body.to_vec(),
        };
        self.for_each_peer(user, |peer| {
            if Some(peer.id) != skip {
                // Ephemerals are best effort: a full queue drops them.
                let _ = peer.direct.try_send(frame.clone());
            }
        });
    }

    fn close_devices(&self, user: &UserId, devices: &[DeviceId]) {
        self.for_each_peer(user, |peer| {
            if devices.contains(&peer.device) {
                peer.close.send_replace(Some(ErrorCode::DeviceRevoked));
            }
        });
    }

    fn apply_chain_grew(
        &self,
        user: &UserId,
        seqno: u64,
        revoked: &[DeviceId],
        sender: Option<u64>,
    ) {
        self.close_devices(user, revoked);
        let frame = ServerFrame::ChainGrew { seqno };
        self.for_each_peer(user, |peer| {
            if Some(peer.id) != sender && !revoked.contains(&peer.device) {
                // A hint like a wake-up: a session whose queue is full misses it, and its
                // device learns the chain's length at its next handshake.
                let _ = peer.direct.try_send(frame.clone());
            }
        });
    }

    /// Puts new events in the inbox of every session of `user` on this node.
    fn push_live(&self, user: &UserId, events: Vec<Event>) {
        let now = Instant::now();
        let live: Vec<LiveEvent> = events
            .into_iter()
            .map(|e| LiveEvent {
                event: Arc::new(e),
                committed_at: now,
            })
            .collect();
        self.for_each_peer(user, |peer| peer.push(&live));
    }

    /// Calls `f` for every session of `user` on this node; returns whether it has any.
    fn for_each_peer(&self, user: &UserId, f: impl Fn(&Peer)) -> bool {
        match lock(&self.users).get(user) {
            Some(peers) => {
                peers.iter().for_each(|p| f(p));
                true
            }
            None => false,
        }
    }

    fn enqueue_publish(&self, user: UserId, message: &BusMessage) {
        let bytes = Bytes::from(codec::encode(message));
        let len = bytes.len();
        let queued = self.publish_bytes.fetch_add(len, Ordering::AcqRel);
        if queued + len > PUBLISH_QUEUE_BYTES || self.publish_queue.try_send((user, bytes)).is_err()
        {
            self.publish_bytes.fetch_sub(len, Ordering::AcqRel);
            self.metrics.bus_dropped.inc();
        }
    }

    async fn publish(&self, user: &UserId, message: &BusMessage) {
        if let Err(e) = self
            .bus
            .publish(user, Bytes::from(codec::encode(message)))
            .await
        {
            // Other nodes' sessions will poll or catch up on reconnect: the log is the truth.
            tracing::debug!(error = %e, "bus publish failed");
        }
    }
}
