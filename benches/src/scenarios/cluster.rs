//! `cluster`: 1, 2 and 3 `ferry-relay` processes on one PostgreSQL and one Redis, under the
//! same total load: throughput, cross-node latency and where the CPU went, for each.
//!
//! For each node count N (1, 2, 3; `--quick`: 1 and 2, tiny) N relay processes are started
//! one after the other on a shared data folder (the first creates the relay key the others
//! load), every one with `--database-url` and `--redis-url`, so a single node also pays
//! for its Redis publishes and the figures differ only in N. Then two phases run on them:
//!
//! - **Throughput**: the `appends` closed loop ([`super::appends::drive`]): `users` users ×
//!   2 devices, every device keeping `window` appends in flight and reading its user's live
//!   events. User u's devices go to nodes u mod N and u + 1 mod N (round robin), so with
//!   N ≥ 2 every event is committed on one node and delivered on another through Redis.
//!   After a warm-up, acknowledged appends and live deliveries are counted over the window.
//!   The relays' mean events per commit and mean commit time are read from their `/metrics`
//!   (summed over nodes, before and after the phase). Each node commits through one
//!   committer, one transaction of at most `commit_max_batch` events at a time, and every
//!   append transaction locks its users' rows in PostgreSQL: with a user's devices on two
//!   nodes, those nodes' transactions for the user run one after the other.
//! - **Latency**: the [`super::latency`] open-loop engine at a fixed rate (2,000 ev/s) over
//!   `users` users (40): with N ≥ 2, half send on node i and receive on node i + 1 (cross
//!   node, woken through Redis pub/sub), half have both devices on node i (same node), both
//!   halves at once, so cross ÷ same is the price of the hop measured side by side; with
//!   N = 1 every user is same-node.
//!
//! The load is the same for every N; only where the devices connect changes. Over each
//! measured window the CPU time of the relay processes, PostgreSQL, Redis, this generator and
//! the rest of the machine is sampled ([`crate::cpu`]): on a small machine they all share the
//! cores, and the curve over N can only be read beside who used them. The processes are
//! killed before the next N starts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tempfile::TempDir;

use super::appends::{self, Workload};
use super::latency::{self, Latencies, Load, Placement};
use super::{Options, quantile_ms};
use crate::client::Target;
use crate::cpu::CpuUse;
use crate::progress::step;
use crate::relay::{ProcessOptions, RelayProcess, metric, reachable, spawn_process, tmpfs_folder};
use crate::report::Report;

const NAME: &str = "cluster";

/// Node counts measured, and in `--quick`.
const NODES: [usize; 3] = [1, 2, 3];
const NODES_QUICK: [usize; 2] = [1, 2];

/// Runs the scenario (or reports it skipped when PostgreSQL or Redis is not reachable,
/// unless `FERRY_REQUIRE_SERVICES=1`).
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let mut report = Report::default();
    for (what, url) in [
        ("PostgreSQL", &options.services.postgres_url),
        ("Redis", &options.services.redis_url),
    ] {
        if !reachable(url) {
            if std::env::var("FERRY_REQUIRE_SERVICES").as_deref() == Ok("1") {
                bail!("{what} is not reachable and FERRY_REQUIRE_SERVICES=1");
            }
            step(NAME, format_args!("skipped: {what} is not reachable"));
            report.note(format!("cluster: skipped, {what} was not reachable"));
            return Ok(report);
        }
    }
    let warmup = if options.quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    let duration = options.duration(Duration::from_secs(10), Duration::from_millis(500));
    let workload = Workload {
        users: options.pick(options.users, 64, 4).max(1),
        window: options.pick(options.window, 32, 8).max(1),
        warmup,
        duration,
    };
    let load = Load {
        rate: options.pick(options.rate, 2_000.0, 200.0),
        warmup,
        duration,
    };
    let latency_users = options.pick(options.users, 40, 8).max(2);
    let counts: &[usize] = if options.quick { &NODES_QUICK } else { &NODES };

    let mut runs = Vec::new();
    let mut program = String::new();
    for &n in counts {
        let cluster = Cluster::start(options, n).await?;
        program.clone_from(&cluster.program);
        let throughput = throughput(options, &cluster, workload).await?;
        let latency = latency(options, &cluster, load, latency_users).await?;
        // Killed here, before the next count starts.
        drop(cluster);
        runs.push(Run {
            n,
            throughput,
            latency,
        });
    }
    add_figures(&mut report, &runs);
    report.note(format!(
        "cluster: {} relay processes ({program}) on one PostgreSQL and one Redis, each with \
         --database-url and --redis-url, sharing a relay key; throughput: the appends closed \
         loop, {} users × 2 devices, {} appends in flight per device, a user's two devices \
         on different nodes (round robin) when N ≥ 2; latency: {} ev/s open-loop over \
         {latency_users} users, half sending on node i and receiving on node i + 1 (cross \
         node), half on one node (same node), all same-node when N = 1; each phase {:?} \
         warm-up then {:?} measured, the same load for every N",
        counts
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        workload.users,
        workload.window,
        load.rate,
        warmup,
        duration,
    ));
    report.note(
        "cluster: CPU in cores (1.0 = one core busy) over each measured window, from \
         /proc: the relay processes, every postgres and redis-server process, this \
         generator, and the rest of the machine's busy time (other); the mean events per \
         commit and commit time are from the relays' own metrics over the phase (warm-up \
         included), summed over nodes; each node has one committer, one transaction at a \
         time of at most commit_max_batch (1,024) events",
    );
    let dropped: f64 = runs
        .iter()
        .flat_map(|run| [run.throughput.relays, run.latency.relays])
        .map(|relays| relays.map_or(0.0, |r| r.bus_dropped))
        .sum();
    if dropped > 0.0 {
        report.note(format!(
            "cluster: the relays dropped {dropped} bus messages (ferry_bus_dropped_total; \
             their nodes polled the log instead)"
        ));
    }
    Ok(report)
}

