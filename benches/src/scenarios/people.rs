//! `people`: does a contact request to a user who has blocked the sender get its answer in
//! the same time as one to a user who has not?
//!
//! The relay's rule (`relay/src/store/people.rs`, `docs/security.md`) is that a request to a
//! user who has blocked the sender looks exactly like one still pending: the same answer, the
//! same notices in the sender's log, the same timing. The blocked path does less work in the
//! store transaction (it writes neither the receiver's row nor the `RequestReceived` notice
//! into the receiver's log). This scenario measures whether that shows at the client.
//!
//! # Method
//!
//! One in-process relay (SQLite, or PostgreSQL with `--backend postgres`). Users are real: one
//! device each, admitted in a device chain with a real X25519 exchange key, the chain uploaded
//! before anything is measured (the relay refuses requests to users without one). Each request
//! carries a real intro ([`Intro::seal`]: signed by the sender's device, sealed to the target's
//! device exchange key), sealed before the clock starts. A request is timed from just before
//! the `ContactRequest` frame is sealed and sent to the moment its `Done` is read, one request
//! at a time: the next is sent only after the answer *and* the sender's own `RequestSent`
//! notice (an `Events` frame on the same connection) have arrived, so each starts with the
//! relay idle.
//!
//! Two configurations run one after the other on the same relay, each interleaving two kinds
//! of target in a random order (equal counts, shuffled per sender):
//!
//! - **first request**: every request goes to a fresh target who has *not blocked* the sender
//!   (the request writes both users' rows and a notice into both logs) or who *has blocked*
//!   it (the sender's row and log only);
//! - **repeat**: the sender asks the *same* two targets again and again, one not blocking and
//!   one blocking (each asked once, untimed, before): a repeat writes the sender's row and log
//!   only, whichever the target, so this is the reference for "the sender's side only" (the
//!   not-blocked repeat still reads the target's row, to see the request is there already).
//!
//! Senders change every 16 requests (8 of each kind), so every sender stays within the relay's
//! per-device burst of people writes (20) and its pending list stays short; all senders are
//! connected, caught up and idle before measuring. Should a request still be refused with
//! `rate_limited`, it is sent again after a pause and only the accepted attempt is timed (the
//! count of such retries is reported; it should be 0). Targets are offline while measured, and
//! all have the same history: one session, beforehand, that sent one `Block` (of their sender
//! for the blocking targets, of a bystander who takes no part for the others), so every target
//! has the same rows and one notice in its log, and only whom it blocked differs. The first
//! senders of each configuration are a warm-up and not counted (100 requests of each kind, 10
//! with `--quick`, rounded up to whole senders). At the end, one target of each kind of the
//! first configuration replays its log, to check that the not-blocked target did receive the
//! request and the blocking one did not (the kinds took different paths).
//!
//! Per kind: median, p90, p99 and mean. Between the kinds: the difference of medians (not
//! blocked − blocked) with a 95% bootstrap interval (2,000 resamples) and the differences of
//! the medians of 5 equal consecutive slices of the run (min and max), the ratio of medians,
//! and the Kolmogorov–Smirnov distance D between the two distributions: the best threshold on
//! the time of a single request tells its kind correctly (1 + D) / 2 of the time (in this
//! sample; 50% is chance).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferry_protocol::epoch::ExchangeSecret;
use ferry_protocol::people::{Intro, IntroBody, Notice, ProfileKey};
use ferry_protocol::{ClientFrame, ErrorCode, ServerFrame, UserId};
use futures_util::StreamExt as _;
use rand_core::{OsRng, RngCore};

use super::{Options, connect_all};
use crate::client::{Connection, Identity, Target, source_address};
use crate::progress::{Progress, step};
use crate::relay::{BenchRelay, NodeOptions};
use crate::report::{Report, number};

