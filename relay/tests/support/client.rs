//! A minimal Ferry client built on the protocol crate, for driving a relay over real sockets,
//! and test users whose devices are admitted through a real device chain.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::chain::{EpochKeys, SealedKey};
use ferry_protocol::epoch::{ExchangeSecret, SEALED_EPOCH_KEY_LEN, seal_epoch_key};
use ferry_protocol::recovery::RecoveryKey;
use ferry_protocol::seal::DataKey;

use ferry_protocol::handshake::{ClientHandshake, Credentials, HandshakeError, Session};
use ferry_protocol::*;
use futures_util::{SinkExt, StreamExt};
use rand_core::OsRng;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one frame.
pub const WAIT: Duration = Duration::from_secs(15);

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A user as the tests hold it: the recovery key a person writes down, and the user key
/// derived from it. Devices never keep these; the tests use them only where a person types the
/// recovery key (the recovery session that creates the chain and admits the first device).
pub struct Account {
    pub recovery: RecoveryKey,
    pub key: UserKey,
}

impl Account {
    /// A new user.
    pub fn new() -> Arc<Self> {
        let recovery = RecoveryKey::generate(&mut OsRng);
        let key = recovery.user_key();
        Arc::new(Self { recovery, key })
    }

    /// The user id.
    pub fn id(&self) -> UserId {
        self.key.id()
    }
}

/// A device of a user: its keys, and how the user's device chain admits it.
///
/// [`Client::connect`] admits the device through a real chain before its first session
/// ([`Identity::admit`]): the user's first device in a recovery session (the user key signs
/// `Create`, if the chain is empty, and the device's `Admit`), every other device with an
/// `Admit` signed by the device it was made from ([`Identity::another_device`]), as pairing
/// does ([`Client::admit`] sends one from a live session). Devices made with
/// [`Identity::unadmitted_device`] are never admitted by `connect`.
#[derive(Clone)]
pub struct Identity {
    pub user: Arc<Account>,
    pub device: Arc<DeviceKey>,
    /// The public half of the device's X25519 exchange key, named in its `Admit`.
    pub exchange: [u8; 32],
    pub name: String,
    /// The device that signs this one's `Admit`; `None`: the user key does.
    admitter: Option<Box<Identity>>,
    /// Set once the chain admits the device (shared by clones).
    admitted: Arc<tokio::sync::OnceCell<()>>,
    /// Whether [`Client::connect`] admits it first.
    auto_admit: bool,
}

impl Identity {
    /// The first device of a new user (admitted by the user key at its first connection).
    pub fn new_user() -> Self {
        Self::device_of(Account::new(), "first", None, true)
    }

    /// Another device of the same user, admitted (at its first connection) by an `Admit`
    /// that this device signs.
    pub fn another_device(&self, name: &str) -> Self {
        Self::device_of(Arc::clone(&self.user), name, Some(self.clone()), true)
    }

    /// A device of the same user that nothing admits unless the test calls
    /// [`Identity::admit`] (then this device signs its `Admit`).
    pub fn unadmitted_device(&self, name: &str) -> Self {
        Self::device_of(Arc::clone(&self.user), name, Some(self.clone()), false)
    }

    /// A device some chain link has already admitted (by pairing, or by hand in a test).
    pub fn admitted(user: Arc<Account>, device: DeviceKey, exchange: [u8; 32], name: &str) -> Self {
        let id = Self {
            user,
            device: Arc::new(device),
            exchange,
            name: name.to_owned(),
            admitter: None,
            admitted: Arc::default(),
            auto_admit: true,
        };
        let _ = id.admitted.set(());
        id
    }

    fn device_of(user: Arc<Account>, name: &str, admitter: Option<Self>, auto_admit: bool) -> Self {
        Self {
            user,
            device: Arc::new(DeviceKey::generate(&mut OsRng)),
            exchange: ExchangeSecret::generate(&mut OsRng).public(),
            name: name.to_owned(),
            admitter: admitter.map(Box::new),
            admitted: Arc::default(),
            auto_admit,
        }
    }

    /// The `Admit` link body for this device.
    pub fn admit_body(&self) -> LinkBody {
        LinkBody::Admit {
            device: self.device.id(),
            exchange: self.exchange,
            name: self.name.clone(),
            created_at: 1_700_000_000,
        }
    }

