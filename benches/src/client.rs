//! A minimal Ferry device for load generation: `ferry_protocol`'s handshake and channel over
//! tokio-tungstenite, on a socket that counts its bytes and may be bound to a chosen
//! loopback source address (so tens of thousands of connections do not run out of ports).
//!
//! ```text
//!  connect ─TCP (bind 127.0.0.x)─▶ WS upgrade ─ClientHello─▶ ◀─ServerHello─ ─ClientStart─▶
//!          ◀─SessionStart─ ⇒ Connection { channel, session } ─split─▶ (Sender, Receiver)
//! ```
//!
//! Payloads are opaque 256-byte blobs, not sealed with a data key: the relay cannot tell the
//! difference, and end-to-end sealing is a client cost measured by the protocol
//! micro-benchmarks, which here would only take CPU away from the relay under test.
//!
//! Users are made as real clients make them: a device chain (`Create`, then an `Admit` per
//! device, all signed by the user key) uploaded in a recovery session. The first connection
//! of any device of a user uploads it ([`Identity::register`]), untimed by the scenarios
//! (which connect every device once before they measure).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ferry_protocol::chain::SealedKey;
use ferry_protocol::handshake::{ClientHandshake, Credentials, HandshakeError, Session};
use ferry_protocol::{
    Append, Chain, ChannelError, ClientChannel, ClientFrame, DeviceId, DeviceKey, ErrorCode,
    ErrorFrame, Link, LinkBody, RecvHalf, RelayId, SealedPayload, SendHalf, ServerFrame,
    SigningKey, UserId, UserKey,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand_core::OsRng;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OnceCell;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::counting::{Counted, Traffic};

/// Read buffer of each client WebSocket.
const READ_BUFFER: usize = 16 * 1024;

/// The WebSocket the bench speaks over.
pub type Socket = WebSocketStream<Counted<TcpStream>>;

/// Where a relay serves and the key clients pin for it.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The relay's listen address.
    pub addr: SocketAddr,
    /// The relay's identity key.
    pub relay: RelayId,
}

/// A device of a user: its key, and the user's chain to upload before the first session.
#[derive(Debug)]
pub struct Identity {
    /// The device key (signs the handshake transcript).
    pub device: DeviceKey,
    /// The user it acts for.
    user: UserId,
    /// Shared by the user's devices: the user key and the chain admitting them all.
    setup: Arc<Setup>,
}

/// A user's chain, uploaded once.
#[derive(Debug)]
pub struct Setup {
    user_key: UserKey,
    /// `Create`, then an `Admit` per device.
    links: Vec<Link>,
    registered: OnceCell<()>,
}

impl Setup {
    /// The chain's links (for a scenario that writes them to the store itself).
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// Marks the chain as uploaded (by a scenario that wrote it to the store itself).
    pub fn mark_registered(&self) {
        let _ = self.registered.set(());
    }
}

impl Identity {
    /// A new user with `devices` devices, all admitted by the user key in its chain.
    pub fn new_user(devices: usize) -> Vec<Self> {
        // The bench never opens a payload: the devices' exchange keys are placeholders (the
        // relay cannot tell).
        Self::new_user_with_exchange(&vec![[9; 32]; devices])
    }