/// N relay processes sharing one data folder, PostgreSQL and Redis; killed on drop.
struct Cluster {
    // Declared before the folder so the processes die before it is removed.
    nodes: Arc<Vec<RelayProcess>>,
    program: String,
    _dir: TempDir,
}

impl Cluster {
    async fn start(options: &Options, n: usize) -> anyhow::Result<Self> {
        let label = format!("{NAME}, {}", nodes(n));
        let dir = tmpfs_folder("ferry-bench-cluster-")?;
        let mut started = Vec::with_capacity(n);
        // One after the other: the first creates the relay key the others load.
        for i in 1..=n {
            step(
                &label,
                format_args!("starting relay process {i} (PostgreSQL + Redis)"),
            );
            let process = ProcessOptions {
                program: options.relay_bin.clone(),
                data_dir: dir.path().to_owned(),
                postgres: true,
                redis: true,
            };
            let node = spawn_process(&options.services, &process)
                .await
                .with_context(|| format!("starting relay process {i}"))?;
            started.push(node);
        }
        if let Some(first) = started.first() {
            let key = first.target().relay;
            if started.iter().any(|node| node.target().relay != key) {
                bail!("{label}: the relay processes did not share one relay key");
            }
        }
        let mut program = started
            .first()
            .map(|node| node.program.clone())
            .unwrap_or_default();
        let me = std::env::current_exe().map(|path| path.display().to_string());
        if me.is_ok_and(|me| me == program) {
            program.push_str(" serve-relay");
        }
        Ok(Self {
            nodes: Arc::new(started),
            program,
            _dir: dir,
        })
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn target(&self, i: usize) -> Target {
        self.nodes[i % self.len()].target()
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(RelayProcess::pid).collect()
    }

    /// The relays' counters, summed over nodes (`None`, with a message, if a node did not
    /// answer `/metrics`).
    async fn counters(&self) -> Option<Counters> {
        let nodes = Arc::clone(&self.nodes);
        let read = tokio::task::spawn_blocking(move || {
            let mut sum = Counters::default();
            for node in nodes.iter() {
                let text = node.metrics_text()?;
                let value = |name: &str| metric(&text, name).unwrap_or(0.0);
                sum.batch_sum += value("ferry_commit_batch_size_sum");
                sum.batch_count += value("ferry_commit_batch_size_count");
                sum.commit_seconds += value("ferry_commit_seconds_sum");
                sum.bus_dropped += value("ferry_bus_dropped_total");
            }
            anyhow::Ok(sum)
        })
        .await;
        match read {
            Ok(Ok(sum)) => Some(sum),
            Ok(Err(e)) => {
                step(NAME, format_args!("relay metrics unavailable: {e:#}"));
                None
            }
            Err(e) => {
                step(NAME, format_args!("relay metrics unavailable: {e}"));
                None
            }
        }
    }
}

/// Counters read from the relays' `/metrics`, summed over nodes.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    batch_sum: f64,
    batch_count: f64,
    commit_seconds: f64,
    bus_dropped: f64,
}

