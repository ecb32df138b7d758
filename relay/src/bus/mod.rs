//! The wake-up bus: tells the other relay nodes that a user has new events.
//!
//! # Data flow
//!
//! 1. A device commits events; the node that accepted them writes them to the log (the store).
//! 2. That node delivers them to its own connected devices of the user directly, then calls
//!    [`Bus::publish`] with a small payload on the user's topic.
//! 3. Every node that has called [`Bus::subscribe`] for that user (because one of the user's
//!    devices is connected to it) receives `(user, payload)` on its one receiver — the
//!    [`BusReceiver`] returned when the bus was made — and wakes its devices of that user, which
//!    read the new events from the log (or from the payload when it carries them).
//!
//! The bus moves opaque bytes. The networking layer defines the message format, and ignores the
//! messages that originate from its own node (a node subscribed to a user also receives its own
//! publishes for that user).
//!
//! Two backends implement [`Bus`]:
//!
//! - [`LocalBus`] (`local.rs`): nodes in one process sharing a [`LocalBusHub`]. A lone node is the
//!   default for the embedded relay; two nodes wire two relay servers together in one test process.
//! - [`RedisBus`] (`redis.rs`): Redis pub/sub, one topic per user, one subscriber connection per
//!   node, for any number of relay nodes behind a load balancer.
//!
//! # At most once: the log is the truth
//!
//! Redis pub/sub delivers at most once: a message published while a node is disconnected, or
//! while its inbox is full, is gone. The bus therefore never carries the truth, only a hint to go
//! and read the log, and it says when hints may have been lost through [`Bus::health`]:
//!
//! - while health is `false` the node polls the log for its connected devices;
//! - whenever the watch changes and the value is `true`, hints may have been missed in between,
//!   so the node wakes every local device once (each reads the log from its own cursor).
//!
//! Consumers must treat **every** change notification whose current value is `true` as "wake
//! everyone", even if they never observed the `false` in between: a `watch` keeps only the
//! latest value, so a short down-and-up can be seen as a single change to `true`.
//!
//! # A full inbox
//!
//! The receiver towards the node is a bounded channel ([`DEFAULT_INBOX_CAPACITY`] by default). The
//! bus never waits for room: a Redis reader that blocked on one slow node would stall every wake-up
//! of that node, and memory must not grow without bound. When the inbox is full the message is
//! dropped and counted ([`Bus::dropped`]), and health goes `false` until the node has drained the
//! inbox to half its capacity, then back to `true` — so a dropped wake-up always leads to a poll,
//! exactly as an outage would.
//!
//! Publishing does not have the same safety net on the other side: a publish that fails (Redis
//! down for the publishing node only) is a lost hint for the *other* nodes, whose health stays
//! `true`. The caller logs it; the networking layer should keep a slow background poll as a
//! last resort.

pub mod faults;
pub mod local;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::UserId;
use tokio::sync::{mpsc, watch};

pub use faults::FaultyBus;
pub use local::{LocalBus, LocalBusHub};
pub use redis::{RedisBus, RedisBusOptions, TOPIC_PREFIX, topic};

/// How many wake-ups may wait for a node before the bus starts dropping them.
pub const DEFAULT_INBOX_CAPACITY: usize = 4096;

/// The one receiver of a node: `(user, payload)` for every message on a topic the node
/// subscribed to.
pub type BusReceiver = mpsc::Receiver<(UserId, Bytes)>;

/// Publish/subscribe between relay nodes, one topic per user. See the [module docs](self).
#[async_trait::async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug + 'static {
    /// Sends `payload` to every node subscribed to `user` (possibly including this one).
    ///
    /// At most once, and fails fast while the bus is down: nothing is queued for later.
    async fn publish(&self, user: &UserId, payload: Bytes) -> Result<(), BusError>;

    /// Starts delivering `user`'s messages to this node. Reference-counted: N subscribes need N
    /// unsubscribes.
    ///
    /// When it returns Ok the subscription is in effect: every message published afterwards
    /// reaches this node, so a caller can subscribe first and then read the log without a gap.
    ///
    /// The subscription is counted even when this returns an error (the backend was down): the bus
    /// subscribes again by itself when it is back, and health stays `false` until then. So a
    /// caller pairs every `subscribe` with one `unsubscribe`, whatever either returned.
    async fn subscribe(&self, user: &UserId) -> Result<(), BusError>;

    /// Releases one [`subscribe`](Self::subscribe) of `user`; the last one stops delivery.
    ///
    /// Unsubscribing a user that is not subscribed does nothing.
    async fn unsubscribe(&self, user: &UserId) -> Result<(), BusError>;

    /// Whether messages are currently flowing, and a watch that changes when that flips
    /// (the relay polls the log while down and wakes every local device when it comes back up).
    ///
    /// See the [module docs](self) for how to read it: every change to `true` means "wake
    /// everyone".
    fn health(&self) -> watch::Receiver<bool>;

    /// Readiness probe (for /readyz): Ok when the bus can be used right now (Redis PING), fast timeout.
    async fn ping(&self) -> Result<(), BusError>;

    /// A short name for logs/metrics: "in-process" / "redis".
    fn kind(&self) -> &'static str;

    /// How many messages for this node were dropped because its inbox was full (a counter for
    /// metrics; each drop also made health blink `false`). Both backends count; the default is
    /// for test doubles.
    fn dropped(&self) -> u64 {
        0
    }
}

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus URL could not be parsed (the URL is shown with its password redacted).
    #[error("invalid bus URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The first connection to the backend failed.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The backend is unreachable right now; the bus reconnects by itself.
    #[error("the wake-up bus is down; reconnecting")]
    Down,
    /// The backend did not answer in time.
    #[error("the wake-up bus did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered with an error.
    #[error("wake-up bus error: {0}")]
    Backend(String),
}

