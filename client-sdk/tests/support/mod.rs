//! Helpers for the client's integration tests: an in-process relay that can be killed and
//! restarted on the same port and data folder, devices of one user (admitted through the
//! device chain, as pairing does it, without the code), and a raw session that speaks the
//! wire protocol itself.

#![allow(dead_code)] // Each test crate uses its own subset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod conversations;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_client::account::{self, NewUser};
use ferry_client::{
    Client, ClientEvent, ClientState, DataKey, DeviceKey, DeviceSecrets, Options, ReceivedEvent,
    RelayId, StateError, UserId,
};
use ferry_protocol::handshake::{ClientHandshake, Credentials, Session};
use ferry_protocol::{
    Chain, ClientChannel, ClientFrame, ErrorFrame, Link, LinkBody, ServerFrame, SigningKey, UserKey,
};
use ferry_relay::server::StartError;
use ferry_relay::{Config, Server};
use futures_util::{SinkExt, StreamExt};
use rand_core::OsRng;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for any one thing.
pub const WAIT: Duration = Duration::from_secs(30);

/// A relay running on its own runtime, so a test can kill it the hard way: every task
/// dropped where it stands, sockets closed without a goodbye.
pub struct TestRelay {
    pub addr: SocketAddr,
    pub relay_id: RelayId,
    pub data: PathBuf,
    adjust: Adjust,
    running: Option<(Runtime, Server)>,
}

/// A change to the relay's default configuration.
pub type Adjust = Arc<dyn Fn(&mut Config) + Send + Sync>;

impl TestRelay {
    /// Starts a relay on a free port with its data in `data`.
    pub fn start(data: &Path) -> Self {
        Self::start_on(data, free_addr())
    }

    /// Starts a relay on `addr` (waiting for the port to be free again after a kill).
    pub fn start_on(data: &Path, addr: SocketAddr) -> Self {
        Self::start_with(data, addr, Arc::new(|_| {}))
    }

