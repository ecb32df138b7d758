//! An anonymous session: a device being paired, which may only join a slot and exchange
//! pairing messages with the inviter. It lives at most as long as a pairing code does, and
//! while it takes part in no pairing (before its join, after its pairing closed) at most
//! `--pairing-idle-timeout-ms`: pings do not keep it open.
//!
//! Joins are limited per address (`--pair-joins-per-ip-per-minute`) and, so that guesses from
//! many addresses are bounded too, by one bucket for the node: every join takes a token from
//! it, and a join whose pairing succeeds gives it back (the joiner's session hears
//! `PairClosed` without a code), so what it counts are the failed joins
//! (`--pair-failed-joins-per-minute`): wrong codes, unknown or used slots.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use ferry_protocol::{ClientFrame, ErrorCode, ErrorFrame, ServerChannel, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Close, finish, transport_close};
use crate::context::Context;
use crate::mailbox::Mailbox;
use crate::pairing::Party;

/// Frames queued for the joiner.
const QUEUE: usize = 16;

/// Serves a joiner until it closes, the pairing ends, or the pairing time runs out.
pub(super) async fn run<S>(
    mut ws: WebSocketStream<S>,
    mut channel: ServerChannel,
    address: IpAddr,
    ctx: Arc<Context>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = ctx.hub.next_session_id();
    let frames = Arc::new(Mailbox::new(QUEUE));
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_secs(ctx.config.limits.pairing_ttl_secs);
    let idle_timeout = ctx.config.limits.pairing_idle_timeout();
    // `None` while the session takes part in a pairing.
    let mut idle_deadline = Some(tokio::time::Instant::now() + idle_timeout);
    let mut shutdown = ctx.shutdown.clone();
    let close = loop {
        let idle = async move {
            match idle_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let outgoing = tokio::select! {
            biased;
            () = stopping(&mut shutdown) => break Some(Close::going_away()),
            _ = tokio::time::sleep_until(deadline) => break Some(Close::new(ErrorCode::PairingExpired)),
            () = idle => {
                ctx.metrics.limit_refusal("pairing_idle");
                break Some(Close { code: None, reason: "idle for too long".to_owned() });
            }
            frame = frames.recv() => {
                let frame: ServerFrame = *frame;
                if let ServerFrame::PairClosed { code, .. } = &frame {
                    // The pairing is over: the idle clock starts again.
                    idle_deadline = Some(tokio::time::Instant::now() + idle_timeout);
                    if code.is_none() {
                        // It succeeded: its join was no failure.
                        ctx.pair_failed_join_limiter.give_back();
                    }
                }
                frame
            }
            message = ws.next() => {
                let bytes = match message {
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Text(_))) => {
                        break Some(Close::with_reason(ErrorCode::UnexpectedFrame, "text messages are not part of the protocol"));
                    }
                    None | Some(Ok(Message::Close(_))) => break None,
                    Some(Err(e)) => break Some(transport_close(&e)),
                };
                let frame = match channel.open(&bytes) {
                    Ok(frame) => frame,
                    Err(e) => break Some(Close::with_reason(e.code(), e.to_string())),
                };
                let party = Party { session, frames: Arc::clone(&frames) };
                let result = match frame {
                    ClientFrame::PairJoin { slot, body } => {
                        let now = Instant::now();
                        if !ctx.pair_join_limiter.try_take(&address, now) {
                            Err(ErrorCode::RateLimited)
                        } else if !ctx.pair_failed_join_limiter.try_take(now) {
                            ctx.metrics.limit_refusal("pair_failed_joins");
                            Err(ErrorCode::RateLimited)
                        } else {
                            let joined = ctx.pairing.join(slot, party, body).await;
                            if joined.is_ok() {
                                idle_deadline = None;
                            }
                            joined
                        }
                    }
                    ClientFrame::PairForward { slot, body } => ctx.pairing.forward(slot, session, body).await,
                    ClientFrame::PairClose { slot, success } => {
                        idle_deadline = Some(tokio::time::Instant::now() + idle_timeout);
                        ctx.pairing.close(slot, session, success).await
                    }
                    ClientFrame::Ping { nonce } => {
                        let _ = frames.try_send(ServerFrame::Pong { nonce });
                        Ok(())
                    }
                    ClientFrame::Pong { .. } => Ok(()),
                    _ => break Some(Close::with_reason(ErrorCode::UnexpectedFrame, "a pairing session may only pair")),
                };
                match result {
                    Ok(()) => continue,
                    Err(code) => {
                        ctx.metrics.error(code);
                        ServerFrame::Error(ErrorFrame::new(code))
                    }
                }
            }
        };
        let sent = channel.seal(&outgoing).map_err(|e| e.to_string());
        let written = match sent {
            Ok(bytes) => {
                tokio::time::timeout(
                    ctx.config.limits.write_timeout(),
                    ws.send(Message::Binary(bytes.into())),
                )
                .await
            }
            Err(reason) => break Some(Close::with_reason(ErrorCode::Internal, reason)),
        };
        if !matches!(written, Ok(Ok(()))) {
            break None;
        }
    };
    frames.close();
    ctx.pairing.session_ended(session).await;
    if let Some(close) = close {
        finish(ws, close, &ctx).await;
    }
}

/// Resolves once the node starts shutting down. Its output holds no borrow of the watch, so
/// the pairing calls awaited in the other arms of the loop's `select!` stay `Send`.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}
