//! Group commit: many connections' appends, one transaction.
//!
//! ```text
//!  CommitHandle::append ─┐                         ┌─▶ oneshot: Ok(AppendOutcome) / Err
//!  CommitHandle::append ─┼─▶ bounded mpsc ─▶ Committer task ─▶ Store::append_batch (1 tx)
//!  CommitHandle::append ─┘   (queue_len)     drains ≤ max_batch
//! ```
//!
//! 1. A connection task calls [`CommitHandle::append`] (or [`CommitHandle::submit`] to
//!    pipeline: queue now, await the answer later); the request goes into a bounded queue
//!    (a full queue makes callers wait: back-pressure, not unbounded memory).
//! 2. The single [`Committer`] task (on a thread of its own: [`Committer::spawn`]) takes the
//!    first queued request, then whatever else is already queued, up to `max_batch`, without
//!    waiting for more: under light load a batch is one event and adds no latency; under
//!    heavy load batches grow while the previous commit is running.
//! 3. It commits the batch with [`LogStore::append_batch`](crate::store::LogStore::append_batch) in one transaction, hands the new
//!    events to the `on_committed` hook (live delivery, wake-ups), then answers each caller.
//!    If the commit fails every caller of that batch gets the error: nothing is reported as
//!    committed that was not. (A commit whose outcome is unknown, such as a connection lost
//!    during COMMIT, is reported as failed; the client's retry with the same `device_seq`
//!    then gets the original sequence.)
//! 4. [`CommitHandle::shutdown`] stops intake, commits everything already queued, answers
//!    every waiter, and returns once the task has stopped.
//! 5. **One device's appends commit in the order it sent them.** A session submits through
//!    [`CommitHandle::submit_in_order`] with its [`AppendOrder`]. When a batch fails, every
//!    session in it is marked: its appends still queued behind the failed one are refused
//!    ([`StoreError::EarlierRefused`]) instead of committing ahead of it, and the session
//!    refuses its next appends until the failed one is sent again ([`AppendOrder::admit`]).
//!    An append refused by the store with a retryable outcome (`QuotaExceeded`, `StaleEpoch`)
//!    holds the session back the same way.
//! 6. **Uncertain outcomes wake the user.** A failed batch may have committed (a COMMIT
//!    whose reply was lost), and a `Duplicate` answer means an earlier attempt committed
//!    whose wake-up may never have gone out; the `on_uncertain` hook gets those users, so
//!    live devices read the log instead of waiting for the safety poll.
//!
//! `max_batch = 1` gives one transaction per event, for comparison in benchmarks. Dropping
//! the future returned by `append` does not withdraw a request that is already queued: it
//! is still committed, only its answer is lost (appends are idempotent, so that is safe).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_protocol::{ErrorCode, Event, UserId};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    AppendOutcome, AppendRequest, Store, StoreError, batch_users, check_device_seq, distinct_users,
};
use crate::sync::lock;

/// Called after every batch commit attempt (for metrics); must be quick and not block.
pub type BatchObserver = Arc<dyn Fn(&BatchReport) + Send + Sync>;

/// Called after each successful commit, once per user that got new events, with those events
/// in sequence order (for live delivery and wake-ups). Duplicates and conflicts are not
/// included. It runs on the committer task before the appenders are answered: it must be
/// quick and never block.
pub type CommittedHook = Arc<dyn Fn(UserId, Vec<Event>) + Send + Sync>;

/// Called with each user whose log may have grown without a wake-up: the users of a failed
/// batch (it may have committed) and of `Duplicate` answers. Must be quick and never block.
pub type UncertainHook = Arc<dyn Fn(UserId) + Send + Sync>;

/// Where the outcome of a [`CommitHandle::submit`] arrives.
pub type CommitReply = oneshot::Receiver<Result<AppendOutcome, StoreError>>;

