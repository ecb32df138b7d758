//! The Redis registry: pairing slots shared by every relay node on one Redis, so an inviter on
//! one node and a joiner on another can pair (see the [rules](super)).
//!
//! # State
//!
//! Every transition of a slot is one call of one Lua script (`slots.lua`), which Redis runs
//! alone: two joins racing for a slot from two nodes are two scripts, one after the other, and
//! only the first finds the slot open.
//!
//! Opening takes two calls: `pick` finds the smallest free number, the node tracks it (so a
//! join that follows at once finds its inviter), then `open` claims it. Two nodes that picked
//! the same number both run `open`; Redis runs one first, the other is told "taken" and picks
//! again from the next number, so no number is ever given to two pairings. Keys, under [`RedisPairingOptions::key_prefix`]:
//!
//! | key | what | lives |
//! | --- | --- | --- |
//! | `slot:{n}` | hash: state (open, joined, burned), the user, both ends as (node, session), expiry, messages forwarded | twice the code's lifetime: a tombstone, then "expired" for late joins; the number is free once it is gone |
//! | `user:{hex}` | the user's live slot number (one per user, across nodes) | the code's lifetime; deleted when its slot burns |
//! | `node:{id}` | this node is alive | [`RedisPairingOptions::node_ttl`], refreshed every heartbeat |
//!
//! Expiry is by Redis's clock (`TIME`), one clock for every node. Nothing lives forever: a node
//! that dies leaves keys that expire with the code, and its `node:` key expires within
//! `node_ttl`, after which other nodes treat its slots as burned (a join is told "code already
//! used", its user may open another slot, and a joiner paired with it is told `unavailable`).
//!
//! # Messages
//!
//! The script that accepts a message also publishes it on the channel `to:{node}` of the node
//! holding the other end, in the same atomic step (`kind|slot|session|payload`). Each node has
//! one subscriber connection on its own channel and hands each message to the session's queue.
//! A session's frames are handled one after the other and Redis keeps the order of one
//! connection's scripts and of one channel's messages, so messages arrive in order; pub/sub
//! delivers each at most once.
//!
//! Pub/sub may also lose messages. A pairing never waits for a lost one: a `PUBLISH` that
//! reaches no subscriber burns the slot and answers `unavailable`; a subscriber connection that
//! drops or falls behind fails every pairing of this node with `PairClosed(unavailable)` (and
//! burns their slots, telling the other ends); a heartbeat that has not reached Redis for
//! `node_ttl` does the same, since other nodes now think this one dead. The heartbeat also
//! checks this node's pairings: one whose other end's node died, or whose slot burned without
//! word reaching this node, is closed with `unavailable`. Both clients also have their own
//! pairing timeouts.
//!
//! # Hostile clients
//!
//! - Guessing: a join burns the slot it reaches (one guess per code, as in memory); joins are
//!   limited per address on each node (`--pair-joins-per-ip-per-minute`).
//! - Messages for a slot the session is not an end of are refused on this node, without a
//!   Redis round trip; each slot forwards at most [`RedisPairingOptions::max_messages`]
//!   messages (a pairing needs four), then burns, so a pairing cannot be turned into a pipe.
//! - The relay stays blind: it stores which sessions are the two ends, never what they say.
//!
//! # Connections
//!
//! Two per node, besides the bus's two: one for the scripts (and the heartbeat) and one
//! subscriber. Both are built like the bus's (timeouts, one attempt per command, reconnection
//! with backoff).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_protocol::{ErrorCode, ServerFrame, UserId};
use fred::prelude::{
    Client, ClientLike, ClientState, Config, Error as FredError, EventInterface, PubsubInterface,
    Value,
};
use fred::types::{ClusterHash, CustomCommand, Message};
use rand_core::{OsRng, RngCore};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;

use super::{FIRST_SLOT, LAST_SLOT, PairingRegistry, Party};
use crate::bus::{BusError, RedisBusOptions};
use crate::mailbox::Mailbox;
use crate::redact_url;
use crate::sync::lock;

/// The script behind every slot transition.
const SCRIPT: &str = include_str!("slots.lua");

/// Where pairing keys and channels live by default. The braces are a Redis Cluster hash tag:
/// every pairing key falls in one hash slot, so one script may touch several.
pub const DEFAULT_KEY_PREFIX: &str = "ferry:{pairing}:";

