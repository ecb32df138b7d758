//! An authenticated device session: a reader task and a writer task around one socket.
//!
//! ```text
//!  socket ─▶ reader ── opens frames in order ──┬─▶ committer (Append, enqueued in order)
//!                                              ├─▶ store (Ack, devices)      hub (Ephemeral)
//!                                              └─▶ control queue (bounded) ─▶ writer ─▶ socket
//!  hub inbox / poll tick ─────────────────────────────────────────────────────▶ writer
//! ```
//!
//! - The reader handles one frame at a time, in arrival order; appends are enqueued to the
//!   committer in that order and their answers are awaited by the writer in the same order,
//!   so answers (`Appended` and errors alike) come back in the order the appends were sent,
//!   while many appends are in flight at once (pipelining).
//! - A device's appends commit in the order it sent them: once one is refused with a
//!   retryable code (rate limit, failed batch, quota, stale epoch), the later ones are refused with the same code
//!   until it is sent again ([`AppendOrder`]), so a re-sent append never lands behind ones
//!   sent after it.
//! - The writer owns `delivered`, the highest stream sequence sent to this device. Replay,
//!   live wake-ups, overflow and polling all go through it, and it only grows, so events are
//!   never sent twice. Every read of the log checks that it continues right after
//!   `delivered`: when retention removed events the device has not had (a trim during a
//!   paged replay, or while the device was behind), the session ends with `ResyncRequired`
//!   rather than skip them. `delivered` is not the device's cursor: the cursor moves only
//!   when the device sends `Ack`.
//! - Every queue is bounded; a write that takes longer than `--write-timeout-ms` drops the
//!   device with `SlowConsumer`, and it resumes from its cursor when it reconnects.
//! - A revoked device's session ends with an encrypted `Error(203 device_revoked)`, then close
//!   code 4203: when the hub closes it (a stored chain link revoked the device, on this node
//!   or, through the bus, another), when an append is refused by the store because the device
//!   is no longer active (the check that cannot race: it runs under the user's row lock, as
//!   the revocation does), when a `TurnCredentialsFetch` finds its record revoked (see
//!   [`calls`]), and when the writer re-reads the device's record: right after the
//!   session joined the hub (before replay), at every safety poll (`--safety-poll-secs`, also
//!   while the bus is down) and when the bus comes back after an outage.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_protocol::limits::{MAX_DEVICES_PER_FRAME, MAX_EVENTS_PER_FRAME, MAX_FRAME_LEN};
use ferry_protocol::{
    ClientFrame, DeviceId, ErrorCode, ErrorFrame, Event, RecvHalf, SendHalf, ServerChannel,
    ServerFrame, UserId,
};

use super::attachments;
use super::calls::{self, TurnAnswer};
use super::chain::{self, Fetch};
use super::conversations;
use super::people::{self, Asker};
use super::push;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Close, transport_close};
use crate::context::Context;
use crate::hub::Peer;
use crate::pairing::Party;
use crate::server::SessionSlot;
use crate::store::{
    AppendOrder, AppendOutcome, AppendRequest, ContactChange, DeviceRecord, LogBounds, StoreError,
};

/// Frames queued from the reader to the writer.
const CONTROL_QUEUE: usize = 256;
/// How long a closing session keeps reading, waiting for the client's close frame.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// Appends awaiting their commit per session; beyond this the reader waits.
const MAX_IN_FLIGHT: usize = 1024;
/// How often an `Ack` held back by the ack rate limit is written at the latest.
const ACK_FLUSH: Duration = Duration::from_secs(1);

enum Control {
    /// A frame to send as is (boxed: the channel allocates its slots up front, and an idle
    /// session's queue should cost pointers, not frames).
    Frame(Box<ServerFrame>),
    /// An append enqueued to the committer; answer it when its commit completes.
    Commit {
        device_seq: u64,
        reply: oneshot::Receiver<Result<AppendOutcome, StoreError>>,
    },
    /// An append refused before it reached the committer; answered in its turn.
    Refused { device_seq: u64, code: ErrorCode },
    /// The reader is done; close with this once every pending append is answered (boxed: the
    /// largest variant sets the size of every slot of the channel's first block, 32 slots).
    End(Box<Close>),
}

impl Control {
    fn frame(frame: ServerFrame) -> Self {
        Self::Frame(Box::new(frame))
    }
}

/// A session that is set up and running: its reader, which the connection's task runs, and
/// its writer's task.
pub(super) struct Running<'a, S> {
    reader: Reader<S>,
    writer: JoinHandle<()>,
    membership: crate::hub::Membership,
    /// Counts the session against its user until it ends.
    _slot: SessionSlot<'a>,
}

