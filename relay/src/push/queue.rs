//! The wake-up pipeline of a relay node: what the relay stored ([`Pusher::wake`]: log
//! appends, conversation messages, a call ringing) becomes at most one pending wake-up per
//! device in the store, and a sender loop sends what is due.
//!
//! ```text
//!  committers, ConvWake ─wake(users, except, urgent)─▶ bounded channel (full: dropped, counted)
//!    intake task, every INTAKE_INTERVAL: PushStore::queue_wake_ups (coalesced per device)
//!    sender task, every SEND_INTERVAL or when woken (a call queued, message wake-ups or
//!    deferred ones falling due): PushStore::claim_wake_ups (leased)
//!      each wake-up in a task of its own (at most `concurrency`, and PER_ORIGIN_SENDS per
//!      push service, beyond which a wake-up is deferred a moment: one stuck service never
//!      holds the others up):
//!        a message wake-up for a device that read everything since: dropped (it is online)
//!        Web Push ─▶ 201: done · 404/410: target removed · 429/5xx/timeout: retried later
//!                    (backoff with jitter, Retry-After honoured) · other 4xx: given up
//! ```
//!
//! A wake-up carries `{"v":1,"kind":"message"}` or `{"v":1,"kind":"call"}`: no sender, no
//! conversation, no content. Push is a hint; the log and the conversations are the truth.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::{DeviceId, UserId};
use rand_core::{OsRng, RngCore};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use super::sender::{SendOutcome, Sender, Urgency};
use super::web_push::{self, Subscription};
use crate::context::now_ms;
use crate::metrics::Metrics;
use crate::store::{PushKind, Store, WakeUp};

/// How often queued wake-ups are written to the store (one statement per batch).
const INTAKE_INTERVAL: Duration = Duration::from_millis(100);
/// How often the sender looks for due wake-ups when nothing wakes it.
const SEND_INTERVAL: Duration = Duration::from_millis(500);
/// Wake-ups claimed at once.
const CLAIM_LIMIT: u32 = 64;
/// Sends to one push service (origin) at once on this node: half the default concurrency,
/// so a stuck service leaves the other half to the others.
pub const PER_ORIGIN_SENDS: usize = 32;
/// A wake-up for a push service at its limit is claimed again after this long (others go
/// first meanwhile).
const BUSY_DEFERRAL: Duration = Duration::from_millis(250);
/// Wake-up requests waiting for the intake task.
const CHANNEL_LEN: usize = 8192;
/// The Web Push topic: a newer wake-up replaces an undelivered older one at the push service.
const TOPIC: &str = "ferry";
/// How long a push service keeps a wake-up for an unreachable device.
const MESSAGE_TTL_SECS: u32 = 24 * 3600;
/// A call's wake-up is worthless once the ringing is over.
const CALL_TTL_SECS: u32 = 60;

/// What the pipeline needs to know.
#[derive(Clone, Debug)]
pub struct PushSettings {
    /// A message wake-up is sent this long after what caused it, unless the device read
    /// everything meanwhile (a device with a session acknowledges sooner).
    pub delay: Duration,
    /// Sends in flight on this node.
    pub concurrency: usize,
    /// Wake-ups pending in the store at most; beyond, new ones are dropped (counted).
    pub max_queued: u64,
    /// Attempts before a wake-up is given up.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt (with jitter), at most `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(2),
            concurrency: 64,
            max_queued: 1_000_000,
            max_attempts: 8,
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
        }
    }
}

/// A request to wake devices.
struct Wake {
    users: Vec<UserId>,
    except: Vec<DeviceId>,
    urgent: bool,
}

/// The handle the rest of the relay wakes devices with.
#[derive(Clone)]
pub struct Pusher {
    intake: mpsc::Sender<Wake>,
    metrics: Arc<Metrics>,
    /// Set when the relay shuts down: both tasks stop (what is queued stays in the store).
    stop: Arc<watch::Sender<bool>>,
    /// Whether APNs targets can be woken (the relay has an APNs key).
    apns: bool,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher").finish_non_exhaustive()
    }
}

