//! The relay node: `Server::spawn(config)` starts it, `shutdown()` stops it gracefully.
//!
//! Start-up: open the store (running migrations), load or create the relay key, connect the
//! bus, start the committer and the hub, set up the pairing slots (in Redis with
//! `--redis-url`, in memory otherwise), start the retention job, then bind and serve HTTP:
//!
//! | path | what |
//! | --- | --- |
//! | `/ws` | the Ferry protocol over WebSocket (binary messages only) |
//! | `/healthz` | 200 while the process serves |
//! | `/readyz` | 200 when the database and the bus answer, 503 otherwise |
//! | `/metrics` | Prometheus text |
//!
//! With `--admin-listen`, `/readyz` and `/metrics` are served only on that address (the client
//! port answers 404 for them); `/healthz` is on both.
//!
//! Every client connection is counted from the moment it is accepted (before its HTTP request
//! arrives) until its WebSocket closes, globally (`--max-connections`) and per client address
//! (`--max-connections-per-ip`, IPv6 by /64). Headers must arrive within
//! `--http-header-timeout-ms`, which also bounds idle keep-alive connections. The client
//! address is the TCP peer, or, from a `--trusted-proxy`, the rightmost untrusted hop of
//! `X-Forwarded-For`. With `--proxy-protocol`, a connection from a trusted proxy starts with a
//! PROXY protocol header ([`crate::proxy_protocol`]), read before TLS and HTTP within the same
//! deadline; the address it names takes the peer's place.
//!
//! Shutdown: stop accepting, tell every session to stop reading, commit everything queued and
//! answer it, close sockets with 1001 (going away), then close the store.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::{DeviceId, RelayId, UserId};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rand_core::{OsRng, RngCore};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::bus::{self, Bus};
use crate::config::{Config, IpNet};
use crate::context::{Context, now_ms};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::pairing::{LocalPairing, PairingRegistry, RedisPairing, RedisPairingOptions};
use crate::proxy_protocol::{self, Rewind};
use crate::push::queue::{PushSettings, Pusher};
use crate::rate_limit::{KeyedLimiter, NodeLimiter};
use crate::relay_key;
use crate::store::committer::{CommitConfig, Committer};
use crate::store::conv_committer::{ConvCommitConfig, ConvCommitter};
use crate::store::{self, StoreError};