const NAME: &str = "people";
/// How long any single answer may take before the run is abandoned.
const WAIT: Duration = Duration::from_secs(30);
/// Users registered (or blocking) at once during setup.
const SETUP_CONCURRENCY: usize = 16;
/// Requests of each kind per sender: with the repeat configuration's two untimed first
/// requests, 18 per sender, within the relay's per-device burst of people writes (twice its
/// default 10 per second), so no request is refused whatever that limit is set to.
const HALF: usize = 8;
/// How long to wait before sending a request again after `rate_limited`.
const LIMITED_PAUSE: Duration = Duration::from_millis(1_100);
/// Slices of the run for the spread of the difference.
const SLICES: usize = 5;
/// Bootstrap resamples for the interval of the difference of medians.
const BOOTSTRAP: usize = 2_000;
/// The note every intro carries (the same length for both kinds).
const NOTE: &str = "hi, it's the load generator";

/// The two kinds of target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Has not blocked the sender.
    NotBlocked,
    /// Has blocked the sender.
    Blocked,
}

/// The two configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A fresh target for every request.
    First,
    /// The same two targets again and again.
    Repeat,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Self::First => "first request",
            Self::Repeat => "repeat",
        }
    }
}

/// A user with one device, and the exchange public key the device is admitted with.
#[derive(Debug)]
struct Person {
    id: Identity,
    exchange: [u8; 32],
}

impl Person {
    fn new() -> Self {
        let exchange = ExchangeSecret::generate(&mut OsRng).public();
        let Some(id) = Identity::new_user_with_exchange(&[exchange]).pop() else {
            unreachable!("one exchange key makes one device");
        };
        Self { id, exchange }
    }

    fn user(&self) -> UserId {
        self.id.user()
    }

    /// A fresh intro from this person's device to `to`'s device.
    fn intro_to(&self, to: &Self) -> anyhow::Result<Intro> {
        let body = IntroBody {
            note: NOTE.to_owned(),
            profile_key: ProfileKey::from_bytes(&[5; 32]),
        };
        Intro::seal(
            &mut OsRng,
            self.user(),
            &self.id.device,
            to.user(),
            &[(to.id.id(), to.exchange)],
            &body,
        )
        .context("sealing an intro")
    }
}

/// One sender's share of a configuration.
#[derive(Debug)]
struct Block {
    sender: Person,
    /// Targets that have not blocked the sender (one per request, or one in all).
    open: Vec<Person>,
    /// Targets that have blocked the sender.
    blocking: Vec<Person>,
    /// The requests in the order sent: the kind and the index of the target.
    order: Vec<(Kind, usize)>,
    /// Whether this block is warm-up (not counted).
    warmup: bool,
}

impl Block {
    fn new(phase: Phase, half: usize, warmup: bool, rng: &mut SplitMix64) -> Self {
        let targets = match phase {
            Phase::First => half,
            Phase::Repeat => 1,
        };
        let index = |i: usize| if phase == Phase::First { i } else { 0 };
        let mut order: Vec<(Kind, usize)> = (0..half)
            .flat_map(|i| [(Kind::NotBlocked, index(i)), (Kind::Blocked, index(i))])
            .collect();
        rng.shuffle(&mut order);
        Self {
            sender: Person::new(),
            open: (0..targets).map(|_| Person::new()).collect(),
            blocking: (0..targets).map(|_| Person::new()).collect(),
            order,
            warmup,
        }
    }

    fn target(&self, kind: Kind, index: usize) -> anyhow::Result<&Person> {
        let targets = match kind {
            Kind::NotBlocked => &self.open,
            Kind::Blocked => &self.blocking,
        };
        targets.get(index).context("target index out of range")
    }
}