/// Settings of the group committer.
#[derive(Clone)]
pub struct CommitConfig {
    /// Most events in one transaction (at least 1; 1 means one transaction per event).
    pub max_batch: usize,
    /// Capacity of the queue in front of the committer (at least 1).
    pub queue_len: usize,
    /// Optional hook called after each batch attempt (metrics).
    pub observer: Option<BatchObserver>,
    /// Optional hook called with the new events of each committed batch.
    pub on_committed: Option<CommittedHook>,
    /// Optional hook called with users whose log may have grown without a wake-up.
    pub on_uncertain: Option<UncertainHook>,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            queue_len: 4096,
            observer: None,
            on_committed: None,
            on_uncertain: None,
        }
    }
}

impl std::fmt::Debug for CommitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitConfig")
            .field("max_batch", &self.max_batch)
            .field("queue_len", &self.queue_len)
            .field("observer", &self.observer.as_ref().map(|_| "Fn"))
            .field("on_committed", &self.on_committed.as_ref().map(|_| "Fn"))
            .field("on_uncertain", &self.on_uncertain.as_ref().map(|_| "Fn"))
            .finish()
    }
}

/// One batch commit attempt, as reported to a [`BatchObserver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchReport {
    /// Events in the batch.
    pub len: usize,
    /// Time spent in `append_batch`.
    pub elapsed: Duration,
    /// Whether it committed.
    pub ok: bool,
}

/// A snapshot of the committer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Batches committed.
    pub batches: u64,
    /// Append requests answered from committed batches (new events, duplicates, conflicts).
    pub events: u64,
    /// Batches whose commit failed.
    pub failed_batches: u64,
    /// Size of the last batch attempted.
    pub last_batch_len: u64,
    /// Duration of the last batch attempted, in microseconds.
    pub last_batch_micros: u64,
    /// Requests waiting in the queue right now.
    pub queued: usize,
}

/// A clonable handle to the committer task.
#[derive(Clone, Debug)]
pub struct CommitHandle {
    queue: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// The committer task: owns the queue's receiving end and the store.
pub struct Committer {
    store: Arc<dyn Store>,
    queue: mpsc::Receiver<Command>,
    max_batch: usize,
    observer: Option<BatchObserver>,
    on_committed: Option<CommittedHook>,
    on_uncertain: Option<UncertainHook>,
    shared: Arc<Shared>,
    stopped: watch::Sender<bool>,
}

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

/// Keeps one session's appends in the order they were sent (step 5 of the module docs).
#[derive(Debug, Default)]
pub struct AppendOrder {
    /// Raised by every failed batch holding one of the session's appends: appends submitted
    /// under an older generation and still queued are refused.
    generation: AtomicU64,
    /// The lowest refused `device_seq` not yet sent again, and the code it was refused with.
    refused: Mutex<Option<(u64, ErrorCode)>>,
}

impl AppendOrder {
    /// A fresh order (nothing refused).
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Decides on an append arriving from the session: `Err(code)` while an earlier append
    /// was refused with `code` and this is not it (or an even earlier one) sent again.
    ///
    /// The [`Admission`] records the generation seen under the same lock as the decision, so
    /// a batch that fails after this call, and before the append is submitted, still
    /// refuses it: it can never commit ahead of the failed one.
    pub fn admit(&self, device_seq: u64) -> Result<Admission, ErrorCode> {
        let mut refused = lock(&self.refused);
        match *refused {
            Some((from, _)) if device_seq <= from => *refused = None,
            Some((_, code)) => return Err(code),
            None => {}
        }
        Ok(Admission(self.generation()))
    }

    /// An append was refused with a retryable `code` (rate limit, failed batch): later ones
    /// are refused with it too until it is sent again.
    pub fn refuse(&self, device_seq: u64, code: ErrorCode) {
        Self::record(&mut lock(&self.refused), device_seq, code);
    }