/// Settings of a [`RedisPairing`].
#[derive(Clone, Debug)]
pub struct RedisPairingOptions {
    /// Prefix of every key and channel ([`DEFAULT_KEY_PREFIX`]); two relay clusters sharing
    /// one Redis need two prefixes.
    pub key_prefix: String,
    /// How long a code stays valid (`--pairing-ttl-secs`).
    pub ttl: Duration,
    /// How long a node counts as alive after its last heartbeat (10 s).
    pub node_ttl: Duration,
    /// How often the node refreshes its liveness and checks its pairings (2 s).
    pub heartbeat: Duration,
    /// Most messages forwarded through one slot, both ends together (64).
    pub max_messages: u32,
    /// Timeouts and reconnection, as the bus's.
    pub connection: RedisBusOptions,
}

impl Default for RedisPairingOptions {
    fn default() -> Self {
        Self {
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            ttl: Duration::from_secs(600),
            node_ttl: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            max_messages: 64,
            connection: RedisBusOptions::default(),
        }
    }
}

/// Pairing slots in Redis. Made with [`RedisPairing::connect`]; dropping it stops its tasks and
/// closes its connections (like a crash, as far as other nodes can tell: call
/// [`PairingRegistry::shutdown`] to leave cleanly).
pub struct RedisPairing {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    commands: Client,
    subscriber: Client,
    /// This node's id in keys and channels: 16 hexadecimal digits, random at each start.
    node: String,
    options: RedisPairingOptions,
    /// This node's ends of pairings, by session.
    parties: Mutex<HashMap<u64, LocalParty>>,
    /// Slots to burn that Redis did not answer for: retried until it does.
    pending: Mutex<Vec<Leave>>,
    retry: Notify,
    /// Whether the subscriber is subscribed (messages can reach this node).
    subscribed: AtomicBool,
    /// When Redis last confirmed this node alive.
    last_alive: Mutex<Instant>,
    /// The URL with its password redacted, for logs.
    url: String,
}

/// One session's part in pairings on this node.
struct LocalParty {
    frames: Arc<Mailbox>,
    /// Slot → whether the last check found it burned without word from the other end.
    slots: HashMap<u16, bool>,
}

/// A slot to burn for one of its ends, telling the other end `code`.
#[derive(Clone, Copy, Debug)]
struct Leave {
    slot: u16,
    session: u64,
    code: ErrorCode,
}

impl RedisPairing {
    /// Connects to Redis at `url` (as the bus does) and registers this node.
    ///
    /// Redis must be reachable now; after that the registry reconnects by itself, failing the
    /// pairings in progress on this node whenever messages may have been lost.
    pub async fn connect(url: &str, options: RedisPairingOptions) -> Result<Self, BusError> {
        let shown = redact_url(url);
        let invalid = |error: FredError| BusError::InvalidUrl {
            url: shown.clone(),
            reason: error.details().to_owned(),
        };
        let config = Config::from_url(url).map_err(invalid)?;
        let builder = crate::bus::redis::builder(config, &options.connection);
        let commands = builder.build().map_err(invalid)?;
        let subscriber = builder.build().map_err(invalid)?;
        let messages = subscriber.message_rx();
        let errors = subscriber.error_rx();
        let reconnects = subscriber.reconnect_rx();

        let mut node = [0; 8];
        OsRng.fill_bytes(&mut node);
        let shared = Arc::new(Shared {
            commands,
            subscriber,
            node: node.iter().map(|b| format!("{b:02x}")).collect(),
            options,
            parties: Mutex::default(),
            pending: Mutex::default(),
            retry: Notify::new(),
            subscribed: AtomicBool::new(false),
            last_alive: Mutex::new(Instant::now()),
            url: shown.clone(),
        });
        let timeout = shared.options.connection.connect_timeout;
        let started = tokio::time::timeout(timeout, async {
            shared.commands.init().await?;
            shared.subscriber.init().await?;
            shared.alive().await?;
            shared.subscribe().await
        })
        .await;
        let failure = match started {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no connection within {timeout:?}")),
        };
        if let Some(reason) = failure {
            let _ = shared.commands.quit().await;
            let _ = shared.subscriber.quit().await;
            return Err(BusError::Connect { url: shown, reason });
        }
        let tasks = vec![
            tokio::spawn(receive(Arc::clone(&shared), messages)),
            tokio::spawn(supervise(Arc::clone(&shared), errors, reconnects)),
        ];
        tracing::info!(url = %shown, node = %shared.node, "pairing slots shared through Redis");
        Ok(Self { shared, tasks })
    }