impl Pusher {
    /// Starts the intake and sender tasks; they stop at [`Pusher::stop`], or when every
    /// `Pusher` is dropped.
    pub fn start(
        store: Arc<dyn Store>,
        sender: Sender,
        settings: PushSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (intake, requests) = mpsc::channel(CHANNEL_LEN);
        let apns = sender.apns().is_some();
        let due = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(until_stopped(
            stopped.clone(),
            run_intake(
                Arc::clone(&store),
                requests,
                settings.clone(),
                Arc::clone(&metrics),
                Arc::clone(&due),
            ),
        ));
        tokio::spawn(until_stopped(
            stopped,
            run_sender(
                store,
                Arc::new(sender),
                settings,
                Arc::clone(&metrics),
                due,
                intake.downgrade(),
            ),
        ));
        Self {
            intake,
            metrics,
            stop: Arc::new(stop),
            apns,
        }
    }

    /// Whether APNs targets can be woken (the relay has an APNs key).
    pub fn has_apns(&self) -> bool {
        self.apns
    }

    /// Stops sending (the relay shuts down): wake-ups not sent yet stay in the store for
    /// the next relay; sends under way finish or time out on their own.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Wakes the devices of `users` that have a push target, except `except` (the devices
    /// that caused it, which are online). Never waits: when the pipeline is full the
    /// wake-up is dropped and counted (push is a hint).
    pub fn wake(&self, users: &[UserId], except: &[DeviceId], urgent: bool) {
        let wake = Wake {
            users: users.to_vec(),
            except: except.to_vec(),
            urgent,
        };
        if self.intake.try_send(wake).is_err() {
            self.metrics.push_wake_ups("dropped", 1);
        }
    }
}

/// Runs `task` until `stopped` says so.
async fn until_stopped(mut stopped: watch::Receiver<bool>, task: impl Future<Output = ()>) {
    tokio::select! {
        () = task => {}
        _ = stopped.wait_for(|stop| *stop) => {}
    }
}

/// Writes what was asked to the store, in batches.
async fn run_intake(
    store: Arc<dyn Store>,
    mut requests: mpsc::Receiver<Wake>,
    settings: PushSettings,
    metrics: Arc<Metrics>,
    due: Arc<Notify>,
) {
    while let Some(first) = requests.recv().await {
        tokio::time::sleep(INTAKE_INTERVAL).await;
        // Everything asked meanwhile, merged: per urgency, the users and the senders.
        let mut merged: BTreeMap<bool, (BTreeSet<UserId>, BTreeSet<DeviceId>)> = BTreeMap::new();
        let mut add = |wake: Wake| {
            let (users, except) = merged.entry(wake.urgent).or_default();
            users.extend(wake.users);
            except.extend(wake.except);
        };
        add(first);
        while let Ok(wake) = requests.try_recv() {
            add(wake);
        }
        let now = now_ms();
        for (urgent, (users, except)) in merged {
            let users: Vec<UserId> = users.into_iter().collect();
            let except: Vec<DeviceId> = except.into_iter().collect();
            // A call rings now; a message waits for the device to read it by itself.
            let delay = if urgent {
                Duration::ZERO
            } else {
                settings.delay
            };
            let due_at = now + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            for chunk in users.chunks(256) {
                match store
                    .queue_wake_ups(chunk, &except, urgent, due_at, settings.max_queued)
                    .await
                {
                    Ok(queued) => {
                        metrics.push_wake_ups("queued", queued.new);
                        metrics.push_wake_ups("coalesced", queued.coalesced);
                        metrics.push_wake_ups("dropped", queued.dropped);
                    }
                    Err(error) => {
                        metrics.push_wake_ups("dropped", chunk.len() as u64);
                        tracing::warn!(%error, "could not queue wake-ups");
                    }
                }
            }
            if urgent {
                due.notify_one();
            } else {
                // The sender hears when these fall due, rather than at its next poll (up
                // to SEND_INTERVAL late). One timer per intake batch, not per device.
                nudge_after(&due, delay);
            }
        }
    }
}

