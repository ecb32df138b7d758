//! `push`: push wake-ups per second to a local push service (issue 12).
//!
//! # Method
//!
//! One in-process relay (SQLite, or PostgreSQL with `--backend postgres`) with
//! `--push-allow-loopback` and a short push delay ([`DELAY_MS`], or the bench's
//! `--push-delay-ms`; the relay's default is 2 s), every other push setting at its default;
//! and, in the same process, a local push service on 127.0.0.1 ([`Service`]): a minimal
//! HTTP/1.1 server that answers every well-formed Web Push `POST /push/<i>` with
//! `201 Created` and records when it arrived. It checks that the request is a Web Push message
//! (`TTL`, `Content-Encoding: aes128gcm`, `Authorization: vapid t=…`, a body of at most 4,182
//! bytes) but does not decrypt it (`relay/tests/support/push_service.rs` does that for the
//! relay's tests).
//!
//! `users` users (1,000; `--quick` 20), two devices each. Untimed setup: every device B
//! connects, registers `http://127.0.0.1:PORT/push/<i>` (the P-256 generator as its key, a
//! 16-byte auth secret), gets `Done` and disconnects (the run waits until the relay has no
//! session left); then every device A connects. Measured: every device A sends a burst of
//! [`BURST`] appends at once (all users together) and reads their `Appended`. The relay then
//! owes every device B (offline, behind its user's head) one wake-up, however many commits
//! woke it. The clock starts just before the first append is sent; the run waits for one
//! wake-up per user, then [`SETTLE`] (at least the delay and 1 s) more for any duplicate.
//!
//! Two configurations, each on a fresh relay: every target on **one push service** (one
//! origin: the relay's cap of `PER_ORIGIN_SENDS` requests at once per push service applies to
//! all), then the same users spread over **[`ORIGINS`] push services** (listeners on as many
//! ports, recording together), so that the per-service cap no longer binds below the relay's
//! 64 sends at once in all. The ratio of the two steady rates shows what the cap costs.
//!
//! Figures per configuration: the time from the first append to the last user's wake-up;
//! wake-ups per second over it (users ÷ that time) and over the steady part (the 10th to the
//! 90th percentile of arrivals, which leaves out the delay before the first and the drain
//! after); the longest pause between two wake-ups in the steady part and the time the last
//! 10% took; the process's CPU time over the steady part (relay, push service and devices
//! share it; `/proc/self/stat` sampled every 5 ms), in cores and per wake-up; the time to the
//! first and the median wake-up; when the last append was acknowledged and when the relay had
//! stored every wake request (its `queued` + `coalesced` sampled every 5 ms stops growing);
//! the most and the mean requests open at the push service; users not woken and duplicate
//! wake-ups (both must be 0: one wake-up per device, coalesced; duplicates for users one of
//! whose appends was acknowledged after their first wake-up are also counted apart, as those
//! are wake-ups for a later event), requests the service refused (0), and the relay's own
//! `ferry_push_wake_ups_total` by outcome. Beside them, the relay's cryptography per wake-up
//! (its RFC 8291 encryption and VAPID header, called 1,000 times each on one core; 50 with
//! `--quick`): the CPU ceiling of the sender on this machine. The arrivals per 500 ms (and, when there are
//! duplicates, their timing) are printed on stderr.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferry_protocol::{ClientFrame, PushTarget, ServerFrame};
use ferry_relay::push::queue::PER_ORIGIN_SENDS;
use ferry_relay::push::web_push::{self, Subscription, VapidKey};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::{Options, connect_all, cores, payload};
use crate::client::{ClientError, Connection, Identity, append};
use crate::cpu::process_cpu_seconds;
use crate::progress::{Progress, step};
use crate::relay::{BenchRelay, NodeOptions, metric};
use crate::report::{Goal, Report, number};