    fn record(refused: &mut Option<(u64, ErrorCode)>, device_seq: u64, code: ErrorCode) {
        *refused = Some(match *refused {
            Some((from, code)) if from <= device_seq => (from, code),
            _ => (device_seq, code),
        });
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Refuses `device_seq` and everything of the session already queued or admitted behind
    /// it (the generation moves under the lock [`AppendOrder::admit`] decides under).
    fn refuse_queued(&self, device_seq: u64, code: ErrorCode) {
        let mut refused = lock(&self.refused);
        Self::record(&mut refused, device_seq, code);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The code later appends are refused with (Unavailable when none is recorded).
    fn refused_code(&self) -> ErrorCode {
        lock(&self.refused).map_or(ErrorCode::Unavailable, |(_, code)| code)
    }
}

/// One append's admission by its session's [`AppendOrder`]: pass it to
/// [`CommitHandle::submit_in_order`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission(u64);

/// An append's place in its session's order: the order and the generation it was admitted in.
type Ordered = Option<(Arc<AppendOrder>, u64)>;

enum Command {
    Append(AppendRequest, Reply, Ordered),
    /// Commit everything queued, then stop.
    Shutdown,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("store", &self.store)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

/// State shared by the handles and the task.
#[derive(Debug)]
struct Shared {
    closing: AtomicBool,
    stopped: watch::Receiver<bool>,
    batches: AtomicU64,
    events: AtomicU64,
    failed_batches: AtomicU64,
    last_batch_len: AtomicU64,
    last_batch_micros: AtomicU64,
}

impl Committer {
    /// Starts the committer on a thread of its own and returns its handle.
    ///
    /// The thread runs a single-threaded Tokio runtime for the committer alone, so the
    /// database's answer to each statement of a batch wakes it at once, instead of waiting
    /// behind the connections' tasks in a busy worker's run queue (on PostgreSQL that wait
    /// was about half of a batch's time under load: `docs/benchmarks.md`, seventh round).
    /// Should the thread not start, the committer runs as a task of the current runtime.
    ///
    /// # Panics
    ///
    /// Panics if the thread does not start and this is called outside a Tokio runtime.
    pub fn spawn(store: Arc<dyn Store>, config: CommitConfig) -> CommitHandle {
        let (queue_tx, queue_rx) = mpsc::channel(config.queue_len.max(1));
        let (stopped_tx, stopped_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            closing: AtomicBool::new(false),
            stopped: stopped_rx,
            batches: AtomicU64::new(0),
            events: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            last_batch_len: AtomicU64::new(0),
            last_batch_micros: AtomicU64::new(0),
        });
        let committer = Self {
            store,
            queue: queue_rx,
            max_batch: config.max_batch.max(1),
            observer: config.observer,
            on_committed: config.on_committed,
            on_uncertain: config.on_uncertain,
            shared: Arc::clone(&shared),
            stopped: stopped_tx,
        };
        if let Err(error) = on_own_thread("ferry-committer", committer.run()) {
            tracing::warn!(%error, "the committer's thread did not start; it runs as a task");
            tokio::spawn(error.future);
        }
        CommitHandle {
            queue: queue_tx,
            shared,
        }
    }

    async fn run(mut self) {
        let mut batch = Batch::with_capacity(self.max_batch);
        let mut stopping = false;
        while !stopping {
            let Some(first) = self.queue.recv().await else {
                break;
            };
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append(request, reply, order) => batch.push(request, reply, order),
                    Command::Shutdown => {
                        stopping = true;
                        break;
                    }
                }
                if batch.len() < self.max_batch {
                    next = self.queue.try_recv().ok();
                }
            }
            self.commit(&mut batch).await;
        }
        // Shutting down (or every handle is gone): refuse new requests, then commit what
        // is still queued so that every waiter gets an answer.
        self.queue.close();
        while let Some(command) = self.queue.recv().await {
            if let Command::Append(request, reply, order) = command {
                batch.push(request, reply, order);
                if batch.len() >= self.max_batch {
                    self.commit(&mut batch).await;
                }
            }
        }
        self.commit(&mut batch).await;
        tracing::debug!(backend = self.store.backend(), "committer stopped");
        self.stopped.send_replace(true);
    }

