//! Helpers for the client's integration tests: an in-process relay that can be killed and
//! restarted on the same port and data folder, and devices of one user.

#![allow(dead_code)] // Each test crate uses its own subset.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_client::{
    Client, ClientEvent, ClientState, DataKey, DeviceCertificate, DeviceKey, Options,
    ReceivedEvent, RelayId, StateError, UserKey,
};
use ferry_relay::server::StartError;
use ferry_relay::{Config, Server};
use rand_core::OsRng;
use tokio::runtime::Runtime;

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
}

/// The first device of a new user.
pub fn new_user(dir: &Path, relay: &TestRelay, name: &str) -> ClientState {
    ClientState::create(dir, &relay.url(), relay.relay_id, name).unwrap()
}

/// Another device of `first`'s user, as pairing makes it (without the relay): a new device
/// key, a certificate from the user key, the user's keys.
pub fn another_device(first: &ClientState, dir: &Path, name: &str) -> ClientState {
    another_device_with_data_key(
        first,
        dir,
        name,
        DataKey::from_bytes(first.data_key().bytes()),
    )
}

/// A device of the same user that seals with another data key (a broken or hostile one).
pub fn another_device_with_data_key(
    first: &ClientState,
    dir: &Path,
    name: &str,
    data_key: DataKey,
) -> ClientState {
    let user = UserKey::from_secret_bytes(&first.user_key().secret_bytes());
    let device = DeviceKey::generate(&mut OsRng);
    let certificate = DeviceCertificate::issue(&user, device.id(), name, 1_700_000_000).unwrap();
    ClientState::from_parts(
        dir,
        first.relay_url(),
        first.relay_key(),
        user,
        device,
        certificate,
        data_key,
    )
    .unwrap()
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
