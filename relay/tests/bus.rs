//! The wake-up bus: the same story in process and over Redis, then Redis outages.
//!
//! The Redis tests share one server with other tests running at the same time: they use fresh
//! random user ids, kill only their own connections (found by name in `CLIENT LIST`), and never
//! flush or shut anything down. Without Redis they print "skipped" and pass, unless
//! `FERRY_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::UserId;
use ferry_relay::bus::{
    Bus, BusError, BusReceiver, LocalBus, LocalBusHub, RedisBus, RedisBusOptions, topic,
};
use fred::prelude::{Client, ClientLike, Config};
use fred::types::CustomCommand;
use rand_core::{OsRng, RngCore};
use support::redis::{admin, connections_named, field, redis_url, subscribers};
use tokio::sync::watch;

/// How long anything that should happen may take.
const PATIENCE: Duration = Duration::from_secs(10);

fn random_user() -> UserId {
    let mut bytes = [0; 32];
    OsRng.fill_bytes(&mut bytes);
    UserId(bytes)
}

/// The next message for a node, or a panic after [`PATIENCE`].
async fn next(rx: &mut BusReceiver) -> (UserId, Bytes) {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a message within the patience")
        .expect("the bus is alive")
}

/// Waits until health is `up`.
async fn health_becomes(health: &mut watch::Receiver<bool>, up: bool) {
    tokio::time::timeout(PATIENCE, health.wait_for(|value| *value == up))
        .await
        .unwrap_or_else(|_| panic!("health never became {up}"))
        .expect("the bus is alive");
}

/// The story every bus tells, with `a` publishing and `b` subscribing.
async fn story(a: &dyn Bus, b: &dyn Bus, b_rx: &mut BusReceiver) {
    let user = random_user();
    let marker_user = random_user();

    // Subscribed on B, published from A: B receives it.
    b.subscribe(&user).await.unwrap();
    a.publish(&user, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(next(b_rx).await, (user, Bytes::from_static(b"hello")));

    // Binary and empty payloads arrive unchanged.
    let binary = Bytes::from_static(&[0, 255, 0xc3, 0x28, b'\n']);
    a.publish(&user, binary.clone()).await.unwrap();
    assert_eq!(next(b_rx).await, (user, binary));
    a.publish(&user, Bytes::new()).await.unwrap();
    assert_eq!(next(b_rx).await, (user, Bytes::new()));

    // Reference counting: two subscribes, one unsubscribe: still delivered.
    b.subscribe(&user).await.unwrap();
    b.unsubscribe(&user).await.unwrap();
    a.publish(&user, Bytes::from_static(b"still"))
        .await
        .unwrap();
    assert_eq!(next(b_rx).await, (user, Bytes::from_static(b"still")));

    // The last unsubscribe stops delivery: the next message B sees is the marker published after.
    b.unsubscribe(&user).await.unwrap();
    b.subscribe(&marker_user).await.unwrap();
    a.publish(&user, Bytes::from_static(b"gone")).await.unwrap();
    a.publish(&marker_user, Bytes::from_static(b"marker"))
        .await
        .unwrap();
    assert_eq!(
        next(b_rx).await,
        (marker_user, Bytes::from_static(b"marker"))
    );

    // Publishing to a user nobody wants, or unsubscribing one never subscribed, is fine.
    a.publish(&random_user(), Bytes::from_static(b"nobody"))
        .await
        .unwrap();
    b.unsubscribe(&random_user()).await.unwrap();

    // A node subscribed to a user receives its own publishes too (the networking layer filters).
    b.publish(&marker_user, Bytes::from_static(b"mine"))
        .await
        .unwrap();
    assert_eq!(next(b_rx).await, (marker_user, Bytes::from_static(b"mine")));
    b.unsubscribe(&marker_user).await.unwrap();

    assert!(*a.health().borrow());
    assert!(*b.health().borrow());
    assert_eq!(b.dropped(), 0);
    a.ping().await.unwrap();
    b.ping().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// In process

#[tokio::test]
async fn in_process_story() {
    let hub = LocalBusHub::new();
    let (a, mut a_rx) = hub.node();
    let (b, mut b_rx) = hub.node();
    story(&a, &b, &mut b_rx).await;
    assert_eq!(a.kind(), "in-process");
    assert!(a_rx.try_recv().is_err(), "A subscribed to nothing");
}

#[tokio::test]
async fn in_process_nodes_are_independent_and_leave_when_dropped() {
    let hub = LocalBusHub::new();
    let (a, _a_rx) = hub.node();
    let (b, mut b_rx) = hub.node();
    let (c, mut c_rx) = hub.node();
    let user = random_user();
    b.subscribe(&user).await.unwrap();
    c.subscribe(&user).await.unwrap();
    a.publish(&user, Bytes::from_static(b"both")).await.unwrap();
    assert_eq!(next(&mut b_rx).await.1, Bytes::from_static(b"both"));
    assert_eq!(next(&mut c_rx).await.1, Bytes::from_static(b"both"));

    drop(c);
    a.publish(&user, Bytes::from_static(b"b only"))
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx).await.1, Bytes::from_static(b"b only"));
    assert!(
        c_rx.recv().await.is_none(),
        "a dropped node's receiver ends"
    );
}

