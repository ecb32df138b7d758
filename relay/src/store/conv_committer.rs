//! Group commit for conversations: many member devices' sends and cursors, few transactions.
//!
//! ```text
//!  ConvCommitHandle::send ─┐                              ┌─▶ ConversationStore::send_batch
//!  ConvCommitHandle::ack  ─┼─▶ bounded mpsc ─▶ ConvCommitter ┤   (application messages: one tx)
//!  ConvCommitHandle::send ─┘   (queue_len)   drains ≤ max_batch └─▶ ConversationStore::ack_conversations
//! ```
//!
//! A message to a group of N devices costs the relay one stored row and N cursor writes
//! (each device acknowledges what it fetched). Written one by one, each is a durable commit
//! (an fsync on SQLite's single writer), and a busy group's acknowledgements queue behind
//! each other; so, as the log's committer does for appends:
//!
//! 1. The task takes the first queued request, then whatever else is already queued, up to
//!    `max_batch`, without waiting for more: under light load a batch is one request and
//!    adds no latency; under load batches grow while the previous one commits.
//! 2. Sends go to [`ConversationStore::send_batch`], which stores consecutive application
//!    messages (to any conversations) in one transaction and each commit or proposal in its
//!    own; every sender gets its own answer. A session sends one message at a time (it waits
//!    for the answer), so a device's messages keep their order.
//! 3. After the batch, [`ConvCommitConfig::on_stored`] is called once per conversation that
//!    grew, with its new head and member users: one `ConvHead` per member user and batch,
//!    however many messages the batch stored there. Then the senders are answered.
//! 4. Cursors (`ConvAck`, never answered) are merged, the highest per device and
//!    conversation, and written in one transaction after the batch's sends. A failed write
//!    is logged and its cursors are kept and written with the next batch, or after
//!    [`CURSOR_RETRY`]: a cursor only tells retention and receipts how far a device read,
//!    and it moves only forward, so a late write loses nothing.
//! 5. [`ConvCommitHandle::shutdown`] stops intake, commits everything queued, answers every
//!    sender, writes the cursors, and returns once the task has stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_protocol::conversations::ConvId;
use ferry_protocol::{DeviceId, UserId};
use tokio::sync::{mpsc, oneshot, watch};

use super::conversations::{ConvCursor, ConvSendRequest, SendOutcome};
use super::{Store, StoreError};
use crate::context::now_ms;

/// How long cursors whose write failed wait before the next attempt when nothing else comes.
pub const CURSOR_RETRY: Duration = Duration::from_secs(1);

/// Called once per conversation a batch stored messages in: its new head and member users.
/// It runs on the committer task before the senders are answered: quick, never blocking.
pub type StoredHook = Arc<dyn Fn(ConvId, u64, &[UserId], &[DeviceId]) + Send + Sync>;

/// Called after every batch of sends with its size and duration (metrics).
pub type ConvBatchObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

/// Settings of the conversation committer.
#[derive(Clone)]
pub struct ConvCommitConfig {
    /// Most requests (sends and cursors) taken into one batch (at least 1).
    pub max_batch: usize,
    /// Capacity of the queue in front of the committer (at least 1).
    pub queue_len: usize,
    /// Wakes the members of conversations that grew.
    pub on_stored: Option<StoredHook>,
    /// Sees every batch of sends.
    pub observer: Option<ConvBatchObserver>,
}

impl Default for ConvCommitConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            queue_len: 4096,
            on_stored: None,
            observer: None,
        }
    }
}

impl std::fmt::Debug for ConvCommitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvCommitConfig")
            .field("max_batch", &self.max_batch)
            .field("queue_len", &self.queue_len)
            .finish_non_exhaustive()
    }
}

type Reply = oneshot::Sender<Result<SendOutcome, StoreError>>;

enum Command {
    Send(ConvSendRequest, Reply),
    Ack(ConvCursor),
    /// Commit everything queued, then stop.
    Shutdown,
}

/// A clonable handle to the conversation committer.
#[derive(Clone, Debug)]
pub struct ConvCommitHandle {
    queue: mpsc::Sender<Command>,
    stopped: watch::Receiver<bool>,
}

impl ConvCommitHandle {
    /// Stores one message (in a batch with others'); its answer, as
    /// [`ConversationStore::send`](super::ConversationStore::send) gives it.
    pub async fn send(&self, request: ConvSendRequest) -> Result<SendOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Command::Send(request, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a cursor to be written with the next batch (waits only for room in the queue).
    pub async fn ack(&self, cursor: ConvCursor) -> Result<(), StoreError> {
        self.queue
            .send(Command::Ack(cursor))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Stops intake, commits what is queued, and waits until the task has stopped.
    pub async fn shutdown(&self) {
        let _ = self.queue.send(Command::Shutdown).await;
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }
}

/// The task: owns the queue's receiving end.
pub struct ConvCommitter {
    store: Arc<dyn Store>,
    queue: mpsc::Receiver<Command>,
    config: ConvCommitConfig,
    /// Cursors not written yet: the highest per conversation and device.
    cursors: BTreeMap<(ConvId, DeviceId), u64>,
    stopped: watch::Sender<bool>,
}

impl std::fmt::Debug for ConvCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvCommitter")
            .field("config", &self.config)
            .field("cursors", &self.cursors.len())
            .finish_non_exhaustive()
    }
}

