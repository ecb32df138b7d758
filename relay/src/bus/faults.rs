//! A [`Bus`] wrapper that loses messages on purpose: with
//! [`Server::spawn_with_store`](crate::Server::spawn_with_store), the seam tests use to check
//! that nothing depends on a wake-up arriving (Redis pub/sub is at most once).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ferry_protocol::UserId;
use tokio::sync::watch;

use super::{Bus, BusError};

/// A [`Bus`] whose next publishes can be dropped silently (reported as sent).
#[derive(Debug)]
pub struct FaultyBus {
    inner: Arc<dyn Bus>,
    drop_next: AtomicUsize,
    dropped: AtomicUsize,
}

impl FaultyBus {
    /// Wraps `inner`; it behaves exactly like `inner` until told otherwise.
    pub fn new(inner: Arc<dyn Bus>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            drop_next: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
        })
    }

    /// The next `n` publishes are lost (the publisher is told they went out).
    pub fn drop_next_publishes(&self, n: usize) {
        self.drop_next.store(n, Ordering::SeqCst);
    }

    /// Publishes lost on purpose so far.
    pub fn lost(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Bus for FaultyBus {
    async fn publish(&self, user: &UserId, payload: Bytes) -> Result<(), BusError> {
        let lose = self
            .drop_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            self.dropped.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        self.inner.publish(user, payload).await
    }

    async fn subscribe(&self, user: &UserId) -> Result<(), BusError> {
        self.inner.subscribe(user).await
    }

    async fn unsubscribe(&self, user: &UserId) -> Result<(), BusError> {
        self.inner.unsubscribe(user).await
    }

    fn health(&self) -> watch::Receiver<bool> {
        self.inner.health()
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.inner.ping().await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
}
