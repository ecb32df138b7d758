//! The Redis bus: pub/sub between relay nodes, with [fred](https://docs.rs/fred) 10.
//!
//! # Topics
//!
//! One channel per user, `ferry:user:{hex}` ([`topic`]): 64 lowercase hexadecimal digits of the
//! user id after [`TOPIC_PREFIX`]. A message is an opaque payload defined by the networking layer.
//!
//! On Redis Cluster, classic `PUBLISH` is broadcast to every shard; sharded pub/sub
//! (`SPUBLISH`/`SSUBSCRIBE`, Redis 7) routes each topic to the shard owning its hash slot and is
//! the way to scale this out. It is not used yet: it needs one subscriber connection per shard
//! and resubscription per slot after a resharding.
//!
//! # Connections
//!
//! Each node holds exactly two Redis connections, whatever the number of users and devices:
//!
//! - the **subscriber**, in subscribed mode, carrying every topic this node wants;
//! - the **publisher**, for `PUBLISH` and the readiness `PING`. fred pipelines concurrent commands
//!   on one connection, so a pool would only add connections.
//!
//! Both reconnect forever with exponential backoff (100 ms doubling up to 2 s by default) and
//! name themselves with `CLIENT SETNAME` (see [`RedisBus::subscriber_name`] and
//! [`RedisBus::publisher_name`]).
//!
//! # Subscriptions and health
//!
//! The bus keeps its own reference counts, user → number of local subscribers: the first
//! [`Bus::subscribe`] of a user sends `SUBSCRIBE`, the last [`Bus::unsubscribe`] sends
//! `UNSUBSCRIBE`, both sent under one lock so Redis sees them in order. fred resolves these two
//! commands as soon as they are written, so each is followed by a `PING` on the same connection
//! (awaited outside the lock, so concurrent subscribes pipeline):
//! when `subscribe` returns Ok, Redis has processed the `SUBSCRIBE` and every later publish
//! reaches this node (a relay can subscribe, then read the log, without a gap). While the link
//! is down they only update the map. This map, not fred, is the
//! truth about what the node wants: fred's `SubscriberClient::manage_subscriptions` resubscribes
//! on reconnect too, but it forgets a channel whose `SUBSCRIBE` failed while disconnected and
//! does not say when it has finished, which health needs. So the subscriber is a plain fred
//! `Client` and a supervisor task does it:
//!
//! 1. fred reports an error on the subscriber connection (closed, reset, failed reconnect) →
//!    health `false`; the relay polls.
//! 2. fred reports a (re)connection → the supervisor subscribes every topic of the map again, in
//!    batches, then health `true`; the relay wakes every local device once.
//! 3. Every heartbeat (2 s by default) the supervisor `PING`s the subscriber connection, which
//!    catches a half-open connection that would otherwise look healthy forever; on a timeout it
//!    forces a reconnection. When the link is down but fred is connected (a resubscription that
//!    failed), the heartbeat retries it. The publisher needs no heartbeat: fred's unresponsive
//!    check closes any connection whose command has gone unanswered for two command timeouts.
//!
//! Commands never queue while Redis is away. During fred's reconnection backoff its client state
//! still reads "connected" (the reconnection is itself a queued command), so its `fail_fast`
//! alone would let commands wait; the bus therefore follows each connection's error and
//! reconnection events itself and fails at once while a link is down. Every command also has
//! fred's `fail_fast`, a timeout and a single attempt, and fred's command buffer is bounded.
//!
//! Messages flow: fred's reader → a broadcast channel (fred's) → the forwarder task → the node's
//! bounded inbox. Losing messages at either step (a lagging broadcast, a full inbox) is counted in
//! [`Bus::dropped`] and makes health blink, see the [bus docs](super).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::UserId;
use fred::prelude::{
    Builder, Client, ClientLike, ClientState, Config, Error as FredError,
    ErrorKind as FredErrorKind, EventInterface, Options, PubsubInterface, ReconnectPolicy, Value,
};
use fred::types::Message;
use fred::types::config::UnresponsiveConfig;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;

use super::{Bus, BusError, BusReceiver, DEFAULT_INBOX_CAPACITY, Delivery, Inbox};
use crate::redact_url;

/// What every topic name starts with; the user id in hex follows.
pub const TOPIC_PREFIX: &str = "ferry:user:";

/// The Redis channel carrying `user`'s wake-ups: `ferry:user:{hex}`.
pub fn topic(user: &UserId) -> String {
    format!("{TOPIC_PREFIX}{}", user.to_hex())
}