/// Sends what is due until the pipeline is dropped.
async fn run_sender(
    store: Arc<dyn Store>,
    sender: Arc<Sender>,
    settings: PushSettings,
    metrics: Arc<Metrics>,
    due: Arc<Notify>,
    alive: mpsc::WeakSender<Wake>,
) {
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let origins: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    // Long enough for a send to finish (or time out) before another node may claim it.
    let lease_ms = u64::try_from(sender.timeout().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .max(5_000);
    while alive.upgrade().is_some() {
        let claimed = match store.claim_wake_ups(now_ms(), lease_ms, CLAIM_LIMIT).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "could not read due wake-ups");
                Vec::new()
            }
        };
        let full = claimed.len() == CLAIM_LIMIT as usize;
        let mut deferred = false;
        for wake_up in claimed {
            let origin = match wake_up.target.kind {
                PushKind::WebPush => web_push::origin(&wake_up.target.endpoint)
                    .unwrap_or_default()
                    .to_owned(),
                PushKind::Apns => super::apns::PRODUCTION.to_owned(),
                PushKind::ApnsSandbox => super::apns::SANDBOX.to_owned(),
            };
            let at_limit = {
                let mut busy = origins
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let count = busy.entry(origin.clone()).or_default();
                let at_limit = *count >= PER_ORIGIN_SENDS;
                if !at_limit {
                    *count += 1;
                }
                at_limit
            };
            if at_limit {
                // That service is busy: this one waits a little, without counting an
                // attempt, and the next claim takes others first.
                let due_at = now_ms() + u64::try_from(BUSY_DEFERRAL.as_millis()).unwrap_or(0);
                if let Err(error) = store.defer_wake_up(wake_up.device, due_at).await {
                    tracing::warn!(%error, "could not defer a wake-up");
                }
                deferred = true;
                continue;
            }
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (store, sender, settings, metrics, origins) = (
                Arc::clone(&store),
                Arc::clone(&sender),
                settings.clone(),
                Arc::clone(&metrics),
                Arc::clone(&origins),
            );
            tokio::spawn(async move {
                deliver(&*store, &sender, &settings, &metrics, wake_up).await;
                let mut busy = origins
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(count) = busy.get_mut(&origin) {
                    *count -= 1;
                    if *count == 0 {
                        busy.remove(&origin);
                    }
                }
                drop(slot);
            });
        }
        if deferred {
            // Look again when the deferred ones fall due, not at the next poll.
            nudge_after(&due, BUSY_DEFERRAL);
        }
        if !full {
            let _ = tokio::time::timeout(SEND_INTERVAL, due.notified()).await;
        }
    }
}

/// Wakes the sender after `delay`.
fn nudge_after(due: &Arc<Notify>, delay: Duration) {
    let due = Arc::clone(due);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        due.notify_one();
    });
}

