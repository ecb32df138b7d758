//! `window`: closed-loop sync with a window of unacknowledged appends, device A → device B.
//!
//! The shape of a competitor's own measurement (PocketBridge's backend, measured by them on
//! this kind of machine: 402 events/s, A→B p50 115 ms, p99 204 ms, every event delivered
//! twice), so the two can be read side by side. Each of `users` users has a sender device A
//! and a receiver device B. The load is closed loop: A keeps at most `W` appends awaiting
//! their `Appended` answer (a permit per append, one given back per answer), so its rate is
//! whatever the relay's commit latency allows, unlike `latency`'s fixed schedule. Each
//! payload carries the time it was sent; B records `arrival − send` in an HDR histogram for
//! events sent inside the measured window (after a warm-up; same process, same clock).
//!
//! B checks what it is given rather than trusting it: an event whose `seq` B already saw, or
//! whose `device_seq` from A is not above the last one B saw from A, is a duplicate (counted,
//! never dropped silently), and a `seq` below the highest one seen that never arrived is a
//! gap. A counts repeated `Appended` answers (each would also have given back a permit).
//!
//! Three configurations, each on a fresh relay: 1 user with `W = 50` (one busy pair of
//! devices), then 200 users with `W = 1` (every device waits for each answer) and `W = 10`
//! (quick: 20 users). `--users` or `--window` runs only that one configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use ferry_protocol::{DeviceId, ServerFrame};
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::{Options, connect_all, micros_histogram, payload, quantile_ms, record};
use crate::client::{ClientError, Identity, Receiver, Sender, append};
use crate::progress::{Progress, step};
use crate::relay::{BenchRelay, NodeOptions};
use crate::report::Report;

const NAME: &str = "window";
/// Payload size; the first 8 bytes carry the send time.
pub const PAYLOAD: usize = 256;
/// How long after the window B may still receive the window's events.
const DRAIN: Duration = Duration::from_secs(5);
/// How often B looks whether A has stopped while no frame comes.
const RECHECK: Duration = Duration::from_millis(100);

/// Users and the window of one configuration.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Users, each with a sender device A and a receiver device B.
    pub users: usize,
    /// Appends of A awaiting their `Appended` at most.
    pub window: usize,
}

/// What one configuration measured.
#[derive(Debug)]
pub struct Found {
    /// A→B latency of the window's events, in µs (first delivery of each).
    pub latency: Histogram<u64>,
    /// Distinct events that reached B during the window.
    pub delivered: u64,
    /// Appends A sent during the window.
    pub sent: u64,
    /// Of those, events B received before the drain deadline.
    pub received: u64,
    /// Events B was given again (seen `seq`, or `device_seq` not above A's last).
    pub duplicates: u64,
    /// `seq`s below the highest one B saw that B never received.
    pub gaps: u64,
    /// `Appended` answers A got again for a `device_seq` already answered.
    pub repeated_answers: u64,
}

impl Found {
    fn new() -> Self {
        Self {
            latency: micros_histogram(),
            delivered: 0,
            sent: 0,
            received: 0,
            duplicates: 0,
            gaps: 0,
            repeated_answers: 0,
        }
    }
}

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let shapes = if options.users.is_some() || options.window.is_some() {
        vec![Shape {
            users: options.pick(options.users, 200, 20),
            window: options.window.unwrap_or(10),
        }]
    } else {
        let many = if options.quick { 20 } else { 200 };
        vec![
            Shape {
                users: 1,
                window: 50,
            },
            Shape {
                users: many,
                window: 1,
            },
            Shape {
                users: many,
                window: 10,
            },
        ]
    };
    let warmup = if options.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    let duration = options.duration(Duration::from_secs(10), Duration::from_secs(1));
    let mut report = Report::default();
    for shape in shapes {
        let found = measure(options, shape, warmup, duration).await?;
        let prefix = format!(
            "{} user{} × 2, W={}: ",
            shape.users,
            if shape.users == 1 { "" } else { "s" },
            shape.window
        );
        add_figures(&mut report, &prefix, &found, duration);
    }
    report.note(format!(
        "window: closed loop, per user device A keeps at most W appends awaiting their \
         Appended (one permit back per answer) and device B reads the live Events; {PAYLOAD} B \
         payloads carrying the send time; {warmup:?} warm-up then {duration:?} measured, a \
         fresh relay per configuration; events/s counts distinct events reaching B in the \
         window; A→B latency is from A sending the Append to B reading the Events frame \
         (same process, same clock) for events sent in the window; a duplicate is an event \
         whose seq B already saw or whose device_seq is not above A's last one seen by B"
    ));
    report.note(
        "window: reference, not measured here: PocketBridge's backend, measured by its authors \
         on this kind of machine with a window of unacknowledged appends: 402 events/s, A→B \
         p50 115 ms, p99 204 ms, and every event delivered twice (duplicates = events)",
    );
    Ok(report)
}