impl ConvCommitter {
    /// Starts the task on the current Tokio runtime and returns its handle.
    ///
    /// # Panics
    ///
    /// Panics if called outside a Tokio runtime (like `tokio::spawn`).
    pub fn spawn(store: Arc<dyn Store>, config: ConvCommitConfig) -> ConvCommitHandle {
        let (queue_tx, queue_rx) = mpsc::channel(config.queue_len.max(1));
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let committer = Self {
            store,
            queue: queue_rx,
            config,
            cursors: BTreeMap::new(),
            stopped: stopped_tx,
        };
        tokio::spawn(committer.run());
        ConvCommitHandle {
            queue: queue_tx,
            stopped: stopped_rx,
        }
    }

    async fn run(mut self) {
        let max_batch = self.config.max_batch.max(1);
        let mut sends = Vec::with_capacity(max_batch);
        let mut stopping = false;
        while !stopping {
            let first = if self.cursors.is_empty() {
                self.queue.recv().await
            } else {
                // Cursors wait for a retry: come back after a while even if nothing comes.
                match tokio::time::timeout(CURSOR_RETRY, self.queue.recv()).await {
                    Ok(command) => command,
                    Err(_) => {
                        self.write_cursors().await;
                        continue;
                    }
                }
            };
            let Some(first) = first else {
                break;
            };
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(command) = next.take() {
                taken += 1;
                match command {
                    Command::Send(request, reply) => sends.push((request, reply)),
                    Command::Ack(cursor) => self.merge(cursor),
                    Command::Shutdown => {
                        stopping = true;
                        break;
                    }
                }
                if taken < max_batch {
                    next = self.queue.try_recv().ok();
                }
            }
            self.commit(&mut sends).await;
            self.write_cursors().await;
        }
        // Shutting down (or every handle is gone): refuse new requests, then commit what is
        // still queued so that every sender gets an answer.
        self.queue.close();
        while let Some(command) = self.queue.recv().await {
            match command {
                Command::Send(request, reply) => sends.push((request, reply)),
                Command::Ack(cursor) => self.merge(cursor),
                Command::Shutdown => {}
            }
            if sends.len() >= max_batch {
                self.commit(&mut sends).await;
            }
        }
        self.commit(&mut sends).await;
        self.write_cursors().await;
        self.stopped.send_replace(true);
    }

    fn merge(&mut self, cursor: ConvCursor) {
        let seq = self
            .cursors
            .entry((cursor.conv, cursor.device))
            .or_default();
        *seq = (*seq).max(cursor.seq);
    }

    /// Stores a batch of sends, wakes the members, answers the senders; empties `sends`.
    async fn commit(&self, sends: &mut Vec<(ConvSendRequest, Reply)>) {
        if sends.is_empty() {
            return;
        }
        let (requests, replies): (Vec<_>, Vec<_>) = sends.drain(..).unzip();
        let started = Instant::now();
        let mut answers = self.store.send_batch(&requests, now_ms()).await;
        if answers.len() != requests.len() {
            let error = StoreError::Corrupt(format!(
                "{} answers for {} conversation messages",
                answers.len(),
                requests.len()
            ));
            answers = requests.iter().map(|_| Err(error.clone())).collect();
        }
        if let Some(observer) = &self.config.observer {
            observer(requests.len(), started.elapsed());
        }
        if let Some(on_stored) = &self.config.on_stored {
            for (conv, (head, members, senders)) in grown(&requests, &answers) {
                on_stored(conv, head, members, &senders);
            }
        }
        // A sender that gave up (connection closed) no longer listens: ignore it.
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }

    /// Writes the merged cursors; keeps them for the next attempt if that fails.
    async fn write_cursors(&mut self) {
        if self.cursors.is_empty() {
            return;
        }
        let cursors: Vec<ConvCursor> = self
            .cursors
            .iter()
            .map(|(&(conv, device), &seq)| ConvCursor { conv, device, seq })
            .collect();
        match self.store.ack_conversations(&cursors).await {
            Ok(()) => self.cursors.clear(),
            Err(error) => {
                tracing::warn!(%error, cursors = cursors.len(), "conversation cursors not written; retrying");
            }
        }
    }
}

/// The conversations the batch stored messages in: the highest position stored in each, and
/// its member users as the last of them left it.
/// Per conversation that grew: its new head, its member users, and the devices that sent
/// to it in the batch.
fn grown<'a>(
    requests: &[ConvSendRequest],
    answers: &'a [Result<SendOutcome, StoreError>],
) -> BTreeMap<ConvId, (u64, &'a [UserId], Vec<DeviceId>)> {
    let mut grown: BTreeMap<ConvId, (u64, &[UserId], Vec<DeviceId>)> = BTreeMap::new();
    for (request, answer) in requests.iter().zip(answers) {
        if let Ok(SendOutcome::Stored {
            conv_seq, members, ..
        }) = answer
        {
            let entry = grown
                .entry(request.send.conv)
                .or_insert((*conv_seq, members, Vec::new()));
            if *conv_seq >= entry.0 {
                (entry.0, entry.1) = (*conv_seq, members);
            }
            if !entry.2.contains(&request.device) {
                entry.2.push(request.device);
            }
        }
    }
    grown
}
