//! The PROXY protocol (`--proxy-protocol`) over real sockets: a header from a trusted proxy
//! names the client the per-address connection cap counts (v1 and v2, IPv4 and IPv6 by
//! /64), health checks (`UNKNOWN`, `LOCAL`) pass, a bad or late header from a trusted proxy
//! closes the connection and is counted, and a header is never believed from an untrusted
//! peer or without the flag.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ferry_protocol::handshake::ClientHandshake;
use ferry_protocol::{ErrorCode, RelayId};
use ferry_relay::{Config, Server};
use futures_util::SinkExt;
use rand_core::OsRng;
use support::client::{Socket, close_code, next_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Relay {
    server: Server,
    _dir: tempfile::TempDir,
}

/// A relay that trusts 127.0.0.1 as a proxy, with the PROXY protocol on or off.
async fn relay(proxy_protocol: bool, adjust: impl FnOnce(&mut Config)) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    config.proxy_protocol = proxy_protocol;
    config.limits.max_connections_per_ip = 2;
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

    fn metrics(&self) -> String {
        self.server.metrics().render()
    }
}

const TOO_MANY: Option<u16> = Some(ErrorCode::TooManyConnections.close_code());

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 7070\r\n").into_bytes()
}

fn v1_tcp6(client: &str) -> Vec<u8> {
    format!("PROXY TCP6 {client} ::1 40000 7070\r\n").into_bytes()
}

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header for a TCP connection from `client` (IPv4 or IPv6), with an extension
/// after the addresses as load balancers add them.
fn v2(client: &str) -> Vec<u8> {
    let mut payload = match client.parse::<IpAddr>().unwrap() {
        IpAddr::V4(ip) => [ip.octets(), [127, 0, 0, 1]].concat(),
        IpAddr::V6(ip) => [ip.octets(), Ipv6Addr::LOCALHOST.octets()].concat(),
    };
    payload.extend_from_slice(&40000u16.to_be_bytes());
    payload.extend_from_slice(&7070u16.to_be_bytes());
    payload.extend_from_slice(b"\xea\x00\x04\x01vpc");
    let family = if client.contains(':') { 0x21 } else { 0x11 };
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, family]);
    header.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    header.extend_from_slice(&payload);
    header
}

/// A v2 LOCAL header (the proxy's own connection, e.g. a health check).
fn v2_local() -> Vec<u8> {
    [V2_SIGNATURE, &[0x20, 0x00, 0x00, 0x00]].concat()
}

/// A TCP connection from the loopback address `from` that has sent `prefix`.
async fn tcp_from(addr: SocketAddr, from: &str, prefix: &[u8]) -> TcpStream {
    let tcp = TcpSocket::new_v4().unwrap();
    tcp.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    let mut tcp = tcp.connect(addr).await.unwrap();
    tcp.write_all(prefix).await.unwrap();
    tcp
}

/// A WebSocket to the relay from `from`, after `prefix` (a PROXY header).
async fn socket_from(addr: SocketAddr, from: &str, prefix: &[u8]) -> Socket {
    let tcp = tcp_from(addr, from, prefix).await;
    let request = format!("ws://{addr}/ws").into_client_request().unwrap();
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

/// Everything the relay sends on a connection from `from` that sent `bytes`, until it
/// closes it.
async fn reply(addr: SocketAddr, from: &str, bytes: &[u8]) -> String {
    let mut tcp = tcp_from(addr, from, bytes).await;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut reply))
        .await
        .expect("the relay closes the connection")
        .ok();
    String::from_utf8_lossy(&reply).into_owned()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n";