    /// Records that a chain link admitted the device (written by the test itself).
    pub fn mark_admitted(&self) {
        let _ = self.admitted.set(());
    }

    /// Whether the chain admitted the device through this identity (or a clone).
    pub fn is_admitted(&self) -> bool {
        self.admitted.initialized()
    }

    /// Admits the device in the user's chain at the relay at `addr`, once (see the type's
    /// docs); panics if the relay refuses.
    pub async fn admit(&self, addr: SocketAddr, relay: RelayId) {
        self.admitted
            .get_or_init(|| async {
                match &self.admitter {
                    None => {
                        let mut recovery = Client::connect_recovery(addr, relay, self)
                            .await
                            .unwrap_or_else(|e| panic!("recovery session refused: {e:?}"));
                        recovery.admit_by_user_key(self).await;
                        recovery.close().await;
                    }
                    Some(admitter) => {
                        // The admitter signs with its device key. It sends the link from a
                        // recovery session, which neither replays (nor asks to resync) nor
                        // joins the hub, so it leaves the test's sessions alone; the
                        // relay checks the link's signer against the chain either way.
                        Box::pin(admitter.admit(addr, relay)).await;
                        let mut session = Client::connect_recovery(addr, relay, admitter)
                            .await
                            .unwrap_or_else(|e| panic!("the admitting device was refused: {e:?}"));
                        session
                            .admit(admitter, self)
                            .await
                            .unwrap_or_else(|e| panic!("admission refused: {e:?}"));
                        session.close().await;
                    }
                }
            })
            .await;
    }
}

/// Why a connection attempt did not produce a session.
#[derive(Debug)]
pub enum Refused {
    Handshake(HandshakeError),
    Closed(Option<u16>),
}

impl Refused {
    /// The error code the relay gave, from a refusal message or a close code.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Handshake(e) => Some(e.code()),
            Self::Closed(Some(code)) => ErrorCode::from_close_code(*code),
            Self::Closed(None) => None,
        }
    }
}

/// Opens a raw WebSocket to the relay.
pub async fn socket(addr: SocketAddr) -> Socket {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("websocket connect");
    ws
}

