//! `handshakes`: full handshakes per second through the relay, against the crypto-only
//! ceiling measured in the same run.
//!
//! 1. Ceiling: both state machines of a complete handshake (client and relay, the device's
//!    transcript signature included) in one thread, no sockets, for a fixed time: handshakes per second
//!    per core. The same loop on every core at once gives the machine's measured ceiling.
//! 2. Relay: `concurrency` clients, each with its own registered device (2 per user), connect,
//!    complete the handshake (to `SessionEstablished`), drop the connection and start again,
//!    for `duration`. Each reconnect of a known device is the common case in production.
//!
//! Normalisation: generator and relay share the machine's cores, and every handshake costs
//! both sides' crypto (client and relay), exactly what the ceiling loop does. So the ratio is
//! `relay handshakes/s ÷ (ceiling per core × cores)`: the share of the machine's crypto-bound
//! maximum the relay reaches with sockets, WebSocket, tasks and storage around it.
//!
//! The same share in CPU time: the ceiling's CPU time per handshake (its threads' own run
//! time) ÷ this process's CPU time per handshake through the relay (relay and generator, all
//! threads, kernel included). When the run keeps every core busy the two ratios are the same
//! quantity ("cores used" says whether it did); the CPU one leaves out what other processes
//! of the machine ran. On a shared VM it still moves by about a tenth between runs
//! (docs/benchmarks.md, issue 14's fifth round): compare medians of alternating runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_protocol::handshake::{ClientHandshake, Credentials, ServerHandshake};
use ferry_protocol::{DeviceKey, RelayKey, UserKey};
use rand_core::OsRng;

use super::{Options, cores, micros_histogram, quantile_ms, record};
use crate::client::{Connection, Identity, source_address};
use crate::cpu::{process_cpu_seconds, thread_cpu_time};
use crate::progress::{Progress, step};
use crate::relay::{BenchRelay, NodeOptions};
use crate::report::{Goal, Report};

const NAME: &str = "handshakes";

/// The crypto ceiling: full handshakes per second over `threads` threads, and the share of
/// the time spent in the relay's half.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    /// Handshakes per second, all threads together.
    pub per_second: f64,
    /// Handshakes per second of CPU time the threads ran (`None` without `/proc`).
    pub per_cpu_second: Option<f64>,
    /// Fraction of the time in the relay's state machine.
    pub relay_share: f64,
}

/// Runs complete sans-IO handshakes on `threads` threads for `time`.
pub fn ceiling(threads: usize, time: Duration) -> Ceiling {
    let results: Vec<Loop> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| scope.spawn(move || handshake_loop(time)))
            .collect();
        workers
            .into_iter()
            .filter_map(|worker| worker.join().ok())
            .collect()
    });
    let count: u64 = results.iter().map(|r| r.handshakes).sum();
    let relay: Duration = results.iter().map(|r| r.relay).sum();
    let total: Duration = results.iter().map(|r| r.wall).sum();
    let cpu: Option<Duration> = results.iter().map(|r| r.cpu).sum();
    let per_thread_seconds = total.as_secs_f64() / results.len().max(1) as f64;
    Ceiling {
        per_second: count as f64 / per_thread_seconds,
        per_cpu_second: cpu.map(|cpu| count as f64 / cpu.as_secs_f64()),
        relay_share: relay.as_secs_f64() / total.as_secs_f64(),
    }
}

/// What one thread's loop did.
struct Loop {
    handshakes: u64,
    /// Wall time in the relay's half.
    relay: Duration,
    wall: Duration,
    /// The thread's own CPU time over the loop.
    cpu: Option<Duration>,
}