    /// Starts a relay with a configuration other than the default (kept across restarts).
    pub fn start_with(data: &Path, addr: SocketAddr, adjust: Adjust) -> Self {
        let dir = data.to_owned();
        let configure = Arc::clone(&adjust);
        let (runtime, server) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let server = runtime.block_on(async {
                for _ in 0..100 {
                    let mut config = Config::new(addr, &dir);
                    configure(&mut config);
                    match Server::spawn(config).await {
                        Ok(server) => return server,
                        Err(StartError::Bind { .. }) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("relay did not start: {e}"),
                    }
                }
                panic!("port {addr} stayed busy");
            });
            (runtime, server)
        })
        .join()
        .unwrap();
        Self {
            addr,
            relay_id: server.relay_id(),
            data: data.to_owned(),
            adjust,
            running: Some((runtime, server)),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The relay's metrics, in the Prometheus text format.
    pub fn metrics(&self) -> String {
        self.running
            .as_ref()
            .map(|(_, server)| server.metrics().render())
            .unwrap_or_default()
    }

    /// Kills the relay: no shutdown, no goodbye, in-flight work dropped.
    pub fn kill(&mut self) {
        if let Some((runtime, server)) = self.running.take() {
            let handle = runtime.handle().clone();
            // Every task dropped where it stands: no goodbye to clients, no final commit.
            runtime.shutdown_background();
            // Then what the tasks shared (the database pool) goes, as the process would.
            let _context = handle.enter();
            drop(server);
        }
    }

    /// Stops the relay gracefully (close code 1001 to every client).
    pub fn stop(&mut self) {
        if let Some((runtime, server)) = self.running.take() {
            std::thread::spawn(move || {
                runtime.block_on(server.shutdown());
                drop(runtime);
            })
            .join()
            .unwrap();
        }
    }

    /// Starts it again on the same port and data folder (same relay key).
    pub fn restart(&mut self) {
        self.kill();
        let again = Self::start_with(&self.data, self.addr, Arc::clone(&self.adjust));
        assert_eq!(again.relay_id, self.relay_id);
        *self = again;
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback address with a port nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Short waits, so tests of reconnection are quick. The suites check the whole log, so the
/// app also sees its own events here; `hardening.rs` checks the default (hidden).
pub fn fast() -> Options {
    Options::default()
        .backoff(Duration::from_millis(20), Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(10))
        .ack_delay(Duration::from_millis(10))
        .own_events(true)
        // Long enough for a callee to answer on a loaded machine, short enough to wait out.
        .ring_timeout(Duration::from_secs(8))
}

/// The first device of a new user.
pub async fn new_user(dir: &Path, relay: &TestRelay, name: &str) -> ClientState {
    new_user_with_recovery(dir, relay, name).await.state
}

/// The first device of a new user, and the user's recovery key.
pub async fn new_user_with_recovery(dir: &Path, relay: &TestRelay, name: &str) -> NewUser {
    tokio::time::timeout(
        WAIT,
        account::create(dir, &relay.url(), relay.relay_id, name, &fast()),
    )
    .await
    .expect("the user was created in time")
    .unwrap()
}

/// The first device of a new user at `url` (pinned to `relay_key`), with `options` (a CA
/// file, say).
pub async fn new_user_at(
    dir: &Path,
    url: &str,
    relay_key: RelayId,
    name: &str,
    options: &Options,
) -> ClientState {
    tokio::time::timeout(WAIT, account::create(dir, url, relay_key, name, options))
        .await
        .expect("the user was created in time")
        .unwrap()
        .state
}

/// A user made on `relay`, whose state then talks to `url` pinned to `pinned` instead (a
/// proxy, a wrong pin, a port nobody listens on): the folder's `relay` file rewritten.
pub async fn new_user_pointed_at(
    dir: &Path,
    relay: &TestRelay,
    name: &str,
    url: &str,
    pinned: RelayId,
) -> ClientState {
    drop(new_user(dir, relay, name).await);
    repoint(dir, url, pinned);
    open_when_free(dir).await
}

/// Rewrites the relay URL and pinned key of the (closed) state in `dir`.
pub fn repoint(dir: &Path, url: &str, pinned: RelayId) {
    std::fs::write(dir.join("relay"), format!("{url}\n{}\n", pinned.to_hex())).unwrap();
}

/// Another device of `first`'s user, as pairing makes it (without the code): a new device
/// key and exchange key, admitted to the chain by `first`'s device key (read from its
/// folder), holding every epoch's key `first` holds.
pub async fn another_device(first: &ClientState, dir: &Path, name: &str) -> ClientState {
    let epochs = first.epoch_keys();
    admit_device(first, dir, name, epochs).await
}

/// A device of the same user whose epoch keys are all `data_key` (a broken or hostile one).
pub async fn another_device_with_data_key(
    first: &ClientState,
    dir: &Path,
    name: &str,
    data_key: DataKey,
) -> ClientState {
    let epochs = first
        .epoch_keys()
        .into_iter()
        .map(|(n, _)| (n, DataKey::from_bytes(data_key.bytes())))
        .collect();
    admit_device(first, dir, name, epochs).await
}

/// [`another_device`] for tests without a runtime of their own.
pub fn another_device_blocking(first: &ClientState, dir: &Path, name: &str) -> ClientState {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(another_device(first, dir, name))
}

/// The device key of the state in `dir`, read from its folder.
pub fn device_key_of(dir: &Path) -> DeviceKey {
    let text = std::fs::read_to_string(dir.join("device.key")).unwrap();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).unwrap();
    DeviceKey::from_secret_bytes(&bytes)
}

async fn admit_device(
    first: &ClientState,
    dir: &Path,
    name: &str,
    epochs: Vec<(u32, DataKey)>,
) -> ClientState {
    try_admit_device(first, dir, name, epochs)
        .await
        .expect("the relay stores the admission")
}

/// [`another_device`], or the relay's refusal of the admission.
pub async fn try_another_device(
    first: &ClientState,
    dir: &Path,
    name: &str,
) -> Result<ClientState, Option<ErrorFrame>> {
    try_admit_device(first, dir, name, first.epoch_keys()).await
}

async fn try_admit_device(
    first: &ClientState,
    dir: &Path,
    name: &str,
    epochs: Vec<(u32, DataKey)>,
) -> Result<ClientState, Option<ErrorFrame>> {
    let inviter = device_key_of(first.dir());
    let user = first.user_id();
    let secrets = DeviceSecrets::generate();
    let mut session =
        RawSession::connect(first.relay_url(), first.relay_key(), &inviter, user, None)
            .await
            .expect("the inviting device is admitted");
    let mut links = session.fetch_chain(0).await;
    let chain = Chain::verify(user, &links).unwrap();
    let admission = chain.sign(
        LinkBody::Admit {
            device: secrets.device.id(),
            exchange: secrets.exchange.public(),
            name: name.to_owned(),
            created_at: 1_700_000_000,
        },
        SigningKey::Device(&inviter),
    );
    session.append(&admission).await?;
    links.push(admission);
    Ok(ClientState::from_parts(
        dir,
        first.relay_url(),
        first.relay_key(),
        user,
        secrets,
        epochs,
        &links,
    )
    .unwrap())
}

/// A session that speaks the wire protocol itself: what an honest client never sends.
pub struct RawSession {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    channel: ClientChannel,
    pub session: Session,
}

impl RawSession {
    /// A session as `device` of `user` (a recovery session with `recovery`); the relay's
    /// encrypted refusal as `Err`.
    pub async fn connect(
        url: &str,
        relay: RelayId,
        device: &DeviceKey,
        user: UserId,
        recovery: Option<&UserKey>,
    ) -> Result<Self, ErrorFrame> {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (state, hello) = ClientHandshake::start(relay, &mut OsRng);
        ws.send(Message::Binary(hello.into())).await.unwrap();
        let server_hello = binary(&mut ws).await.expect("a ServerHello");
        let credentials = Credentials::Device {
            key: device,
            user,
            resume: None,
            recovery,
        };
        let (state, start) = state
            .handle_server_hello(&server_hello, credentials)
            .unwrap();
        ws.send(Message::Binary(start.into())).await.unwrap();
        let established = binary(&mut ws).await.expect("a SessionStart");
        match state.handle_session(&established) {
            Ok((session, channel)) => Ok(Self {
                ws,
                channel,
                session,
            }),
            Err(ferry_protocol::handshake::HandshakeError::Rejected(frame)) => Err(frame),
            Err(other) => panic!("handshake failed: {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: ClientFrame) {
        let bytes = self.channel.seal(&frame).unwrap();
        // The relay may have closed the connection already.
        let _ = self.ws.send(Message::Binary(bytes.into())).await;
    }

    /// The next frame, or `None` once the relay closed the connection.
    pub async fn recv(&mut self) -> Option<ServerFrame> {
        let bytes = binary(&mut self.ws).await?;
        Some(self.channel.open(&bytes).unwrap())
    }

    /// The next chain answer or error (pings answered, the log's traffic skipped); `None`
    /// once the relay closed the connection.
    pub async fn chain_answer(&mut self) -> Option<ServerFrame> {
        loop {
            match self.recv().await? {
                ServerFrame::Ping { nonce } => self.send(ClientFrame::Pong { nonce }).await,
                frame @ (ServerFrame::ChainLinks { .. }
                | ServerFrame::ChainAppended { .. }
                | ServerFrame::Error(_)) => return Some(frame),
                _ => {}
            }
        }
    }

    /// Every link after `after`.
    pub async fn fetch_chain(&mut self, after: u64) -> Vec<Link> {
        self.send(ClientFrame::ChainFetch { after }).await;
        let mut links = Vec::new();
        loop {
            match self.chain_answer().await {
                Some(ServerFrame::ChainLinks { links: page, more }) => {
                    links.extend(page);
                    if !more {
                        return links;
                    }
                }
                other => panic!("expected chain links, got {other:?}"),
            }
        }
    }

    /// Appends `link`: its position, or the relay's refusal (`None` in the error: the relay
    /// closed the connection instead of answering).
    pub async fn append(&mut self, link: &Link) -> Result<u64, Option<ErrorFrame>> {
        self.send(ClientFrame::ChainAppend(Box::new(link.clone())))
            .await;
        match self.chain_answer().await {
            Some(ServerFrame::ChainAppended { seqno }) => Ok(seqno),
            Some(ServerFrame::Error(error)) => Err(Some(error)),
            None => Err(None),
            other => panic!("expected an answer to ChainAppend, got {other:?}"),
        }
    }
}

/// The next binary message; `None` once the connection closed.
async fn binary(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<Vec<u8>> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the relay answered in time")
        {
            Some(Ok(Message::Binary(bytes))) => return Some(bytes.to_vec()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Opens a state, waiting for a client that is stopping to let go of it.
pub async fn open_when_free(dir: &Path) -> ClientState {
    for _ in 0..250 {
        match ClientState::open(dir) {
            Err(StateError::Locked(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => return other.unwrap(),
        }
    }
    panic!("{} stayed locked", dir.display());
}

/// The next event, skipping `CaughtUp`.
pub async fn next_event(client: &mut Client) -> ReceivedEvent {
    loop {
        match tokio::time::timeout(WAIT, client.next_event()).await {
            Ok(Ok(ClientEvent::Event(event))) => return event,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("expected an event, got {e:?}"),
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }
}

/// The next `n` events.
pub async fn events(client: &mut Client, n: usize) -> Vec<ReceivedEvent> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        events.push(next_event(client).await);
    }
    events
}

/// Events until `CaughtUp`.
pub async fn until_caught_up(client: &mut Client) -> Vec<ReceivedEvent> {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, client.next_event()).await {
            Ok(Ok(ClientEvent::Event(event))) => events.push(event),
            Ok(Ok(ClientEvent::CaughtUp { .. })) => return events,
            Ok(Ok(other)) => panic!("unexpected {other:?}"),
            Ok(Err(e)) => panic!("expected an event, got {e:?}"),
            Err(_) => panic!("not caught up within {WAIT:?}"),
        }
    }
}

/// The plaintexts of `events`, as text.
pub fn texts(events: &[ReceivedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.plaintext.to_vec()).unwrap())
        .collect()
}

/// The PostgreSQL URL to test against (`FERRY_TEST_POSTGRES_URL`), or `None` (test skipped)
/// when it is unreachable and `FERRY_REQUIRE_SERVICES` is not `1`.
pub async fn postgres_url() -> Option<String> {
    let url = std::env::var("FERRY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let probe = tokio::time::timeout(Duration::from_secs(5), ferry_relay::store::open(&url)).await;
    let reachable = match probe {
        Ok(Ok(store)) => {
            store.close().await;
            true
        }
        _ => false,
    };
    reachable_or_skipped("PostgreSQL", reachable).then_some(url)
}

/// The Redis URL to test against (`FERRY_TEST_REDIS_URL`), as [`postgres_url`].
pub async fn redis_url() -> Option<String> {
    let url = std::env::var("FERRY_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    // redis://[user:password@]host:port[/db]
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let probe = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(host_port.to_owned()),
    )
    .await;
    reachable_or_skipped("Redis", matches!(probe, Ok(Ok(_)))).then_some(url)
}

/// Whether a service the test needs is there: panics when it is not and
/// `FERRY_REQUIRE_SERVICES=1` (CI), says the test is skipped otherwise.
fn reachable_or_skipped(service: &str, reachable: bool) -> bool {
    if !reachable {
        assert!(
            std::env::var("FERRY_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{service} not reachable and FERRY_REQUIRE_SERVICES=1"
        );
        eprintln!("skipped: {service} not reachable");
    }
    reachable
}
