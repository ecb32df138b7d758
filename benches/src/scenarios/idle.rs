//! `idle`: relay memory per idle authenticated connection.
//!
//! The relay runs as its own process (the `ferry-relay` binary next to this one, or
//! `--relay-bin`; failing both, this binary re-executed as `ferry-bench serve-relay`, which
//! runs the same library), so its resident memory holds nothing of the generator. Its data
//! folder is on tmpfs when `/dev/shm` exists: tens of thousands of first handshakes each
//! register a device with a synced write, which would take minutes on a slow disk and does
//! not change the memory figure. Both processes raise their soft `RLIMIT_NOFILE` to the
//! hard limit (the relay inherits the bench's).
//!
//! Devices (two per user) connect from several 127.0.0.x source addresses and stay idle.
//! At each connection count `VmRSS` of the relay is read after a short settle; the figure
//! is `(RSS − RSS before any connection) ÷ connections`, and the marginal cost between two
//! counts is reported too. A count above what the file-descriptor limits allow is measured
//! at the largest count they allow instead, and the report says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt;

use super::Options;
use crate::client::{Connection, Identity, source_address};
use crate::progress::{Progress, step};
use crate::relay::{ProcessOptions, spawn_process, tmpfs_folder};
use crate::report::{Goal, Report, number};

const NAME: &str = "idle";
/// File descriptors kept free for everything else (database files, listener, runtime).
const SPARE_FDS: u64 = 300;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// The soft `RLIMIT_NOFILE` of process `pid` (from `/proc/PID/limits`).
pub fn nofile_of(pid: u32) -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .context("no open-files line")
}

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let mut counts = options.pick(
        options.connections.clone(),
        vec![10_000, 50_000],
        vec![200, 500],
    );
    counts.sort_unstable();
    let own_limit = raise_nofile();
    let dir = tmpfs_folder("ferry-bench-idle-")?;
    let process = ProcessOptions {
        program: options.relay_bin.clone(),
        data_dir: dir.path().to_owned(),
        ..ProcessOptions::default()
    };
    step(NAME, "starting a relay process");
    let relay = spawn_process(&options.services, &process).await?;
    let relay_limit = nofile_of(relay.pid())?;
    let feasible = own_limit.min(relay_limit).saturating_sub(SPARE_FDS) as usize;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = relay.rss_kib()?;

    let mut report = Report::default();
    let top = counts.last().copied().unwrap_or(0).min(feasible);
    let identities: Vec<Identity> = (0..top.div_ceil(2))
        .flat_map(|_| Identity::new_user(2))
        .take(top)
        .collect();
    let mut connections: Vec<Connection> = Vec::with_capacity(top);
    let mut previous = (0, baseline);
    let connected = Arc::new(AtomicU64::new(0));
    let settle = if options.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    };
    for (i, &asked) in counts.iter().enumerate() {
        let n = asked.min(feasible);
        let last = i + 1 == counts.len();
        if n < asked {
            report.note(format!(
                "idle: {} connections asked, {} measured: RLIMIT_NOFILE is {} here (bench) and \
                 {} (relay) and cannot be raised above its hard limit in this sandbox",
                number(asked as f64),
                number(n as f64),
                own_limit,
                relay_limit
            ));
        }
        if n <= connections.len() {
            continue;
        }
        step(
            NAME,
            format_args!("connecting up to {} devices", number(n as f64)),
        );
        let progress = Progress::start(
            format!("{NAME}: connected"),
            Arc::clone(&connected),
            "conns",
        );
        let start = connections.len();
        let sources = options.sources;
        let concurrency = if options.quick { 16 } else { 64 };
        let target = relay.target();
        let new: Vec<_> =
            futures_util::stream::iter(identities[start..n].iter().enumerate().map(|(j, id)| {
                let connected = Arc::clone(&connected);
                async move {
                    let source = Some(source_address(start + j, sources));
                    let connection = Connection::connect(target, id, None, source).await;
                    connected.fetch_add(1, Ordering::Relaxed);
                    connection
                }
            }))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        drop(progress);
        for connection in new {
            connections.push(
                connection
                    .with_context(|| format!("connection {} of {n}", connections.len() + 1))?,
            );
        }
        tokio::time::sleep(settle).await;
        let rss = relay.rss_kib()?;
        let per = (rss.saturating_sub(baseline)) as f64 / n as f64;
        let measure = format!("RSS per connection at {}", number(n as f64));
        if last {
            report.add_goal(NAME, measure, per, "KiB", Goal::AtMost(8.0));
        } else {
            report.add(NAME, measure, per, "KiB");
        }
        report.add(
            NAME,
            format!("relay RSS at {}", number(n as f64)),
            rss as f64 / 1024.0,
            "MiB",
        );
        if previous.0 > 0 {
            report.add(
                NAME,
                format!(
                    "marginal RSS per connection, {} → {}",
                    number(previous.0 as f64),
                    number(n as f64)
                ),
                rss.saturating_sub(previous.1) as f64 / (n - previous.0) as f64,
                "KiB",
            );
        }
        previous = (n, rss);
    }
    if connections.is_empty() {
        bail!("no connection could be made");
    }
    report.add(
        NAME,
        "relay RSS before any connection",
        baseline as f64 / 1024.0,
        "MiB",
    );
    report.note(format!(
        "idle: relay started as a separate process ({}), data on {}, devices connected \
         (2 per user) from {} loopback source addresses and left idle; RSS from \
         /proc/PID/status VmRSS {settle:?} after the last connection",
        relay.program,
        if dir.path().starts_with("/dev/shm") {
            "tmpfs"
        } else {
            "the temporary folder"
        },
        options.sources
    ));
    drop(connections);
    drop(relay);
    Ok(report)
}
