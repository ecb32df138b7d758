//! The relay node: `Server::spawn(config)` starts it, `shutdown()` stops it gracefully.
//!
//! Start-up: open the store (running migrations), load or create the relay key, connect the
//! bus, start the committer, the hub and the retention job, then bind and serve HTTP:
//!
//! | path | what |
//! | --- | --- |
//! | `/ws` | the Ferry protocol over WebSocket (binary messages only) |
//! | `/healthz` | 200 while the process serves |
//! | `/readyz` | 200 when the database and the bus answer, 503 otherwise |
//! | `/metrics` | Prometheus text |
//!
//! Shutdown: stop accepting, tell every session to stop reading, commit everything queued and
//! answer it, close sockets with 1001 (going away), then close the store.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::{DeviceId, RelayId, UserId};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand_core::{OsRng, RngCore};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::bus::{self, Bus};
use crate::config::Config;
use crate::context::{Context, now_ms};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::pairing::PairingSlots;
use crate::rate_limit::KeyedLimiter;
use crate::relay_key;
use crate::store::committer::{CommitConfig, Committer};
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
        let store = store::open(&config.database_url()).await?;
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
        let metrics = Arc::new(Metrics::new());
        let relay_id = key.id();

        let hub = Hub::new(bus, OsRng.next_u64(), Arc::clone(&metrics));
        hub.start(messages);
        let committer =
            Committer::spawn(Arc::clone(&store), commit_config(&config, &hub, &metrics));

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
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
            pair_join_limiter: KeyedLimiter::new(
                f64::from(limits.pair_joins_per_ip_per_minute) / 60.0,
                f64::from(limits.pair_joins_per_ip_per_minute) / 4.0,
            ),
            pairing: PairingSlots::new(Duration::from_secs(limits.pairing_ttl_secs)),
            connections: AtomicUsize::new(0),
            shutdown: stopped.clone(),
            config,
            key,
            store,
            committer,
            hub,
            metrics,
        });

        let background = vec![tokio::spawn(retention(
            Arc::clone(&context),
            stopped.clone(),
        ))];
        let accept_task = tokio::spawn(accept(listener, Arc::clone(&context), stopped));
        tracing::info!(%addr, relay_key = %relay_id, "relay serving");
        Ok(Self {
            addr,
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
        self.context.store.close().await;
        tracing::info!("relay stopped");
    }
}

fn commit_config(config: &Config, hub: &Arc<Hub>, metrics: &Arc<Metrics>) -> CommitConfig {
    let observer_metrics = Arc::clone(metrics);
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
            hub.committed(user, events);
        })),
        on_uncertain: Some(Arc::new(move |user| uncertain_hub.maybe_committed(user))),
        ..CommitConfig::default()
    }
}

/// Accepts connections until told to stop; returns the set of connection tasks.
async fn accept(
    listener: TcpListener,
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
        let context = Arc::clone(&context);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                route(request, remote, Arc::clone(&context))
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    connections
}

type HttpResponse = Response<Full<Bytes>>;

async fn route(
    request: Request<Incoming>,
    remote: SocketAddr,
    ctx: Arc<Context>,
) -> Result<HttpResponse, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/ws") => upgrade(request, remote, ctx),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => ready(&ctx).await,
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(ctx.metrics.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

async fn ready(ctx: &Context) -> HttpResponse {
    let timeout = Duration::from_secs(2);
    let database = match tokio::time::timeout(timeout, ctx.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("database: {e}")),
        Err(_) => Err("database: timed out".to_owned()),
    };
    let bus = match tokio::time::timeout(timeout, ctx.hub.ping_bus()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("bus: {e}")),
        Err(_) => Err("bus: timed out".to_owned()),
    };
    match (database, bus) {
        (Ok(()), Ok(())) => text(StatusCode::OK, "ready\n"),
        (database, bus) => {
            let reasons: Vec<String> = [database.err(), bus.err()].into_iter().flatten().collect();
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {}\n", reasons.join("; ")),
            )
        }
    }
}

/// Answers the WebSocket upgrade and hands the socket to a connection task.
fn upgrade(mut request: Request<Incoming>, remote: SocketAddr, ctx: Arc<Context>) -> HttpResponse {
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
    let on_upgrade = hyper::upgrade::on(&mut request);
    let frame_limit = ctx
        .config
        .limits
        .max_frame_bytes
        .min(ferry_protocol::limits::MAX_FRAME_LEN)
        + ferry_protocol::limits::CHANNEL_OVERHEAD;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(frame_limit))
        .max_frame_size(Some(frame_limit));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                crate::connection::serve(ws, remote, ctx).await;
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
    if max_age_ms.is_none() && max_events.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(log.retention_interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            _ = tick.tick() => {}
        }
        match ctx.store.trim(max_age_ms, max_events, now_ms()).await {
            Ok(0) => {}
            Ok(deleted) => {
                ctx.metrics.trimmed_events.inc_by(deleted);
                tracing::info!(deleted, "retention trimmed events");
            }
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
}
