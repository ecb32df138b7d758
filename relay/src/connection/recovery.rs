//! A recovery session: a device whose user typed the recovery key, so that the user key
//! signed the handshake too (`user_proven`). It may read and extend the user's device chain
//! although the chain does not admit the device (yet), or there is no chain at all: that is
//! how a user creates the chain (`Create`, then `Admit` of the first device), admits a
//! device after losing every other, or revokes everything.
//!
//! It may only send `ChainFetch`, `ChainAppend`, `ListDevices`, `Ping` and `Pong`; anything
//! else is answered with an encrypted `Error(104 unexpected_frame)` and the end of the
//! connection. It gets no replay and no events, and does not join the hub (so it neither
//! receives nor sends wake-ups, ephemerals or pairing frames). One task serves it, answering
//! each frame before reading the next. The client reconnects as a normal device (without the
//! user key) once the chain admits it.

use std::sync::Arc;

use ferry_protocol::limits::MAX_DEVICES_PER_FRAME;
use ferry_protocol::{
    ClientFrame, DeviceId, ErrorCode, ErrorFrame, ServerChannel, ServerFrame, UserId,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::chain::{self, Fetch};
use super::{Close, finish, transport_close};
use crate::context::Context;

/// What a recovery session is told when it sends a frame it may not.
const NOT_ALLOWED: &str =
    "a recovery session may only send ChainFetch, ChainAppend, ListDevices, Ping and Pong";

/// Serves a recovery session until it closes, idles out or the relay stops.
pub(super) async fn run<S>(
    mut ws: WebSocketStream<S>,
    mut channel: ServerChannel,
    user: UserId,
    device: DeviceId,
    ctx: Arc<Context>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::info!(%user, %device, "recovery session opened");
    let idle = ctx.config.limits.idle_timeout();
    let mut shutdown = ctx.shutdown.clone();
    let close = loop {
        let message = tokio::select! {
            biased;
            () = stopping(&mut shutdown) => break Some(Close::going_away()),
            message = tokio::time::timeout(idle, ws.next()) => message,
        };
        let bytes = match message {
            Err(_) => {
                break Some(Close {
                    code: None,
                    reason: "idle for too long".to_owned(),
                });
            }
            Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(Message::Text(_)))) => {
                break Some(Close::with_reason(
                    ErrorCode::UnexpectedFrame,
                    "text messages are not part of the protocol",
                ));
            }
            Ok(None | Some(Ok(Message::Close(_)))) => break None,
            Ok(Some(Err(e))) => {
                let close = transport_close(&e);
                if close.code == Some(ErrorCode::FrameTooLarge) {
                    let frame = ErrorFrame::with_message(ErrorCode::FrameTooLarge, &close.reason);
                    let _ = write(&mut ws, &mut channel, &ServerFrame::Error(frame), &ctx).await;
                }
                break Some(close);
            }
        };
        let frame = match channel.open(&bytes) {
            Ok(frame) => frame,
            Err(e) => break Some(Close::with_reason(e.code(), e.to_string())),
        };
        let answered = match frame {
            ClientFrame::ChainAppend(link) => {
                let answer = chain::append(&ctx, user, &link, None).await;
                send(&mut ws, &mut channel, &answer, &ctx).await
            }
            ClientFrame::ChainFetch { after } => {
                let mut fetch = Fetch::new(user, after);
                loop {
                    let page = match fetch.next_page(&*ctx.store).await {
                        Ok(Some(page)) => page,
                        Ok(None) => break Ok(()),
                        Err(e) => {
                            tracing::warn!(error = %e, "storage error fetching the chain");
                            let error = ServerFrame::Error(ErrorFrame::new(e.code()));
                            break send(&mut ws, &mut channel, &error, &ctx).await;
                        }
                    };
                    if let Err(close) = write(&mut ws, &mut channel, &page, &ctx).await {
                        break Err(close);
                    }
                }
            }
            ClientFrame::ListDevices => {
                let answer = match ctx.store.list_devices(user).await {
                    Ok(mut devices) => {
                        devices.truncate(MAX_DEVICES_PER_FRAME);
                        ServerFrame::Devices(devices)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "storage error listing devices");
                        ServerFrame::Error(ErrorFrame::new(e.code()))
                    }
                };
                send(&mut ws, &mut channel, &answer, &ctx).await
            }
            ClientFrame::Ping { nonce } => {
                send(&mut ws, &mut channel, &ServerFrame::Pong { nonce }, &ctx).await
            }
            ClientFrame::Pong { .. } => Ok(()),
            ClientFrame::Append(_)
            | ClientFrame::Ack { .. }
            | ClientFrame::Ephemeral { .. }
            | ClientFrame::KeyPackagesUpload { .. }
            | ClientFrame::KeyPackagesClaim { .. }
            | ClientFrame::ConvCreate { .. }
            | ClientFrame::ConvSend(_)
            | ClientFrame::ConvFetch { .. }
            | ClientFrame::ConvAck { .. }
            | ClientFrame::ConvRead { .. }
            | ClientFrame::ConvList
            | ClientFrame::ConvEphemeral { .. }
            | ClientFrame::GroupInfoFetch { .. }
            | ClientFrame::TurnCredentialsFetch
            | ClientFrame::PushRegister(_)
            | ClientFrame::PushUnregister
            | ClientFrame::ConvWake { .. }
            | ClientFrame::BlobCreate { .. }
            | ClientFrame::BlobPut { .. }
            | ClientFrame::BlobGet { .. }
            | ClientFrame::PairOpen
            | ClientFrame::PairJoin { .. }
            | ClientFrame::PairForward { .. }
            | ClientFrame::PairClose { .. }
            | ClientFrame::HandleSet { .. }
            | ClientFrame::Whois { .. }
            | ClientFrame::UserChainFetch { .. }
            | ClientFrame::ContactRequest(_)
            | ClientFrame::ContactAccept(_)
            | ClientFrame::ContactDecline { .. }
            | ClientFrame::ContactCancel { .. }
            | ClientFrame::ContactRemove { .. }
            | ClientFrame::Block { .. }
            | ClientFrame::Unblock { .. }
            | ClientFrame::ContactsList
            | ClientFrame::ProfileSet(_)
            | ClientFrame::ProfileFetch { .. }
            | ClientFrame::PresenceSet { .. }
            | ClientFrame::ContactCard { .. } => {
                let error = ErrorFrame::with_message(ErrorCode::UnexpectedFrame, NOT_ALLOWED);
                let _ = send(&mut ws, &mut channel, &ServerFrame::Error(error), &ctx).await;
                break Some(Close::with_reason(ErrorCode::UnexpectedFrame, NOT_ALLOWED));
            }
        };
        if let Err(close) = answered {
            break close;
        }
    };
    if let Some(close) = close {
        finish(ws, close, &ctx).await;
    }
}

/// [`write`], counting an error frame in the metrics.
async fn send<S>(
    ws: &mut WebSocketStream<S>,
    channel: &mut ServerChannel,
    frame: &ServerFrame,
    ctx: &Context,
) -> Result<(), Option<Close>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let ServerFrame::Error(error) = frame {
        ctx.metrics.error(error.code);
    }
    write(ws, channel, frame, ctx).await
}

/// Seals and writes one frame within the write timeout; `Err` ends the session (with a close
/// frame to send, or `None` when the socket is gone).
async fn write<S>(
    ws: &mut WebSocketStream<S>,
    channel: &mut ServerChannel,
    frame: &ServerFrame,
    ctx: &Context,
) -> Result<(), Option<Close>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bytes = channel
        .seal(frame)
        .map_err(|e| Some(Close::with_reason(ErrorCode::Internal, e.to_string())))?;
    match tokio::time::timeout(
        ctx.config.limits.write_timeout(),
        ws.send(Message::Binary(bytes.into())),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(Close::with_reason(
            ErrorCode::SlowConsumer,
            "write timed out",
        ))),
    }
}

/// Resolves once the node starts shutting down.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}