/// Answer times in µs, in the order measured.
#[derive(Debug, Default)]
struct Samples {
    not_blocked: Vec<f64>,
    blocked: Vec<f64>,
    /// Requests refused with `rate_limited` and sent again (untimed).
    retried: u64,
}

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let per_kind = options.pick(options.requests, 1_000, 20).max(1);
    let warmup_per_kind: usize = if options.quick { 10 } else { 100 };
    let half = HALF.min(per_kind);
    let blocks = per_kind.div_ceil(half);
    let warmup_blocks = warmup_per_kind.div_ceil(half);
    step(NAME, "starting the relay");
    let relay = BenchRelay::spawn(&options.services, NodeOptions::default()).await?;
    let target = relay.target();
    let mut rng = SplitMix64::new(OsRng.next_u64());
    let mut report = Report::default();
    let mut checks = None;
    for phase in [Phase::First, Phase::Repeat] {
        let plan: Vec<Block> = (0..warmup_blocks + blocks)
            .map(|i| Block::new(phase, half, i < warmup_blocks, &mut rng))
            .collect();
        let samples = measure(phase, target, &plan, options.sources).await?;
        summarize(&mut report, phase, &samples, &mut rng);
        if phase == Phase::First {
            checks = plan.into_iter().last();
        }
    }
    if let Some(block) = checks {
        check_paths(target, &block).await?;
    }
    relay.shutdown(Duration::from_secs(5)).await;
    report.note(format!(
        "people: one request at a time from a connected sender to offline targets, timed from \
         sending ContactRequest (a real sealed intro) to reading Done; kinds interleaved in a \
         random order, {half} of each per sender; {counted} of each kind counted after {warmup} \
         of each of warm-up, per configuration. \"first request\": a fresh target each time; \
         \"repeat\": the same two targets asked again and again (writes to the sender's row \
         and log only, whichever the target). Difference = not blocked − blocked; slices = the \
         run cut into {SLICES} equal consecutive parts; KS D = largest gap between the two \
         cumulative distributions (with {counted} per kind, D above {critical:.1}% is \
         significant at 5%; the best threshold on one request's time tells its kind correctly \
         (1 + D) / 2 of the time)",
        counted = blocks * half,
        warmup = warmup_blocks * half,
        critical = ks_critical(blocks * half, blocks * half) * 100.0,
    ));
    Ok(report)
}

