//! `storm`: a relay restart with every registered device reconnecting at once.
//!
//! 1. **Set-up (untimed).** A relay process starts (as in `idle`: the `ferry-relay` binary
//!    next to this one, `--relay-bin`, else this binary as `serve-relay`), SQLite on tmpfs, or
//!    PostgreSQL with `--backend postgres`. `--connections` devices (20,000; quick 200), two
//!    per user, register by connecting once, 64 users at a time. Device A of each user appends
//!    [`EVENTS_PER_USER`] events, waits for their `Appended`, acknowledges them all (`Ack` up
//!    to the head, made sure of with a `Ping` answered after it: the relay stores the cursor
//!    before it reads the next frame), and disconnects; device B then connects and disconnects
//!    without acknowledging anything. After the restart A has nothing to replay and B has
//!    every event of its user's log to catch up.
//! 2. **Restart.** The relay process is killed (SIGKILL) and a new one started on the same
//!    data folder (same relay key, new port).
//! 3. **Probe.** A probe user (two devices, not part of the storm) connects to the new relay
//!    first; its device A appends 256-byte events at a fixed rate ([`PROBE_RATE`]) carrying
//!    their scheduled and actual send times, and device B records send → arrival. The probe
//!    runs on its own thread and current-thread runtime, so its timestamps do not wait
//!    behind the storm's tasks in the generator's run queue (it still shares the 2 cores).
//!    Events sent in a quiet window before the storm (`--duration-secs`, 5 s; quick 1 s,
//!    after a 300 ms warm-up) give the comparison figure; events sent from the storm's start
//!    until the last device caught up are the storm's figures.
//! 4. **Storm.** At one instant every storm device reconnects (a task each, no concurrency
//!    cap), from 127.0.0.x source addresses, replaying from the relay's stored cursor. A
//!    failed attempt (connect, WebSocket or handshake error, a 10 s connect timeout as the
//!    client SDK's default, or the connection lost before catching up) is retried after a
//!    jittered exponential backoff as the client SDK does it ([`backoff_wait`]: the ceiling
//!    doubles from 100 ms to 5 s, the wait is drawn from its upper half). A device is caught
//!    up when it has received `CaughtUp` and every event after its stored cursor (B: all
//!    [`EVENTS_PER_USER`], across attempts; A: none); B then acknowledges them, as a real
//!    client would, and every device stays connected until the storm is over. Reported: time
//!    from the storm's start until all are caught up, each device's time to its first session
//!    and to caught-up (p50/p99/max), handshakes/s (sessions ÷ time to the last one), retries
//!    and failures (by error), sessions the relay established for attempts their device had
//!    already given up (its `handshakes_total{outcome="ok"}` less the devices' own count),
//!    cursors that did not survive the restart, acknowledged events delivered again, the
//!    probe's live p50/p99/max during the storm beside its quiet window and its appends the
//!    relay refused, the relay's open files at the peak (sampled every 250 ms), its RSS before
//!    and after the storm and its peak (`VmHWM`), and where the CPU went over the storm
//!    ([`crate::cpu`]).
//!
//! Both processes hold one file descriptor per connection, and the relay also holds the
//! sockets of attempts it accepted and has not reached yet, which their devices may have given
//! up on: the device count is capped at what `RLIMIT_NOFILE` allows less an eighth kept spare
//! and the probe, and the report says so. The storm is bounded (300 s; quick 20 s): a device
//! not caught up by then counts as failed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use anyhow::{Context as _, bail, ensure};
use ferry_protocol::{ClientFrame, ServerFrame};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rand_core::{OsRng, RngCore};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::idle::{nofile_of, raise_nofile};
use super::latency::{Latencies, add_percentiles, send_times, stamp};
use super::{Options, micros_histogram, payload, quantile_ms, record};
use crate::client::{ClientError, Connection, Identity, Receiver, Target, append, source_address};
use crate::cpu::CpuSample;
use crate::progress::{Progress, step};
use crate::relay::{Backend, ProcessOptions, RelayProcess, Services, spawn_process, tmpfs_folder};
use crate::report::{Report, number};

