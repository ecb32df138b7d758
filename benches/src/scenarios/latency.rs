//! `latency`: time from `Append` on device A to `Events` on device B at a fixed offered load.
//!
//! Each of `users` users has a sender device A and a receiver device B. The load is open
//! loop: A's sends follow a fixed schedule (`rate / users` per second per user, users
//! phase-shifted so sends are spread evenly), whether or not earlier events have arrived.
//! Each payload carries the time it was sent; B records `arrival − send` in an HDR histogram
//! for events sent inside the measured window (after a warm-up). A second histogram measures
//! from the *scheduled* send time, which also counts any lateness of the generator itself
//! (coordinated omission): a large gap between the two means the machine, not the relay,
//! was the limit.
//!
//! The engine ([`measure`], [`measure_sampled`] with the CPU over the window) is shared with
//! the `cluster` scenario, which puts A and B on different relay processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use ferry_protocol::ServerFrame;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::{Options, connect_all, micros_histogram, payload, quantile_ms, record};
use crate::client::{ClientError, Identity, Receiver, Target, append};
use crate::cpu::{CpuSample, CpuUse};
use crate::progress::{Progress, step};
use crate::relay::{
    Backend, BenchRelay, NodeOptions, ProcessOptions, RelayProcess, metric, spawn_process,
};
use crate::report::{Goal, Report};

const NAME: &str = "latency";
/// Payload size; the first 16 bytes carry the scheduled and actual send times.
pub const PAYLOAD: usize = 256;

/// The offered load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Events per second in total.
    pub rate: f64,
    /// Time before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// Where one user's two devices connect, and which group its figures go to.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    /// Device A (the sender).
    pub sender: Target,
    /// Device B (the receiver).
    pub receiver: Target,
    /// Index of the histogram group.
    pub group: usize,
}

/// One group's figures.
#[derive(Debug)]
pub struct Latencies {
    /// From the actual send to arrival, in µs.
    pub actual: Histogram<u64>,
    /// From the scheduled send to arrival, in µs.
    pub scheduled: Histogram<u64>,
    /// Events sent in the window.
    pub sent: u64,
    /// Of those, events B received before the drain deadline.
    pub received: u64,
}

/// Per-user state shared by A's sender and B's receiver.
#[derive(Debug, Default)]
struct Counts {
    sent_in_window: AtomicU64,
    sender_done: AtomicBool,
}

/// Runs the load over `placements` (one per user) and returns one [`Latencies`] per group.
pub async fn measure(
    label: &str,
    load: Load,
    placements: &[Placement],
    groups: usize,
    sources: usize,
) -> anyhow::Result<Vec<Latencies>> {
    let (results, _) = measure_sampled(label, load, placements, groups, sources, None).await?;
    Ok(results)
}

/// [`measure`], and with `relays` (the relay processes' ids) where the CPU went over the
/// measured window (sampled at its start and end).
pub async fn measure_sampled(
    label: &str,
    load: Load,
    placements: &[Placement],
    groups: usize,
    sources: usize,
    relays: Option<&[u32]>,
) -> anyhow::Result<(Vec<Latencies>, Option<CpuUse>)> {
    let users = placements.len().max(1);
    let identities: Vec<Vec<Identity>> = (0..users).map(|_| Identity::new_user(2)).collect();
    let devices: Vec<_> = placements
        .iter()
        .zip(&identities)
        .flat_map(|(place, ids)| [(place.sender, &ids[0]), (place.receiver, &ids[1])])
        .collect();
    let mut connections = connect_all(label, &devices, 16, sources).await?.into_iter();

    let base = Instant::now();
    let start = base + Duration::from_millis(200);
    let window_start = start + load.warmup;
    let window_end = window_start + load.duration;
    let drain_deadline = window_end + Duration::from_secs(5);
    let period = Duration::from_secs_f64(users as f64 / load.rate);
    let arrived = Arc::new(AtomicU64::new(0));
    let cpu = relays.map(|pids| {
        let pids = pids.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep_until(window_start).await;
            let before = CpuSample::take(&pids);
            tokio::time::sleep_until(window_end).await;
            before.until(&CpuSample::take(&pids))
        })
    });
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, place) in placements.iter().enumerate() {
        let (Some(a), Some(b)) = (connections.next(), connections.next()) else {
            bail!("{label}: fewer connections than devices");
        };
        let counts = Arc::new(Counts::default());
        let phase = period.mul_f64(i as f64 / users as f64);
        let (mut a_send, a_recv) = a.split();
        let (_, b_recv) = b.split();
        // A's answers and echoes are read and dropped, so the relay never waits on A.
        tokio::spawn(drain(a_recv, drain_deadline));
        let sender_counts = Arc::clone(&counts);
        senders.push(tokio::spawn(async move {
            let mut body = payload(PAYLOAD);
            let mut scheduled = start + phase;
            let mut device_seq = 1;
            while scheduled < window_end {
                tokio::time::sleep_until(scheduled).await;
                let now = Instant::now();
                stamp(
                    &mut body,
                    micros_since(base, scheduled),
                    micros_since(base, now),
                );
                a_send.send(&append(device_seq, body.clone())).await?;
                if scheduled >= window_start {
                    sender_counts.sent_in_window.fetch_add(1, Ordering::Relaxed);
                }
                device_seq += 1;
                scheduled += period;
            }
            sender_counts.sender_done.store(true, Ordering::Release);
            Ok::<_, ClientError>(a_send)
        }));
        let receiver = Arrivals {
            base,
            window: (
                micros_since(base, window_start),
                micros_since(base, window_end),
            ),
            deadline: drain_deadline,
            counts,
            arrived: Arc::clone(&arrived),
        };
        receivers.push((place.group, tokio::spawn(receiver.run(b_recv))));
    }
    let progress = Progress::start(format!("{label}: events"), Arc::clone(&arrived), "ev");
    let mut keep_open = Vec::new();
    for sender in senders {
        keep_open.push(sender.await??);
    }
    let mut results: Vec<Latencies> = (0..groups.max(1))
        .map(|_| Latencies {
            actual: micros_histogram(),
            scheduled: micros_histogram(),
            sent: 0,
            received: 0,
        })
        .collect();
    for (group, receiver) in receivers {
        let found = receiver.await??;
        let Some(slot) = results.get_mut(group) else {
            bail!("{label}: group {group} out of range");
        };
        slot.actual.add(&found.actual)?;
        slot.scheduled.add(&found.scheduled)?;
        slot.sent += found.sent;
        slot.received += found.received;
    }
    drop(progress);
    drop(keep_open);
    let cpu = match cpu {
        Some(task) => Some(task.await?),
        None => None,
    };
    Ok((results, cpu))
}