/// Sets up `plan`'s users and measures its requests.
async fn measure(
    phase: Phase,
    target: Target,
    plan: &[Block],
    sources: usize,
) -> anyhow::Result<Samples> {
    let label = format!("{NAME} ({})", phase.label());
    let users: usize = plan
        .iter()
        .map(|b| 1 + b.open.len() + b.blocking.len())
        .sum();
    step(
        NAME,
        format_args!(
            "{}: registering {users} users, each target blocking its sender or a bystander",
            phase.label()
        ),
    );
    let senders: Vec<_> = plan.iter().map(|b| (target, &b.sender.id)).collect();
    let mut connections = connect_all(&label, &senders, SETUP_CONCURRENCY, sources).await?;
    for connection in &mut connections {
        caught_up(connection).await?;
    }
    // Every target has the same history: one session that blocked one user. The blocking
    // targets blocked their sender; the others a bystander, who never asks anything.
    let bystander = Person::new().user();
    let to_block: Vec<(&Person, UserId)> = plan
        .iter()
        .flat_map(|b| {
            let open = b.open.iter().map(move |p| (p, bystander));
            open.chain(b.blocking.iter().map(|p| (p, b.sender.user())))
        })
        .collect();
    let blocked: Vec<anyhow::Result<()>> = futures_util::stream::iter(
        to_block
            .into_iter()
            .enumerate()
            .map(|(i, (person, peer))| block(target, person, peer, source_address(i, sources))),
    )
    .buffer_unordered(SETUP_CONCURRENCY)
    .collect()
    .await;
    blocked.into_iter().collect::<anyhow::Result<()>>()?;
    // Sessions that just ended still touch their last-seen time: let that pass.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let requests: usize = plan.iter().map(|b| b.order.len()).sum();
    step(
        NAME,
        format_args!("{}: {requests} requests, one at a time", phase.label()),
    );
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(label, Arc::clone(&done), "requests");
    let mut samples = Samples::default();
    for (block, connection) in plan.iter().zip(&mut connections) {
        let mut sender = Asking {
            connection,
            notices_expected: 0,
            notices_seen: 0,
            retried: &mut samples.retried,
        };
        if phase == Phase::Repeat {
            // Each target once, untimed: what follows are repeats.
            for kind in [Kind::NotBlocked, Kind::Blocked] {
                let intro = block.sender.intro_to(block.target(kind, 0)?)?;
                sender.request(intro).await?;
            }
        }
        let intros = block
            .order
            .iter()
            .map(|&(kind, i)| Ok((kind, block.sender.intro_to(block.target(kind, i)?)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (kind, intro) in intros {
            let micros = sender.request(intro).await?.as_secs_f64() * 1e6;
            done.fetch_add(1, Ordering::Relaxed);
            if block.warmup {
                continue;
            }
            match kind {
                Kind::NotBlocked => samples.not_blocked.push(micros),
                Kind::Blocked => samples.blocked.push(micros),
            }
        }
    }
    drop(progress);
    for mut connection in connections {
        let _ = connection.ws.close(None).await;
    }
    Ok(samples)
}

/// A connected sender and the notices its log has had so far.
struct Asking<'a> {
    connection: &'a mut Connection,
    /// Every request writes one `RequestSent` notice into the sender's log.
    notices_expected: usize,
    notices_seen: usize,
    /// Requests refused with `rate_limited` and sent again.
    retried: &'a mut u64,
}

impl Asking<'_> {
    /// Sends one request and returns the time to its `Done`; then waits for its notice, so
    /// the next request starts with nothing in flight.
    async fn request(&mut self, intro: Intro) -> anyhow::Result<Duration> {
        let frame = ClientFrame::ContactRequest(Box::new(intro));
        let elapsed = loop {
            let started = Instant::now();
            self.connection.send(&frame).await?;
            let answered = loop {
                match self.next().await? {
                    ServerFrame::Done => break Some(started.elapsed()),
                    ServerFrame::Events(events) => self.notices_seen += events.len(),
                    ServerFrame::Error(error) if error.code == ErrorCode::RateLimited => {
                        break None;
                    }
                    ServerFrame::Error(error) => {
                        bail!("the relay refused a request: {}", error.code.name())
                    }
                    _ => {}
                }
            };
            match answered {
                Some(elapsed) => break elapsed,
                None => {
                    *self.retried += 1;
                    tokio::time::sleep(LIMITED_PAUSE).await;
                }
            }
        };
        self.notices_expected += 1;
        while self.notices_seen < self.notices_expected {
            if let ServerFrame::Events(events) = self.next().await? {
                self.notices_seen += events.len();
            }
        }
        Ok(elapsed)
    }

    async fn next(&mut self) -> anyhow::Result<ServerFrame> {
        Ok(tokio::time::timeout(WAIT, self.connection.recv())
            .await
            .context("no answer from the relay")??)
    }
}

/// Connects `person`'s device, blocks `peer` and disconnects.
async fn block(
    target: Target,
    person: &Person,
    peer: UserId,
    source: IpAddr,
) -> anyhow::Result<()> {
    let mut connection = Connection::connect(target, &person.id, None, Some(source)).await?;
    connection.send(&ClientFrame::Block { peer }).await?;
    loop {
        match tokio::time::timeout(WAIT, connection.recv())
            .await
            .context("no answer to Block")??
        {
            ServerFrame::Done => break,
            ServerFrame::Error(error) => bail!("Block refused: {}", error.code.name()),
            _ => {}
        }
    }
    let _ = connection.ws.close(None).await;
    Ok(())
}

/// Waits for `CaughtUp`.
async fn caught_up(connection: &mut Connection) -> anyhow::Result<()> {
    loop {
        let frame = tokio::time::timeout(WAIT, connection.recv())
            .await
            .context("no CaughtUp")??;
        if let ServerFrame::CaughtUp { .. } = frame {
            return Ok(());
        }
    }
}

/// Checks that the two kinds took different paths: a not-blocked target of `block` holds the
/// sender's request in its log, a blocking one does not.
async fn check_paths(target: Target, block: &Block) -> anyhow::Result<()> {
    let sender = block.sender.user();
    for (kind, person) in [
        (Kind::NotBlocked, block.target(Kind::NotBlocked, 0)?),
        (Kind::Blocked, block.target(Kind::Blocked, 0)?),
    ] {
        let mut connection = Connection::connect(target, &person.id, None, None).await?;
        let mut received = false;
        loop {
            match tokio::time::timeout(WAIT, connection.recv())
                .await
                .context("no replay")??
            {
                ServerFrame::Events(events) => {
                    received |= events.iter().any(|event| {
                        matches!(
                            Notice::from_payload(&event.payload.0),
                            Ok(Notice::RequestReceived { intro }) if intro.from == sender
                        )
                    });
                }
                ServerFrame::CaughtUp { .. } => break,
                _ => {}
            }
        }
        let _ = connection.ws.close(None).await;
        if received != (kind == Kind::NotBlocked) {
            bail!("a {kind:?} target's log says received = {received}: the paths did not differ");
        }
    }
    Ok(())
}

/// Adds one configuration's figures to `report`.
fn summarize(report: &mut Report, phase: Phase, samples: &Samples, rng: &mut SplitMix64) {
    let label = phase.label();
    let mut sorted = [samples.not_blocked.clone(), samples.blocked.clone()];
    for values in &mut sorted {
        values.sort_by(f64::total_cmp);
    }
    let [open, blocked] = &sorted;
    for (name, values) in [("not blocked", open), ("blocked", blocked)] {
        report.add(
            NAME,
            format!("{label}, {name}: median"),
            quantile(values, 0.5),
            "µs",
        );
        report.add(
            NAME,
            format!("{label}, {name}: p90"),
            quantile(values, 0.9),
            "µs",
        );
        report.add(
            NAME,
            format!("{label}, {name}: p99"),
            quantile(values, 0.99),
            "µs",
        );
        report.add(NAME, format!("{label}, {name}: mean"), mean(values), "µs");
    }
    let difference = quantile(open, 0.5) - quantile(blocked, 0.5);
    report.add(
        NAME,
        format!("{label}: median difference (not blocked − blocked)"),
        difference,
        "µs",
    );
    let (low, high) = bootstrap_difference(open, blocked, BOOTSTRAP, rng);
    report.add(
        NAME,
        format!("{label}: difference, 95% bootstrap low"),
        low,
        "µs",
    );
    report.add(
        NAME,
        format!("{label}: difference, 95% bootstrap high"),
        high,
        "µs",
    );
    let slices: Vec<f64> = slice_medians(&samples.not_blocked, SLICES)
        .iter()
        .zip(slice_medians(&samples.blocked, SLICES))
        .map(|(a, b)| a - b)
        .collect();
    let (min, max) = slices
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    report.add(
        NAME,
        format!("{label}: difference over {SLICES} slices, min"),
        min,
        "µs",
    );
    report.add(
        NAME,
        format!("{label}: difference over {SLICES} slices, max"),
        max,
        "µs",
    );
    report.add(
        NAME,
        format!("{label}: ratio of medians (not blocked ÷ blocked)"),
        quantile(open, 0.5) / quantile(blocked, 0.5),
        "×",
    );
    report.add(
        NAME,
        format!("{label}: KS distance D"),
        ks_distance(open, blocked) * 100.0,
        "%",
    );
    report.add(
        NAME,
        format!("{label}: requests retried after rate_limited"),
        samples.retried as f64,
        "req",
    );
    let shown: Vec<String> = slices.iter().map(|d| number(*d)).collect();
    step(
        NAME,
        format_args!(
            "{label}: medians {} vs {} µs, difference {} µs (95% {} to {}), per slice [{}] µs",
            number(quantile(open, 0.5)),
            number(quantile(blocked, 0.5)),
            number(difference),
            number(low),
            number(high),
            shown.join(", "),
        ),
    );
}

/// The `q` quantile of sorted `values`, interpolated between neighbours (NaN for none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n => {
            let position = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let below = position.floor() as usize;
            let above = (below + 1).min(n - 1);
            let fraction = position - below as f64;
            sorted[below] + (sorted[above] - sorted[below]) * fraction
        }
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The medians of `slices` equal consecutive parts of `values` (the remainder left out).
fn slice_medians(values: &[f64], slices: usize) -> Vec<f64> {
    let len = values.len() / slices.max(1);
    if len == 0 {
        return Vec::new();
    }
    values
        .chunks_exact(len)
        .take(slices)
        .map(|chunk| {
            let mut chunk = chunk.to_vec();
            chunk.sort_by(f64::total_cmp);
            quantile(&chunk, 0.5)
        })
        .collect()
}