/// The bus a node uses, with the receiver of its incoming messages.
pub type BusParts = (Arc<dyn Bus>, mpsc::Receiver<(UserId, Bytes)>);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The relay key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] relay_key::KeyFileError),
    /// The bus could not be set up.
    #[error("wake-up bus: {0}")]
    Bus(#[from] bus::BusError),
    /// The pairing slots in Redis could not be set up.
    #[error("pairing slots in Redis: {0}")]
    Pairing(bus::BusError),
    /// The TLS certificate or key (`--tls-cert`, `--tls-key`) could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The TURN settings (`--turn-url`, `--turn-secret`, `--turn-secret-file`, ...) are
    /// incomplete or invalid, or the secret file could not be read.
    #[error("TURN: {0}")]
    Turn(#[from] crate::turn::TurnConfigError),
    /// The APNs settings (`--apns-*`) are incomplete, or the key cannot be read.
    #[error("APNs: {0}")]
    Apns(String),
    /// The attachments storage (`--blob-store`) cannot be used.
    #[error("attachments: {0}")]
    Attachments(String),
    /// The listen address could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running relay node.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    relay_id: RelayId,
    key_created: bool,
    context: Arc<Context>,
    stop: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<JoinSet<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Starts a relay node with the bus its configuration names (Redis, or in-process alone).
    pub async fn spawn(config: Config) -> Result<Self, StartError> {
        let bus = match &config.redis_url {
            Some(url) => {
                let (bus, messages) =
                    bus::RedisBus::connect(url, bus::RedisBusOptions::default()).await?;
                (Arc::new(bus) as Arc<dyn Bus>, messages)
            }
            None => {
                let (bus, messages) = bus::LocalBus::standalone();
                (Arc::new(bus) as Arc<dyn Bus>, messages)
            }
        };
        Self::spawn_with_bus(config, bus).await
    }

    /// Starts a relay node on a given bus (tests wire several nodes to one in-process bus).
    pub async fn spawn_with_bus(config: Config, bus: BusParts) -> Result<Self, StartError> {
        // The key first: it creates the data folder the embedded database lives in.
        let key = relay_key::load_or_create(&config.data_dir)?;
        let store = store::open_with(&config.database_url(), &config.store_options()).await?;
        Self::start(config, key, store, bus).await
    }

    /// Starts a relay node over a given store and bus: the fault-injection seam (wrap the
    /// store in a [`FaultyStore`](crate::store::FaultyStore), the bus in a
    /// [`FaultyBus`](crate::bus::FaultyBus)). The store must be open and migrated; the
    /// configuration's database URL is not used.
    pub async fn spawn_with_store(
        config: Config,
        store: Arc<dyn store::Store>,
        bus: BusParts,
    ) -> Result<Self, StartError> {
        let key = relay_key::load_or_create(&config.data_dir)?;
        Self::start(config, key, store, bus).await
    }

    async fn start(
        config: Config,
        (key, key_created): (ferry_protocol::RelayKey, bool),
        store: Arc<dyn store::Store>,
        (bus, messages): BusParts,
    ) -> Result<Self, StartError> {
        // Settings first: a relay told to hand out TURN credentials it cannot mint does not start.
        let turn = crate::turn::TurnIssuer::from_config(&config.turn)?;
        match &turn {
            Some(turn) => {
                tracing::info!(urls = ?turn.urls(), ttl_secs = turn.ttl_secs(), "TURN credentials enabled")
            }
            None => tracing::debug!("no TURN server configured"),
        }
        let metrics = Arc::new(Metrics::new());
        let relay_id = key.id();
        let pusher = start_pusher(&config, &store, &metrics)?;
        let blobs = crate::attachments::open(
            config.attachments.store.as_deref(),
            &config.data_dir.join("blobs"),
        )
        .map_err(|e| StartError::Attachments(format!("{e:#}")))?;
        tracing::debug!(storage = ?blobs, "attachments storage");

        // Never 0: presence frames use source 0 for "every node".
        let hub = Hub::new(bus, OsRng.next_u64().max(1), Arc::clone(&metrics));
        hub.start(messages);
        let committer = Committer::spawn(
            Arc::clone(&store),
            commit_config(&config, &hub, &metrics, &pusher),
        );
        let conv_committer = ConvCommitter::spawn(
            Arc::clone(&store),
            conv_commit_config(&config, &hub, &metrics, &pusher),
        );

        let pairing = pairing_registry(&config).await?;
        let tls = crate::tls::acceptor(&config)?;
        let listener = listen(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin_listener = match config.admin_listen {
            Some(admin) => Some(bind(admin).await?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().map(|(_, addr)| *addr);
        let (stop, stopped) = watch::channel(false);
        let limits = &config.limits;
        let context = Arc::new(Context {
            handshake_limiter: KeyedLimiter::new(
                f64::from(limits.handshakes_per_ip_per_minute) / 60.0,
                f64::from(limits.handshakes_per_ip_per_minute) / 4.0,
            ),
            append_limiter: KeyedLimiter::<DeviceId>::new(
                f64::from(limits.appends_per_device_per_second),
                f64::from(limits.appends_per_device_per_second) * 2.0,
            ),
            ack_limiter: KeyedLimiter::<DeviceId>::new(
                f64::from(limits.acks_per_device_per_second),
                f64::from(limits.acks_per_device_per_second) * 2.0,
            ),
            ephemeral_limiter: KeyedLimiter::<DeviceId>::new(
                f64::from(limits.ephemerals_per_device_per_second),
                f64::from(limits.ephemerals_per_device_per_second) * 2.0,
            ),
            replays: tokio::sync::Semaphore::new(config.log.max_concurrent_replays.max(1)),
            people_write_limiter: KeyedLimiter::<DeviceId>::new(
                f64::from(limits.people_writes_per_device_per_second),
                f64::from(limits.people_writes_per_device_per_second) * 2.0,
            ),
            lookup_device_limiter: KeyedLimiter::<DeviceId>::new(
                f64::from(limits.lookups_per_minute) / 60.0,
                (f64::from(limits.lookups_per_minute) / 3.0).max(1.0),
            ),
            lookup_address_limiter: KeyedLimiter::new(
                f64::from(limits.lookups_per_minute) / 60.0,
                (f64::from(limits.lookups_per_minute) / 3.0).max(1.0),
            ),
            handle_key: crate::handles::HandleKey::derive(&key),
            turn,
            pusher,
            blobs,
            attachment_limiter: KeyedLimiter::<DeviceId>::new(
                f64::from(config.attachments.parts_per_device_per_second),
                f64::from(config.attachments.parts_per_device_per_second),
            ),
            turn_limiter: KeyedLimiter::<DeviceId>::new(
                f64::from(config.turn.credentials_per_device_per_minute) / 60.0,
                f64::from(config.turn.credentials_per_device_per_minute),
            ),
            pair_join_limiter: KeyedLimiter::new(
                f64::from(limits.pair_joins_per_ip_per_minute) / 60.0,
                f64::from(limits.pair_joins_per_ip_per_minute) / 4.0,
            ),
            pair_failed_join_limiter: NodeLimiter::new(
                f64::from(limits.pair_failed_joins_per_minute) / 60.0,
                f64::from(limits.pair_failed_joins_per_minute) / 4.0,
            ),
            pairing,
            connections: AtomicUsize::new(0),
            occupancy: Occupancy::default(),
            last_seen: Arc::default(),
            shutdown: stopped.clone(),
            config,
            key,
            store,
            committer,
            conv_committer,
            hub,
            metrics,
        });

        let mut background = vec![
            tokio::spawn(retention(Arc::clone(&context), stopped.clone())),
            tokio::spawn(attachment_deletion(Arc::clone(&context), stopped.clone())),
            tokio::spawn(
                Arc::clone(&context.last_seen).run(Arc::clone(&context.store), stopped.clone()),
            ),
        ];
        if let Some((admin, admin_addr)) = admin_listener {
            tracing::info!(addr = %admin_addr, "admin endpoints (/metrics, /readyz) serving");
            background.push(tokio::spawn(accept_admin(
                admin,
                Arc::clone(&context),
                stopped.clone(),
            )));
        }
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        if context.config.proxy_protocol && context.config.trusted_proxies.is_empty() {
            tracing::warn!("--proxy-protocol has no effect without --trusted-proxy");
        }
        let accept_task = tokio::spawn(accept(listener, tls, Arc::clone(&context), stopped));
        tracing::info!(%addr, scheme, relay_key = %relay_id, "relay serving");
        Ok(Self {
            addr,
            admin_addr,
            relay_id,
            key_created,
            context,
            stop,
            accept_task,
            background,
        })
    }

    /// The address the node serves on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address `/metrics` and `/readyz` are served on, when `--admin-listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The relay's public identity key, which clients pin.
    pub fn relay_id(&self) -> RelayId {
        self.relay_id
    }

    /// Whether this start created the relay key.
    pub fn key_created(&self) -> bool {
        self.key_created
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.context.metrics
    }

    /// Stops gracefully: no new connections, in-flight appends committed and answered,
    /// sockets closed with 1001.
    pub async fn shutdown(self) {
        tracing::info!("relay shutting down");
        self.stop.send_replace(true);
        let mut connections = match self.accept_task.await {
            Ok(connections) => connections,
            Err(_) => JoinSet::new(),
        };
        // Readers have stopped taking frames; commit what they queued and answer it.
        self.context.committer.shutdown().await;
        self.context.conv_committer.shutdown().await;
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while connections.join_next().await.is_some() {}
            // WebSocket sessions run in tasks of their own (spawned at the upgrade): wait for
            // them to answer their appends and close, before the store goes away.
            while self.context.connections.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if drained.is_err() {
            let open = self.context.connections.load(Ordering::Acquire);
            tracing::warn!(open, "connections still open after 10 s; closing them");
            connections.abort_all();
            self.context
                .hub
                .close_all(ferry_protocol::ErrorCode::Unavailable);
        }
        for task in self.background {
            task.abort();
        }
        // Sessions have ended (or were closed): what they noted is the last to write.
        if let Err(e) = self
            .context
            .last_seen
            .flush(self.context.store.as_ref())
            .await
        {
            tracing::warn!(error = %e, "could not write the last-seen times at shutdown");
        }
        self.context.pusher.stop();
        self.context.pairing.shutdown().await;
        self.context.store.close().await;
        tracing::info!("relay stopped");
    }
}

/// Where pairing slots live: in Redis, shared by every node on it, when the node has a Redis
/// URL (whatever bus it was given); in this node's memory otherwise.
async fn pairing_registry(config: &Config) -> Result<Box<dyn PairingRegistry>, StartError> {
    let ttl = Duration::from_secs(config.limits.pairing_ttl_secs);
    let Some(url) = &config.redis_url else {
        return Ok(Box::new(LocalPairing::new(ttl)));
    };
    let options = RedisPairingOptions {
        key_prefix: config.redis_pairing_prefix.clone(),
        ttl,
        ..RedisPairingOptions::default()
    };
    let registry = RedisPairing::connect(url, options)
        .await
        .map_err(StartError::Pairing)?;
    Ok(Box::new(registry))
}

/// The VAPID key (made at first start, like the relay key) and the wake-up pipeline.
fn start_pusher(
    config: &Config,
    store: &Arc<dyn store::Store>,
    metrics: &Arc<Metrics>,
) -> Result<Pusher, StartError> {
    let (vapid, created) = crate::push::load_or_create_vapid_key(&config.data_dir)?;
    if created {
        tracing::info!(vapid_key = %vapid.public(), "created a new VAPID key for push wake-ups");
    }
    tracing::info!(vapid_key = %vapid.public(), "push wake-ups: client apps subscribe with this VAPID key");
    let push = &config.push;
    let sender = crate::push::sender::Sender::new(
        vapid,
        push.subject.clone(),
        Duration::from_millis(push.timeout_ms.max(1)),
    )
    .allow_loopback(push.allow_loopback);
    let sender = match apns_client(push, sender.roots())? {
        Some(apns) => {
            tracing::info!(topic = apns.topic(), "APNs wake-ups enabled");
            sender.with_apns(apns)
        }
        None => sender,
    };
    let settings = PushSettings {
        delay: Duration::from_millis(push.delay_ms),
        max_queued: push.max_queued,
        ..PushSettings::default()
    };
    Ok(Pusher::start(
        Arc::clone(store),
        sender,
        settings,
        Arc::clone(metrics),
    ))
}

/// The APNs client `--apns-*` configure, if they do.
fn apns_client(
    push: &crate::config::PushConfig,
    roots: &rustls::RootCertStore,
) -> Result<Option<crate::push::apns::ApnsClient>, StartError> {
    use crate::push::apns::{ApnsClient, ApnsKey, PRODUCTION, SANDBOX};
    let Some(path) = &push.apns_key_file else {
        return Ok(None);
    };
    let failed = |e: anyhow::Error| StartError::Apns(format!("{e:#}"));
    let pem = std::fs::read_to_string(path)
        .map_err(|e| StartError::Apns(format!("{}: {e}", path.display())))?;
    let field = |value: &Option<String>| value.clone().unwrap_or_default();
    let key = ApnsKey::from_pem(
        &pem,
        &field(&push.apns_key_id),
        &field(&push.apns_team_id),
        &field(&push.apns_topic),
    )
    .map_err(failed)?;
    let (production, sandbox) = match &push.apns_url {
        Some(url) if url.starts_with("http://") && !push.allow_loopback => {
            return Err(StartError::Apns(
                "an http:// --apns-url needs --push-allow-loopback (tests only)".into(),
            ));
        }
        Some(url) => (url.as_str(), url.as_str()),
        None => (PRODUCTION, SANDBOX),
    };
    let timeout = Duration::from_millis(push.timeout_ms.max(1));
    ApnsClient::new(key, production, sandbox, roots.clone(), timeout)
        .map(Some)
        .map_err(failed)
}

fn commit_config(
    config: &Config,
    hub: &Arc<Hub>,
    metrics: &Arc<Metrics>,
    pusher: &Pusher,
) -> CommitConfig {
    let observer_metrics = Arc::clone(metrics);
    let pusher = pusher.clone();
    let hub = Arc::clone(hub);
    let committed_metrics = Arc::clone(metrics);
    let uncertain_hub = Arc::clone(&hub);
    CommitConfig {
        max_batch: config.log.commit_max_batch.max(1),
        observer: Some(Arc::new(move |report| {
            observer_metrics
                .commit_batch_size
                .observe(report.len as f64);
            observer_metrics
                .commit_seconds
                .observe(report.elapsed.as_secs_f64());
        })),
        on_committed: Some(Arc::new(move |user, events| {
            committed_metrics.appends.inc_by(events.len() as u64);
            // The user's other devices with no session are woken (the senders are online).
            let mut senders: Vec<DeviceId> = events.iter().map(|e| e.device).collect();
            senders.dedup();
            pusher.wake(&[user], &senders, false);
            hub.committed(user, events);
        })),
        on_uncertain: Some(Arc::new(move |user| uncertain_hub.maybe_committed(user))),
        ..CommitConfig::default()
    }
}

/// Conversation sends are batched like appends (same batch limit); each batch wakes every
/// member user of a conversation that grew once.
fn conv_commit_config(
    config: &Config,
    hub: &Arc<Hub>,
    metrics: &Arc<Metrics>,
    pusher: &Pusher,
) -> ConvCommitConfig {
    let hub = Arc::clone(hub);
    let pusher = pusher.clone();
    let observer_metrics = Arc::clone(metrics);
    ConvCommitConfig {
        max_batch: config.log.commit_max_batch.max(1),
        on_stored: Some(Arc::new(move |conv, head, members, senders| {
            pusher.wake(members, senders, false);
            hub.conversation_frame(
                members,
                &ferry_protocol::ServerFrame::ConvHead { conv, head },
                None,
            );
        })),
        observer: Some(Arc::new(move |len, _elapsed| {
            observer_metrics.conv_batch_size.observe(len as f64);
        })),
        ..ConvCommitConfig::default()
    }
}

/// Accepts connections until told to stop; returns the set of connection tasks.
async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    context: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let slot = Arc::new(ConnectionSlot::open(&context, remote.ip()));
        let builder = http_builder(&context);
        let context = Arc::clone(&context);
        let stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let metrics = Arc::clone(&context.metrics);
            let Some((stream, remote)) = proxy_header(stream, remote, &slot, &context).await else {
                return;
            };
            // The TLS handshake gets the same deadline as the HTTP headers after it.
            let deadline = context.config.limits.http_header_timeout();
            let service = hyper::service::service_fn(move |request| {
                route(request, remote, Arc::clone(&slot), Arc::clone(&context))
            });
            let timed_out = match tls {
                None => serve_http(stream, builder, service, stop).await,
                Some(tls) => match tokio::time::timeout(deadline, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve_http(stream, builder, service, stop).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        false
                    }
                    Err(_) => true,
                },
            };
            if timed_out {
                metrics.limit_refusal("http_header_timeout");
            }
        });
    }
    connections
}

