//! One connection to the relay: the WebSocket, the handshake, then a writer task and a
//! reader half.
//!
//! 1. `connect_async` opens `ws://HOST:PORT/ws` or `wss://` (TLS, see [`crate::tls`]); every
//!    Ferry frame is one binary message.
//! 2. The handshake ([`ferry_protocol::handshake`]) runs on the whole socket: ClientHello,
//!    ServerHello (checked against the pinned relay key), ClientStart with the device's
//!    credentials and the resume cursor (or anonymous, for a device being paired),
//!    SessionStart.
//! 3. The socket and the channel are split. The writer task owns the sending halves and
//!    seals frames from a bounded queue; the driver owns the receiving halves and reads
//!    while the writer writes, so neither side of the socket can block the other.
//!
//! A relay that refuses says why with an error frame or a close code `4000 + code`. Only
//! what comes through the encrypted channel is believed: the encrypted
//! `SessionStart::Rejected` and error frames become the matching [`ClientError`] (which may
//! stop the client). A close code, and the plaintext `Reject` that may answer a ClientHello,
//! can be forged by anyone on the path: they become [`ClientError::Unauthenticated`], a
//! transient failure the client retries.

use std::path::Path;
use std::time::Duration;

use ferry_protocol::handshake::{ClientHandshake, Credentials, HandshakeError, Session};
use ferry_protocol::limits::{CHANNEL_OVERHEAD, MAX_FRAME_LEN};
use ferry_protocol::{ClientFrame, RecvHalf, RelayId, SendHalf, ServerFrame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand_core::OsRng;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::ClientError;
use crate::state::Keys;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames queued for the writer. Small: the driver keeps its own backlog and hands frames
/// over only when there is room, so it never stops reading to wait for the socket.
const WRITE_QUEUE: usize = 64;
/// A write the relay does not take within this time ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// An open session.
#[derive(Debug)]
pub(crate) struct Connection {
    /// What the relay confirmed: its log head and this device's stored cursor.
    pub session: Session,
    /// Frames for the writer task.
    pub outgoing: mpsc::Sender<ClientFrame>,
    /// The receiving side.
    pub incoming: Incoming,
    /// The writer task; it ends with the error that ended it, if any.
    pub writer: JoinHandle<Result<(), ClientError>>,
}

/// The receiving halves of a connection.
#[derive(Debug)]
pub(crate) struct Incoming {
    stream: SplitStream<Socket>,
    channel: RecvHalf<ServerFrame>,
}

impl Incoming {
    /// The next frame from the relay. Cancellation-safe: a frame is never half read.
    pub async fn next(&mut self) -> Result<ServerFrame, ClientError> {
        let bytes = next_binary(&mut self.stream).await?;
        self.channel
            .open(&bytes)
            .map_err(|e| ClientError::Protocol(format!("relay frame: {e}")))
    }
}

/// Connects, runs the handshake as the device in `keys`, resuming after `resume`.
pub(crate) async fn open(
    url: &str,
    relay_key: RelayId,
    keys: &Keys,
    resume: u64,
    ca_file: Option<&Path>,
) -> Result<Connection, ClientError> {
    let credentials = Credentials::Device {
        key: &keys.device,
        user: keys.user,
        resume: Some(resume),
        recovery: None,
    };
    open_as(url, relay_key, credentials, ca_file).await
}

/// Connects and runs the handshake with `credentials`: a device, or
/// [`Credentials::Anonymous`] for a device being paired. `ca_file`: the only CA trusted for
/// `wss://` (default: the platform's roots).
pub(crate) async fn open_as(
    url: &str,
    relay_key: RelayId,
    credentials: Credentials<'_>,
    ca_file: Option<&Path>,
) -> Result<Connection, ClientError> {
    let frame_limit = MAX_FRAME_LEN + CHANNEL_OVERHEAD;
    let config = WebSocketConfig::default()
        .max_message_size(Some(frame_limit))
        .max_frame_size(Some(frame_limit));
    let connector = crate::tls::connector(url, ca_file)?;
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, Some(config), true, connector)
            .await
            .map_err(|e| match crate::tls::tls_failure(&e) {
                Some(why) => ClientError::Tls(format!("{url}: {why}")),
                None => ClientError::RelayUnreachable(format!("{url}: {e}")),
            })?;

    let (handshake, hello) = ClientHandshake::start(relay_key, &mut OsRng);
    send(&mut ws, hello).await?;
    let server_hello = next_binary(&mut ws).await?;
    let (handshake, start) = handshake
        .handle_server_hello(&server_hello, credentials)
        .map_err(|error| match error {
            // The plaintext `Reject` of step 2: not signed, not encrypted.
            HandshakeError::Rejected(frame) => ClientError::Unauthenticated {
                code: frame.code,
                message: frame.message,
            },
            other => ClientError::from(other),
        })?;
    send(&mut ws, start).await?;
    let established = next_binary(&mut ws).await?;
    let (session, channel) = handshake.handle_session(&established)?;

    let (sink, stream) = ws.split();
    let (send_half, recv_half) = channel.split();
    let (outgoing, frames) = mpsc::channel(WRITE_QUEUE);
    let writer = tokio::spawn(write(sink, send_half, frames));
    Ok(Connection {
        session,
        outgoing,
        incoming: Incoming {
            stream,
            channel: recv_half,
        },
        writer,
    })
}