/// The 2.5% and 97.5% quantiles of the difference of medians over `rounds` resamples.
fn bootstrap_difference(a: &[f64], b: &[f64], rounds: usize, rng: &mut SplitMix64) -> (f64, f64) {
    if a.is_empty() || b.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut resample = |values: &[f64], buffer: &mut Vec<f64>| {
        buffer.clear();
        buffer.extend((0..values.len()).map(|_| values[rng.below(values.len())]));
        buffer.sort_by(f64::total_cmp);
        quantile(buffer, 0.5)
    };
    let (mut buffer_a, mut buffer_b) = (Vec::new(), Vec::new());
    let mut differences: Vec<f64> = (0..rounds)
        .map(|_| resample(a, &mut buffer_a) - resample(b, &mut buffer_b))
        .collect();
    differences.sort_by(f64::total_cmp);
    (quantile(&differences, 0.025), quantile(&differences, 0.975))
}

/// The two-sample Kolmogorov–Smirnov distance between sorted `a` and sorted `b`.
fn ks_distance(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let (mut i, mut j, mut distance) = (0, 0, 0.0_f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        let gap = (i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs();
        distance = distance.max(gap);
    }
    distance
}

/// The distance above which two samples of `n` and `m` differ at the 5% level.
fn ks_critical(n: usize, m: usize) -> f64 {
    let (n, m) = (n as f64, m as f64);
    1.358 * ((n + m) / (n * m)).sqrt()
}

/// A small fast generator for shuffles and resampling (seeded from the OS; not for keys).
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`; the bias is negligible for the sizes used here).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let values = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&values, 0.5), 2.5);
        assert_eq!(quantile(&values, 0.0), 1.0);
        assert_eq!(quantile(&values, 1.0), 4.0);
        assert!(quantile(&[], 0.5).is_nan());
        assert_eq!(mean(&values), 2.5);
    }

    #[test]
    fn slices_in_order() {
        let values: Vec<f64> = (0..11).map(f64::from).collect();
        assert_eq!(slice_medians(&values, 5), vec![0.5, 2.5, 4.5, 6.5, 8.5]);
    }

    #[test]
    fn ks_and_bootstrap() {
        let a: Vec<f64> = (0..100).map(f64::from).collect();
        let shifted: Vec<f64> = (50..150).map(f64::from).collect();
        assert_eq!(ks_distance(&a, &a), 0.0);
        assert!((ks_distance(&a, &shifted) - 0.5).abs() < 1e-9);
        let mut rng = SplitMix64::new(7);
        let (low, high) = bootstrap_difference(&shifted, &a, 500, &mut rng);
        assert!(low <= 50.0 && 50.0 <= high, "{low} {high}");
        assert!((ks_critical(1000, 1000) - 0.0607).abs() < 0.001);
    }

    #[test]
    fn shuffles_keep_items() {
        let mut rng = SplitMix64::new(1);
        let mut items: Vec<usize> = (0..100).collect();
        rng.shuffle(&mut items);
        assert_ne!(items, (0..100).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..100).collect::<Vec<_>>());
        assert!((0..1000).all(|_| rng.below(3) < 3));
    }
}