const NAME: &str = "storm";
/// The share of the relay's file descriptors kept free (1/8): for its database files, and for
/// connections the storm's devices gave up on (timed out) that the relay has accepted but not
/// yet closed. With 300 spare (as `idle` keeps) at 19,698 devices the relay ran out during
/// the storm (EMFILE on accept and on SQLite's files), which measured the sandbox's limit.
const SPARE_SHARE: u64 = 8;
/// The probe user's devices, beside the storm's.
const PROBE_DEVICES: usize = 2;
/// Events device A appends (and acknowledges) before the restart; device B replays them.
pub const EVENTS_PER_USER: u64 = 5;
/// Payload of the set-up's events and the probe's.
const PAYLOAD: usize = 256;
/// The probe's live events per second (`--rate` sets another).
pub const PROBE_RATE: f64 = 200.0;
/// The first retry's backoff ceiling.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The backoff ceiling's cap.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// One attempt's time to a session (the client SDK's default connect timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the probe waits for its last events after it stops sending.
const PROBE_DRAIN: Duration = Duration::from_secs(5);
/// Time for a relay process to start and print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The wait before retry number `retry` (1 for the first): the ceiling is [`BACKOFF_MIN`]
/// doubled `retry − 1` times, at most [`BACKOFF_MAX`], and the wait is drawn uniformly from
/// the ceiling's upper half with `random`, as the client SDK's backoff does (clients that
/// lost the relay together do not come back together).
pub fn backoff_wait(retry: u32, random: u64) -> Duration {
    let doublings = retry.saturating_sub(1).min(20);
    let ceiling = BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    let half = ceiling_ns / 2;
    Duration::from_nanos(ceiling_ns - half + random % (half + 1))
}

/// What a storm device should find after the restart: its stored cursor and the log's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// The cursor it acknowledged before the restart.
    pub acked: u64,
    /// The user's log head before the restart.
    pub head: u64,
}

/// The events a device holds of those it must catch up (`acked + 1 ..= head`).
#[derive(Clone, Debug)]
pub struct Held {
    expect: Expect,
    held: Vec<bool>,
    /// Events at or below the stored cursor delivered again.
    pub redelivered: u64,
}

impl Held {
    /// Nothing held yet.
    pub fn new(expect: Expect) -> Self {
        let missing = usize::try_from(expect.head.saturating_sub(expect.acked)).unwrap_or(0);
        Self {
            expect,
            held: vec![false; missing],
            redelivered: 0,
        }
    }

    /// Takes note of a delivered event.
    pub fn receive(&mut self, seq: u64) {
        if seq <= self.expect.acked {
            self.redelivered += 1;
        } else if let Some(slot) = usize::try_from(seq - self.expect.acked - 1)
            .ok()
            .and_then(|i| self.held.get_mut(i))
        {
            *slot = true;
        }
    }

    /// How many of the expected events are still missing.
    pub fn missing(&self) -> usize {
        self.held.iter().filter(|held| !**held).count()
    }

    /// Whether the device had anything to catch up (then it acknowledges it).
    pub fn expects_events(&self) -> bool {
        !self.held.is_empty()
    }
}

/// Counters shared by the storm's devices.
#[derive(Debug, Default)]
struct Tally {
    /// Sessions established.
    handshakes: AtomicU64,
    /// Devices caught up.
    caught_up: Arc<AtomicU64>,
    /// Attempts after a device's first.
    retries: AtomicU64,
    /// Micros from the storm's start to the latest session established.
    last_handshake_us: AtomicU64,
    /// Devices whose session showed another cursor or head than before the restart.
    cursor_mismatches: AtomicU64,
    /// Why attempts failed, with counts.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn error(&self, what: String) {
        let mut what = what;
        if what.len() > 120 {
            let mut end = 120;
            while !what.is_char_boundary(end) {
                end -= 1;
            }
            what.truncate(end);
        }
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(what).or_default() += 1;
        }
    }
}

/// One storm device's result.
#[derive(Debug)]
struct Outcome {
    /// From the storm's start to its first session.
    connected: Option<Duration>,
    /// From the storm's start to caught up; `None`: it failed.
    caught_up: Option<Duration>,
    attempts: u32,
    redelivered: u64,
    /// Kept open until the storm is over.
    connection: Option<Connection>,
    failure: Option<String>,
}

/// Why a session did not catch up.
enum Stop {
    /// The connection failed: try again.
    Retry(String),
    /// The relay said it is caught up with events missing: trying again will not help.
    Fail(String),
}

/// Reads until the device is caught up: `CaughtUp` received and nothing missing.
async fn catch_up(connection: &mut Connection, held: &mut Held) -> Result<(), Stop> {
    loop {
        let frame = connection
            .recv()
            .await
            .map_err(|e| Stop::Retry(format!("lost before catching up: {e}")))?;
        match frame {
            ServerFrame::Events(events) => {
                for event in events {
                    held.receive(event.seq);
                }
            }
            ServerFrame::CaughtUp { head } => {
                let missing = held.missing();
                if missing > 0 {
                    return Err(Stop::Fail(format!(
                        "CaughtUp (head {head}) with {missing} unacknowledged events not delivered"
                    )));
                }
                return Ok(());
            }
            ServerFrame::ResyncRequired { earliest } => {
                return Err(Stop::Fail(format!("ResyncRequired (earliest {earliest})")));
            }
            ServerFrame::Error(error) => {
                return Err(Stop::Retry(ClientError::Relay(error).to_string()));
            }
            _ => {}
        }
    }
}