/// Reads and drops everything until the deadline.
async fn drain(mut receiver: Receiver, deadline: Instant) {
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, receiver.recv()).await {}
}

/// B's side: records arrivals of events sent in the window.
struct Arrivals {
    base: Instant,
    window: (u64, u64),
    deadline: Instant,
    counts: Arc<Counts>,
    arrived: Arc<AtomicU64>,
}

impl Arrivals {
    async fn run(self, mut receiver: Receiver) -> Result<Latencies, ClientError> {
        let mut found = Latencies {
            actual: micros_histogram(),
            scheduled: micros_histogram(),
            sent: 0,
            received: 0,
        };
        loop {
            let all_in = self.counts.sender_done.load(Ordering::Acquire)
                && found.received >= self.counts.sent_in_window.load(Ordering::Relaxed);
            if all_in {
                break;
            }
            let frame = match tokio::time::timeout_at(self.deadline, receiver.recv()).await {
                Ok(frame) => frame?,
                Err(_) => break,
            };
            let now = micros_since(self.base, Instant::now());
            let ServerFrame::Events(events) = frame else {
                continue;
            };
            for event in events {
                let Some((scheduled, actual)) = send_times(&event.payload.0) else {
                    continue;
                };
                self.arrived.fetch_add(1, Ordering::Relaxed);
                if scheduled < self.window.0 || scheduled >= self.window.1 {
                    continue;
                }
                found.received += 1;
                record(
                    &mut found.actual,
                    Duration::from_micros(now.saturating_sub(actual)),
                );
                record(
                    &mut found.scheduled,
                    Duration::from_micros(now.saturating_sub(scheduled)),
                );
            }
        }
        found.sent = self.counts.sent_in_window.load(Ordering::Relaxed);
        Ok(found)
    }
}

/// Writes the scheduled and actual send times (µs) into the first 16 bytes of `body`.
pub(super) fn stamp(body: &mut [u8], scheduled: u64, actual: u64) {
    body[..8].copy_from_slice(&scheduled.to_le_bytes());
    body[8..16].copy_from_slice(&actual.to_le_bytes());
}

/// The `(scheduled, actual)` send times [`stamp`] wrote into `payload`.
pub(super) fn send_times(payload: &[u8]) -> Option<(u64, u64)> {
    let scheduled = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let actual = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((scheduled, actual))
}

fn micros_since(base: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_micros()).unwrap_or(u64::MAX)
}

/// Adds p50, p99, p99.9 and max of `latencies` to `report` (the p99 with `goal`).
pub fn add_percentiles(
    report: &mut Report,
    scenario: &str,
    prefix: &str,
    latencies: &Latencies,
    goal: Option<Goal>,
) {
    let h = &latencies.actual;
    report.add(scenario, format!("{prefix}p50"), quantile_ms(h, 0.5), "ms");
    match goal {
        Some(goal) => report.add_goal(
            scenario,
            format!("{prefix}p99"),
            quantile_ms(h, 0.99),
            "ms",
            goal,
        ),
        None => report.add(scenario, format!("{prefix}p99"), quantile_ms(h, 0.99), "ms"),
    }
    report.add(
        scenario,
        format!("{prefix}p99.9"),
        quantile_ms(h, 0.999),
        "ms",
    );
    report.add(
        scenario,
        format!("{prefix}max"),
        h.max() as f64 / 1000.0,
        "ms",
    );
    report.add(
        scenario,
        format!("{prefix}p99 from scheduled send"),
        quantile_ms(&latencies.scheduled, 0.99),
        "ms",
    );
}