/// A WebSocket upgrade request, as raw bytes.
const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: relay\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn a_v1_header_names_the_client_the_cap_counts() {
    let relay = relay(true, |_| {}).await;
    let (addr, id) = (relay.addr(), relay.id());
    // Every connection comes from the proxy (127.0.0.1); the header names the client.
    let mut a1 = socket_from(addr, "127.0.0.1", &v1("203.0.113.7")).await;
    let mut a2 = socket_from(addr, "127.0.0.1", &v1("203.0.113.7")).await;
    let mut a3 = socket_from(addr, "127.0.0.1", &v1("203.0.113.7")).await;
    assert_eq!(close_code(&mut a3).await, TOO_MANY);
    // Another client behind the same proxy has its own allowance.
    let mut b1 = socket_from(addr, "127.0.0.1", &v1("203.0.113.8")).await;
    for ws in [&mut a1, &mut a2, &mut b1] {
        answers_hello(ws, id).await.unwrap();
    }
    // IPv6 clients count by /64.
    let mut c1 = socket_from(addr, "127.0.0.1", &v1_tcp6("2001:db8:1:2::7")).await;
    let mut c2 = socket_from(addr, "127.0.0.1", &v1_tcp6("2001:db8:1:2::8")).await;
    let mut c3 = socket_from(addr, "127.0.0.1", &v1_tcp6("2001:db8:1:2::9")).await;
    assert_eq!(close_code(&mut c3).await, TOO_MANY);
    let mut d1 = socket_from(addr, "127.0.0.1", &v1_tcp6("2001:db8:1:3::7")).await;
    for ws in [&mut c1, &mut c2, &mut d1] {
        answers_hello(ws, id).await.unwrap();
    }
    let metrics = relay.metrics();
    assert!(
        metrics.contains("ferry_limit_refusals_total{limit=\"connections_per_ip\"} 2"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("ferry_proxy_header_errors_total{"),
        "{metrics}"
    );
    drop((a1, a2, b1, c1, c2, d1));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn a_v2_header_names_the_client_from_the_moment_it_is_read() {
    let relay = relay(true, |_| {}).await;
    let (addr, id) = (relay.addr(), relay.id());
    // Two connections that sent their header but no request yet already count against the
    // client they name.
    let waiting_a = tcp_from(addr, "127.0.0.1", &v2("198.51.100.1")).await;
    let waiting_b = tcp_from(addr, "127.0.0.1", &v2("198.51.100.1")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = socket_from(addr, "127.0.0.1", &v2("198.51.100.1")).await;
    assert_eq!(close_code(&mut refused).await, TOO_MANY);
    let mut other = socket_from(addr, "127.0.0.1", &v2("198.51.100.2")).await;
    answers_hello(&mut other, id).await.unwrap();
    drop((waiting_a, waiting_b));

    // IPv6, by /64.
    let mut c1 = socket_from(addr, "127.0.0.1", &v2("2001:db8:1:2::7")).await;
    let mut c2 = socket_from(addr, "127.0.0.1", &v2("2001:db8:1:2::8")).await;
    let mut c3 = socket_from(addr, "127.0.0.1", &v2("2001:db8:1:2::9")).await;
    assert_eq!(close_code(&mut c3).await, TOO_MANY);
    let mut d1 = socket_from(addr, "127.0.0.1", &v2("2001:db8:1:3::7")).await;
    for ws in [&mut c1, &mut c2, &mut d1] {
        answers_hello(ws, id).await.unwrap();
    }
    drop((other, c1, c2, d1));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn health_checks_without_a_client_address_are_served() {
    let relay = relay(true, |_| {}).await;
    let addr = relay.addr();
    for header in [b"PROXY UNKNOWN\r\n".to_vec(), v2_local()] {
        let answer = reply(addr, "127.0.0.1", &[&header[..], HEALTHZ].concat()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    relay.server.shutdown().await;
}

#[tokio::test]
async fn a_bad_missing_or_late_header_from_a_trusted_proxy_closes_the_connection() {
    let relay = relay(true, |c| c.limits.http_header_timeout_ms = 300).await;
    let addr = relay.addr();
    let mut too_long_v2 = v2("198.51.100.1");
    too_long_v2[14..16].copy_from_slice(&[0xff, 0xff]);
    let cases: [(&str, Vec<u8>); 5] = [
        ("invalid", b"PROXY TCP4 203.0.113.7 nonsense\r\n".to_vec()),
        ("invalid", [&v1("203.0.113.7")[..40], b"\n"].concat()),
        ("missing", Vec::new()),
        ("too_long", [b"PROXY UNKNOWN ", &[b'x'; 100][..]].concat()),
        ("too_long", too_long_v2),
    ];
    for (reason, header) in cases {
        // Whatever follows, the relay answers nothing and closes.
        let answer = reply(addr, "127.0.0.1", &[&header[..], HEALTHZ].concat()).await;
        assert_eq!(answer, "", "{reason}: {header:?}");
    }

    // A header cut short by the proxy closing its side.
    let mut cut = tcp_from(addr, "127.0.0.1", &v2("198.51.100.1")[..20]).await;
    cut.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), cut.read_to_end(&mut rest))
        .await
        .unwrap()
        .ok();
    assert!(rest.is_empty());

    // A header trickled in too slowly: closed at the header deadline.
    let start = std::time::Instant::now();
    let answer = reply(addr, "127.0.0.1", b"PROXY TCP4 ").await;
    assert_eq!(answer, "");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );

    let metrics = relay.metrics();
    for line in [
        "ferry_proxy_header_errors_total{reason=\"invalid\"} 2",
        "ferry_proxy_header_errors_total{reason=\"missing\"} 1",
        "ferry_proxy_header_errors_total{reason=\"too_long\"} 2",
        "ferry_proxy_header_errors_total{reason=\"closed\"} 1",
        "ferry_proxy_header_errors_total{reason=\"timeout\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // The relay still serves.
    let answer = reply(
        addr,
        "127.0.0.1",
        &[&v1("203.0.113.7")[..], HEALTHZ].concat(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    relay.server.shutdown().await;
}

#[tokio::test]
async fn a_header_is_not_believed_from_an_untrusted_peer() {
    let relay = relay(true, |_| {}).await;
    let (addr, id) = (relay.addr(), relay.id());
    // 127.0.0.2 is no trusted proxy: it is served as without the flag, its connections
    // counted against its own address...
    let mut plain = socket_from(addr, "127.0.0.2", b"").await;
    let mut second = socket_from(addr, "127.0.0.2", b"").await;
    let mut third = socket_from(addr, "127.0.0.2", b"").await;
    assert_eq!(close_code(&mut third).await, TOO_MANY);
    answers_hello(&mut plain, id).await.unwrap();
    answers_hello(&mut second, id).await.unwrap();
    drop((plain, second));
    // ...and a header it sends is taken for a broken HTTP request (had it been believed, the
    // upgrade would be answered 101, over the cap or not).
    for header in [v1("203.0.113.7"), v2("203.0.113.7")] {
        let answer = reply(addr, "127.0.0.2", &[&header[..], UPGRADE].concat()).await;
        assert!(!answer.starts_with("HTTP/1.1 101"), "{answer}");
    }
    assert!(!relay.metrics().contains("ferry_proxy_header_errors_total{"));
    relay.server.shutdown().await;
}

#[tokio::test]
async fn without_the_flag_a_header_is_not_believed_even_from_a_trusted_proxy() {
    let relay = relay(false, |_| {}).await;
    let (addr, id) = (relay.addr(), relay.id());
    for header in [v1("203.0.113.7"), v2("203.0.113.7")] {
        let answer = reply(addr, "127.0.0.1", &[&header[..], UPGRADE].concat()).await;
        assert!(!answer.starts_with("HTTP/1.1 101"), "{answer}");
    }
    // The proxy's WebSockets without a header work as before.
    let mut ws = socket_from(addr, "127.0.0.1", b"").await;
    answers_hello(&mut ws, id).await.unwrap();
    relay.server.shutdown().await;
}