    /// A new user with one device per X25519 exchange public key in `exchange`, each
    /// admitted with its key (for a scenario that seals something to the devices, such as
    /// a contact intro).
    pub fn new_user_with_exchange(exchange: &[[u8; 32]]) -> Vec<Self> {
        let devices = exchange.len();
        let user_key = UserKey::generate(&mut OsRng);
        let user = user_key.id();
        let keys: Vec<DeviceKey> = (0..devices)
            .map(|_| DeviceKey::generate(&mut OsRng))
            .collect();
        let mut chain = Chain::new(user);
        let mut links = Vec::with_capacity(devices + 1);
        // The sealed epoch key is a placeholder of the right size (the relay cannot tell).
        let mut bodies = vec![LinkBody::Create {
            recovery_exchange: [9; 32],
            epoch_key: SealedKey(vec![7; ferry_protocol::epoch::SEALED_EPOCH_KEY_LEN]),
        }];
        bodies.extend(
            keys.iter()
                .zip(exchange)
                .enumerate()
                .map(|(i, (key, exchange))| LinkBody::Admit {
                    device: key.id(),
                    exchange: *exchange,
                    name: format!("bench-{i}"),
                    created_at: 1,
                }),
        );
        for body in bodies {
            let link = chain.sign(body, SigningKey::User(&user_key));
            if let Err(e) = chain.apply(&link) {
                unreachable!("a fresh chain takes its own links: {e}");
            }
            links.push(link);
        }
        let setup = Arc::new(Setup {
            user_key,
            links,
            registered: OnceCell::new(),
        });
        keys.into_iter()
            .map(|device| Self {
                device,
                user,
                setup: Arc::clone(&setup),
            })
            .collect()
    }

    /// The user this device belongs to.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The device's id.
    pub fn id(&self) -> DeviceId {
        self.device.id()
    }

    /// The user's chain, shared by its devices.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// Uploads the user's chain to `target` in a recovery session, once per user (every
    /// device of the user waits for the same upload).
    pub async fn register(&self, target: Target) -> Result<(), ClientError> {
        self.setup
            .registered
            .get_or_try_init(|| async {
                let mut connection = Connection::handshake(
                    target,
                    &self.device,
                    self.user,
                    Some(&self.setup.user_key),
                    None,
                    None,
                )
                .await?;
                for link in &self.setup.links {
                    connection
                        .send(&ClientFrame::ChainAppend(Box::new(link.clone())))
                        .await?;
                    loop {
                        match connection.recv().await? {
                            ServerFrame::ChainAppended { seqno } if seqno == link.seqno => break,
                            ServerFrame::Error(error) => return Err(ClientError::Relay(error)),
                            _ => {}
                        }
                    }
                }
                Ok(())
            })
            .await
            .map(drop)
    }
}

/// Why a connection or a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect or bind failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    /// The handshake was refused or failed to verify.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// A channel frame did not seal or open.
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    /// The relay answered with an error frame.
    #[error("relay error {} ({})", .0.code.name(), .0.message)]
    Relay(ErrorFrame),
    /// The relay closed the connection (with this close code, if any).
    #[error("closed by the relay (code {0:?}: {name})", name = close_name(*.0))]
    Closed(Option<u16>),
}

fn close_name(code: Option<u16>) -> &'static str {
    code.and_then(ErrorCode::from_close_code)
        .map_or("no error code", ErrorCode::name)
}

/// The `n`-th loopback source address used to spread connections: 127.0.0.2, .3, ...
/// (`sources` of them), so each gets its own ephemeral port range.
pub fn source_address(n: usize, sources: usize) -> IpAddr {
    let index = u8::try_from(n % sources.clamp(1, 250)).unwrap_or(0);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + index))
}

/// Opens a TCP connection (from `source` if given) and upgrades it to a WebSocket.
pub async fn socket(addr: SocketAddr, source: Option<IpAddr>) -> Result<Socket, ClientError> {
    let tcp = match source {
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    tcp.set_nodelay(true)?;
    // tungstenite zero-fills its whole read buffer before every read: the 128 KiB default
    // would make the generator spend its CPU on memset instead of leaving it to the relay.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/ws"),
        Counted::new(tcp),
        Some(config),
    )
    .await?;
    Ok(ws)
}

/// An authenticated session.
#[derive(Debug)]
pub struct Connection {
    /// The WebSocket.
    pub ws: Socket,
    /// The encrypted channel.
    pub channel: ClientChannel,
    /// What the relay said at the handshake (head, stored cursor).
    pub session: Session,
    /// Bytes through this connection so far, handshake included.
    pub traffic: Arc<Traffic>,
}