/// One device of the storm: reconnects at `start` until caught up or `deadline`.
async fn reconnect(
    target: Target,
    id: &Identity,
    expect: Expect,
    source: IpAddr,
    (start, deadline): (Instant, Instant),
    tally: &Tally,
) -> Outcome {
    let mut held = Held::new(expect);
    let mut outcome = Outcome {
        connected: None,
        caught_up: None,
        attempts: 0,
        redelivered: 0,
        connection: None,
        failure: None,
    };
    tokio::time::sleep_until(start).await;
    loop {
        if outcome.attempts > 0 {
            tally.retries.fetch_add(1, Ordering::Relaxed);
            let wait = backoff_wait(outcome.attempts, OsRng.next_u64());
            if Instant::now() + wait >= deadline {
                outcome.failure = Some("not caught up before the storm's deadline".to_owned());
                break;
            }
            tokio::time::sleep(wait).await;
        }
        outcome.attempts += 1;
        let attempt_deadline = (Instant::now() + CONNECT_TIMEOUT).min(deadline);
        let attempt = tokio::time::timeout_at(
            attempt_deadline,
            Connection::connect(target, id, None, Some(source)),
        )
        .await;
        let mut connection = match attempt {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                tally.error(e.to_string());
                continue;
            }
            Err(_) => {
                tally.error(format!("no session within {CONNECT_TIMEOUT:?}"));
                continue;
            }
        };
        let since = start.elapsed();
        tally.handshakes.fetch_add(1, Ordering::Relaxed);
        tally
            .last_handshake_us
            .fetch_max(micros(since), Ordering::Relaxed);
        if outcome.connected.is_none() {
            outcome.connected = Some(since);
            let session = &connection.session;
            if session.acked != expect.acked || session.head != expect.head {
                tally.cursor_mismatches.fetch_add(1, Ordering::Relaxed);
            }
        }
        match tokio::time::timeout_at(deadline, catch_up(&mut connection, &mut held)).await {
            Ok(Ok(())) => {
                outcome.caught_up = Some(start.elapsed());
                tally.caught_up.fetch_add(1, Ordering::Relaxed);
                if held.expects_events() {
                    // As a real client would: it holds them now.
                    let ack = ClientFrame::Ack { seq: expect.head };
                    if let Err(e) = connection.send(&ack).await {
                        tally.error(format!("Ack after catching up: {e}"));
                    }
                }
                outcome.connection = Some(connection);
                break;
            }
            Ok(Err(Stop::Retry(why))) => tally.error(why),
            Ok(Err(Stop::Fail(why))) => {
                tally.error(why.clone());
                outcome.failure = Some(why);
                break;
            }
            Err(_) => {
                outcome.failure = Some("not caught up before the storm's deadline".to_owned());
                break;
            }
        }
    }
    outcome.redelivered = held.redelivered;
    outcome
}

/// Registers one user's two devices and leaves B with [`EVENTS_PER_USER`] events to catch up
/// (A acknowledges them); returns the log's head.
async fn register_user(
    target: Target,
    ids: &[Identity],
    sources: (IpAddr, IpAddr),
) -> anyhow::Result<u64> {
    let [a, b] = ids else {
        bail!("a storm user has two devices");
    };
    let mut connection = Connection::connect(target, a, None, Some(sources.0)).await?;
    let body = payload(PAYLOAD);
    for device_seq in 1..=EVENTS_PER_USER {
        connection.feed(&append(device_seq, body.clone())).await?;
    }
    connection.flush().await?;
    let (mut appended, mut head) = (0, 0);
    while appended < EVENTS_PER_USER {
        match connection.recv().await? {
            ServerFrame::Appended { seq, .. } => {
                appended += 1;
                head = head.max(seq);
            }
            ServerFrame::Error(error) => return Err(ClientError::Relay(error).into()),
            _ => {}
        }
    }
    connection.send(&ClientFrame::Ack { seq: head }).await?;
    // Answered after the Ack's cursor is stored (the relay reads one frame at a time).
    connection.send(&ClientFrame::Ping { nonce: head }).await?;
    loop {
        match connection.recv().await? {
            ServerFrame::Pong { nonce } if nonce == head => break,
            ServerFrame::Error(error) => return Err(ClientError::Relay(error).into()),
            _ => {}
        }
    }
    drop(connection);
    drop(Connection::connect(target, b, None, Some(sources.1)).await?);
    Ok(head)
}

/// The probe's record: send times and arrivals, in µs since the scenario's base instant.
#[derive(Debug, Default)]
struct ProbeRecord {
    /// Scheduled send time of every event sent.
    sent: Vec<u64>,
    /// `(scheduled send, actual send, arrival)` of every event B received.
    arrivals: Vec<(u64, u64, u64)>,
    /// Appends the relay refused, by error code.
    refused: BTreeMap<String, u64>,
}

