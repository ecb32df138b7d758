//! Refusals anyone on the network path can forge (WebSocket close codes, the plaintext
//! handshake `Reject`) never stop the client nor take anything out of its outbox: it
//! reconnects and delivers everything.
//!
//! A proxy on 127.0.0.1 sits between the client and a real relay. For its first connections
//! it plays a hostile network: it answers the WebSocket upgrade itself and closes with a
//! Ferry code, or answers the ClientHello with a plaintext `Reject`, or forwards the
//! handshake to the relay and then, when the client sends its first append, holds that
//! append back and injects a close frame with a Ferry code. Later connections are forwarded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_client::{Client, ClientError, ClientState, ErrorCode};
use ferry_protocol::ErrorFrame;
use ferry_protocol::codec;
use ferry_protocol::handshake::ServerHandshakeMessage;
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// What the proxy does with one connection.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Accept the upgrade itself and close at once with this code.
    CloseAtUpgrade(u16),
    /// Accept the upgrade itself and answer the ClientHello with a plaintext `Reject`.
    Reject(ErrorCode),
    /// Forward the handshake; on the client's first frame after it (an append), hold it back
    /// and inject a close frame with this code.
    CloseAfterFirstAppend(u16),
}

struct HostileProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileProxy {
    async fn start(relay: SocketAddr, plans: Vec<Plan>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let plans = Arc::new(Mutex::new(VecDeque::from(plans)));
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let plan = plans.lock().unwrap().pop_front();
                tokio::spawn(async move {
                    let _ = serve(client, relay, plan).await;
                });
            }
        });
        Self {
            addr,
            connections,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for HostileProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(client: TcpStream, relay: SocketAddr, plan: Option<Plan>) -> std::io::Result<()> {
    let closing = |code: u16| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "forged".into(),
        }))
    };
    match plan {
        Some(Plan::CloseAtUpgrade(code)) => {
            let mut ws = tokio_tungstenite::accept_async(client)
                .await
                .map_err(other)?;
            let _ = ws.send(closing(code)).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
        }
        Some(Plan::Reject(code)) => {
            let mut ws = tokio_tungstenite::accept_async(client)
                .await
                .map_err(other)?;
            let _hello = ws.next().await;
            let reject = ServerHandshakeMessage::Reject(ErrorFrame::with_message(code, "forged"));
            let _ = ws
                .send(Message::Binary(codec::encode(&reject).into()))
                .await;
            let _ = ws.send(closing(code.close_code())).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
        }
        Some(Plan::CloseAfterFirstAppend(code)) => {
            inject_after_handshake(client, relay, code).await?;
        }
        None => {
            let mut upstream = TcpStream::connect(relay).await?;
            let mut client = client;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    }
    Ok(())
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Forwards the upgrade and the handshake frame by frame; the client's third message (the
/// first after ClientHello and ClientStart) is held back and answered by a forged close.
async fn inject_after_handshake(
    client: TcpStream,
    relay: SocketAddr,
    code: u16,
) -> std::io::Result<()> {
    let upstream = TcpStream::connect(relay).await?;
    let (mut client_read, client_write) = client.into_split();
    let (mut relay_read, mut relay_write) = upstream.into_split();
    let client_write = Arc::new(tokio::sync::Mutex::new(client_write));

    // Relay to client, whole frames under the lock, so an injected frame never lands
    // inside another.
    let to_client = Arc::clone(&client_write);
    let down = tokio::spawn(async move { pump_down(&mut relay_read, &to_client).await });

    // Client to relay: the HTTP request, ClientHello, ClientStart; then the forged close.
    let head = read_http_head(&mut client_read).await?;
    relay_write.write_all(&head).await?;
    let mut messages = 0;
    loop {
        let frame = read_frame(&mut client_read).await?;
        if frame[0] & 0x0f == 0x2 {
            messages += 1;
        }
        if messages == 3 {
            break;
        }
        relay_write.write_all(&frame).await?;
    }
    let mut close = vec![0x88, 2 + 6];
    close.extend_from_slice(&code.to_be_bytes());
    close.extend_from_slice(b"forged");
    {
        let mut writer = client_write.lock().await;
        down.abort();
        writer.write_all(&close).await?;
        writer.flush().await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// Relay to client: the HTTP answer, then whole frames.
async fn pump_down(
    relay: &mut tokio::net::tcp::OwnedReadHalf,
    client: &tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
) -> std::io::Result<()> {
    let head = read_http_head(relay).await?;
    client.lock().await.write_all(&head).await?;
    loop {
        let frame = read_frame(relay).await?;
        client.lock().await.write_all(&frame).await?;
    }
}

/// Bytes up to and including the blank line that ends an HTTP head.
async fn read_http_head<R: AsyncReadExt + Unpin>(read: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(read.read_u8().await?);
    }
    Ok(head)
}

/// One whole WebSocket frame, header included.
async fn read_frame<R: AsyncReadExt + Unpin>(read: &mut R) -> std::io::Result<Vec<u8>> {
    let mut frame = vec![read.read_u8().await?, read.read_u8().await?];
    let masked = frame[1] & 0x80 != 0;
    let len = match frame[1] & 0x7f {
        126 => {
            let len = read.read_u16().await?;
            frame.extend_from_slice(&len.to_be_bytes());
            u64::from(len)
        }
        127 => {
            let len = read.read_u64().await?;
            frame.extend_from_slice(&len.to_be_bytes());
            len
        }
        len => u64::from(len),
    };
    let rest = usize::try_from(len).unwrap() + if masked { 4 } else { 0 };
    let start = frame.len();
    frame.resize(start + rest, 0);
    read.read_exact(&mut frame[start..]).await?;
    Ok(frame)
}

async fn state_through(
    dir: &std::path::Path,
    proxy: &HostileProxy,
    relay: &TestRelay,
) -> ClientState {
    new_user_pointed_at(dir, relay, "laptop", &proxy.url(), relay.relay_id).await
}

#[tokio::test]
async fn forged_close_codes_and_rejects_neither_stop_the_client_nor_drop_appends() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let plans = vec![
        // Before the fix: "payload too large" took the append out of the outbox.
        Plan::CloseAfterFirstAppend(ErrorCode::FrameTooLarge.close_code()),
        Plan::CloseAfterFirstAppend(ErrorCode::PayloadTooLarge.close_code()),
        // Before the fix: each of these stopped the client for good.
        Plan::CloseAfterFirstAppend(ErrorCode::DeviceRevoked.close_code()),
        Plan::CloseAtUpgrade(ErrorCode::DeviceRevoked.close_code()),
        Plan::CloseAtUpgrade(ErrorCode::ResyncRequired.close_code()),
        Plan::CloseAtUpgrade(ErrorCode::BadCertificate.close_code()),
        Plan::Reject(ErrorCode::DeviceRevoked),
        Plan::Reject(ErrorCode::UnsupportedVersion),
        Plan::CloseAfterFirstAppend(ErrorCode::TooManyDevices.close_code()),
    ];
    let forged = plans.len();
    let proxy = HostileProxy::start(relay.addr, plans).await;
    let state = state_through(&dir.path().join("laptop"), &proxy, &relay).await;

    let mut client = Client::start(state, fast());
    let texts_sent: Vec<String> = (1..=5).map(|i| format!("event {i}")).collect();
    for text in &texts_sent {
        client.enqueue(text.as_bytes()).await.unwrap();
    }
    client.flush(WAIT).await.unwrap();
    let status = client.status();
    assert!(status.stopped.is_none(), "{status:?}");
    assert_eq!(status.pending, 0);
    assert!(
        proxy.connections.load(Ordering::SeqCst) > forged,
        "every forged refusal was met"
    );

    // Everything arrived, once, in order.
    let got = events(&mut client, texts_sent.len()).await;
    assert_eq!(texts(&got), texts_sent);
    let state = client.close().await.unwrap();
    assert_eq!((state.pending(), state.next_device_seq()), (0, 6));
}

#[tokio::test]
async fn a_refusal_only_ever_forged_is_a_warning_not_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let revoked = ErrorCode::DeviceRevoked.close_code();
    let proxy = HostileProxy::start(relay.addr, vec![Plan::CloseAtUpgrade(revoked); 1000]).await;
    let state = state_through(&dir.path().join("laptop"), &proxy, &relay).await;
    let options = fast().connect_timeout(Duration::from_millis(800));
    let error = Client::connect(state, options.clone()).await.unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Unauthenticated {
                code: ErrorCode::DeviceRevoked,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_permanent());

    // A running client keeps its outbox and keeps trying, and says why.
    let state = open_when_free(&dir.path().join("laptop")).await;
    let client = Client::start(state, options);
    client.enqueue(b"kept").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = client.status();
    assert!(status.stopped.is_none(), "{status:?}");
    assert!(
        matches!(
            status.last_error,
            Some(ClientError::Unauthenticated {
                code: ErrorCode::DeviceRevoked,
                ..
            })
        ),
        "{status:?}"
    );
    assert_eq!(status.pending, 1);
    let state = client.close().await.unwrap();
    assert_eq!(state.pending(), 1);
}