/// With `--proxy-protocol`, reads the PROXY protocol header of a connection from a trusted
/// proxy and counts the connection against the client it names from then on; `None` when the
/// connection must be closed. Any other connection passes as it is, from its TCP peer.
async fn proxy_header(
    stream: TcpStream,
    peer: SocketAddr,
    slot: &ConnectionSlot,
    ctx: &Context,
) -> Option<(Rewind<TcpStream>, SocketAddr)> {
    let trusted = &ctx.config.trusted_proxies;
    if !ctx.config.proxy_protocol || !is_trusted(peer.ip(), trusted) {
        return Some((Rewind::new(Bytes::new(), stream), peer));
    }
    let deadline = ctx.config.limits.http_header_timeout();
    match proxy_protocol::read(stream, deadline).await {
        Ok((header, stream)) => {
            let client = header.client(peer);
            // A proxy named as the client (LOCAL, or a proxy in front of this one) may still
            // name the real client in X-Forwarded-For: that one is counted at the upgrade.
            if !is_trusted(client.ip(), trusted) {
                slot.claim(address_key(client.ip()));
            }
            Some((stream, client))
        }
        Err(e) => {
            ctx.metrics.proxy_header_error(e.reason());
            tracing::debug!(%peer, error = %e, "closing a connection from a trusted proxy");
            None
        }
    }
}