/// Sets the session up: joins the hub, marks the user online, splits the socket and the
/// channel and spawns the writer. Runs inside the connection's boxed set-up, so what it
/// holds meanwhile is gone once the session runs.
pub(super) async fn start<'a, S>(
    ws: WebSocketStream<S>,
    channel: ServerChannel,
    asker: Asker,
    cursor: u64,
    slot: SessionSlot<'a>,
    ctx: &Arc<Context>,
) -> Running<'a, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let membership = ctx.hub.join(asker.user, asker.device).await;
    people::session_online(ctx, asker.user).await;
    ctx.metrics.sessions.inc();
    let (reader, writer) = split(ws, channel, asker, cursor, ctx, &membership);
    Running {
        reader,
        writer,
        membership,
        _slot: slot,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Running<'_, S> {
    /// Runs the session until the socket closes, the device is revoked or the relay stops;
    /// then call [`Running::end`].
    ///
    /// This future lives as long as the connection, so it borrows: an `async fn` that takes
    /// `self` by value keeps room for it twice (the argument and its binding).
    pub(super) async fn run(&mut self) {
        if !self.reader.run(&mut self.writer).await {
            let _ = (&mut self.writer).await;
        }
    }

    /// Leaves the hub and marks the user offline when this was its last session.
    pub(super) async fn end(self, ctx: &Arc<Context>) {
        let user = self.reader.user;
        ctx.pairing.session_ended(self.membership.peer.id()).await;
        if ctx.hub.leave(self.membership).await {
            people::session_offline(ctx, user).await;
        }
        ctx.metrics.sessions.dec();
    }
}

/// Splits the socket and the channel, spawns the writer, and returns the reader.
fn split<S>(
    ws: WebSocketStream<S>,
    channel: ServerChannel,
    asker: Asker,
    cursor: u64,
    ctx: &Arc<Context>,
    membership: &crate::hub::Membership,
) -> (Reader<S>, JoinHandle<()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Asker { user, device, .. } = asker;
    let (sink, stream) = ws.split();
    let (send, recv) = channel.split();
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let mut writer = Writer {
        sink,
        send,
        ctx: Arc::clone(ctx),
        user,
        device,
        peer: Arc::clone(&membership.peer),
        delivered: cursor,
        control: control_rx,
        pending: VecDeque::new(),
        unflushed: false,
    };
    // Borrowed by its own task: `run(self)` would keep room for the writer twice.
    let writer_task = tokio::spawn(async move { writer.run().await });
    let reader = Reader {
        stream,
        recv,
        ctx: Arc::clone(ctx),
        user,
        device,
        asker,
        peer: Arc::clone(&membership.peer),
        control,
        order: AppendOrder::new(),
        unwritten_ack: 0,
    };
    (reader, writer_task)
}

