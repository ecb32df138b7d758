//! A minimal Ferry client built on the protocol crate, for driving a relay over real sockets.

use std::net::SocketAddr;
use std::time::Duration;

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

/// A user's device: its key and the user key's certificate for it.
pub struct Identity {
    pub user: UserKey,
    pub device: DeviceKey,
    pub certificate: DeviceCertificate,
}

impl Identity {
    /// The first device of a new user.
    pub fn new_user() -> Self {
        let user = UserKey::generate(&mut OsRng);
        Self::device_of(user, "first")
    }

    /// Another device of the same user.
    pub fn another_device(&self, name: &str) -> Self {
        Self::device_of(UserKey::from_secret_bytes(&self.user.secret_bytes()), name)
    }

    fn device_of(user: UserKey, name: &str) -> Self {
        let device = DeviceKey::generate(&mut OsRng);
        let certificate =
            DeviceCertificate::issue(&user, device.id(), name, 1_700_000_000).unwrap();
        Self {
            user,
            device,
            certificate,
        }
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
    /// The pinned relay key (pairing binds it).
    pub relay: RelayId,
}

impl Client {
    /// Connects and authenticates `id`, resuming after `resume` (or the relay's stored cursor).
    pub async fn connect(
        addr: SocketAddr,
        relay: RelayId,
        id: &Identity,
        resume: Option<u64>,
    ) -> Result<Self, Refused> {
        let credentials = Credentials::Device {
            key: &id.device,
            certificate: id.certificate.clone(),
            resume,
        };
        Self::handshake(addr, relay, credentials).await
    }

    /// Connects as a device being paired (no identity).
    pub async fn connect_anonymous(addr: SocketAddr, relay: RelayId) -> Result<Self, Refused> {
        Self::handshake(addr, relay, Credentials::Anonymous).await
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

    /// The next frame, or the close code if the relay closed.
    pub async fn recv(&mut self) -> Result<ServerFrame, Option<u16>> {
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
