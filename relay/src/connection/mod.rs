//! One WebSocket connection: the handshake, then a session.
//!
//! 1. The handshake runs under a deadline (`--handshake-timeout-ms`): ClientHello in,
//!    ServerHello out, ClientStart in. Failures are answered with the handshake's own
//!    refusal message where one exists, then a close code `4000 + error code`.
//! 2. An authenticated device is admitted only if the user's device chain admits it: its
//!    `devices` row (written by the chain, see [`crate::store::ChainStore`]) exists and is not
//!    revoked. Otherwise the encrypted `SessionStart::Rejected` says 205 `unknown_device` (never
//!    admitted) or 203 `device_revoked`, and the connection closes with `4000 + code`. Nothing
//!    is registered on first sight: a device exists for the relay once a link admits it.
//! 3. An admitted device joins the hub and the session starts: see [`session`]. The session
//!    re-reads the device's record right after joining the hub (a revocation stored between
//!    the check above and the join reached no session), at every safety poll and when the
//!    bus comes back, and closes with an encrypted `Error(203)` then 4203 once it is revoked.
//! 4. A device whose user typed the recovery key proves the user key too (`user_proven`): it
//!    gets a *recovery session* even if the chain does not admit it (or there is no chain yet),
//!    but never if the chain revoked it. A recovery session may only read and extend the chain
//!    and list devices (`ChainFetch`, `ChainAppend`, `ListDevices`, `Ping`, `Pong`): no replay,
//!    no events, no hub membership; anything else is `Error(104)` and the end. See [`recovery`].

mod attachments;
mod calls;
mod chain;
mod conversations;
mod pairing;
mod people;
mod push;
mod read_ahead;
mod recovery;
mod session;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::handshake::{AuthFailure, PendingSession, ServerHandshake};
use ferry_protocol::{ErrorCode, ErrorFrame};
use futures_util::{SinkExt, StreamExt};
use rand_core::OsRng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::context::{Context, now_s};
use crate::store::StoreError;

/// `last_seen` is kept to this many seconds: a device reconnecting sooner is not written again.
const LAST_SEEN_RESOLUTION_S: u64 = 60;

/// Why a connection ended, as far as the client is told.
#[derive(Debug, Clone)]
pub(crate) struct Close {
    /// The error, or `None` when the relay is going away (shutdown): close code 1001.
    pub code: Option<ErrorCode>,
    pub reason: String,
}

impl Close {
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code: Some(code),
            reason: code.name().to_owned(),
        }
    }

    pub fn with_reason(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            reason: reason.into(),
        }
    }

    /// The relay is shutting down: reconnect elsewhere or later.
    pub fn going_away() -> Self {
        Self {
            code: None,
            reason: "relay shutting down".to_owned(),
        }
    }

    fn metric_name(&self) -> &'static str {
        self.code.map_or("going_away", ErrorCode::name)
    }

    /// The WebSocket close frame (reason cut to the 123 bytes a close frame allows).
    pub fn frame(&self) -> CloseFrame {
        let mut reason = self.reason.clone();
        let mut end = reason.len().min(120);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        let code = self
            .code
            .map_or(CloseCode::Away, |c| CloseCode::from(c.close_code()));
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }
}

/// Serves one upgraded connection until it closes.
///
/// `client` is the client's address (the TCP peer, or what a trusted proxy reported);
/// `refusal` says why the connection is over a connection cap, if it is (the server counts
/// connections from accept on).
///
/// This future lives as long as the connection, so it holds little: everything up to a
/// running session ([`open`]) runs boxed and is freed before the session's reader loop
/// starts, and it takes the raw stream, not the WebSocket (an `async fn` keeps the room of
/// its arguments for as long as it runs). Idle memory per connection, docs/benchmarks.md.
pub async fn serve<S>(
    io: S,
    websocket: WebSocketConfig,
    client: IpAddr,
    refusal: Option<crate::server::Refusal>,
    ctx: Arc<Context>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ctx.metrics.connections.inc();
    // A burst of frames in one read of the socket, not one read per 512 B (read_ahead.rs).
    let io = read_ahead::ReadAhead::new(io);
    let mut opened = Box::pin(open(io, websocket, client, refusal, &ctx)).await;
    // Run in place: a session moved out of `opened` would need room of its own.
    if let Ok(Some(session)) = &mut opened {
        session.run().await;
    }
    match opened {
        Ok(Some(session)) => Box::pin(session.end(&ctx)).await,
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "connection ended with a transport error"),
    }
    ctx.metrics.connections.dec();
}