struct Reader<S> {
    stream: SplitStream<WebSocketStream<S>>,
    recv: RecvHalf<ClientFrame>,
    ctx: Arc<Context>,
    user: UserId,
    device: DeviceId,
    asker: Asker,
    peer: Arc<Peer>,
    control: mpsc::Sender<Control>,
    order: Arc<AppendOrder>,
    /// The highest `Ack` received and not written yet (0: none), see `ClientFrame::Ack`.
    unwritten_ack: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Reader<S> {
    /// Reads until the connection should end, then tells the writer how to close. Returns
    /// whether the writer task has already finished (a finished handle must not be awaited).
    async fn run(&mut self, writer: &mut JoinHandle<()>) -> bool {
        let mut shutdown = self.ctx.shutdown.clone();
        let idle = self.ctx.config.limits.idle_timeout();
        let mut ack_flush = tokio::time::interval(ACK_FLUSH);
        ack_flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_frame = tokio::time::Instant::now();
        let close = loop {
            // What woke the reader (the select's output may hold a borrow of `shutdown`, so
            // nothing is awaited inside its arms).
            enum Woken<M> {
                WriterDone,
                FlushAck,
                Read(M),
            }
            let woken = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stopping| *stopping) => break Close::going_away(),
                _ = &mut *writer => Woken::WriterDone,
                _ = ack_flush.tick(), if self.unwritten_ack > 0 => Woken::FlushAck,
                message = tokio::time::timeout_at(last_frame + idle, self.stream.next()) => {
                    Woken::Read(message)
                }
            };
            let message = match woken {
                Woken::WriterDone => {
                    let _ = self.write_ack().await;
                    return true;
                }
                Woken::FlushAck => {
                    if let Err(close) = self.write_ack().await {
                        break close;
                    }
                    continue;
                }
                Woken::Read(message) => message,
            };
            last_frame = tokio::time::Instant::now();
            let bytes = match message {
                Err(_) => {
                    break Close {
                        code: None,
                        reason: "idle for too long".to_owned(),
                    };
                }
                Ok(None | Some(Ok(Message::Close(_)))) => {
                    let _ = self.write_ack().await;
                    self.end_quietly().await;
                    return false;
                }
                Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
                Ok(Some(Ok(Message::Text(_)))) => {
                    break Close::with_reason(
                        ErrorCode::UnexpectedFrame,
                        "text messages are not part of the protocol",
                    );
                }
                Ok(Some(Err(e))) => {
                    let close = transport_close(&e);
                    if close.code == Some(ErrorCode::FrameTooLarge) {
                        // Told inside the channel too, where the client can trust it.
                        let error =
                            ErrorFrame::with_message(ErrorCode::FrameTooLarge, &close.reason);
                        let _ = self
                            .control
                            .send(Control::frame(ServerFrame::Error(error)))
                            .await;
                    }
                    break close;
                }
            };
            let frame = match self.recv.open(&bytes) {
                Ok(frame) => frame,
                Err(e) => break Close::with_reason(e.code(), e.to_string()),
            };
            // Boxed: an idle reader holds no frame handler's state.
            if let Err(close) = Box::pin(self.handle(frame)).await {
                break close;
            }
        };
        let _ = Box::pin(self.write_ack()).await;
        let _ = self.control.send(Control::End(Box::new(close))).await;
        Box::pin(self.drain()).await;
        false
    }

    /// Reads and discards what the client still sends until it answers the writer's close
    /// frame (or a short deadline passes). Dropping a socket with unread input makes the
    /// kernel reset the connection, and the client could lose the close frame and the last
    /// `Appended` answers still in flight.
    async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + DRAIN_TIME;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout_at(deadline, self.stream.next()).await
        {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    }

    /// The client closed: answer pending appends if the socket still takes them, then stop.
    async fn end_quietly(&self) {
        let _ = self
            .control
            .send(Control::End(Box::new(Close {
                code: None,
                reason: String::new(),
            })))
            .await;
    }

    async fn handle(&mut self, frame: ClientFrame) -> Result<(), Close> {
        match frame {
            ClientFrame::Append(append) => {
                let device_seq = append.device_seq;
                if device_seq == 0 {
                    return self.refuse(0, ErrorCode::InvalidSequence).await;
                }
                let admission = match self.order.admit(device_seq) {
                    Ok(admission) => admission,
                    Err(code) => return self.refuse(device_seq, code).await,
                };
                if !self
                    .ctx
                    .append_limiter
                    .try_take(&self.device, Instant::now())
                {
                    self.order.refuse(device_seq, ErrorCode::RateLimited);
                    return self.refuse(device_seq, ErrorCode::RateLimited).await;
                }
                let request = AppendRequest {
                    user: self.user,
                    device: self.device,
                    device_seq,
                    payload: append.payload,
                };
                match self
                    .ctx
                    .committer
                    .submit_in_order(request, &self.order, admission)
                    .await
                {
                    Ok(reply) => self.send(Control::Commit { device_seq, reply }).await,
                    Err(e) => {
                        self.order.refuse(device_seq, e.code());
                        self.refuse(device_seq, e.code()).await
                    }
                }
            }
            ClientFrame::Ack { seq } => {
                // Each write is durable (an fsync on SQLite): beyond the rate, acks are merged
                // into the next one written (or the one-second flush), never lost.
                self.unwritten_ack = self.unwritten_ack.max(seq);
                if self.ctx.ack_limiter.try_take(&self.device, Instant::now()) {
                    self.write_ack().await
                } else {
                    Ok(())
                }
            }
            ClientFrame::Ephemeral { body } => {
                if self
                    .ctx
                    .ephemeral_limiter
                    .try_take(&self.device, Instant::now())
                {
                    self.ctx
                        .hub
                        .ephemeral(self.user, self.device, &self.peer, body);
                } else {
                    // Best effort by definition: dropped, and counted.
                    self.ctx.metrics.error(ErrorCode::RateLimited);
                }
                Ok(())
            }
            ClientFrame::Ping { nonce } => {
                self.send(Control::frame(ServerFrame::Pong { nonce })).await
            }
            ClientFrame::Pong { .. } => Ok(()),
            ClientFrame::ListDevices => match self.ctx.store.list_devices(self.user).await {
                Ok(mut devices) => {
                    devices.truncate(MAX_DEVICES_PER_FRAME);
                    self.send(Control::frame(ServerFrame::Devices(devices)))
                        .await
                }
                Err(e) => self.storage_error(e).await,
            },
            ClientFrame::ChainAppend(link) => {
                let answer = chain::append(&self.ctx, self.user, &link, Some(self.peer.id())).await;
                if let ServerFrame::Error(error) = &answer {
                    self.ctx.metrics.error(error.code);
                }
                self.send(Control::frame(answer)).await
            }
            ClientFrame::ChainFetch { after } => {
                let mut fetch = Fetch::new(self.user, after);
                loop {
                    match fetch.next_page(&*self.ctx.store).await {
                        Ok(Some(page)) => self.send(Control::frame(page)).await?,
                        Ok(None) => return Ok(()),
                        Err(e) => return self.storage_error(e).await,
                    }
                }
            }
            ClientFrame::PairOpen => {
                let inviter = Party {
                    session: self.peer.id(),
                    frames: Arc::clone(self.peer.direct()),
                };
                // The relay picks the slot: it is public and only routes.
                match self.ctx.pairing.open(inviter, self.user).await {
                    Ok((slot, expires_at)) => {
                        let frame = ServerFrame::PairOpened { slot, expires_at };
                        self.send(Control::frame(frame)).await
                    }
                    Err(code) => self.error(ErrorFrame::new(code)).await,
                }
            }
            ClientFrame::PairForward { slot, body } => {
                let forwarded = self.ctx.pairing.forward(slot, self.peer.id(), body).await;
                self.pairing_result(forwarded).await
            }
            ClientFrame::PairClose { slot, success } => {
                let closed = self.ctx.pairing.close(slot, self.peer.id(), success).await;
                self.pairing_result(closed).await
            }
            ClientFrame::PairJoin { .. } => {
                let message = "a paired device cannot join a pairing; connect anonymously";
                let frame = ErrorFrame::with_message(ErrorCode::UnexpectedFrame, message);
                self.error(frame).await
            }
            ClientFrame::UserChainFetch { user, after } => self.user_chain(user, after).await,
            ClientFrame::ContactsList => {
                for page in people::contacts(&self.ctx, self.asker).await {
                    self.send(Control::frame(page)).await?;
                }
                Ok(())
            }
            ClientFrame::TurnCredentialsFetch => {
                match calls::turn_credentials(&self.ctx, self.asker).await {
                    TurnAnswer::Frame(answer) => self.send(Control::frame(answer)).await,
                    TurnAnswer::NotAdmitted(code) => {
                        // As when the writer finds the device revoked: told inside the
                        // channel, then the close (which the writer counts).
                        let told = ServerFrame::Error(ErrorFrame::new(code));
                        self.send(Control::frame(told)).await?;
                        tracing::info!(user = %self.user, device = %self.device, code = code.name(), "device no longer admitted; closing its session");
                        Err(Close::new(code))
                    }
                }
            }
            frame if attachments::is_attachment_frame(&frame) => {
                let answer = attachments::handle(&self.ctx, self.asker, frame).await;
                self.send(Control::frame(answer)).await
            }
            frame if push::is_push_frame(&frame) => {
                match push::handle(&self.ctx, self.asker, frame).await {
                    Some(answer) => self.send(Control::frame(answer)).await,
                    None => Ok(()),
                }
            }
            frame if conversations::is_conversation_frame(&frame) => {
                for answer in conversations::handle(&self.ctx, self.asker, frame).await {
                    self.send(Control::frame(answer)).await?;
                }
                Ok(())
            }
            people_frame => {
                let writes = !matches!(
                    people_frame,
                    ClientFrame::Whois { .. } | ClientFrame::ProfileFetch { .. }
                );
                let answer = if writes && !people::may_write(&self.ctx, self.asker) {
                    ServerFrame::Error(ErrorFrame::new(ErrorCode::RateLimited))
                } else {
                    self.people(people_frame).await
                };
                self.send(Control::frame(answer)).await
            }
        }
    }

    /// The people frames (see [`people`]): one answer each.
    async fn people(&self, frame: ClientFrame) -> ServerFrame {
        let (ctx, asker) = (&*self.ctx, self.asker);
        let change = |peer, change| people::change(ctx, asker, peer, change);
        match frame {
            ClientFrame::HandleSet { name } => people::set_handle(ctx, asker, name).await,
            ClientFrame::Whois { handle } => people::whois(ctx, asker, handle).await,
            ClientFrame::ContactRequest(intro) => {
                people::introduce(ctx, asker, &intro, false).await
            }
            ClientFrame::ContactAccept(intro) => people::introduce(ctx, asker, &intro, true).await,
            ClientFrame::ContactDecline { peer } => change(peer, ContactChange::Decline).await,
            ClientFrame::ContactCancel { peer } => change(peer, ContactChange::Cancel).await,
            ClientFrame::ContactRemove { peer } => change(peer, ContactChange::Remove).await,
            ClientFrame::Block { peer } => change(peer, ContactChange::Block).await,
            ClientFrame::Unblock { peer } => change(peer, ContactChange::Unblock).await,
            ClientFrame::ContactCard { peer, card } => {
                people::set_card(ctx, asker, peer, &card).await
            }
            ClientFrame::ProfileSet(profile) => people::set_profile(ctx, asker, &profile).await,
            ClientFrame::ProfileFetch { user } => people::profile(ctx, asker, user).await,
            ClientFrame::PresenceSet { visible } => people::set_presence(ctx, asker, visible).await,
            other => {
                tracing::error!(frame = ?other, "not a people frame");
                ServerFrame::Error(ErrorFrame::new(ErrorCode::Internal))
            }
        }
    }

    /// `UserChainFetch`: another user's chain in `UserChainLinks` pages, if this user may
    /// see it; one empty page otherwise (as for a user that does not exist).
    async fn user_chain(&self, user: UserId, after: u64) -> Result<(), Close> {
        let empty = ServerFrame::UserChainLinks {
            user,
            links: Vec::new(),
            more: false,
        };
        match self.ctx.store.chain_visible(self.user, user).await {
            Ok(true) => {}
            Ok(false) => return self.send(Control::frame(empty)).await,
            Err(e) => return self.storage_error(e).await,
        }
        let mut fetch = Fetch::new(user, after);
        loop {
            match fetch.next_page(&*self.ctx.store).await {
                Ok(Some(ServerFrame::ChainLinks { links, more })) => {
                    let page = ServerFrame::UserChainLinks { user, links, more };
                    self.send(Control::frame(page)).await?;
                }
                Ok(_) => return Ok(()),
                Err(e) => return self.storage_error(e).await,
            }
        }
    }

    async fn pairing_result(&self, result: Result<(), ErrorCode>) -> Result<(), Close> {
        match result {
            Ok(()) => Ok(()),
            Err(code) => self.error(ErrorFrame::new(code)).await,
        }
    }

    async fn send(&self, control: Control) -> Result<(), Close> {
        // The writer only goes away when the connection is ending anyway.
        self.control
            .send(control)
            .await
            .map_err(|_| Close::new(ErrorCode::Unavailable))
    }

    /// Writes the highest `Ack` not written yet.
    async fn write_ack(&mut self) -> Result<(), Close> {
        let seq = std::mem::take(&mut self.unwritten_ack);
        if seq == 0 {
            return Ok(());
        }
        match self.ctx.store.set_ack(self.user, self.device, seq).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // Kept for the next flush (the cursor only grows, so nothing is lost), and
                // not answered: an `Ack` has no answer, and an `Error` without `device_seq`
                // would be taken for the answer to the device's oldest request.
                tracing::warn!(error = %e, "could not store a cursor; trying again shortly");
                self.ctx.metrics.error(e.code());
                self.unwritten_ack = self.unwritten_ack.max(seq);
                Ok(())
            }
        }
    }

    /// Refuses an append; the answer goes out after the answers to earlier appends.
    async fn refuse(&self, device_seq: u64, code: ErrorCode) -> Result<(), Close> {
        self.send(Control::Refused { device_seq, code }).await
    }

    async fn error(&self, frame: ErrorFrame) -> Result<(), Close> {
        self.ctx.metrics.error(frame.code);
        self.send(Control::frame(ServerFrame::Error(frame))).await
    }

    async fn storage_error(&self, e: StoreError) -> Result<(), Close> {
        tracing::warn!(error = %e, "storage error in session");
        self.error(ErrorFrame::new(e.code())).await
    }
}