/// The probe user, on its own thread.
struct Probe {
    stop: Arc<AtomicBool>,
    ready: oneshot::Receiver<()>,
    done: oneshot::Receiver<anyhow::Result<ProbeRecord>>,
}

impl Probe {
    fn start(target: Target, source: (IpAddr, IpAddr), rate: f64, base: StdInstant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let stop_flag = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("storm-probe".to_owned())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the probe's runtime")
                    .and_then(|runtime| {
                        runtime.block_on(probe(target, source, rate, base, stop_flag, ready_tx))
                    });
                let _ = done_tx.send(result);
            });
        if let Err(e) = spawned {
            // `done` reports it: its sender is gone with the closure.
            step(NAME, format_args!("could not start the probe thread: {e}"));
        }
        Self { stop, ready, done }
    }
}

async fn probe(
    target: Target,
    source: (IpAddr, IpAddr),
    rate: f64,
    base: StdInstant,
    stop: Arc<AtomicBool>,
    ready: oneshot::Sender<()>,
) -> anyhow::Result<ProbeRecord> {
    let ids = Identity::new_user(2);
    let connect = async {
        let a = Connection::connect(target, &ids[0], None, Some(source.0)).await?;
        let b = Connection::connect(target, &ids[1], None, Some(source.1)).await?;
        Ok::<_, ClientError>((a, b))
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .context("the probe did not connect within 30 s")?
        .context("connecting the probe")?;
    let (mut a_send, a_recv) = a.split();
    let (_b_send, b_recv) = b.split();
    let refused = Arc::new(Mutex::new(BTreeMap::new()));
    let drain_a = tokio::spawn(answers(a_recv, Arc::clone(&refused)));
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let receiver = tokio::spawn(arrive(b_recv, base, Arc::clone(&arrivals)));
    let _ = ready.send(());

    let mut record = ProbeRecord::default();
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut scheduled = Instant::now();
    let mut body = payload(PAYLOAD);
    let mut device_seq = 1;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(scheduled).await;
        let scheduled_us = micros(scheduled.into_std().saturating_duration_since(base));
        stamp(&mut body, scheduled_us, micros(base.elapsed()));
        a_send
            .send(&append(device_seq, body.clone()))
            .await
            .context("probe device A's append")?;
        record.sent.push(scheduled_us);
        device_seq += 1;
        scheduled += period;
    }
    let drained = Instant::now() + PROBE_DRAIN;
    while Instant::now() < drained && arrivals.lock().map_or(0, |a| a.len()) < record.sent.len() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.abort();
    drain_a.abort();
    record.refused = refused.lock().map(|r| r.clone()).unwrap_or_default();
    record.arrivals = std::mem::take(
        &mut *arrivals
            .lock()
            .map_err(|_| anyhow::anyhow!("the probe's receiver panicked"))?,
    );
    Ok(record)
}

/// The probe's A: counts appends refused, by error code (the rest is dropped).
async fn answers(mut receiver: Receiver, refused: Arc<Mutex<BTreeMap<String, u64>>>) {
    while let Ok(frame) = receiver.recv().await {
        if let ServerFrame::Error(error) = frame
            && let Ok(mut refused) = refused.lock()
        {
            *refused.entry(error.code.name().to_owned()).or_default() += 1;
        }
    }
}

/// The probe's B: records each event's send times and arrival.
async fn arrive(
    mut receiver: Receiver,
    base: StdInstant,
    arrivals: Arc<Mutex<Vec<(u64, u64, u64)>>>,
) {
    while let Ok(frame) = receiver.recv().await {
        let now = micros(base.elapsed());
        let ServerFrame::Events(events) = frame else {
            continue;
        };
        let Ok(mut arrivals) = arrivals.lock() else {
            return;
        };
        for event in events {
            if let Some((scheduled, actual)) = send_times(&event.payload.0) {
                arrivals.push((scheduled, actual, now));
            }
        }
    }
}

/// The probe's latencies for events scheduled in `[from, to)` µs.
fn window(record: &ProbeRecord, from: u64, to: u64) -> Latencies {
    let inside = |t: u64| (from..to).contains(&t);
    let mut found = Latencies {
        actual: micros_histogram(),
        scheduled: micros_histogram(),
        sent: record.sent.iter().filter(|t| inside(**t)).count() as u64,
        received: 0,
    };
    for &(scheduled, actual, arrived) in &record.arrivals {
        if inside(scheduled) {
            found.received += 1;
            record_us(&mut found.actual, arrived.saturating_sub(actual));
            record_us(&mut found.scheduled, arrived.saturating_sub(scheduled));
        }
    }
    found
}