const NAME: &str = "push";
/// Appends each device A sends at once.
pub const BURST: u64 = 5;
/// Sealed payload size of every append.
const PAYLOAD: usize = 256;
/// The relay's `--push-delay-ms` here.
pub const DELAY_MS: u64 = 200;
/// How long the run waits after the last expected wake-up for duplicates (at least the delay
/// and 1 s).
pub const SETTLE: Duration = Duration::from_millis(1_500);
/// Push services (origins) the second configuration spreads the users over: with the
/// relay's 32 per service, 4 make 128, above its 64 sends at once in all.
pub const ORIGINS: usize = 4;
/// Devices connecting or registering at once during setup.
const SETUP_CONCURRENCY: usize = 32;
/// A subscription's P-256 key: the generator, uncompressed (a valid point; nothing decrypts).
const P256DH_HEX: &str = "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296\
                          4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
/// Longest request head the service reads.
const MAX_HEAD: usize = 16 * 1024;
/// Longest body the service takes (RFC 8030 §7.2: 4,096 bytes of payload, plus the
/// aes128gcm header and tag).
const MAX_BODY: usize = 4096 + 86;
/// The outcomes of `ferry_push_wake_ups_total`, in the order reported.
const OUTCOMES: [&str; 8] = [
    "queued",
    "coalesced",
    "skipped",
    "sent",
    "retried",
    "failed",
    "unregistered",
    "dropped",
];

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let users = options.pick(options.users, 1_000, 20).max(1);
    let wait = if options.quick {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(300)
    };
    let iterations = if options.quick { 50 } else { 1_000 };
    step(
        NAME,
        format_args!("the relay's cryptography per wake-up, {iterations} times on one core"),
    );
    let (encryption, vapid) =
        tokio::task::spawn_blocking(move || crypto_per_message(iterations)).await??;
    let delay_ms = options.push_delay_ms.unwrap_or(DELAY_MS);
    let settle = SETTLE.max(Duration::from_millis(delay_ms + 1_000));
    let one = measure(options, users, 1, delay_ms, wait, settle).await?;
    let spread = measure(options, users, ORIGINS, delay_ms, wait, settle).await?;

    let mut report = Report::default();
    one.report(&mut report, true);
    spread.report(&mut report, false);
    report.add(
        NAME,
        "relay CPU per wake-up, one core: RFC 8291 encryption",
        encryption,
        "µs",
    );
    report.add(
        NAME,
        "relay CPU per wake-up, one core: VAPID header (ES256 JWT)",
        vapid,
        "µs",
    );
    report.add(
        NAME,
        format!("… both: ceiling on {} cores doing nothing else", cores()),
        cores() as f64 * 1e6 / (encryption + vapid),
        "/s",
    );
    if let (Some(one), Some(spread)) = (one.steady, spread.steady) {
        report.add(
            NAME,
            format!("steady wake-ups per second, {ORIGINS} push services ÷ 1"),
            spread.rate / one.rate,
            "×",
        );
    }
    report.note(format!(
        "push: {users} users × 2 devices; each device B registers a Web Push target \
         http://127.0.0.1:PORT/push/<i> on a local push service and goes offline, then every \
         device A appends a burst of {BURST} events of {PAYLOAD} B at once; the clock starts \
         just before the first append; duplicates are counted until {settle:?} after the last \
         user's wake-up (or {wait:?}). Relay: --push-allow-loopback, --push-delay-ms {delay_ms} \
         (default 2000), every other push setting at its default. The push service answers 201 \
         to every well-formed POST (headers checked, body not decrypted); relay, push service \
         and devices share this process and its cores"
    ));
    report.note(format!(
        "push: \"1 push service\": every target on one origin, so the relay's cap of \
         {PER_ORIGIN_SENDS} requests at once per push service and node applies to all; \
         \"{ORIGINS} push services\": the same on a fresh relay with the users spread over \
         {ORIGINS} origins (127.0.0.1 on {ORIGINS} ports), so only the relay's 64 sends at once \
         in all bind"
    ));
    Ok(report)
}

/// What one configuration measured.
#[derive(Debug)]
struct Measured {
    users: usize,
    origins: usize,
    /// Users' first wake-ups, after the first append, in order.
    woken: Vec<Duration>,
    duplicates: u64,
    /// Duplicates for users with an append acknowledged after their first wake-up.
    later_event: u64,
    refused: u64,
    /// The most connections open at once at the push service(s).
    peak: u64,
    /// Every connection: when accepted and when closed.
    connections: Vec<(Instant, Instant)>,
    /// When the last append was acknowledged, after the first was sent.
    appended: Duration,
    /// When the relay had stored every wake request (its `queued` + `coalesced` stopped
    /// growing), after the first append was sent.
    all_stored: Duration,
    steady: Option<Steady>,
    /// The relay's `ferry_push_wake_ups_total` by outcome, as in [`OUTCOMES`].
    outcomes: Vec<f64>,
}