/// Serves the admin endpoints until the node stops (the task is aborted at shutdown).
async fn accept_admin(listener: TcpListener, context: Arc<Context>, stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let builder = http_builder(&context);
        let context = Arc::clone(&context);
        let stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                route_admin(request, Arc::clone(&context))
            });
            serve_http(stream, builder, service, stop).await;
        });
    }
}

/// Connections the kernel queues for `accept` (it caps this at `net.core.somaxconn`).
///
/// After a restart every device reconnects at once. `TcpListener::bind` queues 128: the rest
/// of the connection requests are dropped, and each such device waits for TCP to resend its
/// request after 1, 3, 7 s (`ferry-bench storm`, docs/benchmarks.md).
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` sets it, so a restarted relay binds while old connections linger).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = listen(addr).map_err(|source| StartError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, local))
}

/// HTTP/1.1 with a timer: headers must arrive within `--http-header-timeout-ms`, and the same
/// deadline closes a keep-alive connection that sends no next request.
fn http_builder(ctx: &Context) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(
            ctx.config
                .limits
                .http_header_timeout()
                .max(Duration::from_millis(1)),
        )
        .max_buf_size(64 * 1024);
    builder
}

/// Serves one HTTP connection (and hands over its upgrade); a node that stops closes it
/// after the request in progress. True when it was closed for not sending headers in time.
async fn serve_http<S, T>(
    stream: T,
    builder: http1::Builder,
    service: S,
    mut stop: watch::Receiver<bool>,
) -> bool
where
    S: hyper::service::Service<Request<Incoming>, Response = HttpResponse, Error = Infallible>,
    S::Future: Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let stopping = async {
        let _ = stop.wait_for(|stopping| *stopping).await;
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match result {
        Ok(()) => false,
        Err(e) if e.is_timeout() => {
            tracing::debug!("http connection closed: headers not received in time");
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "http connection ended with an error");
            false
        }
    }
}

type HttpResponse = Response<Full<Bytes>>;

/// The client port.
async fn route(
    request: Request<Incoming>,
    remote: SocketAddr,
    slot: Arc<ConnectionSlot>,
    ctx: Arc<Context>,
) -> Result<HttpResponse, Infallible> {
    let admin_here = ctx.config.admin_listen.is_none();
    let over_cap = slot.refusal().is_some();
    let mut response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/ws") => return Ok(upgrade(request, remote, slot, ctx)),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if admin_here => ready(&ctx).await,
        (&Method::GET, "/metrics") if admin_here => metrics(&ctx),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if over_cap {
        // A connection over a cap gets one answer (an upgrade is refused with 402), then
        // closes.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// The admin port (`--admin-listen`).
async fn route_admin(
    request: Request<Incoming>,
    ctx: Arc<Context>,
) -> Result<HttpResponse, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => ready(&ctx).await,
        (&Method::GET, "/metrics") => metrics(&ctx),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

fn metrics(ctx: &Context) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(ctx.metrics.render())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Readiness. The answer names only what is not ready; the error itself (which may carry
/// host names or driver details) goes to the log.
async fn ready(ctx: &Context) -> HttpResponse {
    let timeout = Duration::from_secs(2);
    let database = match tokio::time::timeout(timeout, ctx.store.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database did not answer");
            false
        }
        Err(_) => {
            tracing::warn!("readiness: the database did not answer within 2 s");
            false
        }
    };
    let bus = match tokio::time::timeout(timeout, ctx.hub.ping_bus()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the bus did not answer");
            false
        }
        Err(_) => {
            tracing::warn!("readiness: the bus did not answer within 2 s");
            false
        }
    };
    let body = match (database, bus) {
        (true, true) => return text(StatusCode::OK, "ready\n"),
        (false, true) => "not ready: database\n",
        (true, false) => "not ready: bus\n",
        (false, false) => "not ready: database, bus\n",
    };
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

/// Answers the WebSocket upgrade and hands the socket to a connection task.
fn upgrade(
    mut request: Request<Incoming>,
    remote: SocketAddr,
    slot: Arc<ConnectionSlot>,
    ctx: Arc<Context>,
) -> HttpResponse {
    let headers = request.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_upgrade && version_ok)
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (version 13)\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let client = client_address(headers, remote.ip(), &ctx.config.trusted_proxies);
    // A connection from a trusted proxy is counted against its client's address from here.
    slot.claim(address_key(client));
    let refusal = slot.refusal();
    let on_upgrade = hyper::upgrade::on(&mut request);
    let frame_limit = ctx
        .config
        .limits
        .max_frame_bytes
        .min(ferry_protocol::limits::MAX_FRAME_LEN)
        + ferry_protocol::limits::CHANNEL_OVERHEAD;
    let ws_config = WebSocketConfig::default()
        // 512 B, not tungstenite's 128 KiB: the buffer stays allocated for as long as the
        // connection lives, mostly idle. An append (285 B) fits; a 256 KiB attachment part is
        // read in pieces. 4 KiB -> 1 KiB: idle connections 16.8 -> 13.8 KiB each, uploads
        // 132 -> 114 MiB/s; 1 KiB -> 512 B: 8.28 -> 7.77 KiB each, uploads and appends
        // unchanged within the runs' spread (ferry-bench idle, attachments, appends;
        // docs/benchmarks.md). The socket itself is read up to 16 KiB at a time all the
        // same: `connection::serve` reads through a `ReadAhead`, whose buffer exists only
        // while it holds bytes.
        .read_buffer_size(512)
        // A session's writer buffers the frames that are ready together (a burst of append
        // answers, a page of events) and flushes them in one write when nothing more is
        // ready; past 16 KiB they go out at once.
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(frame_limit))
        .max_frame_size(Some(frame_limit));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                crate::connection::serve(TokioIo::new(upgraded), ws_config, client, refusal, ctx)
                    .await;
                drop(slot);
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

fn text(status: StatusCode, body: &str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Deletes old events on a timer, when retention is configured.
async fn retention(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let log = &ctx.config.log;
    let max_age_ms = log.retention_max_age_secs.map(|s| s.saturating_mul(1000));
    let max_events = log.retention_max_events;
    let conv_max_age_ms = log
        .conv_retention_max_age_secs
        .map(|s| s.saturating_mul(1000));
    let conv_lag_ms = log.conv_retention_lag_secs.saturating_mul(1000);
    if max_age_ms.is_none() && max_events.is_none() && conv_max_age_ms.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(log.retention_interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            _ = tick.tick() => {}
        }
        if max_age_ms.is_some() || max_events.is_some() {
            match ctx.store.trim(max_age_ms, max_events, now_ms()).await {
                Ok(0) => {}
                Ok(deleted) => {
                    ctx.metrics.trimmed_events.inc_by(deleted);
                    tracing::info!(deleted, "retention trimmed events");
                }
                Err(e) => tracing::warn!(error = %e, "retention failed"),
            }
        }
        if let Some(conv_max_age_ms) = conv_max_age_ms {
            let trimmed = ctx
                .store
                .trim_conversations(conv_max_age_ms, conv_lag_ms, now_ms())
                .await;
            match trimmed {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "retention trimmed conversation messages"),
                Err(e) => tracing::warn!(error = %e, "conversation retention failed"),
            }
        }
    }
}

/// Deletes dead attachments on the retention job's timer: expired, unreferenced past their
/// time, or left behind by retention (see [`crate::attachments::delete_dead_blobs`]).
async fn attachment_deletion(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(ctx.config.log.retention_interval_secs.max(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            _ = tick.tick() => {}
        }
        let run = crate::attachments::delete_dead_blobs(&*ctx.store, &*ctx.blobs, now_ms());
        match run.await {
            Ok(0) => {}
            Ok(deleted) => {
                ctx.metrics.attachments_deleted(deleted);
                tracing::info!(deleted, "dead attachments deleted");
            }
            Err(e) => tracing::warn!(error = %e, "deleting dead attachments failed"),
        }
    }
}

/// Open connections per client address and sessions per user, on this node.
#[derive(Debug, Default)]
pub struct Occupancy {
    addresses: Mutex<HashMap<IpAddr, usize>>,
    users: Mutex<HashMap<UserId, usize>>,
}

impl Occupancy {
    /// Connections counted against `address` (an [`address_key`]) now.
    pub fn connections_from(&self, address: IpAddr) -> usize {
        crate::sync::lock(&self.addresses)
            .get(&address)
            .copied()
            .unwrap_or(0)
    }

    fn add_address(&self, key: IpAddr) -> usize {
        let mut addresses = crate::sync::lock(&self.addresses);
        let count = addresses.entry(key).or_insert(0);
        *count += 1;
        *count
    }

    fn remove_address(&self, key: IpAddr) {
        let mut addresses = crate::sync::lock(&self.addresses);
        if let Some(count) = addresses.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                addresses.remove(&key);
            }
        }
    }

    /// Counts a session of `user`, or `None` when it already has `max` on this node.
    pub(crate) fn open_session(&self, user: UserId, max: usize) -> Option<SessionSlot<'_>> {
        let mut users = crate::sync::lock(&self.users);
        let count = users.entry(user).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SessionSlot {
            occupancy: self,
            user,
        })
    }
}

/// One session counted against its user, until dropped.
#[derive(Debug)]
pub(crate) struct SessionSlot<'a> {
    occupancy: &'a Occupancy,
    user: UserId,
}

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        let mut users = crate::sync::lock(&self.occupancy.users);
        if let Some(count) = users.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                users.remove(&self.user);
            }
        }
    }
}

/// One client connection, counted from accept until its WebSocket (if any) ends.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    ctx: Arc<Context>,
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    /// The address key counted against `--max-connections-per-ip`, once known.
    address: Option<IpAddr>,
    /// Why the connection is over a cap (its upgrade is refused with 402).
    refusal: Option<Refusal>,
}

impl ConnectionSlot {
    /// Counts a new connection from `peer`: globally, and against the peer's address unless
    /// it is a trusted proxy (then the client is known only from the request).
    fn open(ctx: &Arc<Context>, peer: IpAddr) -> Self {
        let limits = &ctx.config.limits;
        let open = ctx.connections.fetch_add(1, Ordering::AcqRel) + 1;
        let mut state = SlotState {
            address: None,
            refusal: (open > limits.max_connections).then_some(Refusal {
                limit: "connections",
                reason: "the relay is at its connection limit",
            }),
        };
        let peer = peer.to_canonical();
        if !is_trusted(peer, &ctx.config.trusted_proxies) {
            let key = address_key(peer);
            if ctx.occupancy.add_address(key) > limits.max_connections_per_ip {
                state.refusal.get_or_insert(PER_ADDRESS);
            }
            state.address = Some(key);
        }
        Self {
            ctx: Arc::clone(ctx),
            state: Mutex::new(state),
        }
    }

    /// Counts the connection against `key` if it is not counted against an address yet.
    fn claim(&self, key: IpAddr) {
        let mut state = crate::sync::lock(&self.state);
        if state.address.is_some() {
            return;
        }
        if self.ctx.occupancy.add_address(key) > self.ctx.config.limits.max_connections_per_ip {
            state.refusal.get_or_insert(PER_ADDRESS);
        }
        state.address = Some(key);
    }

    /// Why this connection may not open a WebSocket, if it is over a cap.
    fn refusal(&self) -> Option<Refusal> {
        crate::sync::lock(&self.state).refusal
    }
}

/// Why a connection is over a cap: the limit (a metric label) and what the client is told.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    pub limit: &'static str,
    pub reason: &'static str,
}

const PER_ADDRESS: Refusal = Refusal {
    limit: "connections_per_ip",
    reason: "too many connections from this address",
};

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.ctx.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = crate::sync::lock(&self.state).address {
            self.ctx.occupancy.remove_address(key);
        }
    }
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the rightmost
/// address in `X-Forwarded-For` that is not itself a trusted proxy. Parsing stops at the
/// first hop that is not an address (then the last good hop, a trusted proxy, is used).
pub fn client_address(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| value.to_str().unwrap_or("invalid"))
        .collect();
    let mut client = peer;
    for hop in values.iter().flat_map(|v| v.split(',')).rev() {
        let hop = hop.trim();
        let Some(ip) = hop
            .parse::<IpAddr>()
            .ok()
            .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(client, trusted) {
            break;
        }
    }
    client
}

/// The key per-address limits count under: an IPv4 address, or an IPv6 address's /64
/// (one subscriber usually holds a whole /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(Ipv6Addr::from(segments))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let h = headers(&["198.51.100.7"]);
        assert_eq!(
            client_address(&h, ip("203.0.113.1"), &[]),
            ip("203.0.113.1")
        );
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(&h, ip("203.0.113.1"), &trusted),
            ip("203.0.113.1")
        );
        assert_eq!(
            client_address(&h, ip("10.1.2.3"), &trusted),
            ip("198.51.100.7")
        );
        // IPv4-mapped peers (a dual-stack listener) match IPv4 ranges.
        assert_eq!(
            client_address(&h, ip("::ffff:10.1.2.3"), &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged the first entry; the proxy appended what it saw.
        let h = headers(&["1.1.1.1, 198.51.100.7, 10.0.0.5"]);
        assert_eq!(
            client_address(&h, ip("10.0.0.9"), &trusted),
            ip("198.51.100.7")
        );
        let h = headers(&["1.1.1.1", "198.51.100.7:4242"]);
        assert_eq!(
            client_address(&h, ip("10.0.0.9"), &trusted),
            ip("198.51.100.7")
        );
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&["1.1.1.1, not-an-ip, 10.0.0.5"]);
        assert_eq!(client_address(&h, ip("10.0.0.9"), &trusted), ip("10.0.0.5"));
        // No header: the proxy itself.
        assert_eq!(
            client_address(&HeaderMap::new(), ip("10.0.0.9"), &trusted),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:3:4:5:6")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(address_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn ranges_parse_and_match() {
        let net: IpNet = "192.168.0.0/16".parse().unwrap();
        assert!(net.contains(ip("192.168.4.5")));
        assert!(!net.contains(ip("192.169.0.1")));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: IpNet = "::/0".parse().unwrap();
        assert!(all.contains(ip("2001:db8::1")) && !all.contains(ip("1.2.3.4")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
    }
}
