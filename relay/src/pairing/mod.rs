//! Pairing slots: the relay's only part in pairing is to route opaque PAKE messages between
//! an inviter (an authenticated device) and a joiner (an anonymous session) by slot number.
//!
//! # Rules (both registries keep them)
//!
//! A slot is opened by the inviter, accepts exactly one join, and is burned when either side
//! closes it, when the inviter leaves, or when it expires. A burned slot stays as a tombstone
//! until its expiry so that a second use of the same code is told "code already used", and an
//! expired one answers "expired" for one more lifetime: a slot number is given out again only
//! twice the code's lifetime after it was opened, so a code someone may still type never
//! reaches a newer pairing.
//!
//! The relay picks the slot number: the smallest free one ≥ 1 ([`FIRST_SLOT`]..=[`LAST_SLOT`]),
//! so codes stay short, as Magic Wormhole's nameplates. The number is public (it only routes;
//! the six secret digits are the password), so nothing is gained by spreading slots out: a
//! scanner finds the open ones by trying, and gets one guess in 10^6 at each. Finding it costs
//! one look per taken number below it; numbers are taken only by the pairings of the last two
//! code lifetimes, and a user has one live pairing at a time.
//!
//! A user has at most one live (open, not burned) slot at a time: one session cannot take all
//! the slots (they stay tombstoned for the code's lifetime), and a second `PairOpen` of the same
//! user is refused with `rate_limited` until the first pairing ends.
//!
//! Messages between the two ends are delivered in the order sent, each at most once. A message
//! that cannot be delivered (the other end is gone, or not reading) burns the slot: the pairing
//! fails with `unavailable`, it never waits.
//!
//! # Two registries
//!
//! - [`LocalPairing`] (`local.rs`): the slots in this node's memory. The embedded relay and any
//!   node without Redis: both ends of a pairing must reach the same node.
//! - [`RedisPairing`] (`redis.rs`): the slots in Redis, shared by every node on it, so the inviter
//!   and the joiner may be connected to different nodes behind a load balancer. Chosen whenever
//!   the relay runs with `--redis-url`.
//!
//! The relay stays blind either way: it stores who the two ends are, never what they say.

pub mod local;
pub mod redis;

use std::sync::Arc;

use ferry_protocol::{ErrorCode, UserId};

use crate::mailbox::Mailbox;

pub use local::LocalPairing;
pub use redis::{DEFAULT_KEY_PREFIX, RedisPairing, RedisPairingOptions};

/// One end of a pairing: the session id and its queue of frames to send.
#[derive(Debug, Clone)]
pub struct Party {
    /// Session id (unique per node).
    pub session: u64,
    /// Frames for that session's writer.
    pub frames: Arc<Mailbox>,
}

/// The smallest slot number the relay assigns (0 is never used, so `0-…` is no code).
pub const FIRST_SLOT: u16 = 1;
/// The largest slot number: when every one is taken (open or a tombstone), opening is refused
/// with `pairing_slot_taken` until one expires.
pub const LAST_SLOT: u16 = u16::MAX;

/// Where pairing slots live. See the [module docs](self) for the rules every registry keeps.
///
/// Frames for a party (`PairPeer`, `PairClosed`) arrive on its [`Party::frames`] queue; the
/// results here are the answers to the caller's own frame.
#[async_trait::async_trait]
pub trait PairingRegistry: Send + Sync + std::fmt::Debug + 'static {
    /// The inviter, a device of `user`, opens a slot: the smallest free number. Returns the
    /// slot and its expiry in Unix milliseconds.
    async fn open(&self, inviter: Party, user: UserId) -> Result<(u16, u64), ErrorCode>;

    /// A joiner's first message for `slot`: the slot is now taken by this joiner, and `body`
    /// goes to the inviter.
    async fn join(&self, slot: u16, joiner: Party, body: Vec<u8>) -> Result<(), ErrorCode>;

    /// Forwards `body` from one end of `slot` (session `from` on this node) to the other.
    async fn forward(&self, slot: u16, from: u64, body: Vec<u8>) -> Result<(), ErrorCode>;

    /// One end closes `slot`; it is burned and the other end is told.
    async fn close(&self, slot: u16, from: u64, success: bool) -> Result<(), ErrorCode>;

    /// A session of this node ended: burn its slots and tell the other ends.
    async fn session_ended(&self, session: u64);

    /// A short name for logs: "in-process" / "redis".
    fn kind(&self) -> &'static str;

    /// Stops background work and closes connections (the node is stopping; its sessions have
    /// ended).
    async fn shutdown(&self) {}
}