    /// Commits one batch and answers its callers; leaves the batch empty.
    async fn commit(&self, batch: &mut Batch) {
        let Batch {
            requests,
            replies,
            orders,
        } = batch;
        if requests.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = self.store.append_batch(requests, unix_millis()).await;
        let elapsed = started.elapsed();
        let len = requests.len();
        let result = result.and_then(|outcomes| {
            if outcomes.len() == len {
                Ok(outcomes)
            } else {
                Err(StoreError::Corrupt(format!(
                    "{} outcomes for {len} appends",
                    outcomes.len()
                )))
            }
        });
        let ok = result.is_ok();
        let shared = &self.shared;
        shared.last_batch_len.store(len as u64, Ordering::Relaxed);
        shared.last_batch_micros.store(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match result {
            Ok(outcomes) => {
                shared.batches.fetch_add(1, Ordering::Relaxed);
                shared.events.fetch_add(len as u64, Ordering::Relaxed);
                // Wake-ups first, so that by the time a sender hears "appended" the other
                // devices are already being told.
                if let Some(on_uncertain) = &self.on_uncertain {
                    let duplicates = requests.iter().zip(&outcomes).filter_map(|(r, o)| {
                        matches!(o, AppendOutcome::Duplicate { .. }).then_some(r.user)
                    });
                    distinct_users(duplicates)
                        .into_iter()
                        .for_each(|u| on_uncertain(u));
                }
                // A device over its user's quota, or sealing under a replaced epoch: what it
                // queued behind stays behind until the refused append is sent again.
                for ((request, order), outcome) in
                    requests.iter().zip(orders.drain(..)).zip(&outcomes)
                {
                    if let (
                        Some((order, _)),
                        AppendOutcome::QuotaExceeded | AppendOutcome::StaleEpoch { .. },
                    ) = (order, outcome)
                        && let Err(code) = outcome.answer()
                    {
                        order.refuse_queued(request.device_seq, code);
                    }
                }
                if let Some(on_committed) = &self.on_committed {
                    for (user, events) in new_events_by_user(requests.drain(..), &outcomes) {
                        on_committed(user, events);
                    }
                }
                // A caller that gave up (connection closed) no longer listens: ignore it.
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(backend = self.store.backend(), batch = len, %error, "group commit failed");
                // Keep each session's order: what it queued behind these must not commit
                // first (module docs, step 5).
                for (request, order) in requests.iter().zip(orders.drain(..)) {
                    if let Some((order, _)) = order {
                        order.refuse_queued(request.device_seq, error.code());
                    }
                }
                // It may have committed all the same: let the users' devices look.
                if let Some(on_uncertain) = &self.on_uncertain {
                    batch_users(requests)
                        .into_iter()
                        .for_each(|u| on_uncertain(u));
                }
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        requests.clear();
        if let Some(observer) = &self.observer {
            observer(&BatchReport { len, elapsed, ok });
        }
    }
}

/// Why [`on_own_thread`] could not start: the future, to run elsewhere.
struct NotStarted<F> {
    future: F,
    reason: std::io::Error,
}

impl<F> std::fmt::Display for NotStarted<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.reason.fmt(f)
    }
}

/// Runs `future` to its end on a new thread named `name`, in a single-threaded Tokio runtime
/// of its own (timers and I/O enabled: what the future opens there is driven there).
fn on_own_thread<F>(name: &str, future: F) -> Result<(), NotStarted<F>>
where
    F: Future<Output = ()> + Send + 'static,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(reason) => return Err(NotStarted { future, reason }),
    };
    // The future comes back if the thread does not start.
    let slot = Arc::new(Mutex::new(Some(future)));
    let on_thread = Arc::clone(&slot);
    let started = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if let Some(future) = lock(&on_thread).take() {
                runtime.block_on(future);
            }
        });
    match started {
        Ok(_) => Ok(()),
        Err(reason) => match lock(&slot).take() {
            Some(future) => Err(NotStarted { future, reason }),
            None => Ok(()),
        },
    }
}

/// The appends of one batch, with where to answer them and their sessions' orders.
struct Batch {
    requests: Vec<AppendRequest>,
    replies: Vec<Reply>,
    orders: Vec<Ordered>,
}

impl Batch {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            requests: Vec::with_capacity(capacity),
            replies: Vec::with_capacity(capacity),
            orders: Vec::with_capacity(capacity),
        }
    }

    fn len(&self) -> usize {
        self.requests.len()
    }

    /// Adds an append, or refuses it at once if an earlier append of its session failed
    /// after it was queued.
    fn push(&mut self, request: AppendRequest, reply: Reply, order: Ordered) {
        if let Some((order, generation)) = &order
            && order.generation() != *generation
        {
            let _ = reply.send(Err(StoreError::EarlierRefused(order.refused_code())));
            return;
        }
        self.requests.push(request);
        self.replies.push(reply);
        self.orders.push(order);
    }
}