#[tokio::test]
async fn a_standalone_node_reaches_only_itself() {
    let (bus, mut rx) = LocalBus::standalone();
    let user = random_user();
    bus.publish(&user, Bytes::from_static(b"nobody"))
        .await
        .unwrap();
    bus.subscribe(&user).await.unwrap();
    bus.publish(&user, Bytes::from_static(b"me")).await.unwrap();
    assert_eq!(next(&mut rx).await, (user, Bytes::from_static(b"me")));
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn a_full_inbox_drops_and_makes_the_node_poll() {
    let hub = LocalBusHub::new();
    let (a, _a_rx) = hub.node();
    let (b, mut b_rx) = hub.node_with_capacity(2);
    let mut health = b.health();
    let user = random_user();
    b.subscribe(&user).await.unwrap();
    for i in 0..5u8 {
        a.publish(&user, Bytes::from(vec![i])).await.unwrap();
    }
    assert_eq!(b.dropped(), 3);
    assert!(
        !*health.borrow_and_update(),
        "dropped wake-ups make the node poll"
    );

    // The first two arrived; once the node catches up, health is back.
    assert_eq!(next(&mut b_rx).await.1, Bytes::from(vec![0]));
    assert_eq!(next(&mut b_rx).await.1, Bytes::from(vec![1]));
    health_becomes(&mut health, true).await;
}

// ---------------------------------------------------------------------------------------------
// Redis

/// The Redis URL to test against and an administration client on it, or `None` when Redis is
/// not reachable and not required (`FERRY_REQUIRE_SERVICES=1` fails the test instead).
async fn redis() -> Option<(String, Client)> {
    let url = redis_url().await?;
    let admin = admin(&url).await.expect("Redis answered a moment ago");
    Some((url, admin))
}

/// Test options: quick, with a reconnection delay long enough to see the outage.
fn options() -> RedisBusOptions {
    RedisBusOptions {
        reconnect_min_delay: Duration::from_millis(300),
        reconnect_max_delay: Duration::from_millis(600),
        ..RedisBusOptions::default()
    }
}

/// Kills the one connection named `name`, from the administration client; returns its id.
async fn kill_connection(admin: &Client, name: &str) -> String {
    let connections = connections_named(admin, name).await;
    assert_eq!(connections.len(), 1, "exactly one connection named {name}");
    let id = field(&connections[0], "id").to_owned();
    let killed: i64 = admin
        .custom(
            CustomCommand::new_static("CLIENT", None, false),
            vec!["KILL", "ID", id.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(killed, 1);
    id
}

async fn subscribers_of(admin: &Client, user: &UserId) -> i64 {
    subscribers(admin, &topic(user)).await
}

#[tokio::test]
async fn redis_story() {
    let Some((url, _admin)) = redis().await else {
        return;
    };
    let (a, _a_rx) = RedisBus::connect(&url, options()).await.unwrap();
    let (b, mut b_rx) = RedisBus::connect(&url, options()).await.unwrap();
    assert_eq!(a.kind(), "redis");
    story(&a, &b, &mut b_rx).await;
    assert_eq!(b.subscribed_users().await, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn redis_uses_one_subscriber_connection_per_node_and_counts_references() {
    let Some((url, admin)) = redis().await else {
        return;
    };
    let (a, _a_rx) = RedisBus::connect(&url, options()).await.unwrap();
    let (b, mut b_rx) = RedisBus::connect(&url, options()).await.unwrap();

    let users: Vec<UserId> = (0..50).map(|_| random_user()).collect();
    for user in &users {
        b.subscribe(user).await.unwrap();
    }
    // Three local devices of the first user: still one Redis subscription.
    b.subscribe(&users[0]).await.unwrap();
    b.subscribe(&users[0]).await.unwrap();
    assert_eq!(b.subscribed_users().await, 50);

    let connections = connections_named(&admin, b.subscriber_name()).await;
    assert_eq!(
        connections.len(),
        1,
        "one subscriber connection for 50 users"
    );
    assert_eq!(field(&connections[0], "sub"), "50");
    assert_eq!(connections_named(&admin, b.publisher_name()).await.len(), 1);
    assert_eq!(subscribers_of(&admin, &users[0]).await, 1);

    // Every user's messages arrive on that one connection.
    for user in &users {
        a.publish(user, Bytes::from_static(b"wake")).await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..users.len() {
        seen.insert(next(&mut b_rx).await.0);
    }
    assert_eq!(seen.len(), users.len());

    // The topic stays until the last of the three leaves.
    b.unsubscribe(&users[0]).await.unwrap();
    b.unsubscribe(&users[0]).await.unwrap();
    assert_eq!(subscribers_of(&admin, &users[0]).await, 1);
    b.unsubscribe(&users[0]).await.unwrap();
    assert_eq!(subscribers_of(&admin, &users[0]).await, 0);
    assert_eq!(b.subscribed_users().await, 49);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn redis_concurrent_subscribes_share_one_subscription() {
    let Some((url, admin)) = redis().await else {
        return;
    };
    let (a, _a_rx) = RedisBus::connect(&url, options()).await.unwrap();
    let (b, mut b_rx) = RedisBus::connect(&url, options()).await.unwrap();
    let (user, marker) = (random_user(), random_user());

    let subscribes = (0..20).map(|_| b.subscribe(&user));
    for result in futures_util::future::join_all(subscribes).await {
        result.unwrap();
    }
    b.subscribe(&marker).await.unwrap();
    assert_eq!(subscribers_of(&admin, &user).await, 1);
    let connections = connections_named(&admin, b.subscriber_name()).await;
    assert_eq!(field(&connections[0], "sub"), "2");

    // One message, delivered once.
    a.publish(&user, Bytes::from_static(b"once")).await.unwrap();
    a.publish(&marker, Bytes::from_static(b"marker"))
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx).await, (user, Bytes::from_static(b"once")));
    assert_eq!(
        next(&mut b_rx).await,
        (marker, Bytes::from_static(b"marker"))
    );

    let unsubscribes = (0..20).map(|_| b.unsubscribe(&user));
    for result in futures_util::future::join_all(unsubscribes).await {
        result.unwrap();
    }
    assert_eq!(subscribers_of(&admin, &user).await, 0);
    assert_eq!(b.subscribed_users().await, 1);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn redis_subscriber_outage_reconnects_and_resubscribes() {
    let Some((url, admin)) = redis().await else {
        return;
    };
    let (a, _a_rx) = RedisBus::connect(&url, options()).await.unwrap();
    let (b, mut b_rx) = RedisBus::connect(&url, options()).await.unwrap();
    let user = random_user();
    b.subscribe(&user).await.unwrap();
    a.publish(&user, Bytes::from_static(b"before"))
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx).await.1, Bytes::from_static(b"before"));

    let mut health = b.health();
    assert!(*health.borrow_and_update());
    let old_id = kill_connection(&admin, b.subscriber_name()).await;

    // Down while reconnecting (the node polls), then up again, resubscribed.
    health_becomes(&mut health, false).await;
    assert!(matches!(b.ping().await, Err(BusError::Down)));
    health_becomes(&mut health, true).await;

    let connections = connections_named(&admin, b.subscriber_name()).await;
    assert_eq!(connections.len(), 1);
    assert_ne!(field(&connections[0], "id"), old_id, "a new connection");
    assert_eq!(field(&connections[0], "sub"), "1");

    a.publish(&user, Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx).await.1, Bytes::from_static(b"after"));
    b.ping().await.unwrap();

    // A user subscribed while the connection was down is subscribed when it comes back.
    let late = random_user();
    kill_connection(&admin, b.subscriber_name()).await;
    health_becomes(&mut health, false).await;
    // Usually an error (no connection to subscribe on); counted either way.
    let _ = b.subscribe(&late).await;
    health_becomes(&mut health, true).await;
    a.publish(&late, Bytes::from_static(b"late")).await.unwrap();
    assert_eq!(next(&mut b_rx).await, (late, Bytes::from_static(b"late")));
    assert_eq!(b.dropped(), 0);

    a.shutdown().await;
    b.shutdown().await;
}

/// A TCP proxy to Redis whose existing connections can be frozen: bytes stop flowing but no
/// socket closes, like a peer that vanished without a FIN (half-open connections).
struct FreezingProxy {
    address: std::net::SocketAddr,
    /// Connections numbered below this are frozen.
    frozen_below: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(redis: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let frozen_below = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (frozen, count) = (frozen_below.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let number = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(redis).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)]
                {
                    let frozen = frozen.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buffer = vec![0; 16 * 1024];
                        loop {
                            let Ok(read) = from.read(&mut buffer).await else {
                                return;
                            };
                            if read == 0 {
                                return;
                            }
                            while number < frozen.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if to.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            address,
            frozen_below,
            accepted,
            task,
        }
    }

    /// Freezes every connection made so far.
    fn freeze(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn redis_half_open_subscriber_is_detected_by_the_heartbeat() {
    let Some((url, admin)) = redis().await else {
        return;
    };
    let config = Config::from_url(&url).unwrap();
    let Some(server) = config.server.hosts().into_iter().next() else {
        return;
    };
    let Some(redis_address) = tokio::net::lookup_host((&*server.host, server.port))
        .await
        .unwrap()
        .next()
    else {
        return;
    };
    let proxy = FreezingProxy::start(redis_address).await;
    // The proxied node's URL: same credentials and database, the proxy's address.
    let (scheme_and_userinfo, _) = url.rsplit_once('@').unwrap_or(("redis://", ""));
    let prefix = if url.contains('@') {
        format!("{scheme_and_userinfo}@")
    } else {
        "redis://".to_owned()
    };
    let proxied_url = format!("{prefix}{}", proxy.address);
    let quick = RedisBusOptions {
        command_timeout: Duration::from_millis(300),
        heartbeat_interval: Duration::from_millis(200),
        ..options()
    };

    let (a, _a_rx) = RedisBus::connect(&url, options()).await.unwrap();
    let (b, mut b_rx) = RedisBus::connect(&proxied_url, quick).await.unwrap();
    let user = random_user();
    b.subscribe(&user).await.unwrap();
    a.publish(&user, Bytes::from_static(b"before"))
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx).await.1, Bytes::from_static(b"before"));

    // Heartbeats on a healthy subscribed connection do not disturb it: over several
    // heartbeat intervals, health never changes (a flap would mark the receiver changed) and
    // the subscriber is the same Redis connection (a reconnection would give a new id).
    let mut health = b.health();
    assert!(*health.borrow_and_update());
    let subscriber_id = |connections: Vec<Vec<(String, String)>>| {
        assert_eq!(connections.len(), 1, "one subscriber connection");
        field(&connections[0], "id").to_owned()
    };
    let before = subscriber_id(connections_named(&admin, b.subscriber_name()).await);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !health.has_changed().unwrap(),
        "health flapped: now {}",
        *health.borrow()
    );
    assert!(*health.borrow_and_update());
    assert_eq!(
        subscriber_id(connections_named(&admin, b.subscriber_name()).await),
        before,
        "the subscriber reconnected"
    );

    // The connection goes silent without closing: the heartbeat notices, B reconnects.
    proxy.freeze();
    health_becomes(&mut health, false).await;
    health_becomes(&mut health, true).await;
    a.publish(&user, Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(next(&mut b_rx).await.1, Bytes::from_static(b"after"));

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn redis_publish_fails_fast_while_down() {
    let Some((url, admin)) = redis().await else {
        return;
    };
    let slow_reconnect = RedisBusOptions {
        reconnect_min_delay: Duration::from_secs(3),
        reconnect_max_delay: Duration::from_secs(3),
        ..RedisBusOptions::default()
    };
    let (a, _a_rx) = RedisBus::connect(&url, slow_reconnect).await.unwrap();
    kill_connection(&admin, a.publisher_name()).await;
    // Wait for fred to notice the closed socket: the readiness ping fails (it goes over the
    // publisher connection too).
    let deadline = Instant::now() + PATIENCE;
    while a.ping().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the killed connection was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let published = a.publish(&random_user(), Bytes::from_static(b"lost")).await;
    assert!(published.is_err(), "publishing without a connection fails");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "and fails fast: {:?}",
        started.elapsed()
    );
    assert!(a.ping().await.is_err());

    // Once reconnected, publishing works again.
    let deadline = Instant::now() + PATIENCE;
    while a
        .publish(&random_user(), Bytes::from_static(b"back"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the publisher never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.shutdown().await;
}

#[tokio::test]
async fn redis_connect_errors_are_quick_and_redacted() {
    let started = Instant::now();
    let error = RedisBus::connect(
        "redis://ferry:hunter2@127.0.0.1:1",
        RedisBusOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, BusError::Connect { .. }), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(
        error.to_string().contains("ferry:***@127.0.0.1:1"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));

    let error = RedisBus::connect("not a url", RedisBusOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, BusError::InvalidUrl { .. }), "{error}");
}