/// What is sampled while the wake-ups come.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// After the first append.
    at: Duration,
    /// The process's CPU time so far, in seconds.
    cpu: Option<f64>,
    /// The relay's `ferry_push_wake_ups_total` `queued` + `coalesced`: wake requests stored.
    stored: f64,
}

/// The 10th to the 90th percentile of the users' first wake-ups.
#[derive(Clone, Copy, Debug)]
struct Steady {
    /// Wake-ups per second.
    rate: f64,
    /// The longest time without any wake-up.
    longest_pause: Duration,
    /// When it ends (the 90th percentile), after the first append.
    end: Duration,
    /// The process's CPU time over it: cores, and ms per wake-up.
    cores: Option<f64>,
    cpu_per_wake_up_ms: Option<f64>,
}

/// Runs one configuration on a fresh relay: `users` users, their targets spread over
/// `origins` push services.
async fn measure(
    options: &Options,
    users: usize,
    origins: usize,
    delay_ms: u64,
    wait: Duration,
    settle: Duration,
) -> anyhow::Result<Measured> {
    let label = format!("{NAME}, {}", services(origins));
    let service = Service::start(users, origins).await?;
    step(&label, "starting the relay");
    let relay = BenchRelay::spawn(
        &options.services,
        NodeOptions {
            push_allow_loopback: true,
            push_delay_ms: Some(delay_ms),
            ..NodeOptions::default()
        },
    )
    .await?;
    let target = relay.target();
    let people: Vec<Vec<Identity>> = (0..users).map(|_| Identity::new_user(2)).collect();

    // Devices B: register where they are woken, then go offline.
    let asleep: Vec<_> = people.iter().map(|user| (target, &user[1])).collect();
    let connections = connect_all(
        &format!("{label}, devices B"),
        &asleep,
        SETUP_CONCURRENCY,
        options.sources,
    )
    .await?;
    step(
        &label,
        format_args!("{users} devices B register a push target"),
    );
    let p256dh = hex(P256DH_HEX);
    let registered: Vec<Result<(), ClientError>> =
        futures_util::stream::iter(connections.into_iter().enumerate().map(|(i, connection)| {
            let target = PushTarget::WebPush {
                endpoint: service.endpoint(i),
                p256dh: p256dh.clone(),
                auth: (0..16).map(|b| b ^ (i as u8)).collect(),
            };
            register(connection, target)
        }))
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    for result in registered {
        result.context("registering a push target")?;
    }
    // Offline means no session: wait until the relay has ended them all.
    let offline = Instant::now();
    while metric(&relay.metrics_text(), "ferry_sessions").unwrap_or(0.0) > 0.0 {
        if offline.elapsed() > Duration::from_secs(10) {
            bail!("devices B still have sessions 10 s after they closed");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Devices A: online, each about to append a burst.
    let awake: Vec<_> = people.iter().map(|user| (target, &user[0])).collect();
    let connections = connect_all(
        &format!("{label}, devices A"),
        &awake,
        SETUP_CONCURRENCY,
        options.sources,
    )
    .await?;
    let before = service.state.accepted.load(Ordering::Relaxed);
    if before > 0 {
        bail!("{before} wake-ups arrived before any append");
    }

    step(
        &label,
        format_args!("{users} devices A append {BURST} events each; waiting for the wake-ups"),
    );
    let started = Instant::now();
    let bursts: Vec<JoinHandle<Result<(Instant, Connection), ClientError>>> = connections
        .into_iter()
        .map(|c| tokio::spawn(burst(c)))
        .collect();
    let progress = Progress::start(
        format!("{label}: woken"),
        Arc::clone(&service.state.accepted),
        "wake-ups",
    );
    // Sampled every 5 ms from the first append until the wait ends: the process's CPU time
    // (relay, push service and bench together) and the wake requests the relay has stored.
    let done = AtomicBool::new(false);
    let sampling = async {
        let mut samples = Vec::new();
        while !done.load(Ordering::Relaxed) {
            let text = relay.metrics_text();
            samples.push(Sample {
                at: started.elapsed(),
                cpu: process_cpu_seconds(),
                stored: wake_ups(&text, "queued") + wake_ups(&text, "coalesced"),
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples
    };
    let waiting = async {
        let waited = async {
            // Per user, when its last append was acknowledged (so committed).
            let mut appended = Vec::with_capacity(users);
            let mut online = Vec::with_capacity(users);
            for task in bursts {
                let (at, connection) = task.await?.context("a device A's burst")?;
                appended.push(at.saturating_duration_since(started));
                online.push(connection);
            }
            let deadline = started + wait;
            while service.state.accepted.load(Ordering::Relaxed) < (users as u64)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok((appended, online))
        }
        .await;
        done.store(true, Ordering::Relaxed);
        waited
    };
    let (samples, waited) = tokio::join!(sampling, waiting);
    let (appended, online) = waited?;
    let cpu: Vec<(Duration, f64)> = samples
        .iter()
        .filter_map(|sample| Some((sample.at, sample.cpu?)))
        .collect();
    // When the intake had stored the last wake request (the sum stops growing).
    let stored = samples.last().map_or(0.0, |last| last.stored);
    let all_stored = samples
        .iter()
        .find(|sample| sample.stored >= stored)
        .map_or(Duration::ZERO, |sample| sample.at);
    tokio::time::sleep(settle).await;
    drop(progress);
    let metrics = relay.metrics_text();
    let arrivals = service.arrivals();
    let refused = service.state.refused.load(Ordering::Relaxed);
    let peak = service.state.peak_open.load(Ordering::Relaxed);
    let connections = service.connections();
    drop(online);
    relay.shutdown(Duration::from_secs(5)).await;
    drop(service);

    // Per user: how many wake-ups, and when the first came.
    let mut counts = vec![0_u64; users];
    let mut first: Vec<Option<Duration>> = vec![None; users];
    for (subscription, at) in &arrivals {
        counts[*subscription] += 1;
        let since = at.saturating_duration_since(started);
        let slot = &mut first[*subscription];
        *slot = Some(slot.map_or(since, |earlier| earlier.min(since)));
    }
    let duplicates: u64 = counts.iter().map(|n| n.saturating_sub(1)).sum();
    // A duplicate for a user one of whose appends was acknowledged after its first wake-up
    // had arrived: a wake-up for a later event (only pending wake-ups coalesce).
    let later_event: u64 = (0..users)
        .filter(|&i| first[i].is_some_and(|at| appended[i] > at))
        .map(|i| counts[i].saturating_sub(1))
        .sum();
    if duplicates > 0 {
        step(
            &label,
            duplicates_seen(&arrivals, started, &appended, &first),
        );
    }
    let mut woken: Vec<Duration> = first.into_iter().flatten().collect();
    woken.sort();
    if woken.is_empty() {
        bail!("no wake-up arrived within {wait:?} of the first append");
    }
    step(&label, timeline(&woken));
    let steady = steady(&woken, &cpu);
    Ok(Measured {
        users,
        origins,
        woken,
        duplicates,
        later_event,
        refused,
        peak,
        connections,
        appended: appended.iter().max().copied().unwrap_or_default(),
        all_stored,
        steady,
        outcomes: OUTCOMES
            .iter()
            .map(|outcome| wake_ups(&metrics, outcome))
            .collect(),
    })
}

/// The steady part of `woken` (sorted), with the CPU samples `(time, seconds)` taken meanwhile.
fn steady(woken: &[Duration], cpu: &[(Duration, f64)]) -> Option<Steady> {
    if woken.len() < 10 {
        return None;
    }
    let (low, high) = (woken.len() / 10, woken.len() * 9 / 10);
    let span = woken[high]
        .saturating_sub(woken[low])
        .as_secs_f64()
        .max(1e-6);
    let longest_pause = woken[low..=high]
        .windows(2)
        .map(|pair| pair[1].saturating_sub(pair[0]))
        .max()
        .unwrap_or_default();
    // The CPU samples nearest after the two arrivals (every 5 ms; the kernel counts in 10 ms).
    let at = |t: Duration| cpu.iter().find(|(when, _)| *when >= t).copied();
    let busy = match (at(woken[low]), at(woken[high])) {
        (Some((from, cpu_from)), Some((to, cpu_to))) if to > from => {
            Some((cpu_to - cpu_from, to.saturating_sub(from).as_secs_f64()))
        }
        _ => None,
    };
    Some(Steady {
        rate: (high - low) as f64 / span,
        longest_pause,
        end: woken[high],
        cores: busy.map(|(cpu, wall)| cpu / wall),
        cpu_per_wake_up_ms: busy.map(|(cpu, _)| cpu * 1000.0 / (high - low) as f64),
    })
}

/// "1 push service", "4 push services".
fn services(origins: usize) -> String {
    if origins == 1 {
        "1 push service".to_owned()
    } else {
        format!("{origins} push services")
    }
}

impl Measured {
    /// Adds this configuration's figures; `full` adds the times to the first and the median
    /// wake-up and the `queued` and `coalesced` outcomes, which the other configuration leaves
    /// out.
    fn report(&self, report: &mut Report, full: bool) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let label = services(self.origins);
        // Whole numbers, grouped from 1,000 on.
        let users = if self.users >= 1_000 {
            number(self.users as f64)
        } else {
            self.users.to_string()
        };
        let mut add = |measure: String, value: f64, unit: &str| {
            report.add(NAME, format!("{label}: {measure}"), value, unit);
        };
        let last = self.woken.last().copied().unwrap_or_default();
        add(
            format!("first append → last wake-up ({users} users)"),
            ms(last),
            "ms",
        );
        add(
            "wake-ups per second (users woken ÷ first append → last wake-up)".to_owned(),
            self.woken.len() as f64 / last.as_secs_f64().max(1e-6),
            "/s",
        );
        if let Some(steady) = self.steady {
            add(
                "wake-ups per second, steady (10th → 90th percentile)".to_owned(),
                steady.rate,
                "/s",
            );
            add(
                "longest pause between wake-ups, steady part".to_owned(),
                ms(steady.longest_pause),
                "ms",
            );
            add(
                "the last 10%: 90th percentile → last wake-up".to_owned(),
                ms(last.saturating_sub(steady.end)),
                "ms",
            );
            if let (Some(cores), Some(per)) = (steady.cores, steady.cpu_per_wake_up_ms) {
                add(
                    "process CPU, steady part (relay + push service + devices)".to_owned(),
                    cores,
                    "cores",
                );
                add("process CPU per wake-up, steady part".to_owned(), per, "ms");
            }
        }
        if full {
            let first = self.woken.first().copied().unwrap_or_default();
            add("first append → first wake-up".to_owned(), ms(first), "ms");
            add(
                "first append → wake-up p50".to_owned(),
                ms(self.woken[self.woken.len() / 2]),
                "ms",
            );
        }
        add(
            "all appends acknowledged after".to_owned(),
            ms(self.appended),
            "ms",
        );
        add(
            "relay: every wake request stored (queued + coalesced final) after".to_owned(),
            ms(self.all_stored),
            "ms",
        );
        add(
            "requests open at the push service: most at once".to_owned(),
            self.peak as f64,
            "requests",
        );
        let opened = self.connections.iter().map(|(accepted, _)| *accepted).min();
        let closed = self.connections.iter().map(|(_, closed)| *closed).max();
        if let (Some(opened), Some(closed)) = (opened, closed) {
            let total: Duration = self
                .connections
                .iter()
                .map(|(accepted, closed)| closed.saturating_duration_since(*accepted))
                .sum();
            let window = closed.saturating_duration_since(opened).as_secs_f64();
            add(
                "requests open at the push service: mean, first accepted → last closed".to_owned(),
                total.as_secs_f64() / window.max(1e-6),
                "requests",
            );
            add(
                "a connection at the push service, accepted → closed: mean".to_owned(),
                ms(total / self.connections.len() as u32),
                "ms",
            );
        }
        let missing = self.users - self.woken.len();
        let goals = [
            ("users not woken", missing as f64, "users"),
            (
                "duplicate wake-ups (beyond one per user)",
                self.duplicates as f64,
                "wake-ups",
            ),
            (
                "requests refused by the push service",
                self.refused as f64,
                "requests",
            ),
        ];
        for (measure, value, unit) in goals {
            report.add_goal(
                NAME,
                format!("{label}: {measure}"),
                value,
                unit,
                Goal::AtMost(0.0),
            );
        }
        if self.duplicates > 0 {
            report.add(
                NAME,
                format!("{label}: … duplicates after an append acknowledged after the first"),
                self.later_event as f64,
                "wake-ups",
            );
        }
        for (outcome, value) in OUTCOMES.iter().zip(&self.outcomes) {
            // In full: queued, coalesced and sent always, the others where they happened;
            // else sent, and the others but queued and coalesced where they happened.
            let always = *outcome == "sent"
                || full && *outcome == "queued"
                || *outcome == "coalesced" && full;
            let happened = *value > 0.0 && (full || !matches!(*outcome, "queued" | "coalesced"));
            if always || happened {
                report.add(
                    NAME,
                    format!("{label}: relay ferry_push_wake_ups_total{{outcome=\"{outcome}\"}}"),
                    *value,
                    "wake-ups",
                );
            }
        }
    }
}

/// Registers `target` for the device of `connection`, then closes it (the device is offline).
async fn register(mut connection: Connection, target: PushTarget) -> Result<(), ClientError> {
    connection.send(&ClientFrame::PushRegister(target)).await?;
    loop {
        match connection.recv().await? {
            ServerFrame::Done => break,
            ServerFrame::Error(error) => return Err(ClientError::Relay(error)),
            _ => {}
        }
    }
    connection.ws.close(None).await?;
    Ok(())
}

/// Sends [`BURST`] appends at once and reads their `Appended`; returns when the last came, and
/// the connection (kept open until the end).
async fn burst(mut connection: Connection) -> Result<(Instant, Connection), ClientError> {
    let body = payload(PAYLOAD);
    for seq in 1..=BURST {
        connection.feed(&append(seq, body.clone())).await?;
    }
    connection.flush().await?;
    let mut acked = 0;
    while acked < BURST {
        match connection.recv().await? {
            ServerFrame::Appended { .. } => acked += 1,
            ServerFrame::Error(error) => return Err(ClientError::Relay(error)),
            _ => {}
        }
    }
    Ok((Instant::now(), connection))
}

/// `ferry_push_wake_ups_total{outcome="…"}` in the relay's metrics (0 when absent: the relay
/// creates an outcome's series at its first count).
fn wake_ups(metrics: &str, outcome: &str) -> f64 {
    let series = format!("ferry_push_wake_ups_total{{outcome=\"{outcome}\"}}");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str())?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// For stderr: when the users woken more than once were woken, and when their appends were
/// acknowledged (`appended`, `first` per user, after `started`).
fn duplicates_seen(
    arrivals: &[(usize, Instant)],
    started: Instant,
    appended: &[Duration],
    first: &[Option<Duration>],
) -> String {
    let mut per_user: Vec<Vec<Duration>> = vec![Vec::new(); first.len()];
    for (user, at) in arrivals {
        per_user[*user].push(at.saturating_duration_since(started));
    }
    let mut second_after_first = Vec::new();
    let mut appended_before_first = Vec::new();
    for (user, times) in per_user.iter_mut().enumerate() {
        times.sort();
        if let (Some(one), Some(two)) = (times.first(), times.get(1)) {
            second_after_first.push(two.saturating_sub(*one));
            if let Some(first) = first[user] {
                appended_before_first.push(first.saturating_sub(appended[user]));
            }
        }
    }
    let quantiles = |mut values: Vec<Duration>| {
        values.sort();
        let at = |q: f64| {
            let i = ((values.len() - 1) as f64 * q).round() as usize;
            values.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        format!(
            "min {:.0}, median {:.0}, max {:.0} ms",
            at(0.0),
            at(0.5),
            at(1.0)
        )
    };
    format!(
        "{} users woken more than once: second wake-up after the first {}; their last append \
         acknowledged before their first wake-up by {}",
        second_after_first.len(),
        quantiles(second_after_first),
        quantiles(appended_before_first),
    )
}

/// The users' first wake-ups per 500 ms after the first append, for stderr.
fn timeline(woken: &[Duration]) -> String {
    let mut bins: Vec<usize> = Vec::new();
    for at in woken {
        let bin = (at.as_millis() / 500) as usize;
        if bins.len() <= bin {
            bins.resize(bin + 1, 0);
        }
        bins[bin] += 1;
    }
    let shown: Vec<String> = bins
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| format!("{:.1} s: {n}", i as f64 / 2.0))
        .collect();
    format!(
        "wake-ups per 500 ms after the first append: {}",
        shown.join(", ")
    )
}

/// What the relay computes for each wake-up it sends (`relay/src/push/sender.rs`): the payload
/// encrypted for the subscription (RFC 8291: an ephemeral P-256 key, ECDH, HKDF, AES-GCM) and
/// the VAPID header (RFC 8292: an ES256 signature), `iterations` times each on this thread;
/// µs per wake-up for each.
fn crypto_per_message(iterations: usize) -> anyhow::Result<(f64, f64)> {
    let iterations = iterations.max(1);
    let vapid = VapidKey::generate();
    let endpoint = "https://push.example/push/0";
    let subscription = Subscription::from_keys(endpoint, &hex(P256DH_HEX), &[7; 16])?;
    let started = Instant::now();
    for _ in 0..iterations {
        let body = web_push::encrypt(&subscription, br#"{"v":1,"kind":"message"}"#)?;
        std::hint::black_box(body);
    }
    let encryption = started.elapsed().as_secs_f64() * 1e6 / iterations as f64;
    let started = Instant::now();
    for i in 0..iterations {
        let expires_at = 4_000_000_000 + i as u64;
        let header = vapid.authorization(endpoint, "mailto:bench@localhost", expires_at)?;
        std::hint::black_box(header);
    }
    let signature = started.elapsed().as_secs_f64() * 1e6 / iterations as f64;
    Ok((encryption, signature))
}

/// Bytes from hexadecimal (a constant of this file: even length, hex digits only).
fn hex(text: &str) -> Vec<u8> {
    let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
    text.as_bytes()
        .chunks(2)
        .map(|pair| pair.iter().fold(0, |byte, c| (byte << 4) | digit(*c)))
        .collect()
}

/// The local push service: `POST /push/<i>` for subscriptions `0..subscriptions`, answered
/// `201 Created`, each arrival recorded. It may listen on several ports (as many push
/// services, one origin each, recording together). Stops with its connections when dropped.
#[derive(Debug)]
pub struct Service {
    /// Where it listens (127.0.0.1, free ports): one address per origin.
    pub addrs: Vec<SocketAddr>,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct State {
    subscriptions: usize,
    /// Wake-ups answered 201.
    accepted: Arc<AtomicU64>,
    /// Requests answered 400 or 404.
    refused: AtomicU64,
    /// Connections open now (on every port together), and the most at once.
    open: AtomicU64,
    peak_open: AtomicU64,
    /// Every accepted wake-up: its subscription and when its body was read.
    arrivals: Mutex<Vec<(usize, Instant)>>,
    /// Every connection closed: when accepted, and when the relay closed it.
    connections: Mutex<Vec<(Instant, Instant)>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Service {
    /// Starts the service with `subscriptions` subscriptions, on `origins` ports.
    pub async fn start(subscriptions: usize, origins: usize) -> anyhow::Result<Self> {
        let state = Arc::new(State {
            subscriptions,
            ..State::default()
        });
        let mut service = Self {
            addrs: Vec::new(),
            state,
            tasks: Vec::new(),
        };
        for _ in 0..origins.max(1) {
            let listener = TcpListener::bind(("127.0.0.1", 0))
                .await
                .context("binding the push service")?;
            service.addrs.push(listener.local_addr()?);
            let state = Arc::clone(&service.state);
            service.tasks.push(tokio::spawn(serve(listener, state)));
        }
        Ok(service)
    }

    /// Subscription `i`'s endpoint (the origins in turn).
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}/push/{i}", self.addrs[i % self.addrs.len()])
    }

    /// Every accepted wake-up so far: its subscription and when it arrived.
    pub fn arrivals(&self) -> Vec<(usize, Instant)> {
        self.state
            .arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every connection closed so far: when accepted, and when closed.
    pub fn connections(&self) -> Vec<(Instant, Instant)> {
        self.state
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Accepts connections until aborted (which drops them all).
async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, Arc::clone(&state)));
                }
                // Out of descriptors or the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection: counted while open.
async fn connection(mut stream: TcpStream, state: Arc<State>) {
    let accepted = Instant::now();
    let open = state.open.fetch_add(1, Ordering::Relaxed) + 1;
    state.peak_open.fetch_max(open, Ordering::Relaxed);
    let _ = exchange(&mut stream, &state).await;
    state.open.fetch_sub(1, Ordering::Relaxed);
    state
        .connections
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((accepted, Instant::now()));
}

/// Reads requests (HTTP/1.1, `Content-Length` bodies) and answers each until the client
/// closes; a request whose body cannot be framed is answered 400 and the connection closed.
async fn exchange(stream: &mut TcpStream, state: &State) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    loop {
        let head_len = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > MAX_HEAD || stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = Head::parse(&buf[..head_len]);
        let Some(body_len) = head.content_length.filter(|len| *len <= MAX_BODY) else {
            state.refused.fetch_add(1, Ordering::Relaxed);
            stream.write_all(&response(400)).await?;
            return Ok(());
        };
        while buf.len() < head_len + body_len {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let status = state.take(&head, body_len, Instant::now());
        stream.write_all(&response(status)).await?;
        buf.drain(..head_len + body_len);
    }
}

impl State {
    /// Records a request that arrived `at`; returns the status to answer.
    fn take(&self, head: &Head, body_len: usize, at: Instant) -> u16 {
        let subscription = head
            .path
            .strip_prefix("/push/")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.subscriptions);
        let Some(subscription) = subscription else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return 404;
        };
        let web_push = head.method == "POST" && head.ttl && head.aes128gcm && head.vapid;
        if !web_push || body_len == 0 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return 400;
        }
        self.arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((subscription, at));
        self.accepted.fetch_add(1, Ordering::Relaxed);
        201
    }
}

/// What the service reads of a request head.
#[derive(Debug, Default)]
struct Head {
    method: String,
    path: String,
    /// `None` when absent, unreadable, or with a `Transfer-Encoding` (not framed here).
    content_length: Option<usize>,
    /// `TTL` is a number (RFC 8030 §5.2: required).
    ttl: bool,
    /// `Content-Encoding: aes128gcm` (RFC 8291).
    aes128gcm: bool,
    /// `Authorization: vapid t=…` (RFC 8292).
    vapid: bool,
}

impl Head {
    fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let mut head = Self {
            method: request_line.next().unwrap_or_default().to_owned(),
            path: request_line.next().unwrap_or_default().to_owned(),
            ..Self::default()
        };
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => head.content_length = value.parse().ok(),
                "transfer-encoding" => chunked = true,
                "ttl" => head.ttl = value.parse::<u32>().is_ok(),
                "content-encoding" => head.aes128gcm = value.eq_ignore_ascii_case("aes128gcm"),
                "authorization" => head.vapid = value.starts_with("vapid t="),
                _ => {}
            }
        }
        if chunked {
            head.content_length = None;
        }
        head
    }
}

/// An empty response with `status`.
fn response(status: u16) -> Vec<u8> {
    let reason = match status {
        201 => "Created",
        404 => "Not Found",
        _ => "Bad Request",
    };
    format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_an_uncompressed_point() {
        let key = hex(P256DH_HEX);
        assert_eq!(key.len(), 65);
        assert_eq!(key[0], 4);
        assert_eq!(key[64], 0xf5);
    }

    #[test]
    fn reads_a_web_push_head() {
        let head = Head::parse(
            b"POST /push/7 HTTP/1.1\r\nhost: 127.0.0.1:1\r\nttl: 86400\r\n\
              content-encoding: aes128gcm\r\nContent-Length: 120\r\n\
              authorization: vapid t=x.y.z, k=abc\r\n\r\n",
        );
        assert_eq!(
            (head.method.as_str(), head.path.as_str()),
            ("POST", "/push/7")
        );
        assert_eq!(head.content_length, Some(120));
        assert!(head.ttl && head.aes128gcm && head.vapid);
        let chunked = Head::parse(
            b"POST /push/7 HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        assert_eq!(chunked.content_length, None);
    }
}
