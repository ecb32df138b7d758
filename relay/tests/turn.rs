//! TURN credentials for calls (`TurnCredentialsFetch`), against a real coturn.
//!
//! The coturn test starts `turnserver` itself (coturn's `use-auth-secret` scheme, on a free
//! port of 127.0.0.1, its files in a temporary folder), fetches credentials from a relay over a
//! real device session, and has coturn judge them with a TURN Allocate written here (RFC 5766
//! over UDP, long-term credential MESSAGE-INTEGRITY): the relay's credentials get a relayed
//! address, a forged password and expired credentials get 401. `turnutils_uclient` (coturn's
//! own client) checks the same three independently. Without `turnserver` the test prints why
//! and passes, unless `FERRY_REQUIRE_SERVICES=1` (CI), where it fails.
//!
//! The other tests need no TURN server: no TURN configured, the rate limit, a revoked device
//! whose session is still open, and the sessions that may not ask (pairing, recovery).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use ferry_protocol::{ClientFrame, ErrorCode, ServerFrame, SigningKey, TurnCredentials};
use ferry_relay::server::StartError;
use ferry_relay::turn::{self, TurnConfigError, TurnIssuer};
use ferry_relay::{Config, Server};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use support::client::{Client, Identity, revoke_body};
use support::node::{Node, next_frame, node};
use support::storage::{NOW_S, stored_chain};
use tokio::net::UdpSocket;

const SECRET: &str = "ferry-turn-test-secret";
const REALM: &str = "ferry.test";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The relay's TURN settings from command-line flags, parsed as `ferry-relay` parses them.
fn turn_flags(args: &[&str]) -> ferry_relay::config::TurnConfig {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }
    let args = std::iter::once("ferry-relay").chain(args.iter().copied());
    Cli::try_parse_from(args).unwrap().config.turn
}

/// Sends `TurnCredentialsFetch` and returns its answer (skipping what the session pushes).
async fn fetch(client: &mut Client) -> Result<TurnCredentials, ErrorCode> {
    client.send(&ClientFrame::TurnCredentialsFetch).await;
    loop {
        match next_frame(client).await {
            Ok(ServerFrame::TurnCredentials(credentials)) => return Ok(credentials),
            Ok(ServerFrame::Error(e)) => return Err(e.code),
            Ok(_) => continue,
            Err(close) => panic!("the session closed ({close:?}) instead of answering"),
        }
    }
}

/// The relay's `ferry_turn_credentials_issued_total`.
fn issued(node: &Node) -> u64 {
    let text = node.server.metrics().render();
    let line = text
        .lines()
        .find(|l| l.starts_with("ferry_turn_credentials_issued_total "))
        .expect("the metric is exported");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// coturn

/// A `turnserver` of this test, stopped when dropped.
struct Coturn {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coturn {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Where `name` is on the `PATH`, if it is.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
}

/// `turnserver`, or `None` (with the reason printed) when it is missing and not required.
fn turnserver() -> Option<PathBuf> {
    if let Some(path) = which("turnserver") {
        return Some(path);
    }
    let why = "turnserver (coturn) is not installed";
    if std::env::var("FERRY_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{why} and FERRY_REQUIRE_SERVICES=1 (apt-get install coturn)");
    }
    eprintln!("skipped: {why}");
    None
}

/// A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both), below the
/// kernel's ephemeral range: an ephemeral port could be handed to this test's own client
/// socket before coturn binds it, and the client would then talk to itself.
fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000, ephemeral_low.clamp(11_000, 32_768));
    loop {
        let random = u16::from_le_bytes(support::random_bytes()[..2].try_into().unwrap());
        let port = low + random % (high - low);
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
        let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
}