/// The user a channel name belongs to, if it is one of ours.
fn user_of(channel: &str) -> Option<UserId> {
    UserId::from_hex(channel.strip_prefix(TOPIC_PREFIX)?).ok()
}

/// How many topics one `SUBSCRIBE` carries when resubscribing after a reconnection.
const RESUBSCRIBE_BATCH: usize = 1000;

/// Settings of a [`RedisBus`]; [`Default`] gives sensible production values.
#[derive(Clone, Debug)]
pub struct RedisBusOptions {
    /// Messages waiting for the node before the bus drops them ([`DEFAULT_INBOX_CAPACITY`]).
    pub inbox_capacity: usize,
    /// Time allowed for the first connection, including the handshake (5 s).
    pub connect_timeout: Duration,
    /// Time allowed for one command — `PUBLISH`, `SUBSCRIBE`, the readiness and heartbeat
    /// `PING` — before it fails (1 s).
    pub command_timeout: Duration,
    /// First delay before reconnecting; it doubles after each failed attempt (100 ms).
    pub reconnect_min_delay: Duration,
    /// Longest delay between reconnection attempts (2 s).
    pub reconnect_max_delay: Duration,
    /// How often the subscriber connection is checked with a `PING` (2 s).
    pub heartbeat_interval: Duration,
}

impl Default for RedisBusOptions {
    fn default() -> Self {
        Self {
            inbox_capacity: DEFAULT_INBOX_CAPACITY,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(1),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(2),
        }
    }
}

impl RedisBusOptions {
    /// Per-command options: fail at once while disconnected, give up after `command_timeout`,
    /// never retry (a retried `PUBLISH` could arrive twice; a lost `SUBSCRIBE` is redone by the
    /// supervisor). Pairing (`crate::pairing::RedisPairing`) uses the same.
    pub(crate) fn command(&self) -> Options {
        Options {
            fail_fast: true,
            timeout: Some(self.command_timeout),
            max_attempts: Some(1),
            ..Options::default()
        }
    }
}

/// Reference counts of the users this node is subscribed to.
type Topics = Arc<Mutex<HashMap<UserId, usize>>>;

/// A node on the Redis bus. Made with [`RedisBus::connect`]; not `Clone` (share it as
/// `Arc<dyn Bus>`). Dropping it closes its connections.
pub struct RedisBus {
    publisher: Client,
    /// Whether the publisher connection is up, from its error and reconnection events.
    publisher_up: Arc<AtomicBool>,
    subscriber: Client,
    topics: Topics,
    inbox: Arc<Inbox>,
    options: RedisBusOptions,
    /// The URL with its password redacted, for logs.
    url: String,
    tasks: Vec<JoinHandle<()>>,
}

impl RedisBus {
    /// Connects a node to Redis at `url` (`redis://[user:password@]host[:port][/db]`, or
    /// `rediss://` with TLS when fred is built with it), and returns it with the node's receiver.
    ///
    /// Redis must be reachable now, so a wrong URL or password is reported at startup; after
    /// that the bus survives outages by itself.
    pub async fn connect(
        url: &str,
        options: RedisBusOptions,
    ) -> Result<(RedisBus, BusReceiver), BusError> {
        let shown = redact_url(url);
        let config = Config::from_url(url).map_err(|error| BusError::InvalidUrl {
            url: shown.clone(),
            reason: error.details().to_owned(),
        })?;
        let builder = builder(config, &options);
        let build = |builder: &Builder| {
            builder.build().map_err(|error| BusError::InvalidUrl {
                url: shown.clone(),
                reason: error.details().to_owned(),
            })
        };
        let publisher = build(&builder)?;
        let subscriber = build(&builder)?;

        // Listen before connecting, so the first events are not missed.
        let messages = subscriber.message_rx();
        let errors = subscriber.error_rx();
        let reconnects = subscriber.reconnect_rx();
        let publisher_errors = publisher.error_rx();
        let publisher_reconnects = publisher.reconnect_rx();

        let connected = tokio::time::timeout(options.connect_timeout, async {
            publisher.init().await?;
            subscriber.init().await
        })
        .await;
        let failure = match connected {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!(
                "no connection within {:?}",
                options.connect_timeout
            )),
        };
        if let Some(reason) = failure {
            let _ = publisher.quit().await;
            let _ = subscriber.quit().await;
            return Err(BusError::Connect { url: shown, reason });
        }