/// Everything before a device's session runs: the connection caps, the handshake, the
/// device's admission and the session's set-up. Returns the session to run (`None`: the
/// connection was refused, a pairing or a recovery, and is over).
async fn open<'a, S>(
    io: S,
    websocket: WebSocketConfig,
    client: IpAddr,
    refusal: Option<crate::server::Refusal>,
    ctx: &'a Arc<Context>,
) -> Result<Option<session::Running<'a, S>>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(websocket)).await;
    let address = crate::server::address_key(client);
    let outcome = if let Some(refusal) = refusal {
        ctx.metrics.limit_refusal(refusal.limit);
        Err(Close::with_reason(
            ErrorCode::TooManyConnections,
            refusal.reason,
        ))
    } else if !ctx
        .handshake_limiter
        .try_take(&address, std::time::Instant::now())
    {
        Err(Close::with_reason(
            ErrorCode::RateLimited,
            "too many handshakes from this address",
        ))
    } else {
        match tokio::time::timeout(
            ctx.config.limits.handshake_timeout(),
            handshake(&mut ws, ctx),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(Close::new(ErrorCode::HandshakeTimeout)),
        }
    };
    let pending = match outcome {
        Ok(pending) => pending,
        Err(close) => {
            ctx.metrics.handshake(close.metric_name());
            finish(ws, close, ctx).await;
            return Ok(None);
        }
    };
    let Some(admitted) = admit(ws, pending, address, ctx).await? else {
        return Ok(None);
    };
    let Admitted {
        ws,
        channel,
        who,
        cursor,
        session_slot,
    } = admitted;
    Ok(Some(
        session::start(ws, channel, who, cursor, session_slot, ctx).await,
    ))
}

/// Steps 1–4 of the handshake.
async fn handshake<S>(ws: &mut WebSocketStream<S>, ctx: &Context) -> Result<PendingSession, Close>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = next_binary(ws).await?;
    let (state, reply) = match ServerHandshake::handle_client_hello(&ctx.key, &hello, &mut OsRng) {
        Ok(ok) => ok,
        Err(error) => {
            let _ = ws
                .send(Message::Binary(ServerHandshake::reject(&error).into()))
                .await;
            return Err(Close::with_reason(error.code(), error.to_string()));
        }
    };
    ws.send(Message::Binary(reply.into()))
        .await
        .map_err(|_| Close::new(ErrorCode::HandshakeFailed))?;
    let start = next_binary(ws).await?;
    match state.handle_client_start(&start) {
        Ok(pending) => Ok(pending),
        Err(AuthFailure { error, reply }) => {
            if let Some(reply) = reply {
                let _ = ws.send(Message::Binary(reply.into())).await;
            }
            Err(Close::with_reason(error.code(), error.to_string()))
        }
    }
}

/// Step 5: what [`admit`] returns for a device whose session should start.
struct Admitted<'a, S> {
    ws: WebSocketStream<S>,
    channel: ferry_protocol::ServerChannel,
    who: people::Asker,
    cursor: u64,
    /// Held for as long as the session runs.
    session_slot: crate::server::SessionSlot<'a>,
}

/// Checks the device against the relay's records and answers the handshake; returns the
/// session's pieces (`None`: the connection was a pairing, a recovery or a refusal, and is
/// over). Runs inside [`open`], boxed, so nothing inside it needs boxing for the session's
/// sake.
async fn admit<'a, S>(
    mut ws: WebSocketStream<S>,
    pending: PendingSession,
    address: IpAddr,
    ctx: &'a Arc<Context>,
) -> Result<Option<Admitted<'a, S>>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(auth) = pending.auth().cloned() else {
        // A device being paired: no identity, pairing frames only.
        let (channel, reply) = pending.accept(0, 0);
        ws.send(Message::Binary(reply.into())).await?;
        ctx.metrics.handshake("ok_pairing");
        pairing::run(ws, channel, address, Arc::clone(ctx)).await;
        return Ok(None);
    };
    // Counted before any database work, released when the session ends.
    let max_sessions = ctx.config.limits.max_sessions_per_user;
    let Some(session_slot) = ctx.occupancy.open_session(auth.user, max_sessions) else {
        ctx.metrics.limit_refusal("sessions_per_user");
        return refuse(
            ws,
            pending,
            Close::with_reason(
                ErrorCode::TooManyConnections,
                "too many sessions for this user",
            ),
            ctx,
        )
        .await
        .map(|()| None);
    };
    let recovery = auth.user_proven;
    let admitted = async {
        // One read on the store's reader side (`last_seen` goes to the write-behind): the
        // chain (written by `ChainAppend`) is what admits a device, never a handshake.
        let now = now_s();
        let start = ctx.store.session_start(auth.user, auth.device).await?;
        match &start.device {
            Some(record) if record.is_revoked() => {
                return Ok(Err(Close::new(ErrorCode::DeviceRevoked)));
            }
            None if !recovery => return Ok(Err(Close::new(ErrorCode::UnknownDevice))),
            Some(record) if now.saturating_sub(record.last_seen) >= LAST_SEEN_RESOLUTION_S => {
                ctx.last_seen.device_seen(auth.user, auth.device, now);
            }
            _ => {}
        }
        Ok::<_, StoreError>(Ok(start))
    };
    let start = match admitted.await {
        Ok(Ok(admitted)) => admitted,
        Ok(Err(close)) => {
            return refuse(ws, pending, close, ctx).await.map(|()| None);
        }
        Err(e) => {
            let code = e.code();
            if code == ErrorCode::Internal || code == ErrorCode::Unavailable {
                tracing::error!(error = %e, "storage failed during handshake");
            }
            return refuse(
                ws,
                pending,
                Close::with_reason(code, code.description()),
                ctx,
            )
            .await
            .map(|()| None);
        }
    };
    let acked = start.device.as_ref().map_or(0, |record| record.acked);
    let (channel, reply) = pending.accept_device(
        start.bounds.head,
        acked,
        start.last_device_seq,
        start.chain_seqno,
    );
    ws.send(Message::Binary(reply.into())).await?;
    if recovery {
        ctx.metrics.handshake("ok_recovery");
        recovery::run(ws, channel, auth.user, auth.device, Arc::clone(ctx)).await;
        return Ok(None);
    }
    // A cursor beyond the head (the client saw events this database no longer has) is not
    // clamped: the session answers it with ResyncRequired, never with reused sequences.
    let cursor = auth.resume.unwrap_or(acked);
    ctx.metrics.handshake("ok");
    let who = people::Asker {
        user: auth.user,
        device: auth.device,
        address,
    };
    Ok(Some(Admitted {
        ws,
        channel,
        who,
        cursor,
        session_slot,
    }))
}