    /// This node's id in pairing keys and channels.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }
}

#[async_trait::async_trait]
impl PairingRegistry for RedisPairing {
    async fn open(&self, inviter: Party, user: UserId) -> Result<(u16, u64), ErrorCode> {
        let shared = &self.shared;
        shared.ready()?;
        let session = inviter.session;
        let mut from = FIRST_SLOT;
        // Each lost race moves past the number another node claimed: this ends.
        loop {
            let picked = shared
                .run("pick", from, session, vec![LAST_SLOT.to_string().into()])
                .await;
            let slot = match picked {
                Ok((status, values)) if status == "ok" => match values.get(1) {
                    Some(&n) if (u64::from(from)..=u64::from(LAST_SLOT)).contains(&n) => n as u16,
                    _ => return Err(ErrorCode::Internal),
                },
                Ok((status, _)) => return Err(refusal(&status)),
                Err(error) => {
                    tracing::warn!(error = %error, "pairing: Redis did not answer; no slot opened");
                    return Err(ErrorCode::Unavailable);
                }
            };
            // Tracked first: a join may follow the script at once.
            let new = shared.track(&inviter, slot);
            let ttl = shared.options.ttl.as_millis().to_string();
            let reply = shared
                .run(
                    "open",
                    slot,
                    session,
                    vec![user.to_hex().into(), ttl.into()],
                )
                .await;
            match reply {
                Ok((status, values)) if status == "ok" => {
                    return values
                        .first()
                        .map(|&expires_at| (slot, expires_at))
                        .ok_or(ErrorCode::Internal);
                }
                Ok((status, _)) => {
                    if new {
                        shared.untrack(session, slot);
                    }
                    if status != "taken" || slot == LAST_SLOT {
                        return Err(refusal(&status));
                    }
                    from = slot + 1;
                }
                Err(error) => return Err(shared.uncertain(slot, session, &error)),
            }
        }
    }

    async fn join(&self, slot: u16, joiner: Party, body: Vec<u8>) -> Result<(), ErrorCode> {
        let shared = &self.shared;
        if slot < FIRST_SLOT {
            return Err(ErrorCode::PairingUnknownCode);
        }
        shared.ready()?;
        let session = joiner.session;
        let new = shared.track(&joiner, slot);
        match shared
            .run("join", slot, session, vec![Value::Bytes(body.into())])
            .await
        {
            Ok((status, _)) if status == "ok" => Ok(()),
            Ok((status, _)) => {
                if new {
                    shared.untrack(session, slot);
                }
                Err(refusal(&status))
            }
            Err(error) => Err(shared.uncertain(slot, session, &error)),
        }
    }

    async fn forward(&self, slot: u16, from: u64, body: Vec<u8>) -> Result<(), ErrorCode> {
        let shared = &self.shared;
        if !shared.tracks(from, slot) {
            return Err(ErrorCode::PairingUnknownCode);
        }
        let args = vec![
            Value::Bytes(body.into()),
            shared.options.max_messages.to_string().into(),
            ErrorCode::RateLimited.number().to_string().into(),
        ];
        match shared.run("forward", slot, from, args).await {
            Ok((status, _)) if status == "ok" => Ok(()),
            // Not joined yet, or burned and the word is on its way: still tracked.
            Ok((status, _)) if status == "unknown" => Err(ErrorCode::PairingUnknownCode),
            Ok((status, _)) => {
                shared.untrack(from, slot);
                Err(refusal(&status))
            }
            Err(error) => Err(shared.uncertain(slot, from, &error)),
        }
    }

    async fn close(&self, slot: u16, from: u64, success: bool) -> Result<(), ErrorCode> {
        let shared = &self.shared;
        if !shared.tracks(from, slot) {
            return Err(ErrorCode::PairingUnknownCode);
        }
        let code = if success {
            String::new()
        } else {
            ErrorCode::PairingFailed.number().to_string()
        };
        match shared.run("close", slot, from, vec![code.into()]).await {
            Ok((status, _)) if status == "ok" => {
                shared.untrack(from, slot);
                Ok(())
            }
            Ok((status, _)) => Err(refusal(&status)),
            Err(error) => Err(shared.uncertain(slot, from, &error)),
        }
    }

