//! Abuse limits over real sockets: slow or idle HTTP connections, connection caps per client
//! address and sessions per user, idle anonymous sessions, the client address behind a
//! trusted proxy, and the admin listener.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::handshake::ClientHandshake;
use ferry_protocol::{ClientFrame, ErrorCode, RelayId, ServerFrame, UserId};
use ferry_relay::bus::{Bus, BusError, LocalBus};
use ferry_relay::{Config, Server};
use futures_util::SinkExt;
use rand_core::OsRng;
use support::client::{Client, Identity, Socket, close_code, next_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Relay {
    server: Server,
    _dir: tempfile::TempDir,
}

async fn relay_with(adjust: impl FnOnce(&mut Config)) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
    adjust(&mut config);
    let server = Server::spawn(config).await.unwrap();
    Relay { server, _dir: dir }
}

impl Relay {
    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn id(&self) -> RelayId {
        self.server.relay_id()
    }
}

const TOO_MANY: Option<u16> = Some(ErrorCode::TooManyConnections.close_code());

/// A WebSocket to the relay, from the loopback address `from`, with an `X-Forwarded-For`
/// header if given.
async fn socket_from(addr: SocketAddr, from: &str, forwarded_for: Option<&str>) -> Socket {
    let from: IpAddr = from.parse().unwrap();
    let tcp = TcpSocket::new_v4().unwrap();
    tcp.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = tcp.connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(value) = forwarded_for {
        request
            .headers_mut()
            .insert("x-forwarded-for", value.parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp))
        .await
        .unwrap();
    ws
}

/// Whether the relay admitted the connection: it answers a ClientHello (Ok), or it closed
/// the connection (the close code).
async fn answers_hello(ws: &mut Socket, relay: RelayId) -> Result<(), Option<u16>> {
    let (_, hello) = ClientHandshake::start(relay, &mut OsRng);
    let _ = ws.send(Message::Binary(hello.into())).await;
    next_binary(ws).await.map(drop)
}

/// Reads until the relay closes the connection; how long that took, or `None` if it stayed
/// open for `patience`.
async fn closed_within(
    tcp: &mut tokio::net::tcp::OwnedReadHalf,
    patience: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(patience, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let relay = relay_with(|c| c.limits.http_header_timeout_ms = 300).await;

    // Headers sent a little at a time, forever: cut off at the header deadline.
    let (mut read, mut write) = TcpStream::connect(relay.addr()).await.unwrap().into_split();
    write.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if write.write_all(b"X-Slow: a\r\n").await.is_err() {
                return;
            }
        }
    });
    let took = closed_within(&mut read, Duration::from_secs(5)).await;
    trickle.abort();
    let took = took.expect("a connection trickling its headers is closed");
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");

    // A connection that never sends anything.
    let (mut read, _write) = TcpStream::connect(relay.addr()).await.unwrap().into_split();
    assert!(
        closed_within(&mut read, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent connection is closed"
    );

    // A keep-alive connection after its answer, idle.
    let (mut read, mut write) = TcpStream::connect(relay.addr()).await.unwrap().into_split();
    write
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).ends_with("ok\n") {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "answered before closing");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut read, Duration::from_secs(5))
            .await
            .is_some(),
        "an idle keep-alive connection is closed"
    );
    let metrics = relay.server.metrics().render();
    assert!(
        metrics.contains("ferry_limit_refusals_total{limit=\"http_header_timeout\"} 3"),
        "{metrics}"
    );
    relay.server.shutdown().await;
}

#[tokio::test]
async fn connections_waiting_for_their_request_count_against_the_limit() {
    let relay = relay_with(|c| c.limits.max_connections = 2).await;
    let silent_a = TcpStream::connect(relay.addr()).await.unwrap();
    let silent_b = TcpStream::connect(relay.addr()).await.unwrap();
    let mut ws = socket_from(relay.addr(), "127.0.0.1", None).await;
    assert_eq!(close_code(&mut ws).await, TOO_MANY);

    // Once they are gone there is room again.
    drop((silent_a, silent_b));
    let admitted = wait_until_admitted(&relay, "127.0.0.1", None).await;
    drop(admitted);
    relay.server.shutdown().await;
}