/// The events a committed batch added, grouped by user in order of first appearance, each
/// user's in sequence order. Payloads are moved, not copied.
fn new_events_by_user(
    requests: impl Iterator<Item = AppendRequest>,
    outcomes: &[AppendOutcome],
) -> Vec<(UserId, Vec<Event>)> {
    let mut by_user: Vec<(UserId, Vec<Event>)> = Vec::new();
    for (request, outcome) in requests.zip(outcomes) {
        let AppendOutcome::Appended { seq } = *outcome else {
            continue;
        };
        let event = Event {
            seq,
            device: request.device,
            device_seq: request.device_seq,
            payload: request.payload,
        };
        match by_user.iter_mut().find(|(user, _)| *user == request.user) {
            Some((_, events)) => events.push(event),
            None => by_user.push((request.user, vec![event])),
        }
    }
    by_user
}

impl CommitHandle {
    /// Queues one append and waits until its batch is committed (or failed).
    ///
    /// Fails at once with [`StoreError::InvalidSequence`] for a `device_seq` the store would
    /// refuse (so one bad request cannot fail a whole batch), and with [`StoreError::Closed`]
    /// once shutdown has begun.
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let reply = self.submit(request).await?;
        // The reply is dropped unanswered only if the committer task died.
        reply.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Queues one append and returns as soon as it is queued; the returned receiver gets its
    /// outcome once the batch commits (or fails).
    ///
    /// Appends submitted one after another from one task are committed in that order, so a
    /// connection can pipeline its appends and await the answers in order. Errors as for
    /// [`CommitHandle::append`]. A receiver that reports the sender dropped means the
    /// committer task died: treat it as [`StoreError::Closed`].
    pub async fn submit(&self, request: AppendRequest) -> Result<CommitReply, StoreError> {
        self.enqueue(request, None).await
    }

    /// [`CommitHandle::submit`] for a session that keeps its appends in order: if a batch
    /// holding an earlier append of `order` fails, this one is refused rather than committed
    /// ahead of it (module docs, step 5). `admission` is what [`AppendOrder::admit`] gave for
    /// this append.
    pub async fn submit_in_order(
        &self,
        request: AppendRequest,
        order: &Arc<AppendOrder>,
        admission: Admission,
    ) -> Result<CommitReply, StoreError> {
        self.enqueue(request, Some((Arc::clone(order), admission.0)))
            .await
    }

    async fn enqueue(
        &self,
        request: AppendRequest,
        order: Ordered,
    ) -> Result<CommitReply, StoreError> {
        check_device_seq(request.device_seq)?;
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Command::Append(request, reply, order))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(answer)
    }

    /// Stops intake, commits everything queued, answers every waiter and waits for the
    /// committer task to stop. Safe to call from several handles and more than once.
    pub async fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Release);
        // Ends up behind everything already queued; fails only if the task is gone.
        let _ = self.queue.send(Command::Shutdown).await;
        let mut stopped = self.shared.stopped.clone();
        // An error means the task is gone without saying so: stopped all the same.
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }

    /// Whether the committer task has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.shared.stopped.borrow() || self.queue.is_closed()
    }

    /// A snapshot of the counters (for metrics).
    pub fn stats(&self) -> CommitStats {
        let shared = &self.shared;
        CommitStats {
            batches: shared.batches.load(Ordering::Relaxed),
            events: shared.events.load(Ordering::Relaxed),
            failed_batches: shared.failed_batches.load(Ordering::Relaxed),
            last_batch_len: shared.last_batch_len.load(Ordering::Relaxed),
            last_batch_micros: shared.last_batch_micros.load(Ordering::Relaxed),
            queued: self.queue.max_capacity() - self.queue.capacity(),
        }
    }
}

/// Wall-clock Unix milliseconds: the commit time recorded for age retention.
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}