/// The `turnserver` command line (see the module docs): no configuration file (`-n`, so the
/// system's `/etc/turnserver.conf` does not apply), every file in `dir`.
fn turnserver_args(port: u16, dir: &Path) -> Vec<String> {
    vec![
        "-n".into(),
        format!("--listening-port={port}"),
        "--listening-ip=127.0.0.1".into(),
        "--relay-ip=127.0.0.1".into(),
        "--use-auth-secret".into(),
        format!("--static-auth-secret={SECRET}"),
        format!("--realm={REALM}"),
        "--allow-loopback-peers".into(),
        "--no-cli".into(),
        "--no-tls".into(),
        "--no-dtls".into(),
        "--log-file=stdout".into(),
        "--simple-log".into(),
        format!("--pidfile={}", dir.join("turnserver.pid").display()),
        format!("--userdb={}", dir.join("turndb").display()),
        "--no-software-attribute".into(),
    ]
}

/// Starts `turnserver` on a free port and waits until it answers an Allocate (with 401, as
/// it answers every first Allocate).
async fn start_coturn(program: &Path) -> Coturn {
    let mut last_log = String::new();
    for _attempt in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("turnserver.log");
        let child = Command::new(program)
            .args(turnserver_args(port, dir.path()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("turnserver starts");
        let mut coturn = Coturn {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if coturn.child.try_wait().unwrap().is_some() {
                break; // exited (the port was taken meanwhile?): try another
            }
            if challenge(port, Duration::from_millis(200)).await.is_some() {
                return coturn;
            }
        }
        last_log = coturn.log();
    }
    panic!("turnserver did not come up; its log:\n{last_log}");
}

// A TURN client, just enough for one Allocate (RFC 5389 / 5766 over UDP).

const MAGIC_COOKIE: u32 = 0x2112_A442;
const ALLOCATE: u16 = 0x0003;
const ALLOCATE_SUCCESS: u16 = 0x0103;
const ALLOCATE_ERROR: u16 = 0x0113;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;

/// A STUN message's attributes: type and value, in order.
type Attributes = Vec<(u16, Vec<u8>)>;

/// What coturn answered to an Allocate.
#[derive(Debug, PartialEq, Eq)]
enum Allocation {
    /// A relayed transport address was allocated.
    Relayed(SocketAddr),
    /// Refused with this STUN error code.
    Refused(u16),
}

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn transaction_id() -> [u8; 12] {
    support::random_bytes()[..12].try_into().unwrap()
}

/// An Allocate for a UDP relay; with `auth` (username, password, realm, nonce) signed with
/// the long-term credential: MESSAGE-INTEGRITY is HMAC-SHA1 under MD5(username:realm:password)
/// of the message up to it, its length field already counting it.
fn allocate_request(tid: &[u8; 12], auth: Option<(&str, &str, &str, &[u8])>) -> Vec<u8> {
    let mut attrs = Vec::new();
    push_attr(&mut attrs, ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    if let Some((username, _, realm, nonce)) = auth {
        push_attr(&mut attrs, ATTR_USERNAME, username.as_bytes());
        push_attr(&mut attrs, ATTR_REALM, realm.as_bytes());
        push_attr(&mut attrs, ATTR_NONCE, nonce);
    }
    let integrity_len = if auth.is_some() { 4 + 20 } else { 0 };
    let mut message = Vec::new();
    message.extend_from_slice(&ALLOCATE.to_be_bytes());
    let length = u16::try_from(attrs.len() + integrity_len).unwrap();
    message.extend_from_slice(&length.to_be_bytes());
    message.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    message.extend_from_slice(tid);
    message.extend_from_slice(&attrs);
    if let Some((username, password, realm, _)) = auth {
        let key = Md5::digest(format!("{username}:{realm}:{password}").as_bytes());
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&key).unwrap();
        mac.update(&message);
        let integrity = mac.finalize().into_bytes();
        push_attr(&mut message, ATTR_MESSAGE_INTEGRITY, &integrity);
    }
    message
}

/// A STUN response to `tid`: its type and attributes.
fn parse_response(bytes: &[u8], tid: &[u8; 12]) -> Option<(u16, Attributes)> {
    if bytes.len() < 20 || bytes[4..8] != MAGIC_COOKIE.to_be_bytes() || &bytes[8..20] != tid {
        return None;
    }
    let kind = u16::from_be_bytes([bytes[0], bytes[1]]);
    if kind & 0x0110 == 0 {
        return None; // a request, not an answer
    }
    let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    let body = bytes.get(20..20 + length)?;
    let mut attrs = Vec::new();
    let mut at = 0;
    while at + 4 <= body.len() {
        let attr = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?.to_vec();
        attrs.push((attr, value));
        at += 4 + len.div_ceil(4) * 4;
    }
    Some((kind, attrs))
}

fn attr(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_slice())
}