fn record_us(histogram: &mut Histogram<u64>, us: u64) {
    record(histogram, Duration::from_micros(us));
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Why the probe ended early (its thread's result, or that it ended without one).
async fn probe_error(done: oneshot::Receiver<anyhow::Result<ProbeRecord>>) -> anyhow::Error {
    match done.await {
        Ok(Err(e)) => e.context("the probe failed"),
        Ok(Ok(_)) => anyhow::anyhow!("the probe stopped before it was told to"),
        Err(_) => anyhow::anyhow!("the probe's thread ended without a result"),
    }
}

/// Starts a relay process on `data_dir`, within [`START_TIMEOUT`].
async fn start_relay(
    services: &Services,
    process: &ProcessOptions,
) -> anyhow::Result<RelayProcess> {
    tokio::time::timeout(START_TIMEOUT, spawn_process(services, process))
        .await
        .with_context(|| format!("the relay did not start within {START_TIMEOUT:?}"))?
}

/// `VmHWM` (peak resident memory) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM line")
}

/// Samples how many files a process has open, every 250 ms, until stopped (its peak).
struct FdWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl FdWatch {
    fn start(pid: u32) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("storm-fds".to_owned())
            .spawn(move || {
                let mut peak = 0;
                while !flag.load(Ordering::Relaxed) {
                    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                        peak = peak.max(entries.count() as u64);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                peak
            })?;
        Ok(Self { stop, thread })
    }

    /// Stops sampling; the peak seen.
    async fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap_or(0))
            .await
            .unwrap_or(0)
    }
}

/// `ferry_handshakes_total{outcome="ok"}` (device sessions the relay established).
fn relay_sessions(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix("ferry_handshakes_total{outcome=\"ok\"} ")
            .and_then(|value| value.trim().parse().ok())
    })
}