impl Counters {
    /// `later − self`.
    fn until(self, later: Self) -> Self {
        Self {
            batch_sum: later.batch_sum - self.batch_sum,
            batch_count: later.batch_count - self.batch_count,
            commit_seconds: later.commit_seconds - self.commit_seconds,
            bus_dropped: later.bus_dropped - self.bus_dropped,
        }
    }

    /// Mean events per commit, and mean commit time in ms.
    fn means(self) -> Option<(f64, f64)> {
        (self.batch_count > 0.0).then(|| {
            (
                self.batch_sum / self.batch_count,
                self.commit_seconds * 1000.0 / self.batch_count,
            )
        })
    }
}

/// What one node count measured.
struct Run {
    n: usize,
    throughput: Throughput,
    latency: LatencyRun,
}

struct Throughput {
    appended: f64,
    delivered: f64,
    /// The relays' counters over the phase (`None` when they could not be read).
    relays: Option<Counters>,
    cpu: Option<CpuUse>,
}

struct LatencyRun {
    same: Latencies,
    cross: Latencies,
    relays: Option<Counters>,
    cpu: Option<CpuUse>,
}

/// The appends closed loop with user u's devices on nodes u and u + 1 (mod N).
async fn throughput(
    options: &Options,
    cluster: &Cluster,
    workload: Workload,
) -> anyhow::Result<Throughput> {
    let n = cluster.len();
    let label = format!("{NAME}, {}, appends", nodes(n));
    let targets: Vec<Target> = (0..workload.users * 2)
        .map(|device| cluster.target(device_node(device, n)))
        .collect();
    let before = cluster.counters().await;
    let pids = cluster.pids();
    let rates = appends::drive(&label, &targets, workload, options.sources, Some(&pids)).await?;
    let after = cluster.counters().await;
    Ok(Throughput {
        appended: rates.appended,
        delivered: rates.delivered,
        relays: before.zip(after).map(|(before, after)| before.until(after)),
        cpu: rates.cpu,
    })
}

/// The latency engine, half the users cross-node (sender on node i, receiver on i + 1) and
/// half same-node when N ≥ 2, all same-node when N = 1.
async fn latency(
    options: &Options,
    cluster: &Cluster,
    load: Load,
    users: usize,
) -> anyhow::Result<LatencyRun> {
    let n = cluster.len();
    let label = format!("{NAME}, {}, latency", nodes(n));
    let placements: Vec<Placement> = (0..users)
        .map(|user| {
            let (sender, receiver) = latency_nodes(user, n);
            Placement {
                sender: cluster.target(sender),
                receiver: cluster.target(receiver),
                group: usize::from(sender != receiver),
            }
        })
        .collect();
    step(
        &label,
        format_args!(
            "{} ev/s over {users} users for {:?}",
            load.rate, load.duration
        ),
    );
    let before = cluster.counters().await;
    let pids = cluster.pids();
    let (results, cpu) =
        latency::measure_sampled(&label, load, &placements, 2, options.sources, Some(&pids))
            .await?;
    let after = cluster.counters().await;
    let [same, cross] = <[_; 2]>::try_from(results)
        .map_err(|_| anyhow::anyhow!("{label}: expected two latency groups"))?;
    Ok(LatencyRun {
        same,
        cross,
        relays: before.zip(after).map(|(before, after)| before.until(after)),
        cpu,
    })
}

/// The node of device `device` in the throughput phase (user `device / 2`, its devices 0
/// and 1): user u's devices on nodes u and u + 1 (mod `n`), so on different nodes when
/// `n` ≥ 2 and every node holds as many devices as the others (± 1).
fn device_node(device: usize, n: usize) -> usize {
    (device / 2 + device % 2) % n.max(1)
}

/// The sender's and the receiver's node of user `user` in the latency phase: users in pairs,
/// pair p on node p (mod `n`); the pair's second user receives on the next node (cross node)
/// when `n` ≥ 2, the first on the same node.
fn latency_nodes(user: usize, n: usize) -> (usize, usize) {
    let n = n.max(1);
    let node = (user / 2) % n;
    if n >= 2 && user % 2 == 1 {
        (node, (node + 1) % n)
    } else {
        (node, node)
    }
}

/// "1 node", "2 nodes", …
fn nodes(n: usize) -> String {
    if n == 1 {
        "1 node".to_owned()
    } else {
        format!("{n} nodes")
    }
}