/// Sends `request` and waits up to `wait` for the answer to it.
async fn exchange(
    socket: &UdpSocket,
    request: &[u8],
    tid: &[u8; 12],
    wait: Duration,
) -> Option<(u16, Attributes)> {
    socket.send(request).await.ok()?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut buffer = [0u8; 2048];
    loop {
        let received = tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await;
        let n = received.ok()?.ok()?;
        if let Some(response) = parse_response(&buffer[..n], tid) {
            return Some(response);
        }
    }
}

async fn turn_socket(port: u16) -> UdpSocket {
    loop {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        // Never the server's own port (before it listens): the socket would hear itself.
        if socket.local_addr().unwrap().port() != port {
            socket.connect((Ipv4Addr::LOCALHOST, port)).await.unwrap();
            return socket;
        }
    }
}

/// An Allocate without credentials: coturn's 401 challenge, with its realm and nonce.
async fn challenge(port: u16, wait: Duration) -> Option<(UdpSocket, String, Vec<u8>)> {
    let socket = turn_socket(port).await;
    let tid = transaction_id();
    let (kind, attrs) = exchange(&socket, &allocate_request(&tid, None), &tid, wait).await?;
    assert_eq!(
        kind, ALLOCATE_ERROR,
        "an unauthenticated Allocate is refused"
    );
    assert_eq!(error_code(&attrs), Some(401), "{attrs:?}");
    let realm = String::from_utf8(attr(&attrs, ATTR_REALM)?.to_vec()).unwrap();
    let nonce = attr(&attrs, ATTR_NONCE)?.to_vec();
    Some((socket, realm, nonce))
}

fn error_code(attrs: &[(u16, Vec<u8>)]) -> Option<u16> {
    let value = attr(attrs, ATTR_ERROR_CODE)?;
    Some(u16::from(value[2] & 0x07) * 100 + u16::from(value[3]))
}

/// Asks coturn for a relayed address with `username` / `password` (the challenge first, then
/// the signed Allocate on the same 5-tuple).
async fn allocate(port: u16, username: &str, password: &str) -> Allocation {
    let (socket, realm, nonce) = challenge(port, Duration::from_secs(5))
        .await
        .expect("coturn answers");
    assert_eq!(realm, REALM);
    let tid = transaction_id();
    let request = allocate_request(&tid, Some((username, password, &realm, &nonce)));
    let (kind, attrs) = exchange(&socket, &request, &tid, Duration::from_secs(5))
        .await
        .expect("coturn answers the signed Allocate");
    match kind {
        ALLOCATE_SUCCESS => {
            let value = attr(&attrs, ATTR_XOR_RELAYED_ADDRESS).expect("a relayed address");
            assert_eq!(value[1], 0x01, "IPv4");
            let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
            let ip = u32::from_be_bytes(value[4..8].try_into().unwrap()) ^ MAGIC_COOKIE;
            Allocation::Relayed(SocketAddr::from((Ipv4Addr::from(ip), port)))
        }
        ALLOCATE_ERROR => Allocation::Refused(error_code(&attrs).expect("an ERROR-CODE")),
        other => panic!("unexpected STUN message type {other:#06x}"),
    }
}