/// Adds the relay's own view (from its metrics over the whole run): events per commit,
/// time per commit, and time from commit to the event written to another device's socket.
pub fn add_relay_timings(report: &mut Report, scenario: &str, metrics: &str) {
    let mean = |name: &str| {
        let sum = metric(metrics, &format!("{name}_sum"))?;
        let count = metric(metrics, &format!("{name}_count"))?;
        (count > 0.0).then(|| sum / count)
    };
    if let Some(batch) = mean("ferry_commit_batch_size") {
        report.add(scenario, "relay: mean events per commit", batch, "ev");
    }
    if let Some(seconds) = mean("ferry_commit_seconds") {
        report.add(scenario, "relay: mean commit time", seconds * 1000.0, "ms");
    }
    if let Some(seconds) = mean("ferry_delivery_seconds") {
        report.add(
            scenario,
            "relay: mean commit → socket write",
            seconds * 1000.0,
            "ms",
        );
    }
}

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let load = Load {
        rate: options.pick(options.rate, 5_000.0, 500.0),
        warmup: if options.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        },
        duration: options.duration(Duration::from_secs(10), Duration::from_secs(1)),
    };
    let users = options.pick(options.users, 100, 10);
    step(NAME, "starting the relay");
    let relay = Relay::start(options).await?;
    let target = relay.target();
    let placements: Vec<Placement> = (0..users)
        .map(|_| Placement {
            sender: target,
            receiver: target,
            group: 0,
        })
        .collect();
    step(
        NAME,
        format_args!(
            "{} ev/s over {users} users for {:?}",
            load.rate, load.duration
        ),
    );
    let pids = relay.pid().map(|pid| vec![pid]).unwrap_or_default();
    let (mut results, cpu) =
        measure_sampled(NAME, load, &placements, 1, options.sources, Some(&pids)).await?;
    let metrics = relay.metrics_text().await?;
    let Some(latencies) = results.pop() else {
        bail!("no latency results");
    };
    let mut report = Report::default();
    report.add(
        NAME,
        "offered load achieved",
        latencies.sent as f64 / load.duration.as_secs_f64(),
        "ev/s",
    );
    add_percentiles(
        &mut report,
        NAME,
        "append → event ",
        &latencies,
        Some(Goal::AtMost(10.0)),
    );
    report.add(
        NAME,
        "events not delivered within 5 s",
        latencies.sent.saturating_sub(latencies.received) as f64,
        "ev",
    );
    add_relay_timings(&mut report, NAME, &metrics);
    if let Some(cpu) = cpu {
        cpu.add_to(&mut report, NAME, "");
    }
    report.note(format!(
        "latency: open-loop load of {} ev/s over {users} users (one sender and one receiver \
         device each), {} B payloads, {:?} warm-up then {:?} measured; latency is from A \
         sending the Append to B reading the Events frame (same process, same clock); the \
         relay ran {}",
        load.rate,
        PAYLOAD,
        load.warmup,
        load.duration,
        if options.relay_process {
            "as a separate ferry-relay process (--relay-process), its data in the temporary folder"
        } else {
            "in the generator's process"
        }
    ));
    Ok(report)
}

/// The relay under test: in this process, or (`--relay-process`) a `ferry-relay` process of
/// its own, so that its CPU is the OS scheduler's to share, not the generator's runtime's.
enum Relay {
    InProcess(BenchRelay),
    Process {
        process: RelayProcess,
        _dir: tempfile::TempDir,
    },
}

impl Relay {
    async fn start(options: &Options) -> anyhow::Result<Self> {
        if !options.relay_process {
            return Ok(Self::InProcess(
                BenchRelay::spawn(&options.services, NodeOptions::default()).await?,
            ));
        }
        let dir = tempfile::Builder::new().prefix("ferry-bench-").tempdir()?;
        let process = ProcessOptions {
            program: options.relay_bin.clone(),
            data_dir: dir.path().to_owned(),
            postgres: options.services.backend == Backend::Postgres,
            ..ProcessOptions::default()
        };
        let process = spawn_process(&options.services, &process).await?;
        Ok(Self::Process { process, _dir: dir })
    }

    fn target(&self) -> Target {
        match self {
            Self::InProcess(relay) => relay.target(),
            Self::Process { process, .. } => process.target(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Self::InProcess(_) => None,
            Self::Process { process, .. } => Some(process.pid()),
        }
    }

    /// The relay's metrics; stops an in-process relay (a process is killed when dropped).
    async fn metrics_text(self) -> anyhow::Result<String> {
        match self {
            Self::InProcess(relay) => {
                let text = relay.metrics_text();
                relay.shutdown(Duration::from_secs(5)).await;
                Ok(text)
            }
            Self::Process { process, _dir } => {
                tokio::task::spawn_blocking(move || process.metrics_text()).await?
            }
        }
    }
}