fn add_figures(report: &mut Report, prefix: &str, found: &Found, duration: Duration) {
    let h = &found.latency;
    report.add(
        NAME,
        format!("{prefix}events/s to B"),
        found.delivered as f64 / duration.as_secs_f64(),
        "ev/s",
    );
    report.add(NAME, format!("{prefix}A→B p50"), quantile_ms(h, 0.5), "ms");
    report.add(NAME, format!("{prefix}A→B p99"), quantile_ms(h, 0.99), "ms");
    report.add(
        NAME,
        format!("{prefix}A→B p99.9"),
        quantile_ms(h, 0.999),
        "ms",
    );
    report.add(
        NAME,
        format!("{prefix}A→B max"),
        h.max() as f64 / 1000.0,
        "ms",
    );
    report.add(
        NAME,
        format!("{prefix}duplicates seen by B"),
        found.duplicates as f64,
        "ev",
    );
    report.add(
        NAME,
        format!("{prefix}events not delivered within 5 s"),
        found.sent.saturating_sub(found.received) as f64,
        "ev",
    );
    report.add(
        NAME,
        format!("{prefix}seq gaps at B"),
        found.gaps as f64,
        "ev",
    );
    report.add(
        NAME,
        format!("{prefix}repeated Appended at A"),
        found.repeated_answers as f64,
        "answers",
    );
}

/// Per-user state shared by A's sender and B's receiver.
#[derive(Debug, Default)]
struct Counts {
    sent_in_window: AtomicU64,
    sender_done: AtomicBool,
}