async fn refuse<S>(
    mut ws: WebSocketStream<S>,
    pending: PendingSession,
    close: Close,
    ctx: &Context,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = close.code.unwrap_or(ErrorCode::Unavailable);
    let reply = pending.reject(ErrorFrame::with_message(code, close.reason.clone()));
    ws.send(Message::Binary(reply.into())).await?;
    ctx.metrics.handshake(close.metric_name());
    finish(ws, close, ctx).await;
    Ok(())
}

/// Reads the next binary message; anything else ends the handshake.
async fn next_binary<S>(ws: &mut WebSocketStream<S>) -> Result<Bytes, Close>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(_))) => {
                return Err(Close::with_reason(
                    ErrorCode::UnexpectedFrame,
                    "text messages are not part of the protocol",
                ));
            }
            Some(Ok(Message::Close(_) | Message::Frame(_))) | None => {
                return Err(Close::with_reason(
                    ErrorCode::HandshakeFailed,
                    "closed during the handshake",
                ));
            }
            Some(Err(e)) => return Err(transport_close(&e)),
        }
    }
}

/// Maps a WebSocket read error to what the client is told.
pub(crate) fn transport_close(error: &tokio_tungstenite::tungstenite::Error) -> Close {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::CapacityError;
    match error {
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => Close::with_reason(
            ErrorCode::FrameTooLarge,
            format!("message of {size} bytes exceeds {max_size}"),
        ),
        other => Close::with_reason(ErrorCode::MalformedFrame, other.to_string()),
    }
}

/// Sends the close frame (bounded in time) and counts the error.
pub(crate) async fn finish<S>(mut ws: WebSocketStream<S>, close: Close, ctx: &Context)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(code) = close.code {
        ctx.metrics.error(code);
    }
    tracing::debug!(code = close.metric_name(), reason = %close.reason, "closing connection");
    let _ = tokio::time::timeout(
        ctx.config.limits.write_timeout(),
        ws.close(Some(close.frame())),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    type Io = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

    fn future_of<A, B, C, D, E, F>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
        size_of::<F>()
    }

    /// Idle memory per connection is mostly the futures that live as long as it does: a step
    /// awaited inline in them (the handshake, the admission, a frame handler) makes every idle
    /// connection pay for its largest state. On rustc 1.95 they are 1,128 B (the connection's
    /// task), 584 B (the reader loop) and 872 B (the writer's task), in debug and release
    /// builds alike; before the set-up was boxed the connection's future was 4,696 B.
    #[test]
    fn long_lived_futures_stay_small() {
        let connection = future_of(serve::<Io>);
        let reader = session::sizes::reader_loop();
        let writer = session::sizes::writer_task();
        let item = session::sizes::control_item();
        let (connection_max, reader_max, writer_max) = (1_536, 768, 1_024);
        assert!(
            connection <= connection_max,
            "the connection's future is {connection} B"
        );
        assert!(reader <= reader_max, "the reader loop is {reader} B");
        assert!(writer <= writer_max, "the writer's task is {writer} B");
        assert!(item <= 24, "a control item is {item} B");
    }
}