/// Retries until a new WebSocket from `from` is admitted (the relay counts a closed
/// connection out once it notices the close).
async fn wait_until_admitted(relay: &Relay, from: &str, forwarded_for: Option<&str>) -> Socket {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ws = socket_from(relay.addr(), from, forwarded_for).await;
        match answers_hello(&mut ws, relay.id()).await {
            Ok(()) => return ws,
            Err(code) => {
                assert_eq!(code, TOO_MANY);
                assert!(Instant::now() < deadline, "never admitted again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn connections_are_capped_per_client_address() {
    let relay = relay_with(|c| c.limits.max_connections_per_ip = 2).await;
    let mut first = socket_from(relay.addr(), "127.0.0.1", None).await;
    let mut second = socket_from(relay.addr(), "127.0.0.1", None).await;
    let mut third = socket_from(relay.addr(), "127.0.0.1", None).await;
    assert_eq!(close_code(&mut third).await, TOO_MANY);
    let metrics = relay.server.metrics().render();
    assert!(
        metrics.contains("ferry_limit_refusals_total{limit=\"connections_per_ip\"} 1"),
        "{metrics}"
    );
    answers_hello(&mut first, relay.id()).await.unwrap();
    answers_hello(&mut second, relay.id()).await.unwrap();

    // Another address has its own allowance.
    let mut elsewhere = socket_from(relay.addr(), "127.0.0.2", None).await;
    answers_hello(&mut elsewhere, relay.id()).await.unwrap();

    // A closed connection gives its place back.
    drop(first);
    let again = wait_until_admitted(&relay, "127.0.0.1", None).await;
    drop((second, elsewhere, again));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn sessions_are_capped_per_user() {
    let relay = relay_with(|c| c.limits.max_sessions_per_user = 2).await;
    let laptop = Identity::new_user();
    let phone = laptop.another_device("phone");
    let tablet = laptop.another_device("tablet");
    // Admitted up front: admitting takes a (recovery) session of the user too.
    for id in [&phone, &tablet] {
        id.admit(relay.addr(), relay.id()).await;
    }
    let a = Client::connect(relay.addr(), relay.id(), &laptop, None)
        .await
        .unwrap();
    let _b = Client::connect(relay.addr(), relay.id(), &phone, None)
        .await
        .unwrap();
    let refused = Client::connect(relay.addr(), relay.id(), &tablet, None)
        .await
        .err()
        .expect("a third session of the user is refused");
    assert_eq!(refused.code(), Some(ErrorCode::TooManyConnections));

    // Other users are not affected.
    Client::connect(relay.addr(), relay.id(), &Identity::new_user(), None)
        .await
        .unwrap();

    // A session that ends gives its place back.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(refused) = Client::connect(relay.addr(), relay.id(), &tablet, None).await {
        assert_eq!(refused.code(), Some(ErrorCode::TooManyConnections));
        assert!(Instant::now() < deadline, "never admitted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.server.shutdown().await;
}

#[tokio::test]
async fn idle_anonymous_sessions_are_closed_even_when_they_ping() {
    let relay = relay_with(|c| c.limits.pairing_idle_timeout_ms = 400).await;
    let mut anonymous = Client::connect_anonymous(relay.addr(), relay.id())
        .await
        .unwrap();
    let start = Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        for nonce in 0.. {
            let ping = anonymous
                .channel
                .seal(&ClientFrame::Ping { nonce })
                .unwrap();
            let _ = anonymous.ws.send(Message::Binary(ping.into())).await;
            match anonymous.recv().await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(code) => return code,
            }
        }
        unreachable!()
    })
    .await
    .expect("an idle anonymous session is closed");
    assert_eq!(code, Some(1001), "closed as idle (going away)");
    assert!(start.elapsed() >= Duration::from_millis(350));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn an_anonymous_session_in_a_pairing_is_not_idle() {
    let relay = relay_with(|c| c.limits.pairing_idle_timeout_ms = 300).await;
    let mut inviter = Client::connect(relay.addr(), relay.id(), &Identity::new_user(), None)
        .await
        .unwrap();
    let slot = inviter.open_pairing().await.unwrap();
    let mut joiner = Client::connect_anonymous(relay.addr(), relay.id())
        .await
        .unwrap();
    joiner
        .send(&ClientFrame::PairJoin {
            slot,
            body: b"hello".to_vec(),
        })
        .await;
    assert!(matches!(
        inviter.pairing_frame().await,
        ServerFrame::PairPeer { .. }
    ));
    // The inviter's user takes its time; the joiner only waits.
    tokio::time::sleep(Duration::from_millis(900)).await;
    inviter
        .send(&ClientFrame::PairForward {
            slot,
            body: b"grant".to_vec(),
        })
        .await;
    assert_eq!(
        joiner.pairing_frame().await,
        ServerFrame::PairPeer {
            slot,
            body: b"grant".to_vec()
        }
    );
    relay.server.shutdown().await;
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let relay = relay_with(|c| c.limits.max_connections_per_ip = 2).await;
    let addr = relay.addr();
    let a = socket_from(addr, "127.0.0.1", Some("198.51.100.1")).await;
    let b = socket_from(addr, "127.0.0.1", Some("198.51.100.2")).await;
    let mut c = socket_from(addr, "127.0.0.1", Some("198.51.100.3")).await;
    assert_eq!(close_code(&mut c).await, TOO_MANY);
    drop((a, b));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_names_the_client() {
    let relay = relay_with(|c| {
        c.limits.max_connections_per_ip = 2;
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let (addr, id) = (relay.addr(), relay.id());
    // Two clients behind the proxy, each with its own allowance; the proxy's own
    // connections do not count against anyone.
    let mut a1 = socket_from(addr, "127.0.0.1", Some("198.51.100.1")).await;
    let mut a2 = socket_from(addr, "127.0.0.1", Some("203.0.113.9, 198.51.100.1")).await;
    let mut a3 = socket_from(addr, "127.0.0.1", Some("198.51.100.1")).await;
    assert_eq!(close_code(&mut a3).await, TOO_MANY);
    let mut b1 = socket_from(addr, "127.0.0.1", Some("198.51.100.2")).await;
    let mut b2 = socket_from(addr, "127.0.0.1", Some("198.51.100.2")).await;
    for ws in [&mut a1, &mut a2, &mut b1, &mut b2] {
        answers_hello(ws, id).await.unwrap();
    }
    // An untrusted peer (127.0.0.2) cannot borrow another client's allowance.
    let mut c1 = socket_from(addr, "127.0.0.2", Some("198.51.100.3")).await;
    let mut c2 = socket_from(addr, "127.0.0.2", Some("198.51.100.4")).await;
    let mut c3 = socket_from(addr, "127.0.0.2", Some("198.51.100.5")).await;
    assert_eq!(close_code(&mut c3).await, TOO_MANY);
    answers_hello(&mut c1, id).await.unwrap();
    answers_hello(&mut c2, id).await.unwrap();
    drop((a1, a2, b1, b2, c1, c2));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_move_to_the_admin_listener() {
    let relay = relay_with(|c| c.admin_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let client = relay.addr();
    let admin = relay.server.admin_addr().expect("admin listener bound");
    assert_ne!(client, admin);
    let get = |addr, path| async move { support::http::get(addr, path).await.unwrap() };

    assert_eq!(get(client, "/healthz").await.0, 200);
    assert_eq!(get(client, "/metrics").await.0, 404);
    assert_eq!(get(client, "/readyz").await.0, 404);

    assert_eq!(get(admin, "/healthz").await.0, 200);
    let (status, body) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("ferry_connections"), "{body}");
    assert_eq!(get(admin, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(get(admin, "/ws").await.0, 404);
    relay.server.shutdown().await;
}

/// A bus whose readiness probe fails with an error that names a host.
#[derive(Debug)]
struct UnreachableBus {
    inner: LocalBus,
}

#[async_trait::async_trait]
impl Bus for UnreachableBus {
    async fn publish(&self, user: &UserId, payload: Bytes) -> Result<(), BusError> {
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
        Err(BusError::Connect {
            url: "redis://secret-redis.internal:6379".to_owned(),
            reason: "connection refused".to_owned(),
        })
    }
    fn kind(&self) -> &'static str {
        "unreachable"
    }
}

#[tokio::test]
async fn readiness_names_what_failed_without_the_error_text() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
    let store = ferry_relay::store::open(&config.database_url())
        .await
        .unwrap();
    let (local, messages) = LocalBus::standalone();
    let bus: Arc<dyn Bus> = Arc::new(UnreachableBus { inner: local });
    let server = Server::spawn_with_store(config, Arc::clone(&store), (bus, messages))
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_eq!(
        support::http::get(addr, "/readyz").await.unwrap(),
        (503, "not ready: bus\n".to_owned())
    );
    // The database goes away too.
    store.close().await;
    assert_eq!(
        support::http::get(addr, "/readyz").await.unwrap(),
        (503, "not ready: database, bus\n".to_owned())
    );
    server.shutdown().await;
}