struct PendingAppend {
    device_seq: u64,
    answer: Answer,
}

/// How an append will be answered.
enum Answer {
    /// When its commit completes.
    Commit(oneshot::Receiver<Result<AppendOutcome, StoreError>>),
    /// Refused already; answered as soon as the appends before it are.
    Refused(ErrorCode),
}

struct Writer<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    send: SendHalf<ServerFrame>,
    ctx: Arc<Context>,
    user: UserId,
    device: DeviceId,
    peer: Arc<Peer>,
    delivered: u64,
    control: mpsc::Receiver<Control>,
    pending: VecDeque<PendingAppend>,
    /// Frames were written to the socket's buffer since the last flush.
    unflushed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<S> {
    async fn run(&mut self) {
        let close = match self.serve().await {
            Ok(close) | Err(close) => close,
        };
        Box::pin(self.close(close)).await;
    }

    /// Sends the close frame (bounded in time) and closes the socket.
    async fn close(&mut self, close: Close) {
        if let Some(code) = close.code {
            self.ctx.metrics.error(code);
        }
        if close.code.is_some() || !close.reason.is_empty() {
            let frame = close.frame();
            let timeout = self
                .ctx
                .config
                .limits
                .write_timeout()
                .min(Duration::from_secs(2));
            let _ =
                tokio::time::timeout(timeout, self.sink.send(Message::Close(Some(frame)))).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
    }

    /// Replays, then serves live traffic. Returns how to close.
    ///
    /// The writer's task lives as long as the connection and is sized by its largest state,
    /// so the catch-up and every step the loop awaits run boxed: an idle writer holds only
    /// the loop's own state (idle memory per connection, docs/benchmarks.md).
    async fn serve(&mut self) -> Result<Close, Close> {
        if let Some(close) = Box::pin(self.catch_up()).await? {
            return Ok(close);
        }
        let poll_every = Duration::from_millis(self.ctx.config.log.poll_interval_ms.max(10));
        let safety_every = Duration::from_secs(self.ctx.config.log.safety_poll_secs.max(1));
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_log_read = Instant::now();
        let mut last_device_check = Instant::now();
        let mut closing = self.peer.close_signal();
        let mut ending: Option<Close> = None;
        loop {
            if let Some(close) = &ending
                && self.pending.is_empty()
            {
                return Ok(close.clone());
            }
            tokio::select! {
                biased;
                code = async { closing.wait_for(Option::is_some).await.ok().and_then(|code| *code) } => {
                    let code = code.unwrap_or(ErrorCode::Unavailable);
                    if code == ErrorCode::DeviceRevoked {
                        return Ok(Box::pin(self.end_with(code)).await);
                    }
                    return Ok(Close::new(code));
                }
                (device_seq, settled) = next_reply(&mut self.pending) => {
                    self.pending.pop_front();
                    Box::pin(self.answer(device_seq, settled)).await?;
                }
                control = self.control.recv(), if ending.is_none() && self.pending.len() < MAX_IN_FLIGHT => {
                    match control {
                        Some(Control::Frame(frame)) => Box::pin(self.send_frame(&frame)).await?,
                        Some(Control::Commit { device_seq, reply }) => {
                            let answer = Answer::Commit(reply);
                            self.pending.push_back(PendingAppend { device_seq, answer });
                        }
                        Some(Control::Refused { device_seq, code }) => {
                            let answer = Answer::Refused(code);
                            self.pending.push_back(PendingAppend { device_seq, answer });
                        }
                        Some(Control::End(close)) => ending = Some(*close),
                        None => ending = Some(Close { code: None, reason: String::new() }),
                    }
                }
                frame = self.peer.direct().recv() => Box::pin(self.send_frame(&frame)).await?,
                _ = self.peer.woken() => {
                    if self.peer.take_recheck() {
                        last_device_check = Instant::now();
                        Box::pin(self.check_device()).await?;
                    }
                    Box::pin(self.deliver_live()).await?;
                }
                _ = poll.tick() => {
                    if !self.ctx.hub.bus_up() || last_log_read.elapsed() >= safety_every {
                        last_log_read = Instant::now();
                        Box::pin(self.deliver_from_log(false)).await?;
                    }
                    // Its own clock: while the bus is down the log is read at every tick, and
                    // a revocation published meanwhile is lost with the bus.
                    if self.peer.take_recheck() || last_device_check.elapsed() >= safety_every {
                        last_device_check = Instant::now();
                        Box::pin(self.check_device()).await?;
                    }
                }
                // Last, so only when nothing else is ready: the frames written since the last
                // flush go out together, one write for an answer burst or a page.
                () = std::future::ready(()), if self.unflushed => Box::pin(self.flush()).await?,
            }
        }
    }

    /// Re-checks the device, replays what it has not had and sends `CaughtUp`; returns the
    /// close when the device must resync instead.
    async fn catch_up(&mut self) -> Result<Option<Close>, Close> {
        // The session has joined the hub: a revocation stored from now on closes it. One
        // stored between the handshake's check and the join reached no session: look again,
        // in the same read as the log's bounds.
        let start = self
            .ctx
            .store
            .session_start(self.user, self.device)
            .await
            .map_err(storage_close)?;
        self.still_admitted(start.device.as_ref()).await?;
        let bounds = start.bounds;
        if self.delivered > bounds.head {
            // The device has seen events this log no longer has: the database was restored
            // from a backup, or failed over to a replica that lost its tail. New events would
            // reuse sequences the device has already seen, so it must start over.
            tracing::warn!(user = %self.user, cursor = self.delivered, head = bounds.head, "device cursor is ahead of the log; asking it to resync");
            return self.resync(bounds.earliest).await.map(Some);
        }
        if !bounds.covers(self.delivered) {
            return self.resync(bounds.earliest).await.map(Some);
        }
        // Nothing to replay (the common reconnect): no page to read. An event committed
        // after this read wakes the session, which joined the hub before it.
        if self.delivered < bounds.head {
            // Replays read pages from the database and hold them while the device reads:
            // only so many at once per node, the rest wait their turn.
            let ctx = Arc::clone(&self.ctx);
            let _turn = ctx
                .replays
                .acquire()
                .await
                .map_err(|_| Close::going_away())?;
            self.deliver_from_log(true).await?;
        }
        self.send_frame(&ServerFrame::CaughtUp {
            head: self.delivered,
        })
        .await?;
        Ok(None)
    }

    /// Re-reads the device's record: a device the chain no longer admits (revoked) ends the
    /// session with an encrypted `Error(203)`, then close code 4203.
    async fn check_device(&mut self) -> Result<(), Close> {
        let record = self
            .ctx
            .store
            .device(self.user, self.device)
            .await
            .map_err(storage_close)?;
        self.still_admitted(record.as_ref()).await
    }

    /// [`Self::check_device`] on a record read already.
    async fn still_admitted(&mut self, record: Option<&DeviceRecord>) -> Result<(), Close> {
        let code = match record {
            Some(record) if !record.is_revoked() => return Ok(()),
            Some(_) => ErrorCode::DeviceRevoked,
            None => ErrorCode::UnknownDevice,
        };
        tracing::info!(user = %self.user, device = %self.device, code = code.name(), "device no longer admitted; closing its session");
        Err(self.end_with(code).await)
    }

    /// Tells the device why its session ends inside the channel (where it can trust it, unlike
    /// a close code), and returns the close to end with.
    async fn end_with(&mut self, code: ErrorCode) -> Close {
        let _ = self
            .send_frame(&ServerFrame::Error(ErrorFrame::new(code)))
            .await;
        Close::new(code)
    }

    /// The user's log bounds now.
    async fn bounds(&self) -> Result<LogBounds, Close> {
        self.ctx
            .store
            .log_bounds(self.user)
            .await
            .map_err(storage_close)
    }

    /// Ends the session with `ResyncRequired { earliest }`: the device cannot continue from
    /// where it is without a gap (or, cursor ahead of the head, without repeats).
    async fn resync(&mut self, earliest: u64) -> Result<Close, Close> {
        self.send_frame(&ServerFrame::ResyncRequired { earliest })
            .await?;
        Ok(Close::new(ErrorCode::ResyncRequired))
    }

    /// Answers one append: `Appended`, or an error frame with the code it was refused with.
    async fn answer(
        &mut self,
        device_seq: u64,
        settled: Result<AppendOutcome, ErrorCode>,
    ) -> Result<(), Close> {
        if let Ok(AppendOutcome::Duplicate { .. }) = settled {
            self.ctx.metrics.duplicate_appends.inc();
        }
        let message = settled.ok().and_then(AppendOutcome::refusal_message);
        let (frame, revoked) = match settled.and_then(AppendOutcome::answer) {
            Ok(seq) => (ServerFrame::Appended { device_seq, seq }, false),
            Err(code) => {
                self.ctx.metrics.error(code);
                let error = match message {
                    Some(message) => ErrorFrame::with_message(code, message),
                    None => ErrorFrame::new(code),
                };
                let frame = ServerFrame::Error(error.for_append(device_seq));
                (frame, code == ErrorCode::DeviceRevoked)
            }
        };
        self.send_frame(&frame).await?;
        if revoked {
            // The store found the device inactive under the user's lock: the chain revoked it
            // (the hub's word may not have come, or not yet). Its session ends.
            return Err(Close::new(ErrorCode::DeviceRevoked));
        }
        Ok(())
    }

    /// Sends what the hub put in the inbox, or reads the log if that is not gapless.
    async fn deliver_live(&mut self) -> Result<(), Close> {
        let (mut events, overflowed) = self.peer.take();
        if overflowed {
            return self.deliver_from_log(false).await;
        }
        events.sort_by_key(|e| e.event.seq);
        let mut batch = Vec::new();
        let mut oldest: Option<Instant> = None;
        for live in events {
            let seq = live.event.seq;
            if seq <= self.delivered {
                continue;
            }
            if seq != self.delivered + 1 {
                // A wake-up we did not get (or not yet): the log has it.
                self.send_events(batch, false).await?;
                return self.deliver_from_log(false).await;
            }
            oldest.get_or_insert(live.committed_at);
            self.delivered = seq;
            batch.push(Arc::unwrap_or_clone(live.event));
        }
        let count = batch.len();
        self.send_events(batch, false).await?;
        if let Some(oldest) = oldest {
            let seconds = oldest.elapsed().as_secs_f64();
            for _ in 0..count {
                self.ctx.metrics.delivery_seconds.observe(seconds);
            }
        }
        Ok(())
    }

    /// Sends every stored event after `delivered`, a page at a time. Fails with a resync
    /// (never skips) when the log no longer continues right after `delivered`.
    async fn deliver_from_log(&mut self, replay: bool) -> Result<(), Close> {
        let page = self.ctx.config.log.replay_page.max(1) as usize;
        let page_bytes = self.ctx.config.log.replay_page_bytes;
        // The next page is read while this one is sealed and written: the store's read and
        // the socket's write overlap instead of taking turns.
        let (ctx, user) = (Arc::clone(&self.ctx), self.user);
        let read = |after: u64| {
            let ctx = &ctx;
            async move {
                ctx.store
                    .read_page(user, after, page, page_bytes)
                    .await
                    .map_err(storage_close)
            }
        };
        let mut events = read(self.delivered).await?;
        loop {
            let Some(last) = events.last().map(|e| e.seq) else {
                return Ok(());
            };
            if events[0].seq != self.delivered + 1 {
                // Retention removed what the device has not had yet.
                let bounds = self.bounds().await?;
                tracing::info!(user = %self.user, delivered = self.delivered, next = events[0].seq, "events trimmed under an open session; asking the device to resync");
                return Err(self.resync(bounds.earliest).await?);
            }
            // A page cut short by its byte budget is followed by more: read until one comes
            // back short of both budgets (at worst one empty read).
            let bytes: usize = events.iter().map(|e| e.payload.0.len()).sum();
            let more = events.len() == page || bytes.saturating_mul(2) >= page_bytes;
            self.delivered = last;
            let send = async {
                self.send_events(events, replay).await?;
                self.flush().await
            };
            if !more {
                return send.await;
            }
            let (sent, next) = tokio::join!(send, read(last));
            sent?;
            events = next?;
        }
    }

    async fn send_events(&mut self, events: Vec<Event>, replay: bool) -> Result<(), Close> {
        let counter = if replay {
            &self.ctx.metrics.replayed_events
        } else {
            &self.ctx.metrics.live_events
        };
        counter.inc_by(events.len() as u64);
        for frame in event_frames(events) {
            self.send_frame(&frame).await?;
        }
        Ok(())
    }

    /// Writes the frame to the socket's buffer: it goes out with the next flush (the serve
    /// loop flushes when nothing else is ready), or at once when the buffer passes the
    /// WebSocket's `write_buffer_size` (the server's `ws_config`).
    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), Close> {
        let bytes = self
            .send
            .seal(frame)
            .map_err(|e| Close::with_reason(ErrorCode::Internal, e.to_string()))?;
        self.unflushed = true;
        let timeout = self.ctx.config.limits.write_timeout();
        within(timeout, self.sink.feed(Message::Binary(bytes.into()))).await
    }

    /// Sends what [`Writer::send_frame`] buffered.
    async fn flush(&mut self) -> Result<(), Close> {
        self.unflushed = false;
        let timeout = self.ctx.config.limits.write_timeout();
        within(timeout, self.sink.flush()).await
    }
}

