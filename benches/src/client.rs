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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ferry_protocol::handshake::{ClientHandshake, Credentials, HandshakeError, Session};
use ferry_protocol::{
    Append, ChannelError, ClientChannel, ClientFrame, DeviceCertificate, DeviceId, DeviceKey,
    ErrorCode, ErrorFrame, RecvHalf, RelayId, SealedPayload, SendHalf, ServerFrame, UserId,
    UserKey,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand_core::OsRng;
use tokio::net::{TcpSocket, TcpStream};
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

/// A device of a user: its key and the user key's certificate for it.
#[derive(Debug)]
pub struct Identity {
    /// The device key (signs the handshake transcript).
    pub device: DeviceKey,
    /// The user key's certificate for the device.
    pub certificate: DeviceCertificate,
}

impl Identity {
    /// A new user with `devices` devices (each with its own certificate).
    pub fn new_user(devices: usize) -> Vec<Self> {
        let user = UserKey::generate(&mut OsRng);
        (0..devices)
            .map(|i| {
                let device = DeviceKey::generate(&mut OsRng);
                // Issuing fails only for an over-long name; these are short.
                let certificate =
                    DeviceCertificate::issue(&user, device.id(), &format!("bench-{i}"), 1)
                        .unwrap_or_else(|e| unreachable!("short device name refused: {e}"));
                Self {
                    device,
                    certificate,
                }
            })
            .collect()
    }

    /// The user this device belongs to.
    pub fn user(&self) -> UserId {
        self.certificate.user
    }

    /// The device's id.
    pub fn id(&self) -> DeviceId {
        self.device.id()
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
    pub async fn connect(
        target: Target,
        id: &Identity,
        resume: Option<u64>,
        source: Option<IpAddr>,
    ) -> Result<Self, ClientError> {
        let mut ws = socket(target.addr, source).await?;
        let traffic = ws.get_ref().traffic();
        let (state, hello) = ClientHandshake::start(target.relay, &mut OsRng);
        ws.send(Message::Binary(hello.into())).await?;
        let server_hello = next_binary(&mut ws).await?;
        let credentials = Credentials::Device {
            key: &id.device,
            certificate: id.certificate.clone(),
            resume,
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