/// The figures, each measure over every N in turn (so the curve reads down the table),
/// then each phase's CPU per N.
fn add_figures(report: &mut Report, runs: &[Run]) {
    for run in runs {
        report.add(
            NAME,
            format!("{}: appends", nodes(run.n)),
            run.throughput.appended,
            "ev/s",
        );
    }
    for run in runs {
        report.add(
            NAME,
            format!("{}: live deliveries", nodes(run.n)),
            run.throughput.delivered,
            "ev/s",
        );
    }
    for run in runs {
        if let Some((batch, _)) = run.throughput.relays.and_then(Counters::means) {
            report.add(
                NAME,
                format!("{}, appends: relay mean events per commit", nodes(run.n)),
                batch,
                "ev",
            );
        }
    }
    for run in runs {
        if let Some((_, ms)) = run.throughput.relays.and_then(Counters::means) {
            report.add(
                NAME,
                format!("{}, appends: relay mean commit time", nodes(run.n)),
                ms,
                "ms",
            );
        }
    }
    for run in runs {
        let relays = run
            .throughput
            .cpu
            .as_ref()
            .map_or(0.0, |cpu| cpu.of("relays"));
        if relays > 0.0 {
            report.add(
                NAME,
                format!("{}, appends: per relay core", nodes(run.n)),
                run.throughput.appended / relays,
                "ev/s",
            );
        }
    }
    for run in runs {
        if let Some(cpu) = &run.throughput.cpu {
            cpu.add_to(report, NAME, &format!("{}, appends: ", nodes(run.n)));
        }
    }
    let percentiles = [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)];
    for (name, q) in percentiles {
        for run in runs.iter().filter(|run| run.n >= 2) {
            report.add(
                NAME,
                format!("{}: cross-node {name}", nodes(run.n)),
                quantile_ms(&run.latency.cross.actual, q),
                "ms",
            );
        }
    }
    for (name, q) in percentiles {
        for run in runs {
            report.add(
                NAME,
                format!("{}: same-node {name}", nodes(run.n)),
                quantile_ms(&run.latency.same.actual, q),
                "ms",
            );
        }
    }
    for run in runs.iter().filter(|run| run.n >= 2) {
        report.add(
            NAME,
            format!("{}: cross ÷ same, p99", nodes(run.n)),
            ratio(&run.latency.cross.actual, &run.latency.same.actual, 0.99),
            "×",
        );
    }
    for run in runs {
        let (same, cross) = (&run.latency.same, &run.latency.cross);
        report.add(
            NAME,
            format!("{}: events not delivered within 5 s", nodes(run.n)),
            (same.sent + cross.sent).saturating_sub(same.received + cross.received) as f64,
            "ev",
        );
    }
    for run in runs {
        if let Some((_, ms)) = run.latency.relays.and_then(Counters::means) {
            report.add(
                NAME,
                format!("{}, latency: relay mean commit time", nodes(run.n)),
                ms,
                "ms",
            );
        }
    }
    for run in runs {
        if let Some(cpu) = &run.latency.cpu {
            cpu.add_to(report, NAME, &format!("{}, latency: ", nodes(run.n)));
        }
    }
}

/// `a ÷ b` at quantile `q` (µs histograms; `b` at least 1 µs).
fn ratio(a: &Histogram<u64>, b: &Histogram<u64>, q: f64) -> f64 {
    a.value_at_quantile(q) as f64 / (b.value_at_quantile(q) as f64).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_each_users_devices_over_two_nodes() {
        for n in 1..=4 {
            let mut per_node = vec![0; n];
            for user in 0..64 {
                let (a, b) = (device_node(2 * user, n), device_node(2 * user + 1, n));
                assert!(a < n && b < n);
                assert_eq!(a != b, n >= 2, "user {user} on {n} nodes");
                per_node[a] += 1;
                per_node[b] += 1;
            }
            let (least, most) = (per_node.iter().min(), per_node.iter().max());
            assert!(
                most.zip(least).is_some_and(|(m, l)| m - l <= 1),
                "{per_node:?}"
            );
        }
    }

    #[test]
    fn half_the_latency_users_cross_nodes() {
        assert!((0..40).all(|user| latency_nodes(user, 1) == (0, 0)));
        for n in 2..=3 {
            let cross = (0..40)
                .filter(|user| {
                    let (sender, receiver) = latency_nodes(*user, n);
                    assert!(sender < n && receiver < n);
                    sender != receiver
                })
                .count();
            assert_eq!(cross, 20);
            let senders: std::collections::BTreeSet<_> =
                (0..40).map(|user| latency_nodes(user, n).0).collect();
            assert_eq!(senders.len(), n);
        }
    }
}