/// `write` (a feed or a flush of a session's sink), bounded by the write timeout: a device
/// that does not read is a slow consumer.
async fn within(
    timeout: Duration,
    write: impl Future<Output = Result<(), tokio_tungstenite::tungstenite::Error>>,
) -> Result<(), Close> {
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Close {
            code: None,
            reason: format!("write failed: {e}"),
        }),
        Err(_) => Err(Close::with_reason(
            ErrorCode::SlowConsumer,
            "write timed out",
        )),
    }
}

/// Waits for the oldest pending append's answer (forever when there is none): its outcome,
/// or the code it is refused with.
async fn next_reply(
    pending: &mut VecDeque<PendingAppend>,
) -> (u64, Result<AppendOutcome, ErrorCode>) {
    match pending.front_mut() {
        Some(PendingAppend {
            device_seq,
            answer: Answer::Commit(reply),
        }) => {
            let result = reply.await.unwrap_or(Err(StoreError::Closed));
            let settled = result.map_err(|e| {
                if !matches!(e, StoreError::EarlierRefused(_)) {
                    tracing::warn!(error = %e, "append failed");
                }
                e.code()
            });
            (*device_seq, settled)
        }
        Some(PendingAppend {
            device_seq,
            answer: Answer::Refused(code),
        }) => (*device_seq, Err(*code)),
        None => std::future::pending().await,
    }
}