/// Runs one configuration on a fresh relay.
pub async fn measure(
    options: &Options,
    shape: Shape,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Found> {
    let label = format!("{NAME}, {} users, W={}", shape.users, shape.window);
    step(&label, "starting the relay");
    let relay = BenchRelay::spawn(&options.services, NodeOptions::default()).await?;
    let target = relay.target();
    let identities: Vec<Vec<Identity>> = (0..shape.users.max(1))
        .map(|_| Identity::new_user(2))
        .collect();
    let devices: Vec<_> = identities
        .iter()
        .flat_map(|ids| [(target, &ids[0]), (target, &ids[1])])
        .collect();
    let mut connections = connect_all(&label, &devices, 16, options.sources)
        .await?
        .into_iter();

    let base = Instant::now();
    let window_start = base + warmup;
    let window_end = window_start + duration;
    let deadline = window_end + DRAIN;
    let arrived = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let mut senders = Vec::new();
    let mut answers = Vec::new();
    let mut receivers = Vec::new();
    let mut keep_open = Vec::new();
    for ids in &identities {
        let (Some(a), Some(b)) = (connections.next(), connections.next()) else {
            bail!("{label}: fewer connections than devices");
        };
        let counts = Arc::new(Counts::default());
        let permits = Arc::new(Semaphore::new(shape.window.max(1)));
        let (a_send, a_recv) = a.split();
        let (b_send, b_recv) = b.split();
        keep_open.push(b_send);
        answers.push(tokio::spawn(take_answers(
            a_recv,
            Arc::clone(&permits),
            stopped.clone(),
            deadline,
        )));
        let sender = Appender {
            base,
            window: (window_start, window_end),
            permits,
            counts: Arc::clone(&counts),
        };
        senders.push(tokio::spawn(sender.run(a_send)));
        let receiver = Arrivals {
            base,
            window: (
                micros_since(base, window_start),
                micros_since(base, window_end),
            ),
            deadline,
            sender: ids[0].id(),
            counts,
            arrived: Arc::clone(&arrived),
        };
        receivers.push(tokio::spawn(receiver.run(b_recv)));
    }
    let progress = Progress::start(format!("{label}: events to B"), Arc::clone(&arrived), "ev");
    let mut a_sides = Vec::new();
    for sender in senders {
        a_sides.push(sender.await??);
    }
    let mut found = Found::new();
    for receiver in receivers {
        let user = receiver.await??;
        found.latency.add(&user.latency)?;
        found.delivered += user.delivered;
        found.sent += user.sent;
        found.received += user.received;
        found.duplicates += user.duplicates;
        found.gaps += user.gaps;
    }
    stop.send_replace(true);
    for answer in answers {
        found.repeated_answers += answer.await??;
    }
    drop(progress);
    // Closed first: a relay shutting down waits a while for sessions nobody reads any more.
    drop((a_sides, keep_open));
    relay.shutdown(Duration::from_secs(5)).await;
    Ok(found)
}

/// A's sending side: an append whenever a permit is free, until the window ends.
struct Appender {
    base: Instant,
    window: (Instant, Instant),
    permits: Arc<Semaphore>,
    counts: Arc<Counts>,
}

impl Appender {
    async fn run(self, mut sender: Sender) -> Result<Sender, ClientError> {
        let mut body = payload(PAYLOAD);
        let mut device_seq = 1;
        loop {
            // One permit per append awaiting its Appended; `take_answers` gives one back per
            // answer (and closes the semaphore if A's connection fails).
            let Ok(Ok(permit)) =
                tokio::time::timeout_at(self.window.1, self.permits.acquire()).await
            else {
                break;
            };
            permit.forget();
            let now = Instant::now();
            if now >= self.window.1 {
                break;
            }
            body[..8].copy_from_slice(&micros_since(self.base, now).to_le_bytes());
            sender.send(&append(device_seq, body.clone())).await?;
            if now >= self.window.0 {
                self.counts.sent_in_window.fetch_add(1, Ordering::Relaxed);
            }
            device_seq += 1;
        }
        self.counts.sender_done.store(true, Ordering::Release);
        Ok(sender)
    }
}

/// A's receiving side: a permit back per `Appended`, until stopped. Returns the answers
/// repeated for a `device_seq` already answered.
async fn take_answers(
    mut receiver: Receiver,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Result<u64, ClientError> {
    let mut last = 0;
    let mut repeated = 0;
    loop {
        let frame = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            _ = tokio::time::sleep_until(deadline) => break,
            frame = receiver.recv() => frame,
        };
        match frame {
            Ok(ServerFrame::Appended { device_seq, .. }) => {
                if device_seq <= last {
                    repeated += 1;
                } else {
                    last = device_seq;
                }
                permits.add_permits(1);
            }
            Ok(ServerFrame::Error(error)) => {
                permits.close();
                return Err(ClientError::Relay(error));
            }
            Ok(_) => {}
            Err(e) => {
                permits.close();
                return Err(e);
            }
        }
    }
    Ok(repeated)
}

/// B's side: checks and records every event.
struct Arrivals {
    base: Instant,
    window: (u64, u64),
    deadline: Instant,
    sender: DeviceId,
    counts: Arc<Counts>,
    arrived: Arc<AtomicU64>,
}

impl Arrivals {
    async fn run(self, mut receiver: Receiver) -> Result<Found, ClientError> {
        let mut found = Found::new();
        let mut seen = Seen::default();
        let mut last_device_seq = 0;
        loop {
            let all_in = self.counts.sender_done.load(Ordering::Acquire)
                && found.received >= self.counts.sent_in_window.load(Ordering::Relaxed);
            if all_in || Instant::now() >= self.deadline {
                break;
            }
            // Woken now and then to notice that A stopped after its last event arrived.
            let wake = self.deadline.min(Instant::now() + RECHECK);
            let frame = match tokio::time::timeout_at(wake, receiver.recv()).await {
                Ok(frame) => frame?,
                Err(_) => continue,
            };
            let now = micros_since(self.base, Instant::now());
            let ServerFrame::Events(events) = frame else {
                continue;
            };
            for event in events {
                self.arrived.fetch_add(1, Ordering::Relaxed);
                let again = seen.insert(event.seq);
                let from_a = event.device == self.sender;
                let behind = from_a && event.device_seq <= last_device_seq;
                if from_a {
                    last_device_seq = last_device_seq.max(event.device_seq);
                }
                if again || behind {
                    found.duplicates += 1;
                    continue;
                }
                if now >= self.window.0 && now < self.window.1 {
                    found.delivered += 1;
                }
                let Some(sent) = send_time(&event.payload.0) else {
                    continue;
                };
                if sent < self.window.0 || sent >= self.window.1 {
                    continue;
                }
                found.received += 1;
                record(
                    &mut found.latency,
                    Duration::from_micros(now.saturating_sub(sent)),
                );
            }
        }
        found.sent = self.counts.sent_in_window.load(Ordering::Relaxed);
        found.gaps = seen.missing();
        Ok(found)
    }
}

/// The `seq`s B has seen, one bit each.
#[derive(Debug, Default)]
struct Seen {
    bits: Vec<u64>,
    count: u64,
    highest: u64,
}

impl Seen {
    /// Marks `seq` seen; true if it already was.
    fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        let was = self.bits[word] & (1 << bit) != 0;
        if !was {
            self.bits[word] |= 1 << bit;
            self.count += 1;
            self.highest = self.highest.max(seq);
        }
        was
    }

    /// `seq`s from 1 to the highest seen that were not seen (the log starts at 1).
    fn missing(&self) -> u64 {
        self.highest.saturating_sub(self.count)
    }
}

fn send_time(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

fn micros_since(base: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_repeats_and_gaps() {
        let mut seen = Seen::default();
        assert!(!seen.insert(1));
        assert!(!seen.insert(2));
        assert!(seen.insert(2));
        assert!(!seen.insert(130));
        assert_eq!(seen.missing(), 127);
        for seq in 3..130 {
            seen.insert(seq);
        }
        assert_eq!(seen.missing(), 0);
    }
}