    async fn session_ended(&self, session: u64) {
        let party = lock(&self.shared.parties).remove(&session);
        let Some(party) = party else {
            return;
        };
        for &slot in party.slots.keys() {
            self.shared
                .leave(Leave {
                    slot,
                    session,
                    code: ErrorCode::Unavailable,
                })
                .await;
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.retry_pending().await;
        // Gone at once rather than after `node_ttl`: other nodes burn what it left behind.
        let _ = self
            .shared
            .run_on("dead", self.shared.node_key(), 0, 0, vec![])
            .await;
        let _ = self.shared.commands.quit().await;
        let _ = self.shared.subscriber.quit().await;
    }
}

impl Shared {
    fn slot_key(&self, slot: u16) -> String {
        format!("{}slot:{slot}", self.options.key_prefix)
    }

    fn node_key(&self) -> String {
        format!("{}node:{}", self.options.key_prefix, self.node)
    }

    fn channel(&self) -> String {
        format!("{}to:{}", self.options.key_prefix, self.node)
    }

    /// Runs operation `op` of the script on `slot` for `session` of this node.
    async fn run(
        &self,
        op: &str,
        slot: u16,
        session: u64,
        extra: Vec<Value>,
    ) -> Result<(String, Vec<u64>), FredError> {
        self.run_on(op, self.slot_key(slot), slot, session, extra)
            .await
    }

    async fn run_on(
        &self,
        op: &str,
        key: String,
        slot: u16,
        session: u64,
        extra: Vec<Value>,
    ) -> Result<(String, Vec<u64>), FredError> {
        let mut args: Vec<Value> = vec![
            SCRIPT.into(),
            1.into(),
            key.into(),
            op.into(),
            self.options.key_prefix.as_str().into(),
            slot.to_string().into(),
            self.node.as_str().into(),
            session.to_string().into(),
        ];
        args.extend(extra);
        let eval = CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false);
        let reply: Vec<Value> = self
            .commands
            .with_options(&self.options.connection.command())
            .custom(eval, args)
            .await?;
        let mut reply = reply.into_iter();
        let status = reply
            .next()
            .and_then(|value| value.as_string())
            .unwrap_or_default();
        Ok((status, reply.filter_map(|value| value.as_u64()).collect()))
    }

    /// Refreshes this node's liveness key.
    async fn alive(&self) -> Result<(), FredError> {
        let ttl = self.options.node_ttl.as_millis().to_string();
        self.run_on("alive", self.node_key(), 0, 0, vec![ttl.into()])
            .await?;
        *lock(&self.last_alive) = Instant::now();
        Ok(())
    }

    /// Subscribes to this node's channel; when it returns Ok, Redis has processed it.
    async fn subscribe(&self) -> Result<(), FredError> {
        let subscriber = self
            .subscriber
            .with_options(&self.options.connection.command());
        subscriber.subscribe(self.channel()).await?;
        subscriber.ping::<Value>(None).await?;
        self.subscribed.store(true, Ordering::Release);
        Ok(())
    }