fn storage_close(e: StoreError) -> Close {
    tracing::warn!(error = %e, "storage error while delivering");
    Close::with_reason(e.code(), e.code().description())
}

/// Packs events into `Events` frames that respect the frame size and count limits.
fn event_frames(events: Vec<Event>) -> Vec<ServerFrame> {
    // Per-event encoding overhead beyond the payload: ids, varints, lengths.
    const OVERHEAD: usize = 64;
    const BUDGET: usize = MAX_FRAME_LEN - 1024;
    let mut frames = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for event in events {
        let cost = event.payload.0.len() + OVERHEAD;
        if !current.is_empty() && (size + cost > BUDGET || current.len() == MAX_EVENTS_PER_FRAME) {
            frames.push(ServerFrame::Events(std::mem::take(&mut current)));
            size = 0;
        }
        size += cost;
        current.push(event);
    }
    if !current.is_empty() {
        frames.push(ServerFrame::Events(current));
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::SealedPayload;
    use ferry_protocol::codec;
    use ferry_protocol::limits::MAX_PAYLOAD_LEN;

    fn event(seq: u64, len: usize) -> Event {
        Event {
            seq,
            device: DeviceId([1; 32]),
            device_seq: seq,
            payload: SealedPayload(vec![0; len]),
        }
    }

    #[test]
    fn event_frames_fit_the_limits_and_keep_order() {
        let events: Vec<Event> = (1..=10)
            .map(|s| event(s, MAX_PAYLOAD_LEN))
            .chain((11..=9000).map(|s| event(s, 10)))
            .collect();
        let frames = event_frames(events);
        let mut next = 1;
        for frame in &frames {
            assert!(codec::encode(frame).len() <= MAX_FRAME_LEN);
            let ServerFrame::Events(events) = frame else {
                panic!()
            };
            assert!(events.len() <= MAX_EVENTS_PER_FRAME);
            for e in events {
                assert_eq!(e.seq, next);
                next += 1;
            }
        }
        assert_eq!(next, 9001);
        assert!(event_frames(Vec::new()).is_empty());
    }
}

/// Sizes of the session's long-lived futures and queue items, for the connection's test of
/// idle memory (`connection::tests`).
#[cfg(test)]
pub(super) mod sizes {
    use super::*;

    type Io = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

    fn future_of<A, F>(_: impl Fn(A) -> F) -> usize {
        size_of::<F>()
    }

    fn future_of_2<A, B, F>(_: impl Fn(A, B) -> F) -> usize {
        size_of::<F>()
    }

    /// The reader's loop (the connection's task awaits it for the session's whole life).
    pub fn reader_loop() -> usize {
        future_of_2(Reader::<Io>::run)
    }

    /// The writer's task: the writer and its `run` future.
    pub fn writer_task() -> usize {
        size_of::<Writer<Io>>() + future_of(Writer::<Io>::run)
    }

    /// One slot of the control queue (its first block holds 32 of them from the start).
    pub fn control_item() -> usize {
        size_of::<Control>()
    }
}
