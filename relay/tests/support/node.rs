//! A relay node over a store and a bus that misbehave when told to ([`FaultyStore`],
//! [`FaultyBus`]), and helpers to drive it frame by frame.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::{Append, ClientFrame, ErrorCode, SealedPayload, ServerFrame};
use ferry_relay::bus::{Bus, FaultyBus, LocalBusHub};
use ferry_relay::store::{self, FaultyStore, Store};
use ferry_relay::{Config, Server};

use super::client::{Client, Identity};

pub struct Node {
    pub server: Server,
    pub faults: Arc<FaultyStore>,
    pub bus: Arc<FaultyBus>,
    pub database_url: String,
    pub dir: tempfile::TempDir,
}

/// A relay on SQLite whose store and bus misbehave when told to. Safety polls are off
/// (one hour) unless `adjust` says otherwise, so only wake-ups and log reads deliver.
pub async fn node(adjust: impl FnOnce(&mut Config)) -> Node {
    node_on(&LocalBusHub::new(), None, adjust).await
}

/// [`node`] on a shared in-process bus, and on another node's database when given its URL.
pub async fn node_on(
    hub: &Arc<LocalBusHub>,
    database_url: Option<String>,
    adjust: impl FnOnce(&mut Config),
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
    config.database_url = database_url;
    config.log.safety_poll_secs = 3600;
    adjust(&mut config);
    let database_url = config.database_url();
    let store = store::open_with(&database_url, &config.store_options()).await;
    let faults = FaultyStore::new(store.unwrap());
    let (bus, messages) = hub.node();
    let bus = FaultyBus::new(Arc::new(bus));
    let parts = (Arc::clone(&bus) as Arc<dyn Bus>, messages);
    let server = Server::spawn_with_store(config, faults.clone(), parts)
        .await
        .unwrap();
    Node {
        server,
        faults,
        bus,
        database_url,
        dir,
    }
}

impl Node {
    pub async fn connect(&self, id: &Identity, resume: Option<u64>) -> Client {
        Client::connect(self.server.local_addr(), self.server.relay_id(), id, resume)
            .await
            .unwrap()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.faults.inner()
    }
}

/// The answer to a request: `Done` or an error code (events and heads passed over).
pub async fn done(client: &mut Client) -> Result<(), ErrorCode> {
    loop {
        match next_frame(client).await.expect("open") {
            ServerFrame::Done => return Ok(()),
            ServerFrame::Error(e) => return Err(e.code),
            _ => {}
        }
    }
}

pub fn sealed(text: &str) -> SealedPayload {
    SealedPayload(text.as_bytes().to_vec())
}

/// Waits for the next frame that is not a ping.
pub async fn next_frame(client: &mut Client) -> Result<ServerFrame, Option<u16>> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), client.recv())
            .await
            .expect("a frame within 10 s")?;
        if !matches!(frame, ServerFrame::Ping { .. } | ServerFrame::Pong { .. }) {
            return Ok(frame);
        }
    }
}

/// Sends appends back to back without waiting for answers.
pub async fn send_appends(client: &mut Client, device_seqs: impl IntoIterator<Item = u64>) {
    for device_seq in device_seqs {
        let append = Append {
            device_seq,
            payload: sealed(&format!("event {device_seq}")),
        };
        client.send(&ClientFrame::Append(append)).await;
    }
}

/// The next `n` append answers, in the order they arrived: `(device_seq, Ok(seq) | Err(code))`.
pub async fn answers(client: &mut Client, n: usize) -> Vec<(u64, Result<u64, ErrorCode>)> {
    let mut answers = Vec::new();
    while answers.len() < n {
        match next_frame(client).await.expect("connection open") {
            ServerFrame::Appended { device_seq, seq } => answers.push((device_seq, Ok(seq))),
            ServerFrame::Error(e) => {
                let device_seq = e.device_seq.expect("an answer to an append");
                answers.push((device_seq, Err(e.code)));
            }
            ServerFrame::Events(events) => client.backlog.extend(events),
            _ => {}
        }
    }
    answers
}