        let (inbox, rx) = Inbox::new(options.inbox_capacity, true);
        let topics = Topics::default();
        let publisher_up = Arc::new(AtomicBool::new(true));
        let forwarder = tokio::spawn(forward(messages, Arc::clone(&inbox)));
        let publisher_watch = tokio::spawn(watch_publisher(
            publisher_errors,
            publisher_reconnects,
            Arc::clone(&publisher_up),
            shown.clone(),
        ));
        let supervisor = tokio::spawn(
            Supervisor {
                subscriber: subscriber.clone(),
                topics: Arc::clone(&topics),
                inbox: Arc::clone(&inbox),
                options: options.clone(),
                url: shown.clone(),
            }
            .run(errors, reconnects),
        );
        tracing::info!(url = %shown, subscriber = %subscriber.id(), "wake-up bus connected to Redis");
        let bus = RedisBus {
            publisher,
            publisher_up,
            subscriber,
            topics,
            inbox,
            options,
            url: shown,
            tasks: vec![forwarder, supervisor, publisher_watch],
        };
        Ok((bus, rx))
    }

    /// The name of the subscriber connection in `CLIENT LIST` (set with `CLIENT SETNAME`), to
    /// tell this node's connection apart from the others.
    pub fn subscriber_name(&self) -> &str {
        self.subscriber.id()
    }

    /// The name of the publisher connection in `CLIENT LIST`.
    pub fn publisher_name(&self) -> &str {
        self.publisher.id()
    }

    /// How many distinct users this node is subscribed to.
    pub async fn subscribed_users(&self) -> usize {
        self.topics.lock().await.len()
    }

    /// Closes both connections and stops the bus's tasks; health goes `false` for good. Dropping
    /// the bus does the same without waiting.
    pub async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.inbox.set_link(false);
        let _ = self.subscriber.quit().await;
        let _ = self.publisher.quit().await;
        tracing::info!(url = %self.url, "wake-up bus disconnected from Redis (shutdown)");
    }
}

/// The fred builder for both connections (and for the pairing registry's two).
pub(crate) fn builder(mut config: Config, options: &RedisBusOptions) -> Builder {
    // The first connection reports its error instead of retrying forever; later ones reconnect.
    config.fail_fast = true;
    let millis = |duration: Duration| u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|connection| {
            connection.connection_timeout = options.connect_timeout;
            connection.internal_command_timeout = options.connect_timeout;
            connection.auto_client_setname = true;
            connection.max_command_attempts = 1;
            // Bounded, on top of `fail_fast`: nothing piles up behind a slow Redis either.
            connection.max_command_buffer_len = options.inbox_capacity.max(1024);
            // A connection whose command has had no answer for two command timeouts is dead
            // (half-open: the peer vanished without a FIN): fred closes it and reconnects.
            connection.unresponsive = UnresponsiveConfig {
                max_timeout: Some(options.command_timeout * 2),
                interval: (options.command_timeout / 4).max(Duration::from_millis(50)),
            };
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = options.command_timeout;
            // fred's broadcast of incoming messages to the forwarder; it only has to absorb
            // bursts while the forwarder is scheduled, lagging is counted as dropped.
            performance.broadcast_channel_capacity = options.inbox_capacity.clamp(32, 4096);
        })
        .set_policy(ReconnectPolicy::new_exponential(
            0, // forever
            millis(options.reconnect_min_delay).max(1),
            millis(options.reconnect_max_delay).max(1),
            2,
        ));
    builder
}

#[async_trait::async_trait]
impl Bus for RedisBus {
    async fn publish(&self, user: &UserId, payload: Bytes) -> Result<(), BusError> {
        if !self.publisher_up.load(Ordering::Relaxed) {
            return Err(BusError::Down);
        }
        self.publisher
            .with_options(&self.options.command())
            .publish::<i64, _, _>(topic(user), payload)
            .await
            .map(|_receivers| ())
            .map_err(|error| bus_error(&error, self.options.command_timeout))
    }

