//! What every connection of a relay node shares.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_protocol::{DeviceId, RelayKey};
use tokio::sync::watch;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::pairing::PairingRegistry;
use crate::rate_limit::{KeyedLimiter, NodeLimiter};
use crate::store::Store;
use crate::store::committer::CommitHandle;
use crate::store::conv_committer::ConvCommitHandle;

/// Shared state of one relay node.
#[derive(Debug)]
pub struct Context {
    /// The configuration in force.
    pub config: Config,
    /// The relay identity key (signs handshakes).
    pub key: RelayKey,
    /// The log.
    pub store: Arc<dyn Store>,
    /// Group commit in front of the log.
    pub committer: CommitHandle,
    /// Group commit in front of the conversations (sends and cursors).
    pub conv_committer: ConvCommitHandle,
    /// Connected sessions and the bus.
    pub hub: Arc<Hub>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Handshakes per IP address.
    pub handshake_limiter: KeyedLimiter<IpAddr>,
    /// Appends per device.
    pub append_limiter: KeyedLimiter<DeviceId>,
    /// Cursor writes (`Ack`) per device.
    pub ack_limiter: KeyedLimiter<DeviceId>,
    /// Ephemeral frames per device.
    pub ephemeral_limiter: KeyedLimiter<DeviceId>,
    /// Replays from the database running at once on this node.
    pub replays: tokio::sync::Semaphore,
    /// People requests that write, per device.
    pub people_write_limiter: KeyedLimiter<DeviceId>,
    /// Handle lookups per device.
    pub lookup_device_limiter: KeyedLimiter<DeviceId>,
    /// Handle lookups per client address.
    pub lookup_address_limiter: KeyedLimiter<IpAddr>,
    /// Keys handles for storage.
    pub handle_key: crate::handles::HandleKey,
    /// Mints TURN credentials; `None` when no TURN server is configured.
    pub turn: Option<crate::turn::TurnIssuer>,
    /// TURN credentials per device.
    pub turn_limiter: KeyedLimiter<DeviceId>,
    /// Where attachments' bytes are kept.
    pub blobs: Arc<dyn crate::attachments::BlobStorage>,
    /// Attachment parts put and got per device.
    pub attachment_limiter: KeyedLimiter<DeviceId>,
    /// Wakes devices that have no session (push).
    pub pusher: crate::push::queue::Pusher,
    /// Pairing joins per IP address.
    pub pair_join_limiter: KeyedLimiter<IpAddr>,
    /// Failed pairing joins on this node, from every address.
    pub pair_failed_join_limiter: NodeLimiter,
    /// Pairing slots: in this node's memory, or shared through Redis.
    pub pairing: Box<dyn PairingRegistry>,
    /// Open client connections: HTTP ones waiting for their request, and WebSockets.
    pub connections: AtomicUsize,
    /// Open connections per client address, and sessions per user.
    pub occupancy: crate::server::Occupancy,
    /// `last_seen` times of users and devices, written about once a second.
    pub last_seen: Arc<crate::store::LastSeenWrites>,
    /// Becomes true when the node starts shutting down.
    pub shutdown: watch::Receiver<bool>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    now_ms() / 1000
}