/// `turnutils_uclient -v -y -c -n 1 -m 1 -u USER -w PASS -p PORT 127.0.0.1`: two clients that
/// allocate with these credentials and send each other one message through coturn. Whether it
/// succeeded (exit 0 and a relayed address printed), and its output.
fn uclient(program: &Path, port: u16, username: &str, password: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("uclient.log");
    let port = port.to_string();
    let args = [
        "-v",
        "-y",
        "-c",
        "-n",
        "1",
        "-m",
        "1",
        "-u",
        username,
        "-w",
        password,
        "-p",
        port.as_str(),
        "127.0.0.1",
    ];
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&out).unwrap(),
        ))
        .spawn()
        .expect("turnutils_uclient starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    let relayed = output.contains("Received relay addr: 127.0.0.1:");
    let ok = status.is_some_and(|s| s.success()) && relayed;
    (ok, output)
}

/// The relay's credentials work on coturn; forged and expired ones do not.
#[tokio::test]
async fn coturn_allocates_with_the_relays_credentials_only() {
    let Some(turnserver) = turnserver() else {
        return;
    };
    let coturn = start_coturn(&turnserver).await;
    let port = coturn.port;
    let urls = [
        format!("turn:127.0.0.1:{port}?transport=udp"),
        format!("turn:127.0.0.1:{port}?transport=tcp"),
    ];
    let flags = turn_flags(&[
        "--turn-url",
        &urls[0],
        "--turn-url",
        &urls[1],
        "--turn-secret",
        SECRET,
        "--turn-ttl-secs",
        "3600",
    ]);
    let node = node(|config| config.turn = flags).await;
    let id = Identity::new_user();
    let mut device = node.connect(&id, None).await;
    let before = now_s();
    let credentials = fetch(&mut device).await.expect("credentials");
    let after = now_s();

    // What the relay handed out: the configured URLs, an expiry an hour away, an opaque
    // username naming neither the user nor the device.
    assert_eq!(credentials.urls, urls);
    assert!(
        (before + 3600..=after + 3600).contains(&credentials.expires_at),
        "{credentials:?}"
    );
    let (expiry, opaque) = credentials.username.split_once(':').unwrap();
    assert_eq!(expiry, credentials.expires_at.to_string());
    assert_eq!(opaque.len(), 22, "16 bytes, base64url without padding");
    for name in [id.user.id().to_string(), id.device.id().to_string()] {
        assert!(!credentials.username.contains(&name[..8]));
    }
    assert_eq!(issued(&node), 1);

    // A forged password (one character changed: what a client guessing at passwords would
    // try), and credentials that expired an hour ago, minted by the relay's own code.
    let first = if credentials.password.starts_with('A') {
        "B"
    } else {
        "A"
    };
    let forged = format!("{first}{}", &credentials.password[1..]);
    let expired = TurnIssuer::new(urls.to_vec(), SECRET, 60)
        .unwrap()
        .issue(now_s() - 3600);
    assert!(expired.expires_at < now_s());
    assert_eq!(
        expired.password,
        turn::password(SECRET.as_bytes(), &expired.username),
        "signed with the right secret: only its expiry is wrong"
    );
    // coturn's own client judges the three too, meanwhile (a successful run takes it a few
    // seconds).
    let uclient_checks = which("turnutils_uclient").map(|program| {
        let cases = [
            (credentials.username.clone(), credentials.password.clone()),
            (credentials.username.clone(), forged.clone()),
            (expired.username.clone(), expired.password.clone()),
        ];
        tokio::task::spawn_blocking(move || {
            cases.map(|(username, password)| uclient(&program, port, &username, &password))
        })
    });

    // (a) The relay's credentials allocate a relayed address.
    let allocation = allocate(port, &credentials.username, &credentials.password).await;
    let Allocation::Relayed(relayed) = allocation else {
        panic!(
            "coturn refused the relay's credentials: {allocation:?}\n{}",
            coturn.log()
        );
    };
    assert_eq!(relayed.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(relayed.port(), 0);
    // (b) A forged password: 401.
    let allocation = allocate(port, &credentials.username, &forged).await;
    assert_eq!(allocation, Allocation::Refused(401), "forged password");
    // A password made with another secret: 401.
    let other = turn::password(b"not-the-secret", &credentials.username);
    let allocation = allocate(port, &credentials.username, &other).await;
    assert_eq!(allocation, Allocation::Refused(401), "another secret");
    // (c) Expired credentials (an expiry an hour ago, the right secret): 401.
    let allocation = allocate(port, &expired.username, &expired.password).await;
    assert_eq!(allocation, Allocation::Refused(401), "expired credentials");

    match uclient_checks {
        Some(checks) => {
            let [valid, forged, expired] = checks.await.unwrap();
            assert!(
                valid.0,
                "turnutils_uclient with the relay's credentials:\n{}",
                valid.1
            );
            assert!(
                !forged.0,
                "turnutils_uclient with a forged password:\n{}",
                forged.1
            );
            assert!(
                !expired.0,
                "turnutils_uclient with expired credentials:\n{}",
                expired.1
            );
        }
        None => {
            eprintln!("turnutils_uclient is not installed: checked with this test's client only")
        }
    }
}

// ---------------------------------------------------------------------------------------
// The relay alone

/// A relay that hands out credentials for a TURN server nothing listens on (these tests do
/// not use them).
async fn turn_node(per_minute: u32) -> Node {
    let per_minute = per_minute.to_string();
    let flags = turn_flags(&[
        "--turn-url",
        "turn:127.0.0.1:3478",
        "--turn-secret",
        SECRET,
        "--turn-credentials-per-device-per-minute",
        &per_minute,
    ]);
    node(|config| config.turn = flags).await
}

#[tokio::test]
async fn without_turn_configured_the_answer_is_turn_unavailable() {
    let node = node(|_| {}).await;
    let mut device = node.connect(&Identity::new_user(), None).await;
    assert_eq!(fetch(&mut device).await, Err(ErrorCode::TurnUnavailable));
    // The session goes on.
    assert_eq!(fetch(&mut device).await, Err(ErrorCode::TurnUnavailable));
    let text = node.server.metrics().render();
    assert!(
        text.contains(r#"ferry_errors_total{code="turn_unavailable"} 2"#),
        "{text}"
    );
    assert_eq!(issued(&node), 0);
}

#[tokio::test]
async fn credentials_are_rate_limited_per_device() {
    let node = turn_node(3).await;
    let phone = Identity::new_user();
    let laptop = phone.another_device("laptop");
    let mut first = node.connect(&phone, None).await;
    let before = now_s();
    for _ in 0..3 {
        let credentials = fetch(&mut first).await.expect("within the allowance");
        assert_eq!(credentials.urls, ["turn:127.0.0.1:3478"]);
        let ttl = turn::DEFAULT_TTL_SECS;
        assert!((before + ttl..=now_s() + ttl).contains(&credentials.expires_at));
        assert_eq!(
            credentials.password,
            turn::password(SECRET.as_bytes(), &credentials.username)
        );
    }
    assert_eq!(fetch(&mut first).await, Err(ErrorCode::RateLimited));
    // Per device: another session of the same device shares the allowance, another device
    // has its own.
    let mut again = node.connect(&phone, None).await;
    assert_eq!(fetch(&mut again).await, Err(ErrorCode::RateLimited));
    let mut second = node.connect(&laptop, None).await;
    assert!(fetch(&mut second).await.is_ok());
    assert_eq!(issued(&node), 4);
    let text = node.server.metrics().render();
    assert!(
        text.contains(r#"ferry_errors_total{code="rate_limited"} 2"#),
        "{text}"
    );
}

/// A device revoked behind its open session's back (straight into the store, as a revocation
/// whose bus message was lost): asked for credentials, the relay reads its record, answers
/// `Error(device_revoked)` and ends the session.
#[tokio::test]
async fn a_revoked_devices_open_session_gets_no_credentials() {
    let node = turn_node(10).await;
    let phone = Identity::new_user();
    let laptop = phone.another_device("laptop");
    let mut phone_session = node.connect(&phone, None).await;
    let mut laptop_session = node.connect(&laptop, None).await;
    assert!(fetch(&mut laptop_session).await.is_ok());

    let store = node.store();
    let user = phone.user.id();
    let chain = stored_chain(&**store, user).await;
    let revoke = revoke_body(&chain, &[laptop.device.id()]);
    let link = chain.sign(revoke, SigningKey::Device(&phone.device));
    store.append_link(&link, 64, NOW_S).await.unwrap();

    assert_eq!(
        fetch(&mut laptop_session).await,
        Err(ErrorCode::DeviceRevoked)
    );
    let close = ErrorCode::DeviceRevoked.close_code();
    assert_eq!(next_frame(&mut laptop_session).await, Err(Some(close)));
    assert_eq!(issued(&node), 1);
    // The device that revoked it still gets credentials.
    assert!(fetch(&mut phone_session).await.is_ok());
}

/// Only a device session may ask: a pairing (anonymous) session and a recovery session are
/// ended with `unexpected_frame`, and get nothing.
#[tokio::test]
async fn pairing_and_recovery_sessions_may_not_ask() {
    let node = turn_node(10).await;
    let (addr, relay) = (node.server.local_addr(), node.server.relay_id());
    let unexpected = ErrorCode::UnexpectedFrame.close_code();

    let mut anonymous = Client::connect_anonymous(addr, relay).await.unwrap();
    anonymous.send(&ClientFrame::TurnCredentialsFetch).await;
    assert_eq!(next_frame(&mut anonymous).await, Err(Some(unexpected)));

    let id = Identity::new_user();
    let mut recovery = Client::connect_recovery(addr, relay, &id).await.unwrap();
    recovery.send(&ClientFrame::TurnCredentialsFetch).await;
    match next_frame(&mut recovery).await {
        Ok(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::UnexpectedFrame),
        other => panic!("a recovery session got {other:?}"),
    }
    assert_eq!(next_frame(&mut recovery).await, Err(Some(unexpected)));
    assert_eq!(issued(&node), 0);
}

/// URLs without a secret (or a secret without URLs) stop the relay from starting; a secret
/// file works (its trailing newline is not part of the secret).
#[tokio::test]
async fn incomplete_settings_stop_the_relay_and_a_secret_file_works() {
    let dir = tempfile::tempdir().unwrap();
    let start = |turn: ferry_relay::config::TurnConfig| {
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
        config.turn = turn;
        Server::spawn(config)
    };
    let refused = start(turn_flags(&["--turn-url", "turn:127.0.0.1:3478"])).await;
    assert!(
        matches!(refused, Err(StartError::Turn(TurnConfigError::NoSecret))),
        "{refused:?}"
    );
    let refused = start(turn_flags(&["--turn-secret", SECRET])).await;
    assert!(
        matches!(refused, Err(StartError::Turn(TurnConfigError::NoUrls))),
        "{refused:?}"
    );
    let missing = dir.path().join("missing-secret");
    let flags = [
        "--turn-url",
        "turn:127.0.0.1:3478",
        "--turn-secret-file",
        missing.to_str().unwrap(),
    ];
    let refused = start(turn_flags(&flags)).await;
    assert!(
        matches!(
            refused,
            Err(StartError::Turn(TurnConfigError::SecretFile { .. }))
        ),
        "{refused:?}"
    );

    let file = dir.path().join("turn-secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let flags = [
        "--turn-url",
        "turn:127.0.0.1:3478",
        "--turn-secret-file",
        file.to_str().unwrap(),
    ];
    let server = start(turn_flags(&flags)).await.unwrap();
    let id = Identity::new_user();
    let mut device = Client::connect(server.local_addr(), server.relay_id(), &id, None)
        .await
        .unwrap();
    let credentials = fetch(&mut device).await.unwrap();
    assert_eq!(
        credentials.password,
        turn::password(SECRET.as_bytes(), &credentials.username)
    );
    drop(device);
    server.shutdown().await;
}
