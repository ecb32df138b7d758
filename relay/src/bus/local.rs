//! The in-process bus: relay nodes in one process, sharing a [`LocalBusHub`].
//!
//! A lone node ([`LocalBus::standalone`]) is the embedded relay's default: publishing reaches
//! nobody else, for the price of one map lookup. Two nodes of one hub wire two relay servers
//! together in a test, without Redis.
//!
//! Delivery is immediate and never waits: a message for a node whose inbox is full is dropped
//! and counted, and that node's health blinks (see the [bus docs](super)). Otherwise the link is
//! always up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use ferry_protocol::UserId;
use tokio::sync::watch;

use super::{Bus, BusError, BusReceiver, DEFAULT_INBOX_CAPACITY, Inbox};

/// The registry shared by the nodes of one process: which node wants which user.
///
/// Made with [`LocalBusHub::new`]; each [`node`](Self::node) is one relay node.
pub struct LocalBusHub {
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next_node: u64,
    nodes: HashMap<u64, Arc<Inbox>>,
    /// For each user, the nodes subscribed to it and how many times.
    subscriptions: HashMap<UserId, HashMap<u64, usize>>,
}

impl LocalBusHub {
    /// A hub with no nodes yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(Registry::default()),
        })
    }

    /// Adds a node whose inbox holds [`DEFAULT_INBOX_CAPACITY`] messages.
    pub fn node(self: &Arc<Self>) -> (LocalBus, BusReceiver) {
        self.node_with_capacity(DEFAULT_INBOX_CAPACITY)
    }

    /// Adds a node whose inbox holds `capacity` messages (at least 1). The node leaves the hub,
    /// with all its subscriptions, when its [`LocalBus`] is dropped.
    pub fn node_with_capacity(self: &Arc<Self>, capacity: usize) -> (LocalBus, BusReceiver) {
        let (inbox, rx) = Inbox::new(capacity, true);
        let mut registry = self.registry();
        let id = registry.next_node;
        registry.next_node += 1;
        registry.nodes.insert(id, Arc::clone(&inbox));
        let bus = LocalBus {
            hub: Arc::clone(self),
            id,
            inbox,
        };
        (bus, rx)
    }

    /// The registry; a panic elsewhere cannot leave it inconsistent (every change is one
    /// statement), so a poisoned lock is simply taken over.
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for LocalBusHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registry = self.registry();
        f.debug_struct("LocalBusHub")
            .field("nodes", &registry.nodes.len())
            .field("subscribed_users", &registry.subscriptions.len())
            .finish()
    }
}

/// One node on a [`LocalBusHub`]. Not `Clone`: share it as `Arc<dyn Bus>`; dropping it removes
/// the node from the hub.
#[derive(Debug)]
pub struct LocalBus {
    hub: Arc<LocalBusHub>,
    id: u64,
    inbox: Arc<Inbox>,
}

impl LocalBus {
    /// A node alone on its own hub: the embedded relay's bus. Its own subscriptions still receive
    /// its own publishes, as on any bus.
    pub fn standalone() -> (LocalBus, BusReceiver) {
        LocalBusHub::new().node()
    }

    /// The hub this node belongs to, to add more nodes to it.
    pub fn hub(&self) -> &Arc<LocalBusHub> {
        &self.hub
    }
}

#[async_trait::async_trait]
impl Bus for LocalBus {
    async fn publish(&self, user: &UserId, payload: Bytes) -> Result<(), BusError> {
        let targets: Vec<Arc<Inbox>> = {
            let registry = self.hub.registry();
            let Some(nodes) = registry.subscriptions.get(user) else {
                return Ok(());
            };
            nodes
                .keys()
                .filter_map(|node| registry.nodes.get(node).cloned())
                .collect()
        };
        for inbox in targets {
            // A node that dropped its receiver is simply not woken; it leaves the hub when its
            // `LocalBus` is dropped.
            inbox.deliver(*user, payload.clone());
        }
        Ok(())
    }

    async fn subscribe(&self, user: &UserId) -> Result<(), BusError> {
        let mut registry = self.hub.registry();
        *registry
            .subscriptions
            .entry(*user)
            .or_default()
            .entry(self.id)
            .or_default() += 1;
        Ok(())
    }

    async fn unsubscribe(&self, user: &UserId) -> Result<(), BusError> {
        let mut registry = self.hub.registry();
        let Some(nodes) = registry.subscriptions.get_mut(user) else {
            return Ok(());
        };
        if let Some(count) = nodes.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                nodes.remove(&self.id);
            }
        }
        if nodes.is_empty() {
            registry.subscriptions.remove(user);
        }
        Ok(())
    }

    fn health(&self) -> watch::Receiver<bool> {
        self.inbox.health()
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }

    fn dropped(&self) -> u64 {
        self.inbox.dropped()
    }
}

impl Drop for LocalBus {
    fn drop(&mut self) {
        let mut registry = self.hub.registry();
        registry.nodes.remove(&self.id);
        registry.subscriptions.retain(|_, nodes| {
            nodes.remove(&self.id);
            !nodes.is_empty()
        });
    }
}