async fn send(ws: &mut Socket, bytes: Vec<u8>) -> Result<(), ClientError> {
    ws.send(Message::Binary(bytes.into()))
        .await
        .map_err(|e| ClientError::RelayUnreachable(format!("handshake: {e}")))
}

/// Seals and writes frames until the driver drops its sender, then closes the socket.
async fn write(
    mut sink: SplitSink<Socket, Message>,
    mut channel: SendHalf<ClientFrame>,
    mut frames: mpsc::Receiver<ClientFrame>,
) -> Result<(), ClientError> {
    let written = async {
        while let Some(frame) = frames.recv().await {
            // Queue everything waiting, then flush once: many appends, one write.
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                let bytes = channel
                    .seal(&frame)
                    .map_err(|e| ClientError::Protocol(format!("sealing a frame: {e}")))?;
                timed(sink.feed(Message::Binary(bytes.into()))).await?;
                next = frames.try_recv().ok();
            }
            timed(sink.flush()).await?;
        }
        Ok(())
    }
    .await;
    // Done (the driver let go) or broken: either way, say goodbye if the socket still works.
    let goodbye = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        sink.send(Message::Close(Some(goodbye))),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    written
}

async fn timed<F>(write: F) -> Result<(), ClientError>
where
    F: Future<Output = Result<(), tokio_tungstenite::tungstenite::Error>>,
{
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ClientError::RelayUnreachable(format!("write failed: {e}"))),
        Err(_) => Err(ClientError::RelayUnreachable(
            "the relay stopped taking frames".to_owned(),
        )),
    }
}

/// Reads the next binary message; a close becomes the error it carries.
async fn next_binary<S>(stream: &mut S) -> Result<Vec<u8>, ClientError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes.into()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(_))) => {
                return Err(ClientError::Protocol(
                    "the relay sent a text message".to_owned(),
                ));
            }
            Some(Ok(Message::Close(frame))) => return Err(closed(frame)),
            Some(Err(e)) => return Err(ClientError::RelayUnreachable(format!("read: {e}"))),
            None => {
                return Err(ClientError::RelayUnreachable(
                    "the connection closed".to_owned(),
                ));
            }
        }
    }
}

/// The error a close frame stands for: never more than a transient failure, since a close
/// frame is not authenticated (see the module docs).
fn closed(frame: Option<CloseFrame>) -> ClientError {
    let Some(frame) = frame else {
        return ClientError::RelayUnreachable("the relay closed the connection".to_owned());
    };
    let code = u16::from(frame.code);
    ClientError::unauthenticated_close(code, &frame.reason).unwrap_or_else(|| {
        let why = match frame.code {
            CloseCode::Away => "the relay is going away",
            _ => "the relay closed the connection",
        };
        ClientError::RelayUnreachable(format!("{why} ({code} {})", frame.reason))
    })
}