    async fn subscribe(&self, user: &UserId) -> Result<(), BusError> {
        let mut topics = self.topics.lock().await;
        let count = topics.entry(*user).or_default();
        *count += 1;
        let first = *count == 1;
        // Checked under the lock, as the supervisor reports "up" under it: either the supervisor
        // has resubscribed already, or it will include this user.
        if !self.inbox.link_up() {
            return Err(BusError::Down);
        }
        let command = self.options.command();
        let subscriber = self.subscriber.with_options(&command);
        // The first SUBSCRIBE is sent under the lock, so Redis sees each topic's SUBSCRIBE and
        // UNSUBSCRIBE in order. The barrier is awaited outside it, so concurrent subscribes
        // pipeline their round trips; later subscribers of the user wait for it too, since the
        // SUBSCRIBE they rely on may still be in flight.
        let sent = if first {
            subscriber.subscribe(topic(user)).await
        } else {
            Ok(())
        };
        drop(topics);
        let result = match sent {
            Ok(()) => subscriber.ping::<Value>(None).await.map(drop),
            Err(error) => Err(error),
        };
        result.map_err(|error| self.lost_subscription(&error))
    }

    async fn unsubscribe(&self, user: &UserId) -> Result<(), BusError> {
        let mut topics = self.topics.lock().await;
        let Some(count) = topics.get_mut(user) else {
            return Ok(());
        };
        *count -= 1;
        if *count > 0 {
            return Ok(());
        }
        topics.remove(user);
        // A failed or skipped UNSUBSCRIBE leaves at worst a topic that brings a few extra
        // wake-ups, until the next reconnection forgets it; not worth a resynchronisation.
        if !self.inbox.link_up() {
            return Ok(());
        }
        let command = self.options.command();
        let subscriber = self.subscriber.with_options(&command);
        let sent = subscriber.unsubscribe(topic(user)).await;
        drop(topics);
        let result = match sent {
            Ok(()) => subscriber.ping::<Value>(None).await.map(drop),
            Err(error) => Err(error),
        };
        result.map_err(|error| bus_error(&error, self.options.command_timeout))
    }

    fn health(&self) -> watch::Receiver<bool> {
        self.inbox.health()
    }

    /// Ok when the subscriber is connected and subscribed and the publisher answers `PING`
    /// within the command timeout.
    async fn ping(&self) -> Result<(), BusError> {
        if !self.inbox.link_up() || !self.publisher_up.load(Ordering::Relaxed) {
            return Err(BusError::Down);
        }
        self.publisher
            .with_options(&self.options.command())
            .ping::<Value>(None)
            .await
            .map(|_| ())
            .map_err(|error| bus_error(&error, self.options.command_timeout))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn dropped(&self) -> u64 {
        self.inbox.dropped()
    }
}

impl RedisBus {
    /// A `SUBSCRIBE` failed: the topic stays in the map, health goes down so the relay polls, and
    /// the supervisor's next heartbeat subscribes everything again.
    fn lost_subscription(&self, error: &FredError) -> BusError {
        if self.inbox.link_up() {
            tracing::warn!(error = %error, "wake-up bus: SUBSCRIBE failed; polling until resubscribed");
        }
        self.inbox.set_link(false);
        bus_error(error, self.options.command_timeout)
    }
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("url", &self.url)
            .field("subscriber", &self.subscriber.id())
            .field("publisher", &self.publisher.id())
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.inbox.set_link(false);
        // `quit` is async; without a runtime (the process is ending) the sockets close with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (subscriber, publisher) = (self.subscriber.clone(), self.publisher.clone());
            runtime.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = publisher.quit().await;
            });
        }
    }
}

/// Maps a fred error to what the caller can act on.
fn bus_error(error: &FredError, timeout: Duration) -> BusError {
    match error.kind() {
        FredErrorKind::Timeout => BusError::Timeout(timeout),
        FredErrorKind::Canceled | FredErrorKind::IO => BusError::Down,
        _ => BusError::Backend(error.to_string()),
    }
}

/// Moves messages from fred's broadcast channel into the node's inbox, never waiting for room.
async fn forward(mut messages: broadcast::Receiver<Message>, inbox: Arc<Inbox>) {
    loop {
        match messages.recv().await {
            Ok(message) => {
                let Some(user) = user_of(&message.channel) else {
                    tracing::debug!(channel = %&*message.channel, "wake-up bus: ignoring a message on a foreign channel");
                    continue;
                };
                let payload = message.value.into_bytes().unwrap_or_default();
                if inbox.deliver(user, payload) == Delivery::Closed {
                    tracing::debug!("wake-up bus: the node dropped its receiver; forwarder stops");
                    return;
                }
            }
            Err(RecvError::Lagged(missed)) => inbox.lost(missed),
            Err(RecvError::Closed) => return,
        }
    }
}