    /// New pairings start only while messages can reach this node.
    fn ready(&self) -> Result<(), ErrorCode> {
        if self.subscribed.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ErrorCode::Unavailable)
        }
    }

    /// Tracks `slot` for `party`; true if it was not tracked yet.
    fn track(&self, party: &Party, slot: u16) -> bool {
        let mut parties = lock(&self.parties);
        let local = parties.entry(party.session).or_insert_with(|| LocalParty {
            frames: Arc::clone(&party.frames),
            slots: HashMap::new(),
        });
        local.slots.insert(slot, false).is_none()
    }

    fn untrack(&self, session: u64, slot: u16) {
        let mut parties = lock(&self.parties);
        if let Some(party) = parties.get_mut(&session) {
            party.slots.remove(&slot);
            if party.slots.is_empty() {
                parties.remove(&session);
            }
        }
    }

    fn tracks(&self, session: u64, slot: u16) -> bool {
        lock(&self.parties)
            .get(&session)
            .is_some_and(|party| party.slots.contains_key(&slot))
    }

    /// Redis did not answer: the operation may or may not have happened. The pairing cannot
    /// go on either way: stop tracking it, and burn it once Redis answers.
    fn uncertain(&self, slot: u16, session: u64, error: &FredError) -> ErrorCode {
        tracing::warn!(error = %error, slot, "pairing: Redis did not answer; the pairing fails");
        self.untrack(session, slot);
        self.queue(Leave {
            slot,
            session,
            code: ErrorCode::Unavailable,
        });
        ErrorCode::Unavailable
    }

    fn queue(&self, leave: Leave) {
        lock(&self.pending).push(leave);
        self.retry.notify_one();
    }

    /// Burns `leave.slot` for this end, telling the other; queued for later if Redis does not
    /// answer.
    async fn leave(&self, leave: Leave) {
        let code = leave.code.number().to_string();
        if let Err(error) = self
            .run("leave", leave.slot, leave.session, vec![code.into()])
            .await
        {
            tracing::debug!(error = %error, slot = leave.slot, "pairing: burning a slot failed; retrying later");
            lock(&self.pending).push(leave);
        }
    }

    async fn retry_pending(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for leave in pending {
            self.leave(leave).await;
        }
    }

    /// Hands a message from the node's channel to the session it is for.
    fn deliver(&self, message: &[u8]) {
        let Some((kind, slot, session, payload)) = parse(message) else {
            tracing::debug!("pairing: ignoring a malformed message");
            return;
        };
        let mut parties = lock(&self.parties);
        let Some(party) = parties.get_mut(&session) else {
            return;
        };
        if !party.slots.contains_key(&slot) {
            return;
        }
        let remove = match kind {
            b'P' => {
                let frame = ServerFrame::PairPeer {
                    slot,
                    body: payload.to_vec(),
                };
                let full = party.frames.try_send(frame).is_err();
                if full {
                    // Not reading (or gone): the pairing cannot go on.
                    self.queue(Leave {
                        slot,
                        session,
                        code: ErrorCode::Unavailable,
                    });
                }
                full
            }
            b'C' => {
                let code = std::str::from_utf8(payload)
                    .ok()
                    .and_then(|text| text.parse::<u16>().ok())
                    .map(ErrorCode::from);
                let _ = party
                    .frames
                    .try_send(ServerFrame::PairClosed { slot, code });
                true
            }
            _ => false,
        };
        if remove {
            party.slots.remove(&slot);
            if party.slots.is_empty() {
                parties.remove(&session);
            }
        }
    }

    /// Messages for this node may have been lost: every pairing here fails with
    /// `unavailable`, and its slot is burned (the other end told).
    fn fail_all(&self, why: &str) {
        let parties = std::mem::take(&mut *lock(&self.parties));
        if parties.is_empty() {
            return;
        }
        tracing::warn!(url = %self.url, why, pairings = parties.values().map(|p| p.slots.len()).sum::<usize>(), "pairing: messages may have been lost; failing this node's pairings");
        for (session, party) in parties {
            for &slot in party.slots.keys() {
                let _ = party.frames.try_send(ServerFrame::PairClosed {
                    slot,
                    code: Some(ErrorCode::Unavailable),
                });
                self.queue(Leave {
                    slot,
                    session,
                    code: ErrorCode::Unavailable,
                });
            }
        }
    }

    /// One heartbeat: liveness, pending burns, then a look at every pairing of this node.
    async fn heartbeat(&self) {
        if let Err(error) = self.alive().await {
            let since = lock(&self.last_alive).elapsed();
            tracing::debug!(error = %error, "pairing: heartbeat failed");
            if since >= self.options.node_ttl {
                // Other nodes think this one dead and burn its slots.
                self.fail_all("heartbeat not confirmed for the node's time to live");
            }
            return;
        }
        if !self.subscribed.load(Ordering::Acquire)
            && self.subscriber.state() == ClientState::Connected
            && let Err(error) = self.subscribe().await
        {
            tracing::debug!(error = %error, "pairing: resubscribing failed");
        }
        self.retry_pending().await;
        self.check_all().await;
    }

    /// Closes the pairings of this node whose other end's node died, or whose slot burned
    /// without word reaching this node (a lost message: noticed at the second look).
    async fn check_all(&self) {
        let tracked: Vec<(u64, u16)> = lock(&self.parties)
            .iter()
            .flat_map(|(&session, party)| party.slots.keys().map(move |&slot| (session, slot)))
            .collect();
        for (session, slot) in tracked {
            let Ok((status, _)) = self.run("check", slot, session, vec![]).await else {
                continue;
            };
            let mut parties = lock(&self.parties);
            let Some(party) = parties.get_mut(&session) else {
                continue;
            };
            let Some(suspect) = party.slots.get_mut(&slot) else {
                continue;
            };
            let (forget, tell) = match status.as_str() {
                "live" => {
                    *suspect = false;
                    (false, false)
                }
                "burned" if !*suspect => {
                    *suspect = true;
                    (false, false)
                }
                // Opened, never joined, expired: nothing to say (as in memory); or not ours.
                "expired" | "other" => (true, false),
                _ => (true, true),
            };
            if tell {
                let _ = party.frames.try_send(ServerFrame::PairClosed {
                    slot,
                    code: Some(ErrorCode::Unavailable),
                });
            }
            if forget {
                party.slots.remove(&slot);
                if party.slots.is_empty() {
                    parties.remove(&session);
                }
            }
        }
    }
}