/// One thread's loop of complete handshakes for `time`.
fn handshake_loop(time: Duration) -> Loop {
    let relay_key = RelayKey::generate(&mut OsRng);
    let user = UserKey::generate(&mut OsRng);
    let device = DeviceKey::generate(&mut OsRng);
    let cpu_before = thread_cpu_time();
    let started = Instant::now();
    let mut count = 0;
    let mut relay_time = Duration::ZERO;
    while started.elapsed() < time {
        let (client, hello) = ClientHandshake::start(relay_key.id(), &mut OsRng);
        let relay_started = Instant::now();
        let Ok((server, server_hello)) =
            ServerHandshake::handle_client_hello(&relay_key, &hello, &mut OsRng)
        else {
            unreachable!("a fresh ClientHello is accepted");
        };
        relay_time += relay_started.elapsed();
        let credentials = Credentials::Device {
            key: &device,
            user: user.id(),
            resume: None,
            recovery: None,
        };
        let Ok((client, start)) = client.handle_server_hello(&server_hello, credentials) else {
            unreachable!("the relay's own hello verifies");
        };
        let relay_started = Instant::now();
        let Ok(pending) = server.handle_client_start(&start) else {
            unreachable!("a valid device is accepted");
        };
        // (The relay's chain lookup is a database read, outside this ceiling.)
        let (_channel, established) = pending.accept(0, 0);
        relay_time += relay_started.elapsed();
        if client.handle_session(&established).is_err() {
            unreachable!("the relay's own session start opens");
        }
        count += 1;
    }
    Loop {
        handshakes: count,
        relay: relay_time,
        wall: started.elapsed(),
        cpu: cpu_before
            .zip(thread_cpu_time())
            .map(|(before, after)| after.saturating_sub(before)),
    }
}

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let concurrency = options.pick(options.concurrency, 64, 8);
    let duration = options.duration(Duration::from_secs(10), Duration::from_secs(1));
    let ceiling_time = if options.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(3)
    };
    let cores = cores();

    step(
        NAME,
        "crypto ceiling: sans-IO handshakes on one core, then on all",
    );
    let one = tokio::task::spawn_blocking(move || ceiling(1, ceiling_time)).await?;
    let all = tokio::task::spawn_blocking(move || ceiling(cores, ceiling_time)).await?;

    step(NAME, "starting the relay");
    let relay = BenchRelay::spawn(&options.services, NodeOptions::default()).await?;
    let target = relay.target();
    let identities: Vec<Identity> = (0..concurrency.div_ceil(2))
        .flat_map(|_| Identity::new_user(2))
        .take(concurrency)
        .collect();
    // First connection registers each device (a write); not timed.
    let devices: Vec<_> = identities.iter().map(|id| (target, id)).collect();
    drop(super::connect_all(NAME, &devices, concurrency, options.sources).await?);

    step(
        NAME,
        format_args!("{concurrency} clients reconnecting for {duration:?}"),
    );
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(NAME, Arc::clone(&done), "handshakes");
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = identities
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let done = Arc::clone(&done);
            let failed = Arc::clone(&failed);
            let sources = options.sources;
            tokio::spawn(async move {
                let mut times = micros_histogram();
                let mut attempt = 0;
                while Instant::now() < deadline {
                    let source = Some(source_address(i + attempt * 7, sources));
                    attempt += 1;
                    let began = Instant::now();
                    match Connection::connect(target, &id, None, source).await {
                        Ok(connection) => {
                            record(&mut times, began.elapsed());
                            done.fetch_add(1, Ordering::Relaxed);
                            drop(connection);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                times
            })
        })
        .collect();
    let mut times = micros_histogram();
    for worker in workers {
        times.add(worker.await?)?;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_before
        .zip(process_cpu_seconds())
        .map(|(before, after)| after - before);
    drop(progress);
    relay.shutdown(Duration::from_secs(5)).await;

    let handshakes = done.load(Ordering::Relaxed);
    let rate = handshakes as f64 / elapsed.as_secs_f64();
    let normalised = one.per_second * cores as f64;
    let mut report = Report::default();
    report.add(NAME, "crypto ceiling, 1 core", one.per_second, "hs/s");
    report.add(
        NAME,
        format!("crypto ceiling, measured on {cores} cores"),
        all.per_second,
        "hs/s",
    );
    report.add(
        NAME,
        "relay's share of the crypto",
        one.relay_share * 100.0,
        "%",
    );
    report.add(
        NAME,
        format!("through the relay, {concurrency} concurrent clients"),
        rate,
        "hs/s",
    );
    report.add(NAME, "handshake time p50", quantile_ms(&times, 0.5), "ms");
    report.add(NAME, "handshake time p99", quantile_ms(&times, 0.99), "ms");
    report.add_goal(
        NAME,
        format!("relay ÷ (1-core ceiling × {cores})"),
        rate / normalised,
        "×",
        Goal::AtLeast(0.6),
    );
    report.add(
        NAME,
        format!("relay ÷ measured {cores}-core ceiling"),
        rate / all.per_second,
        "×",
    );
    if let (Some(cpu), Some(ceiling_per_cpu_second)) = (cpu, one.per_cpu_second)
        && handshakes > 0
    {
        let per_handshake = cpu / handshakes as f64;
        report.add(
            NAME,
            "CPU per handshake, crypto only (ceiling)",
            1e6 / ceiling_per_cpu_second,
            "µs",
        );
        report.add(
            NAME,
            "CPU per handshake through the relay (relay and generator)",
            per_handshake * 1e6,
            "µs",
        );
        report.add(
            NAME,
            "crypto ÷ CPU per handshake (the ratio above, in CPU time)",
            1.0 / ceiling_per_cpu_second / per_handshake,
            "×",
        );
        report.add(
            NAME,
            format!("cores used during the relay run (of {cores})"),
            cpu / elapsed.as_secs_f64(),
            "cores",
        );
    }
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        report.note(format!(
            "handshakes: {failures} connection attempts failed in one run"
        ));
    }
    report.note(format!(
        "handshakes: a handshake is ClientHello to SessionEstablished as a device its user's \
         chain admits (the relay looks the device up), for a device already admitted \
         (reconnect); the ceiling runs both state machines in \
         one thread with no IO, and the relay run also does both sides (generator in the same \
         process), so the ratio divides by the 1-core ceiling × {cores} cores"
    ));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_loop_completes_handshakes() {
        let measured = ceiling(1, Duration::from_millis(20));
        assert!(measured.per_second > 0.0);
        // A thread never runs longer than the wall clock, so per CPU second ≥ per second.
        let per_cpu_second = measured.per_cpu_second.expect("Linux has /proc");
        assert!(per_cpu_second >= measured.per_second * 0.99, "{measured:?}");
        assert!(measured.relay_share > 0.0 && measured.relay_share < 1.0);
    }
}