/// The sending side of a node's inbox, shared by both backends: a bounded channel towards the
/// node, the drop counter, and the health watch.
///
/// Health is `link_up && !overloaded`: the backend says whether messages can reach this node
/// (`link_up`; always `true` in process), and the inbox says whether it had to drop some.
pub(crate) struct Inbox {
    tx: mpsc::Sender<(UserId, Bytes)>,
    dropped: AtomicU64,
    state: Mutex<HealthInputs>,
    health: watch::Sender<bool>,
}

#[derive(Clone, Copy)]
struct HealthInputs {
    link_up: bool,
    overloaded: bool,
}

/// What happened to one message handed to [`Inbox::deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Queued for the node.
    Queued,
    /// The inbox was full: dropped, counted, health blinks.
    Dropped,
    /// The node dropped its receiver: nobody will ever read it.
    Closed,
}

/// How often an overloaded inbox checks whether the node has caught up.
const DRAIN_CHECK: Duration = Duration::from_millis(20);

impl Inbox {
    /// A new inbox holding up to `capacity` messages (at least 1), and the node's receiver.
    pub(crate) fn new(capacity: usize, link_up: bool) -> (Arc<Self>, BusReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let inbox = Self {
            tx,
            dropped: AtomicU64::new(0),
            state: Mutex::new(HealthInputs {
                link_up,
                overloaded: false,
            }),
            health: watch::Sender::new(link_up),
        };
        (Arc::new(inbox), rx)
    }

    /// Queues one message for the node without waiting.
    pub(crate) fn deliver(self: &Arc<Self>, user: UserId, payload: Bytes) -> Delivery {
        match self.tx.try_send((user, payload)) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lost(1);
                Delivery::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }

    /// Counts `count` messages lost before reaching the inbox (or dropped by it), and makes health
    /// blink so the node polls.
    pub(crate) fn lost(self: &Arc<Self>, count: u64) {
        let total = self.dropped.fetch_add(count, Ordering::Relaxed) + count;
        let newly_overloaded = self.update(|inputs| {
            let was = inputs.overloaded;
            inputs.overloaded = true;
            !was
        });
        if !newly_overloaded {
            return;
        }
        tracing::warn!(
            dropped_total = total,
            capacity = self.tx.max_capacity(),
            "wake-up inbox full: dropping wake-ups and reporting the bus down until the node catches up"
        );
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // Owned by the inbox's receiver: it ends once the node has drained half the inbox,
                // or as soon as the node drops its receiver.
                runtime.spawn(Arc::clone(self).wait_for_drain());
            }
            // No runtime to wait in: report "up" again at once, which still made the watch change.
            Err(_) => {
                self.update(|inputs| {
                    inputs.overloaded = false;
                    false
                });
            }
        }
    }

    async fn wait_for_drain(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(DRAIN_CHECK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if self.tx.is_closed() {
                return;
            }
            if self.tx.capacity() * 2 >= self.tx.max_capacity() {
                self.update(|inputs| {
                    inputs.overloaded = false;
                    false
                });
                tracing::info!("wake-up inbox drained: bus reported up again");
                return;
            }
        }
    }

    /// Records whether the backend link is up (connected and subscribed).
    pub(crate) fn set_link(&self, up: bool) {
        self.update(|inputs| {
            inputs.link_up = up;
            false
        });
    }

    /// Whether the backend link was last reported up.
    pub(crate) fn link_up(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .link_up
    }

    pub(crate) fn health(&self) -> watch::Receiver<bool> {
        self.health.subscribe()
    }

    pub(crate) fn is_healthy(&self) -> bool {
        *self.health.borrow()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the node dropped its receiver.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Applies `change` to the inputs and publishes the resulting health if it changed; returns
    /// what `change` returned. The watch is updated under the lock so concurrent updates cannot
    /// publish out of order.
    fn update(&self, change: impl FnOnce(&mut HealthInputs) -> bool) -> bool {
        let mut inputs = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let result = change(&mut inputs);
        let healthy = inputs.link_up && !inputs.overloaded;
        self.health.send_if_modified(|current| {
            let modified = *current != healthy;
            *current = healthy;
            modified
        });
        result
    }
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("queued", &(self.tx.max_capacity() - self.tx.capacity()))
            .field("capacity", &self.tx.max_capacity())
            .field("dropped", &self.dropped())
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_inbox_drops_counts_and_blinks_health() {
        let (inbox, mut rx) = Inbox::new(2, true);
        let mut health = inbox.health();
        let user = UserId([7; 32]);
        assert_eq!(
            inbox.deliver(user, Bytes::from_static(b"1")),
            Delivery::Queued
        );
        assert_eq!(
            inbox.deliver(user, Bytes::from_static(b"2")),
            Delivery::Queued
        );
        assert_eq!(
            inbox.deliver(user, Bytes::from_static(b"3")),
            Delivery::Dropped
        );
        assert_eq!(inbox.dropped(), 1);
        assert!(!*health.borrow_and_update());

        // Draining half the inbox brings health back.
        assert!(rx.recv().await.is_some());
        tokio::time::timeout(Duration::from_secs(5), health.changed())
            .await
            .expect("health recovers")
            .expect("sender alive");
        assert!(*health.borrow_and_update());

        drop(rx);
        assert_eq!(inbox.deliver(user, Bytes::new()), Delivery::Closed);
    }
}