/// Follows the publisher connection: down on an error, up on a (re)connection.
async fn watch_publisher(
    mut errors: broadcast::Receiver<ConnectionError>,
    mut reconnects: broadcast::Receiver<fred::prelude::Server>,
    up: Arc<AtomicBool>,
    url: String,
) {
    loop {
        tokio::select! {
            // Errors first: an error sent before a reconnection must not be applied after it.
            biased;
            error = errors.recv() => match error {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if up.swap(false, Ordering::Relaxed) {
                        tracing::info!(url = %url, "wake-up bus lost its Redis publisher connection; reconnecting");
                    }
                }
                Err(RecvError::Closed) => return,
            },
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if !up.swap(true, Ordering::Relaxed) {
                        tracing::info!(url = %url, "wake-up bus publisher reconnected to Redis");
                    }
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// The task that keeps the subscriber connection subscribed, and health true to it.
struct Supervisor {
    subscriber: Client,
    topics: Topics,
    inbox: Arc<Inbox>,
    options: RedisBusOptions,
    url: String,
}

type ConnectionError = (FredError, Option<fred::prelude::Server>);

impl Supervisor {
    async fn run(
        self,
        mut errors: broadcast::Receiver<ConnectionError>,
        mut reconnects: broadcast::Receiver<fred::prelude::Server>,
    ) {
        let mut heartbeat = tokio::time::interval(
            self.options
                .heartbeat_interval
                .max(Duration::from_millis(10)),
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await; // The first tick is immediate.
        // fred reports the first connection as a reconnection too; `connect` has reported it.
        let mut initial = true;
        loop {
            tokio::select! {
                // Errors first: an error sent before a reconnection must not be applied after it.
                biased;
                error = errors.recv() => match error {
                    Ok((error, _server)) => self.link_lost(&error.to_string()),
                    Err(RecvError::Lagged(_)) => self.link_lost("several connection errors"),
                    Err(RecvError::Closed) => return,
                },
                reconnect = reconnects.recv() => match reconnect {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if !std::mem::take(&mut initial) {
                            // A new connection means the old one is gone, with whatever was
                            // published meanwhile, even if no error was seen: blink.
                            self.link_lost("reconnected");
                        }
                        self.resubscribe().await;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = heartbeat.tick() => self.check().await,
            }
            if self.inbox.is_closed() {
                tracing::debug!("wake-up bus: the node dropped its receiver; supervisor stops");
                return;
            }
        }
    }

    fn link_lost(&self, why: &str) {
        if self.inbox.link_up() {
            tracing::info!(url = %self.url, error = why, "wake-up bus lost its Redis connection; polling until it is back");
        }
        self.inbox.set_link(false);
    }

    /// Subscribes every wanted topic again, then reports the link up.
    async fn resubscribe(&self) {
        let topics = self.topics.lock().await;
        let names: Vec<String> = topics.keys().map(topic).collect();
        let command = self.options.command();
        for batch in names.chunks(RESUBSCRIBE_BATCH) {
            let subscribed = self
                .subscriber
                .with_options(&command)
                .subscribe(batch.to_vec())
                .await;
            if let Err(error) = subscribed {
                tracing::warn!(error = %error, "wake-up bus: resubscribing failed; retrying at the next heartbeat");
                self.inbox.set_link(false);
                return;
            }
        }
        // SUBSCRIBE resolves when written; the PING reply means Redis has processed them all.
        if let Err(error) = self
            .subscriber
            .with_options(&command)
            .ping::<Value>(None)
            .await
        {
            tracing::warn!(error = %error, "wake-up bus: resubscribing failed; retrying at the next heartbeat");
            self.inbox.set_link(false);
            return;
        }
        // Still under the lock: no subscribe can slip in between the last batch and "up".
        if !self.inbox.link_up() {
            tracing::info!(url = %self.url, users = names.len(), "wake-up bus connected to Redis and subscribed");
        }
        self.inbox.set_link(true);
    }

    /// The heartbeat: a `PING` on the subscriber connection while up, a resubscription while down
    /// but connected.
    async fn check(&self) {
        if self.inbox.link_up() {
            let pinged = self
                .subscriber
                .with_options(&self.options.command())
                .ping::<Value>(None)
                .await;
            if let Err(error) = pinged {
                self.link_lost(&format!("heartbeat PING failed: {error}"));
                // Half-open connections look healthy forever; start over. The reconnection event
                // resubscribes.
                let _ = tokio::time::timeout(
                    self.options.connect_timeout,
                    self.subscriber.force_reconnection(),
                )
                .await;
            }
        } else if self.subscriber.state() == ClientState::Connected {
            self.resubscribe().await;
        }
    }
}