/// What a refusal from the script means for the client.
fn refusal(status: &str) -> ErrorCode {
    match status {
        "taken" => ErrorCode::PairingSlotTaken,
        "rate" => ErrorCode::RateLimited,
        "unknown" => ErrorCode::PairingUnknownCode,
        "expired" => ErrorCode::PairingExpired,
        "used" => ErrorCode::PairingCodeUsed,
        "gone" => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// `kind|slot|session|payload` → its parts.
fn parse(message: &[u8]) -> Option<(u8, u16, u64, &[u8])> {
    let mut parts = message.splitn(4, |&b| b == b'|');
    let kind = *parts.next()?.first()?;
    let slot = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let session = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    Some((kind, slot, session, parts.next()?))
}

/// Moves messages from the subscriber to the sessions, never waiting.
async fn receive(shared: Arc<Shared>, mut messages: broadcast::Receiver<Message>) {
    loop {
        match messages.recv().await {
            Ok(message) => {
                if let Some(bytes) = message.value.into_bytes() {
                    shared.deliver(&bytes);
                }
            }
            Err(RecvError::Lagged(_)) => shared.fail_all("the subscriber fell behind"),
            Err(RecvError::Closed) => return,
        }
    }
}

type ConnectionError = (FredError, Option<fred::prelude::Server>);

/// Follows the subscriber connection, runs the heartbeat and retries burns.
async fn supervise(
    shared: Arc<Shared>,
    mut errors: broadcast::Receiver<ConnectionError>,
    mut reconnects: broadcast::Receiver<fred::prelude::Server>,
) {
    let mut heartbeat =
        tokio::time::interval(shared.options.heartbeat.max(Duration::from_millis(10)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await; // The first tick is immediate; `connect` has just done it.
    // fred reports the first connection as a reconnection too.
    let mut initial = true;
    loop {
        tokio::select! {
            biased;
            error = errors.recv() => match error {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    shared.subscribed.store(false, Ordering::Release);
                    shared.fail_all("the subscriber connection failed");
                }
                Err(RecvError::Closed) => return,
            },
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if !std::mem::take(&mut initial) {
                        shared.subscribed.store(false, Ordering::Release);
                        shared.fail_all("the subscriber reconnected");
                        if let Err(error) = shared.subscribe().await {
                            tracing::warn!(error = %error, "pairing: resubscribing failed; retrying at the next heartbeat");
                        }
                    }
                }
                Err(RecvError::Closed) => return,
            },
            () = shared.retry.notified() => shared.retry_pending().await,
            _ = heartbeat.tick() => shared.heartbeat().await,
        }
    }
}

impl std::fmt::Debug for RedisPairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPairing")
            .field("url", &self.shared.url)
            .field("node", &self.shared.node)
            .field("sessions", &lock(&self.shared.parties).len())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisPairing {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (commands, subscriber) =
                (self.shared.commands.clone(), self.shared.subscriber.clone());
            runtime.spawn(async move {
                let _ = commands.quit().await;
                let _ = subscriber.quit().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_bodies_keep_their_bars() {
        assert_eq!(
            parse(b"P|7|42|a|b\0"),
            Some((b'P', 7, 42, b"a|b\0".as_slice()))
        );
        assert_eq!(parse(b"C|999|1|"), Some((b'C', 999, 1, b"".as_slice())));
        assert_eq!(parse(b"P|7|42"), None);
        assert_eq!(parse(b"P|x|42|"), None);
        assert_eq!(parse(b"P|70000|42|"), None);
        assert_eq!(parse(b""), None);
    }
}