/// The relay's non-zero handshake, error and limit counters, for a note.
fn relay_counters(metrics: &str) -> String {
    let wanted = [
        "ferry_handshakes_total",
        "ferry_errors_total",
        "ferry_limit_refusals_total",
        "ferry_replayed_events_total",
    ];
    metrics
        .lines()
        .filter(|line| wanted.iter().any(|name| line.starts_with(name)))
        .filter(|line| {
            line.rsplit_once(' ')
                .and_then(|(_, value)| value.parse::<f64>().ok())
                .is_some_and(|value| value > 0.0)
        })
        .map(|line| line.trim_start_matches("ferry_").to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let asked = options.pick(
        options.connections.as_ref().and_then(|c| c.last().copied()),
        20_000,
        200,
    );
    let quiet = options.duration(Duration::from_secs(5), Duration::from_secs(1));
    let rate = options.rate.unwrap_or(PROBE_RATE);
    let (register_limit, storm_limit) = if options.quick {
        (Duration::from_secs(20), Duration::from_secs(20))
    } else {
        (Duration::from_secs(600), Duration::from_secs(300))
    };
    let sources = options.sources;
    let mut report = Report::default();

    let own_limit = raise_nofile();
    let dir = tmpfs_folder("ferry-bench-storm-")?;
    let process = ProcessOptions {
        program: options.relay_bin.clone(),
        data_dir: dir.path().to_owned(),
        postgres: options.services.backend == Backend::Postgres,
        ..ProcessOptions::default()
    };
    step(NAME, "starting a relay process");
    let relay = start_relay(&options.services, &process).await?;
    let relay_limit = nofile_of(relay.pid())?;
    let limit = own_limit.min(relay_limit);
    let spare = limit / SPARE_SHARE;
    let feasible = (limit.saturating_sub(spare) as usize).saturating_sub(PROBE_DEVICES);
    let devices = asked.min(feasible) / 2 * 2;
    ensure!(
        devices >= 2,
        "RLIMIT_NOFILE ({own_limit} here, {relay_limit} for the relay) leaves room for no device"
    );
    if devices < asked {
        report.note(format!(
            "storm: {} devices asked, {} reconnected: RLIMIT_NOFILE is {own_limit} here (bench) \
             and {relay_limit} (relay), one descriptor per connection on each side; {spare} kept \
             spare (the relay holds abandoned attempts' sockets until it reaches them) and \
             {PROBE_DEVICES} for the probe; the hard limit cannot be raised in this sandbox",
            number(asked as f64),
            number(devices as f64),
        ));
    }

    // Set-up: register every device; leave B devices events to catch up.
    let users: Arc<Vec<Vec<Identity>>> =
        Arc::new((0..devices / 2).map(|_| Identity::new_user(2)).collect());
    step(
        NAME,
        format_args!(
            "registering {} devices ({} users), {EVENTS_PER_USER} events each for device B",
            number(devices as f64),
            number(users.len() as f64)
        ),
    );
    let registered = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(
        format!("{NAME}: registered"),
        Arc::clone(&registered),
        "devices",
    );
    let target = relay.target();
    let set_up = StdInstant::now();
    let heads: Vec<anyhow::Result<u64>> = tokio::time::timeout(
        register_limit,
        futures_util::stream::iter(users.iter().enumerate().map(|(u, ids)| {
            let registered = Arc::clone(&registered);
            async move {
                let pair = (
                    source_address(2 * u, sources),
                    source_address(2 * u + 1, sources),
                );
                let head = register_user(target, ids, pair)
                    .await
                    .with_context(|| format!("registering user {u}"))?;
                registered.fetch_add(2, Ordering::Relaxed);
                Ok(head)
            }
        }))
        .buffered(if options.quick { 16 } else { 64 })
        .collect(),
    )
    .await
    .with_context(|| {
        format!(
            "registering {devices} devices did not finish within {register_limit:?} ({} done)",
            registered.load(Ordering::Relaxed)
        )
    })?;
    drop(progress);
    let heads = heads.into_iter().collect::<anyhow::Result<Vec<u64>>>()?;
    let set_up = set_up.elapsed();
    if let Some(head) = heads.iter().find(|head| **head != EVENTS_PER_USER) {
        bail!("a user's log head is {head} after {EVENTS_PER_USER} appends to a fresh log");
    }
    // Let the relay see the last disconnections before it is killed.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Restart.
    let key = relay.target().relay;
    let program = relay.program.clone();
    step(
        NAME,
        "killing the relay and starting it again on the same folder",
    );
    tokio::task::spawn_blocking(move || drop(relay)).await?;
    let restarted = StdInstant::now();
    let relay = start_relay(&options.services, &process).await?;
    let restart_time = restarted.elapsed();
    ensure!(
        relay.target().relay == key,
        "the restarted relay has another key"
    );
    let target = relay.target();
    let rss_started = relay.rss_kib()?;

    // The probe, then its quiet window.
    let base = StdInstant::now();
    let probe_sources = (
        source_address(devices, sources),
        source_address(devices + 1, sources),
    );
    let mut probe = Probe::start(target, probe_sources, rate, base);
    step(
        NAME,
        format_args!("probe: {rate} ev/s, quiet window {quiet:?}"),
    );
    match tokio::time::timeout(Duration::from_secs(40), &mut probe.ready).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(probe_error(probe.done).await),
        Err(_) => {
            probe.stop.store(true, Ordering::Relaxed);
            bail!("the probe did not connect within 40 s");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet_start = micros(base.elapsed());
    tokio::time::sleep(quiet).await;
    let rss_before = relay.rss_kib()?;

    // The storm.
    let expects: Vec<Expect> = heads
        .iter()
        .flat_map(|&head| [Expect { acked: head, head }, Expect { acked: 0, head }])
        .collect();
    let start = Instant::now() + Duration::from_millis(200);
    let deadline = start + storm_limit;
    let storm_start = micros(start.into_std().saturating_duration_since(base));
    let tally = Arc::new(Tally::default());
    step(
        NAME,
        format_args!(
            "{} devices reconnect at once (bounded to {storm_limit:?})",
            number(devices as f64)
        ),
    );
    let tasks: Vec<_> = expects
        .iter()
        .enumerate()
        .map(|(i, &expect)| {
            let users = Arc::clone(&users);
            let tally = Arc::clone(&tally);
            let source = source_address(i, sources);
            tokio::spawn(async move {
                let id = &users[i / 2][i % 2];
                reconnect(target, id, expect, source, (start, deadline), &tally).await
            })
        })
        .collect();
    let fds = FdWatch::start(relay.pid())?;
    tokio::time::sleep_until(start).await;
    let cpu_before = CpuSample::take(&[relay.pid()]);
    let progress = Progress::start(
        format!("{NAME}: caught up"),
        Arc::clone(&tally.caught_up),
        "devices",
    );
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.context("a storm device's task")?);
    }
    let cpu = cpu_before.until(&CpuSample::take(&[relay.pid()]));
    let fds_peak = fds.peak().await;
    drop(progress);
    let storm_wall = start.elapsed();
    let last_caught_up = outcomes.iter().filter_map(|o| o.caught_up).max();
    let failed = outcomes.iter().filter(|o| o.caught_up.is_none()).count();
    let storm_end = storm_start
        + micros(if failed == 0 {
            last_caught_up.unwrap_or_default()
        } else {
            storm_wall
        });

    // After the storm: memory with every device connected, then the probe's record.
    let rss_after = relay.rss_kib()?;
    let rss_peak = peak_rss_kib(relay.pid())?;
    let (metrics, relay) =
        tokio::task::spawn_blocking(move || (relay.metrics_text(), relay)).await?;
    let metrics = metrics.unwrap_or_default();
    probe.stop.store(true, Ordering::Relaxed);
    let probed = match tokio::time::timeout(PROBE_DRAIN * 3, &mut probe.done).await {
        Ok(Ok(Ok(record))) => record,
        Ok(Ok(Err(e))) => return Err(e.context("the probe failed")),
        Ok(Err(_)) => return Err(probe_error(probe.done).await),
        Err(_) => bail!("the probe did not stop within {:?}", PROBE_DRAIN * 3),
    };
    let connections: Vec<Connection> = outcomes
        .iter_mut()
        .filter_map(|o| o.connection.take())
        .collect();
    drop(connections);
    tokio::task::spawn_blocking(move || drop(relay)).await?;

    // Figures.
    let mut to_session = micros_histogram();
    let mut to_caught_up = micros_histogram();
    for outcome in &outcomes {
        if let Some(at) = outcome.connected {
            record(&mut to_session, at);
        }
        if let Some(at) = outcome.caught_up {
            record(&mut to_caught_up, at);
        }
    }
    let handshakes = tally.handshakes.load(Ordering::Relaxed);
    let last_handshake =
        Duration::from_micros(tally.last_handshake_us.load(Ordering::Relaxed).max(1));
    let retried = outcomes.iter().filter(|o| o.attempts > 1).count();
    let most_attempts = outcomes.iter().map(|o| o.attempts).max().unwrap_or(0);
    let redelivered: u64 = outcomes.iter().map(|o| o.redelivered).sum();
    let n = devices as f64;

    report.add(NAME, "devices reconnecting at once", n, "devices");
    match (failed == 0, last_caught_up) {
        (true, Some(at)) => report.add(NAME, "all caught up after", at.as_secs_f64(), "s"),
        _ => report.note(format!(
            "storm: {} of {} devices were not caught up after {:.1} s",
            number(failed as f64),
            number(n),
            storm_wall.as_secs_f64()
        )),
    }
    for (what, times) in [
        ("time to caught up", &to_caught_up),
        ("time to session", &to_session),
    ] {
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            report.add(NAME, format!("{what}, {name}"), quantile_ms(times, q), "ms");
        }
    }
    report.add(
        NAME,
        "handshakes/s during the storm",
        handshakes as f64 / last_handshake.as_secs_f64(),
        "hs/s",
    );
    report.add(
        NAME,
        "retries (attempts after a device's first)",
        tally.retries.load(Ordering::Relaxed) as f64,
        "attempts",
    );
    report.add(NAME, "devices that retried", retried as f64, "devices");
    if let Some(sessions) = relay_sessions(&metrics) {
        // The relay's count includes the probe's two devices.
        report.add(
            NAME,
            "sessions the relay established for attempts already given up",
            (sessions - handshakes as f64 - PROBE_DEVICES as f64).max(0.0),
            "sessions",
        );
    }
    report.add(
        NAME,
        "most attempts by one device",
        f64::from(most_attempts),
        "attempts",
    );
    report.add(
        NAME,
        "devices failed (not caught up)",
        failed as f64,
        "devices",
    );
    report.add(
        NAME,
        "cursors or heads not as before the restart",
        tally.cursor_mismatches.load(Ordering::Relaxed) as f64,
        "devices",
    );
    report.add(
        NAME,
        "acknowledged events delivered again",
        redelivered as f64,
        "ev",
    );

    let quiet_window = window(&probed, quiet_start, storm_start);
    let storm_window = window(&probed, storm_start, storm_end);
    add_percentiles(
        &mut report,
        NAME,
        "probe live event during the storm, ",
        &storm_window,
        None,
    );
    add_percentiles(
        &mut report,
        NAME,
        "probe live event before the storm (quiet), ",
        &quiet_window,
        None,
    );
    report.add(
        NAME,
        "probe events sent during the storm",
        storm_window.sent as f64,
        "ev",
    );
    report.add(
        NAME,
        "probe events not delivered",
        (storm_window.sent + quiet_window.sent)
            .saturating_sub(storm_window.received + quiet_window.received) as f64,
        "ev",
    );
    report.add(
        NAME,
        "probe appends refused by the relay",
        probed.refused.values().sum::<u64>() as f64,
        "ev",
    );
    report.add(
        NAME,
        "relay open files, peak during the storm",
        fds_peak as f64,
        "files",
    );
    report.add(
        NAME,
        "relay RSS before the storm (probe only)",
        rss_before as f64 / 1024.0,
        "MiB",
    );
    report.add(
        NAME,
        "relay RSS after the storm (all connected)",
        rss_after as f64 / 1024.0,
        "MiB",
    );
    report.add(
        NAME,
        "relay peak RSS since the restart (VmHWM)",
        rss_peak as f64 / 1024.0,
        "MiB",
    );
    cpu.add_to(&mut report, NAME, "storm ");

    report.note(format!(
        "storm: {} devices (2 per user) registered through a relay process ({}, {}) in {:.1} s; \
         device A of each user appended {EVENTS_PER_USER} events of {PAYLOAD} B and \
         acknowledged them, device B acknowledged nothing; the relay was killed and started \
         again on the same folder ({:.2} s to serve, RSS {:.0} MiB); then every device \
         reconnected at the same instant from {sources} loopback source addresses (retries: \
         backoff from {BACKOFF_MIN:?} doubling to {BACKOFF_MAX:?}, upper half jittered; \
         {CONNECT_TIMEOUT:?} to a session), caught up when CaughtUp and every unacknowledged \
         event arrived (B then acknowledged them); a probe user on its own thread sent {rate} \
         ev/s A → B, quiet window {quiet:?} before the storm; CPU over the storm's {:.1} s",
        number(n),
        program,
        match options.services.backend {
            Backend::Sqlite if dir.path().starts_with("/dev/shm") => "SQLite on tmpfs",
            Backend::Sqlite => "SQLite in the temporary folder",
            Backend::Postgres => "PostgreSQL",
        },
        set_up.as_secs_f64(),
        restart_time.as_secs_f64(),
        rss_started as f64 / 1024.0,
        cpu.wall.as_secs_f64(),
    ));
    let errors = tally
        .errors
        .lock()
        .map(|errors| {
            errors
                .iter()
                .map(|(what, count)| format!("{} × {what}", number(*count as f64)))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    if !errors.is_empty() {
        report.note(format!("storm: failed attempts: {errors}"));
    }
    let mut failures: BTreeMap<&str, u64> = BTreeMap::new();
    for why in outcomes.iter().filter_map(|o| o.failure.as_deref()) {
        *failures.entry(why).or_default() += 1;
    }
    if !failures.is_empty() {
        let text: Vec<String> = failures
            .iter()
            .map(|(why, count)| format!("{} × {why}", number(*count as f64)))
            .collect();
        report.note(format!("storm: devices failed: {}", text.join("; ")));
    }
    if !probed.refused.is_empty() {
        let text: Vec<String> = probed
            .refused
            .iter()
            .map(|(code, count)| format!("{} × {code}", number(*count as f64)))
            .collect();
        report.note(format!(
            "storm: the probe's appends refused: {}",
            text.join("; ")
        ));
    }
    if fds_peak + relay_limit / 100 >= relay_limit {
        report.note(format!(
            "storm: the relay came within 1% of its file-descriptor limit ({relay_limit}; \
             {fds_peak} open at the peak sampled every 250 ms): accepts and database files \
             may have failed with EMFILE, so the figures show the sandbox's limit too"
        ));
    }
    let counters = relay_counters(&metrics);
    if !counters.is_empty() {
        report.note(format!(
            "storm: the restarted relay's counters after the storm (probe included; a connection \
             dropped without a WebSocket close counts as malformed_frame): {counters}"
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_in_the_upper_half() {
        let mut ceiling = BACKOFF_MIN;
        for retry in 1..=12 {
            for random in [0, 1, u64::MAX / 3, u64::MAX] {
                let wait = backoff_wait(retry, random);
                assert!(
                    wait <= ceiling && wait >= ceiling / 2,
                    "retry {retry}: {wait:?} vs {ceiling:?}"
                );
            }
            assert_eq!(backoff_wait(retry, 0), ceiling / 2);
            ceiling = (ceiling * 2).min(BACKOFF_MAX);
        }
        assert_eq!(backoff_wait(1_000, 2_500_000_000), BACKOFF_MAX);
        assert!(backoff_wait(u32::MAX, u64::MAX) <= BACKOFF_MAX);
        assert_eq!(backoff_wait(5, 0), Duration::from_millis(800));
    }

    #[test]
    fn caught_up_needs_every_unacknowledged_event() {
        // Device B: nothing acknowledged, head 5.
        let mut b = Held::new(Expect { acked: 0, head: 5 });
        assert!(b.expects_events());
        for seq in [1, 2, 4, 5, 5] {
            b.receive(seq);
        }
        assert_eq!(b.missing(), 1);
        b.receive(3);
        assert_eq!(b.missing(), 0);
        assert_eq!(b.redelivered, 0);
        // Events past the head (live ones) are not counted against it.
        b.receive(6);
        assert_eq!(b.missing(), 0);

        // Device A: acknowledged up to the head; anything at or below it is a re-delivery.
        let mut a = Held::new(Expect { acked: 5, head: 5 });
        assert!(!a.expects_events());
        assert_eq!(a.missing(), 0);
        a.receive(3);
        a.receive(5);
        assert_eq!(a.redelivered, 2);
    }
}