/// Sends one wake-up and records what came of it.
async fn deliver(
    store: &dyn Store,
    sender: &Sender,
    settings: &PushSettings,
    metrics: &Metrics,
    wake_up: WakeUp,
) {
    let device = wake_up.device;
    let done = |result: Result<(), crate::store::StoreError>| {
        if let Err(error) = result {
            tracing::warn!(%error, "could not update a wake-up");
        }
    };
    if !wake_up.urgent {
        match store.has_unread(wake_up.user, device).await {
            Ok(false) => {
                // It read everything since: it has a session, or was woken already.
                metrics.push_wake_ups("skipped", 1);
                return done(store.finish_wake_up(device).await);
            }
            Ok(true) => {}
            Err(error) => tracing::warn!(%error, "could not check what a device read"),
        }
    }
    let target = &wake_up.target;
    let outcome = match target.kind {
        PushKind::WebPush => {
            let keys = Subscription::from_keys(&target.endpoint, &target.p256dh, &target.auth);
            let subscription = match keys {
                Ok(subscription) => subscription,
                Err(error) => {
                    tracing::warn!(%error, %device, "a stored push target is unusable; removed");
                    metrics.push_wake_ups("unregistered", 1);
                    return done(store.remove_push_target(device).await.map(drop));
                }
            };
            let (kind, urgency, ttl) = if wake_up.urgent {
                ("call", Urgency::High, CALL_TTL_SECS)
            } else {
                ("message", Urgency::Normal, MESSAGE_TTL_SECS)
            };
            let payload = format!(r#"{{"v":1,"kind":"{kind}"}}"#);
            sender
                .send(&subscription, payload.as_bytes(), urgency, TOPIC, ttl)
                .await
        }
        PushKind::Apns | PushKind::ApnsSandbox => {
            let Some(apns) = sender.apns() else {
                // Registered while the relay had an APNs key, which it has no more.
                metrics.push_wake_ups("failed", 1);
                tracing::warn!(%device, "an APNs target, and no APNs key configured; given up");
                return done(store.finish_wake_up(device).await);
            };
            let sandbox = target.kind == PushKind::ApnsSandbox;
            apns.send(&target.endpoint, sandbox, wake_up.urgent).await
        }
    };
    match outcome {
        SendOutcome::Delivered => {
            metrics.push_wake_ups("sent", 1);
            done(store.finish_wake_up(device).await);
        }
        SendOutcome::Gone => {
            metrics.push_wake_ups("unregistered", 1);
            tracing::info!(%device, "the push service no longer knows this target; removed");
            done(store.remove_push_target(device).await.map(drop));
        }
        SendOutcome::Rejected(status) => {
            metrics.push_wake_ups("failed", 1);
            tracing::warn!(%device, status, "the push service refused a wake-up; given up");
            done(store.finish_wake_up(device).await);
        }
        SendOutcome::RetryAfter(asked) => {
            let attempts = wake_up.attempts + 1;
            if attempts >= settings.max_attempts {
                metrics.push_wake_ups("failed", 1);
                tracing::warn!(%device, attempts, "a wake-up kept failing; given up");
                return done(store.finish_wake_up(device).await);
            }
            metrics.push_wake_ups("retried", 1);
            // A service's Retry-After is honoured up to the longest backoff.
            let asked = asked.unwrap_or_default().min(settings.max_backoff);
            let wait = backoff(settings, attempts).max(asked);
            let due_at = now_ms() + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            done(store.retry_wake_up(device, due_at).await);
        }
    }
}

/// The wait before attempt `attempts + 1`: doubling from `min_backoff`, at most
/// `max_backoff`, then between half and all of it (jitter: retries of many devices to one
/// failing service spread out).
fn backoff(settings: &PushSettings, attempts: u32) -> Duration {
    let doubled = settings
        .min_backoff
        .saturating_mul(1 << attempts.saturating_sub(1).min(20));
    let full = doubled.min(settings.max_backoff);
    let jitter = f64::from(OsRng.next_u32()) / f64::from(u32::MAX);
    full.mul_f64(0.5 + jitter / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_limit() {
        let settings = PushSettings {
            min_backoff: Duration::from_secs(4),
            max_backoff: Duration::from_secs(60),
            ..PushSettings::default()
        };
        for (attempts, full) in [(1, 4), (2, 8), (3, 16), (4, 32), (5, 60), (30, 60)] {
            for _ in 0..50 {
                let wait = backoff(&settings, attempts);
                let full = Duration::from_secs(full);
                assert!(wait >= full / 2 && wait <= full, "{attempts}: {wait:?}");
            }
        }
    }
}