/// Reads the next binary message, or the close code.
pub async fn next_binary(ws: &mut Socket) -> Result<Vec<u8>, Option<u16>> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("relay answered in time")
        {
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes.to_vec()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Waits for the relay to close the socket and returns its close code.
pub async fn close_code(ws: &mut Socket) -> Option<u16> {
    loop {
        match next_binary(ws).await {
            Ok(_) => continue,
            Err(code) => return code,
        }
    }
}

/// An authenticated session.
pub struct Client {
    pub ws: Socket,
    pub channel: ClientChannel,
    pub session: Session,
    /// Events that arrived while waiting for something else.
    pub backlog: Vec<Event>,
    /// Answers to appends that arrived while waiting for another answer.
    pub answers: std::collections::HashMap<u64, Result<u64, ErrorFrame>>,
    /// Other frames that arrived while waiting for a chain answer: [`Client::recv`] returns
    /// them first.
    pub pending: VecDeque<ServerFrame>,
    /// The `ChainGrew` announcements received, in order ([`Client::recv`] skips them).
    pub chain_grew: Vec<u64>,
    /// The pinned relay key (pairing binds it).
    pub relay: RelayId,
}

impl Client {
    /// Connects and authenticates `id`, resuming after `resume` (or the relay's stored cursor),
    /// after admitting it in the user's chain if it is not yet ([`Identity::admit`]).
    pub async fn connect(
        addr: SocketAddr,
        relay: RelayId,
        id: &Identity,
        resume: Option<u64>,
    ) -> Result<Self, Refused> {
        if id.auto_admit {
            id.admit(addr, relay).await;
        }
        Self::connect_as(addr, relay, id, resume).await
    }

    /// [`Client::connect`] without admitting anything first.
    pub async fn connect_as(
        addr: SocketAddr,
        relay: RelayId,
        id: &Identity,
        resume: Option<u64>,
    ) -> Result<Self, Refused> {
        let credentials = Credentials::Device {
            key: &id.device,
            user: id.user.id(),
            resume,
            recovery: None,
        };
        Self::handshake(addr, relay, credentials).await
    }

    /// Opens a recovery session of `id`: the user key proves the user too (the user typed the
    /// recovery key), so the relay lets it read and extend the chain even unadmitted.
    pub async fn connect_recovery(
        addr: SocketAddr,
        relay: RelayId,
        id: &Identity,
    ) -> Result<Self, Refused> {
        let credentials = Credentials::Device {
            key: &id.device,
            user: id.user.id(),
            resume: None,
            recovery: Some(&id.user.key),
        };
        Self::handshake(addr, relay, credentials).await
    }

    /// Connects as a device being paired (no identity).
    pub async fn connect_anonymous(addr: SocketAddr, relay: RelayId) -> Result<Self, Refused> {
        Self::handshake(addr, relay, Credentials::Anonymous).await
    }

    /// Connects with explicit credentials (for handshakes an honest client would not make).
    pub async fn connect_with(
        addr: SocketAddr,
        relay: RelayId,
        credentials: Credentials<'_>,
    ) -> Result<Self, Refused> {
        Self::handshake(addr, relay, credentials).await
    }

    async fn handshake(
        addr: SocketAddr,
        relay: RelayId,
        credentials: Credentials<'_>,
    ) -> Result<Self, Refused> {
        let mut ws = socket(addr).await;
        let (state, hello) = ClientHandshake::start(relay, &mut OsRng);
        ws.send(Message::Binary(hello.into())).await.unwrap();
        let server_hello = next_binary(&mut ws).await.map_err(Refused::Closed)?;
        let (state, start) = state
            .handle_server_hello(&server_hello, credentials)
            .map_err(Refused::Handshake)?;
        ws.send(Message::Binary(start.into())).await.unwrap();
        let established = next_binary(&mut ws).await.map_err(Refused::Closed)?;
        let (session, channel) = state
            .handle_session(&established)
            .map_err(Refused::Handshake)?;
        Ok(Self {
            ws,
            channel,
            session,
            backlog: Vec::new(),
            answers: Default::default(),
            pending: VecDeque::new(),
            chain_grew: Vec::new(),
            relay,
        })
    }

    /// Opens a pairing slot: the slot the relay assigned, or the refusal.
    pub async fn open_pairing(&mut self) -> Result<u16, ErrorCode> {
        self.send(&ClientFrame::PairOpen).await;
        match self.pairing_frame().await {
            ServerFrame::PairOpened { slot, .. } => Ok(slot),
            ServerFrame::Error(e) => Err(e.code),
            other => panic!("expected PairOpened, got {other:?}"),
        }
    }

    /// Waits until a `ChainGrew { seqno }` has arrived (or did already).
    pub async fn wait_chain_grew(&mut self, seqno: u64) {
        while !self.chain_grew.contains(&seqno) {
            let frame = self.recv_any().await.expect("connection open");
            match frame {
                ServerFrame::ChainGrew { seqno } => self.chain_grew.push(seqno),
                ServerFrame::Events(events) => self.backlog.extend(events),
                other => self.pending.push_back(other),
            }
        }
    }

    /// Closes the connection and waits for the relay to end it.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }

    /// The user's chain links after `after`, through `ChainFetch` (every page, checking that
    /// pages are consecutive and only the last says `more: false`).
    pub async fn fetch_links(&mut self, after: u64) -> Vec<Link> {
        self.send(&ClientFrame::ChainFetch { after }).await;
        let mut links: Vec<Link> = Vec::new();
        loop {
            match self.chain_answer().await {
                ServerFrame::ChainLinks { links: page, more } => {
                    for link in page {
                        let expected = links.last().map_or(after, |l| l.seqno) + 1;
                        assert_eq!(link.seqno, expected, "ChainLinks pages are consecutive");
                        links.push(link);
                    }
                    if !more {
                        return links;
                    }
                }
                other => panic!("expected ChainLinks, got {other:?}"),
            }
        }
    }

    /// The user's whole chain as the relay serves it, verified.
    pub async fn fetch_chain(&mut self, user: UserId) -> Chain {
        let links = self.fetch_links(0).await;
        Chain::verify(user, &links).expect("the relay serves a chain that verifies")
    }

    /// Sends `link` with `ChainAppend` and waits for the answer: its position, or the error.
    pub async fn append_link(&mut self, link: &Link) -> Result<u64, ErrorFrame> {
        self.send(&ClientFrame::ChainAppend(Box::new(link.clone())))
            .await;
        match self.chain_answer().await {
            ServerFrame::ChainAppended { seqno } => Ok(seqno),
            ServerFrame::Error(error) => Err(error),
            other => panic!("expected the answer to ChainAppend, got {other:?}"),
        }
    }

    /// Signs `body` with `key` as the next link of the user's chain and appends it, fetching
    /// the chain again and signing again when another link got there first (207).
    pub async fn sign_and_append(
        &mut self,
        user: UserId,
        body: LinkBody,
        key: SigningKey<'_>,
    ) -> Result<u64, ErrorFrame> {
        let mut attempts = 0;
        loop {
            let chain = self.fetch_chain(user).await;
            let link = chain.sign(body.clone(), key);
            match self.append_link(&link).await {
                Err(e) if e.code == ErrorCode::ChainLinkRefused && attempts < 5 => {
                    // Another link may have taken this position: the chain moved on.
                    let moved = self.fetch_chain(user).await.seqno() >= link.seqno;
                    if !moved {
                        return Err(e);
                    }
                    attempts += 1;
                }
                answer => return answer,
            }
        }
    }

    /// `admitter` (this session's device) admits `new` with an `Admit` it signs.
    pub async fn admit(&mut self, admitter: &Identity, new: &Identity) -> Result<u64, ErrorFrame> {
        let seqno = self
            .sign_and_append(
                admitter.user.id(),
                new.admit_body(),
                SigningKey::Device(&admitter.device),
            )
            .await?;
        let _ = new.admitted.set(());
        Ok(seqno)
    }

    /// In a recovery session of `id`: creates the user's chain if it is empty, then admits
    /// `id` with an `Admit` signed by the user key.
    pub async fn admit_by_user_key(&mut self, id: &Identity) {
        let user = id.user.id();
        if self.fetch_chain(user).await.seqno() == 0 {
            let create = create_body(&id.user);
            match self
                .sign_and_append(user, create, SigningKey::User(&id.user.key))
                .await
            {
                Ok(_) => {}
                // Another device of the user created it first.
                Err(e) if e.code == ErrorCode::ChainLinkRefused => {}
                Err(e) => panic!("Create refused: {e:?}"),
            }
        }
        self.sign_and_append(user, id.admit_body(), SigningKey::User(&id.user.key))
            .await
            .unwrap_or_else(|e| panic!("Admit by the user key refused: {e:?}"));
    }

    /// The next answer to a chain request (`ChainAppended`, `ChainLinks`, or an error frame
    /// that answers no append); other frames wait in [`Client::pending`] (events in the backlog).
    async fn chain_answer(&mut self) -> ServerFrame {
        loop {
            let bytes = next_binary(&mut self.ws).await.unwrap_or_else(|code| {
                panic!("closed ({code:?}) while waiting for a chain answer")
            });
            let frame: ServerFrame = self.channel.open(&bytes).expect("relay frames decrypt");
            match frame {
                ServerFrame::ChainAppended { .. } | ServerFrame::ChainLinks { .. } => return frame,
                ServerFrame::Error(ref e) if e.device_seq.is_none() => return frame,
                ServerFrame::ChainGrew { seqno } => self.chain_grew.push(seqno),
                ServerFrame::Events(events) => self.backlog.extend(events),
                other => self.pending.push_back(other),
            }
        }
    }

    /// The next pairing frame (`PairOpened`, `PairPeer`, `PairClosed` or an error), skipping others.
    pub async fn pairing_frame(&mut self) -> ServerFrame {
        loop {
            match self.recv().await.expect("connection open") {
                frame @ (ServerFrame::PairOpened { .. }
                | ServerFrame::PairPeer { .. }
                | ServerFrame::PairClosed { .. }
                | ServerFrame::Error(_)) => return frame,
                ServerFrame::Events(events) => self.backlog.extend(events),
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        let bytes = self.channel.seal(frame).unwrap();
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// The next frame but `ChainGrew` (recorded in [`Client::chain_grew`]), or the close code
    /// if the relay closed.
    pub async fn recv(&mut self) -> Result<ServerFrame, Option<u16>> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        loop {
            match self.recv_any().await? {
                ServerFrame::ChainGrew { seqno } => self.chain_grew.push(seqno),
                frame => return Ok(frame),
            }
        }
    }

    /// The next frame from the socket, whatever it is.
    async fn recv_any(&mut self) -> Result<ServerFrame, Option<u16>> {
        let bytes = next_binary(&mut self.ws).await?;
        Ok(self.channel.open(&bytes).expect("relay frames decrypt"))
    }

    /// Appends one event and waits for its `Appended` (skipping event frames meanwhile).
    pub async fn append(&mut self, device_seq: u64, payload: &[u8]) -> Result<u64, ErrorFrame> {
        self.send(&ClientFrame::Append(Append {
            device_seq,
            payload: SealedPayload(payload.to_vec()),
        }))
        .await;
        self.answer(device_seq).await
    }

    /// Waits for the answer to the append with `device_seq`.
    pub async fn answer(&mut self, device_seq: u64) -> Result<u64, ErrorFrame> {
        loop {
            if let Some(answer) = self.answers.remove(&device_seq) {
                return answer;
            }
            match self.recv().await.expect("connection open") {
                ServerFrame::Appended { device_seq, seq } => {
                    self.answers.insert(device_seq, Ok(seq));
                }
                ServerFrame::Error(e) if e.device_seq.is_some() => {
                    self.answers
                        .insert(e.device_seq.unwrap_or_default(), Err(e));
                }
                ServerFrame::Events(events) => self.backlog.extend(events),
                _ => {}
            }
        }
    }

    /// Collects events until `CaughtUp`, returning them and the head it reported.
    pub async fn replay(&mut self) -> (Vec<Event>, u64) {
        let mut events = std::mem::take(&mut self.backlog);
        loop {
            match self.recv().await.expect("connection open") {
                ServerFrame::Events(page) => events.extend(page),
                ServerFrame::CaughtUp { head } => return (events, head),
                _ => {}
            }
        }
    }

    /// Collects exactly `n` more events (ignoring other frames).
    pub async fn events(&mut self, n: usize) -> Vec<Event> {
        let mut events = std::mem::take(&mut self.backlog);
        while events.len() < n {
            if let ServerFrame::Events(page) = self.recv().await.expect("connection open") {
                events.extend(page);
            }
        }
        assert_eq!(events.len(), n, "received more events than expected");
        events
    }
}

/// The `Create` link body of `user`'s chain: the recovery key's exchange key, and epoch 0's
/// data key sealed to it.
pub fn create_body(user: &Account) -> LinkBody {
    let recovery_exchange = user.recovery.exchange_secret().public();
    let data_key = DataKey::generate(&mut OsRng);
    let epoch_key = seal_epoch_key(&mut OsRng, &user.id(), 0, &data_key, &recovery_exchange)
        .expect("sealing epoch 0");
    LinkBody::Create {
        recovery_exchange,
        epoch_key,
    }
}

/// A placeholder sealed key of the right size (the relay cannot open sealed keys).
pub fn sealed_key() -> SealedKey {
    SealedKey(vec![7; SEALED_EPOCH_KEY_LEN])
}

/// The next epoch of `chain` sealed (with placeholders) to every active device but `leaving`.
pub fn next_epoch(chain: &Chain, leaving: &[DeviceId]) -> EpochKeys {
    EpochKeys {
        epoch: chain.epoch() + 1,
        recovery: sealed_key(),
        devices: chain
            .active_devices()
            .map(|(device, _)| *device)
            .filter(|device| !leaving.contains(device))
            .map(|device| (device, sealed_key()))
            .collect(),
    }
}

/// The `Revoke` body for `devices` (sorted as the chain wants them named once each).
pub fn revoke_body(chain: &Chain, devices: &[DeviceId]) -> LinkBody {
    LinkBody::Revoke {
        devices: devices.to_vec(),
        epoch: next_epoch(chain, devices),
    }
}