impl Connection {
    /// Connects and authenticates `id`; `resume: None` replays from the relay's stored cursor.
    /// The user's chain is uploaded first if no device of the user did it yet.
    pub async fn connect(
        target: Target,
        id: &Identity,
        resume: Option<u64>,
        source: Option<IpAddr>,
    ) -> Result<Self, ClientError> {
        id.register(target).await?;
        Self::handshake(target, &id.device, id.user, None, resume, source).await
    }

    /// Connects as `device` of `user` (a recovery session with `recovery`).
    async fn handshake(
        target: Target,
        device: &DeviceKey,
        user: UserId,
        recovery: Option<&UserKey>,
        resume: Option<u64>,
        source: Option<IpAddr>,
    ) -> Result<Self, ClientError> {
        let mut ws = socket(target.addr, source).await?;
        let traffic = ws.get_ref().traffic();
        let (state, hello) = ClientHandshake::start(target.relay, &mut OsRng);
        ws.send(Message::Binary(hello.into())).await?;
        let server_hello = next_binary(&mut ws).await?;
        let credentials = Credentials::Device {
            key: device,
            user,
            resume,
            recovery,
        };
        let (state, start) = state.handle_server_hello(&server_hello, credentials)?;
        ws.send(Message::Binary(start.into())).await?;
        let established = next_binary(&mut ws).await?;
        let (session, channel) = state.handle_session(&established)?;
        Ok(Self {
            ws,
            channel,
            session,
            traffic,
        })
    }

    /// Seals and sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = self.channel.seal(frame)?;
        self.ws.send(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// Seals and queues one frame without flushing (see [`Connection::flush`]).
    pub async fn feed(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = self.channel.seal(frame)?;
        self.ws.feed(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// Flushes queued frames.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.ws.flush().await?;
        Ok(())
    }

    /// The next frame from the relay.
    pub async fn recv(&mut self) -> Result<ServerFrame, ClientError> {
        let bytes = next_binary(&mut self.ws).await?;
        Ok(self.channel.open(&bytes)?)
    }

    /// Splits into a sending and a receiving half, for separate tasks.
    pub fn split(self) -> (Sender, Receiver) {
        let (seal, open) = self.channel.split();
        let (sink, stream) = self.ws.split();
        (Sender { sink, seal }, Receiver { stream, open })
    }
}

/// The sending half of a [`Connection`].
#[derive(Debug)]
pub struct Sender {
    sink: SplitSink<Socket, Message>,
    seal: SendHalf<ClientFrame>,
}

impl Sender {
    /// Seals and sends one frame, flushing it.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = self.seal.seal(frame)?;
        self.sink.send(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// Seals and queues one frame without flushing (see [`Sender::flush`]).
    pub async fn feed(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = self.seal.seal(frame)?;
        self.sink.feed(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// Flushes queued frames.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.sink.flush().await?;
        Ok(())
    }
}

/// The receiving half of a [`Connection`].
#[derive(Debug)]
pub struct Receiver {
    stream: SplitStream<Socket>,
    open: RecvHalf<ServerFrame>,
}

impl Receiver {
    /// The next frame from the relay.
    pub async fn recv(&mut self) -> Result<ServerFrame, ClientError> {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Binary(bytes))) => return Ok(self.open.open(&bytes)?),
                Some(Ok(Message::Close(frame))) => {
                    return Err(ClientError::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ClientError::Closed(None)),
            }
        }
    }
}

/// An `Append` of `payload` at `device_seq`.
pub fn append(device_seq: u64, payload: Vec<u8>) -> ClientFrame {
    ClientFrame::Append(Append {
        device_seq,
        payload: SealedPayload(payload),
    })
}

/// The next binary WebSocket message (the relay's close becomes [`ClientError::Closed`]).
pub async fn next_binary(ws: &mut Socket) -> Result<bytes::Bytes, ClientError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes),
            Some(Ok(Message::Close(frame))) => {
                return Err(ClientError::Closed(frame.map(|f| u16::from(f.code))));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Closed(None)),
        }
    }
}
