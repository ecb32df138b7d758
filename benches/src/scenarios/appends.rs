//! `appends`: durable append throughput, group commit against one transaction per event.
//!
//! `users` users with two devices each. Every device keeps `window` appends in flight: it
//! sends `window` at once, then one more for each `Appended` (sent only after commit), and
//! reads the live `Events` of its user as they come. The appends answering the frames that
//! arrived together go out in one write, as an app with a write buffer would send them
//! (since 2026-12-02; before, every append was its own write, and that CPU came out of the
//! relay's share of the machine). After a warm-up, the acknowledged
//! appends of `duration` are counted. The same workload runs against a fresh relay with the
//! default group commit and against one with `commit_max_batch = 1`; the ratio compares them.
//! The closed loop ([`drive`]) is shared with the `cluster` scenario, which spreads the
//! devices over relay processes.
//!
//! With `--backend postgres` the same rows are also inserted by plain sqlx, one transaction
//! per row and in batched transactions, as a reference for what the database alone does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferry_protocol::ServerFrame;
use futures_util::FutureExt as _;
use rand_core::{OsRng, RngCore};
use sqlx::{Connection as _, Executor as _, PgConnection, QueryBuilder};
use tokio::sync::watch;

use super::{Options, connect_all, payload};
use crate::client::{ClientError, Connection, Identity, Target, append};
use crate::cpu::{CpuSample, CpuUse};
use crate::progress::{Progress, step};
use crate::relay::{Backend, BenchRelay, NodeOptions, metric};
use crate::report::{Goal, Report};

const NAME: &str = "appends";
/// Sealed payload size of every append.
pub const PAYLOAD: usize = 256;

/// The workload, the same for both relays.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Users, each with two devices.
    pub users: usize,
    /// Appends in flight per device.
    pub window: usize,
    /// Time before counting starts.
    pub warmup: Duration,
    /// Time counted.
    pub duration: Duration,
}

/// What one relay did under the workload.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Acknowledged (committed) appends per second.
    pub appended: f64,
    /// Events delivered live to devices per second (each event goes to both devices).
    pub delivered: f64,
    /// Mean events per commit over the whole run.
    pub mean_batch: f64,
}

/// The scenario's workload: `--users`, `--window` and `--duration-secs`, or the defaults
/// (also the load of the `jetstream` scenario).
pub fn workload(options: &Options) -> Workload {
    Workload {
        users: options.pick(options.users, 64, 4),
        window: options.pick(options.window, 32, 8),
        warmup: if options.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        },
        duration: options.duration(Duration::from_secs(10), Duration::from_secs(1)),
    }
}

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let workload = workload(options);
    let group = measure(options, workload, None, "group commit").await?;
    let single = measure(options, workload, Some(1), "commit_max_batch = 1").await?;

    let mut report = Report::default();
    let backend = match options.services.backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    };
    report.add_goal(
        NAME,
        format!("group commit ({backend})"),
        group.appended,
        "ev/s",
        Goal::AtLeast(50_000.0),
    );
    report.add(
        NAME,
        format!("commit_max_batch = 1 ({backend})"),
        single.appended,
        "ev/s",
    );
    report.add_goal(
        NAME,
        "group ÷ one transaction per event",
        group.appended / single.appended,
        "×",
        Goal::AtLeast(3.0),
    );
    report.add(
        NAME,
        "mean events per commit (group)",
        group.mean_batch,
        "ev",
    );
    report.add(
        NAME,
        "live deliveries during group commit",
        group.delivered,
        "ev/s",
    );
    report.note(format!(
        "appends: {} users × 2 devices, {} appends in flight per device, {} B payloads, \
         {:?} warm-up then {:?} counted; an append counts when its Appended (sent after \
         commit) arrives; the relay's default commit_max_batch is the group commit",
        workload.users, workload.window, PAYLOAD, workload.warmup, workload.duration
    ));
    if options.services.backend == Backend::Postgres {
        let (per_row, batched) = plain_postgres(options, workload.duration).await?;
        report.add(NAME, "plain PostgreSQL, 1 tx per row", per_row, "rows/s");
        report.add(NAME, "plain PostgreSQL, 512 rows per tx", batched, "rows/s");
        report.add(
            NAME,
            "relay group commit ÷ plain batched insert",
            group.appended / batched,
            "×",
        );
        report.note(
            "appends: the plain PostgreSQL reference inserts the same rows (32 B user, \
             sequence, 32 B device, device sequence, 256 B payload, time) into a scratch copy \
             of the events table over one connection",
        );
    }
    Ok(report)
}

/// Runs the workload against a fresh relay with `commit_max_batch` (default if `None`).
pub async fn measure(
    options: &Options,
    workload: Workload,
    commit_max_batch: Option<usize>,
    label: &str,
) -> anyhow::Result<Throughput> {
    let label = format!("{NAME}, {label}");
    step(&label, "starting the relay");
    let relay = BenchRelay::spawn(
        &options.services,
        NodeOptions {
            commit_max_batch,
            ..NodeOptions::default()
        },
    )
    .await?;
    let targets = vec![relay.target(); workload.users * 2];
    let rates = drive(&label, &targets, workload, options.sources, None).await?;
    let metrics = relay.metrics_text();
    // Appends still queued are committed by the shutdown; with one transaction per event
    // that can take long, and nothing more is measured, so it is cut short.
    relay.shutdown(Duration::from_secs(3)).await;
    let batch_sum = metric(&metrics, "ferry_commit_batch_size_sum").unwrap_or(0.0);
    let batch_count = metric(&metrics, "ferry_commit_batch_size_count").unwrap_or(0.0);
    Ok(Throughput {
        appended: rates.appended,
        delivered: rates.delivered,
        mean_batch: batch_sum / batch_count.max(1.0),
    })
}

/// What [`drive`] counted over its measured window.
#[derive(Clone, Debug)]
pub struct Rates {
    /// Acknowledged (committed) appends per second.
    pub appended: f64,
    /// Events delivered live to devices per second.
    pub delivered: f64,
    /// Where the CPU went over the window, when relay process ids were given.
    pub cpu: Option<CpuUse>,
}

/// Runs the workload's closed loop against relays already serving: `workload.users` new
/// users, device `d` of user `u` (`d` 0 or 1) connected to `targets[2 u + d]`, every device
/// keeping `workload.window` appends in flight and reading its user's live events. With
/// `relays` (the relay processes' ids) the CPU is sampled at both ends of the window.
pub async fn drive(
    label: &str,
    targets: &[Target],
    workload: Workload,
    sources: usize,
    relays: Option<&[u32]>,
) -> anyhow::Result<Rates> {
    if targets.len() != workload.users * 2 {
        bail!(
            "{label}: {} targets for {} devices",
            targets.len(),
            workload.users * 2
        );
    }
    let identities: Vec<Identity> = (0..workload.users)
        .flat_map(|_| Identity::new_user(2))
        .collect();
    let devices: Vec<_> = targets.iter().copied().zip(&identities).collect();
    let connections = connect_all(label, &devices, 32, sources).await?;

    let acked = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|connection| {
            let device = Device {
                acked: Arc::clone(&acked),
                delivered: Arc::clone(&delivered),
                stop: stopped.clone(),
                window: workload.window,
            };
            tokio::spawn(device.run(connection))
        })
        .collect();
    let progress = Progress::start(label.to_owned(), Arc::clone(&acked), "appends");
    tokio::time::sleep(workload.warmup).await;
    let cpu_0 = relays.map(CpuSample::take);
    let (acked_0, delivered_0, started) = (
        acked.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(workload.duration).await;
    let (acked_1, delivered_1, elapsed) = (
        acked.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
        started.elapsed(),
    );
    let cpu = relays
        .zip(cpu_0)
        .map(|(pids, before)| before.until(&CpuSample::take(pids)));
    stop.send_replace(true);
    drop(progress);
    for task in tasks {
        match task.await? {
            Ok(()) => {}
            Err(e) => bail!("{label}: a device failed: {e}"),
        }
    }
    let seconds = elapsed.as_secs_f64();
    Ok(Rates {
        appended: (acked_1 - acked_0) as f64 / seconds,
        delivered: (delivered_1 - delivered_0) as f64 / seconds,
        cpu,
    })
}

/// One device's loop: keep `window` appends in flight until told to stop.
struct Device {
    acked: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
    window: usize,
}

impl Device {
    async fn run(mut self, mut connection: Connection) -> Result<(), ClientError> {
        let body = payload(PAYLOAD);
        let mut next_seq = 1;
        for _ in 0..self.window {
            connection.feed(&append(next_seq, body.clone())).await?;
            next_seq += 1;
        }
        connection.flush().await?;
        loop {
            let first = tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => return Ok(()),
                frame = connection.recv() => frame,
            };
            // The frames that are here already are handled together and their new appends
            // go out in one write, as a client with a write buffer sends them: the generator
            // spends less of the CPU it shares with the relay, and the window is unchanged
            // (an append is sent only for an `Appended` received).
            let mut ready = Some(first);
            let mut unflushed = false;
            while let Some(frame) = ready {
                match frame? {
                    ServerFrame::Appended { .. } => {
                        self.acked.fetch_add(1, Ordering::Relaxed);
                        connection.feed(&append(next_seq, body.clone())).await?;
                        next_seq += 1;
                        unflushed = true;
                    }
                    ServerFrame::Events(events) => {
                        self.delivered
                            .fetch_add(events.len() as u64, Ordering::Relaxed);
                    }
                    ServerFrame::Error(error) => {
                        return Err(ClientError::Relay(error));
                    }
                    _ => {}
                }
                // `recv` only awaits the socket's next message, so dropping it unfinished
                // loses nothing.
                ready = connection.recv().now_or_never();
            }
            if unflushed {
                connection.flush().await?;
            }
        }
    }
}

/// Plain sqlx inserts of rows like the relay's, for `time` each: one transaction per row,
/// then 512 rows per transaction. Returns rows per second for both.
async fn plain_postgres(options: &Options, time: Duration) -> anyhow::Result<(f64, f64)> {
    let label = format!("{NAME}, plain PostgreSQL");
    let mut connection = PgConnection::connect(&options.services.postgres_url)
        .await
        .context("connecting to PostgreSQL")?;
    let table = format!("ferry_bench_events_{:016x}", OsRng.next_u64());
    // A real (logged) table shaped like the relay's, dropped at the end.
    connection
        .execute(format!("CREATE TABLE {table} (LIKE events INCLUDING ALL)").as_str())
        .await
        .context("creating the scratch table (the relay's migrations must have run)")?;
    let result = async {
        let user = Identity::new_user(1).remove(0);
        let (user, device) = (user.user(), user.id());
        let body = payload(PAYLOAD);
        let rows = Arc::new(AtomicU64::new(0));
        let mut seq: i64 = 0;

        step(&label, "one transaction per row");
        let progress = Progress::start(label.clone(), Arc::clone(&rows), "rows");
        let insert = format!(
            "INSERT INTO {table} (user_id, seq, device_id, device_seq, payload, committed_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        );
        let started = Instant::now();
        while started.elapsed() < time {
            seq += 1;
            let mut tx = connection.begin().await?;
            sqlx::query(&insert)
                .bind(user.as_bytes().as_slice())
                .bind(seq)
                .bind(device.as_bytes().as_slice())
                .bind(seq)
                .bind(body.as_slice())
                .bind(0_i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.fetch_add(1, Ordering::Relaxed);
        }
        let per_row = rows.swap(0, Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        drop(progress);

        step(&label, "512 rows per transaction");
        let progress = Progress::start(label.clone(), Arc::clone(&rows), "rows");
        let started = Instant::now();
        while started.elapsed() < time {
            let mut tx = connection.begin().await?;
            let mut builder = QueryBuilder::new(format!(
                "INSERT INTO {table} (user_id, seq, device_id, device_seq, payload, committed_at_ms) "
            ));
            builder.push_values(0..512, |mut row, _| {
                seq += 1;
                row.push_bind(user.as_bytes().to_vec())
                    .push_bind(seq)
                    .push_bind(device.as_bytes().to_vec())
                    .push_bind(seq)
                    .push_bind(body.clone())
                    .push_bind(0_i64);
            });
            builder.build().execute(&mut *tx).await?;
            tx.commit().await?;
            rows.fetch_add(512, Ordering::Relaxed);
        }
        let batched = rows.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        drop(progress);
        anyhow::Ok((per_row, batched))
    }
    .await;
    let dropped = connection
        .execute(format!("DROP TABLE {table}").as_str())
        .await;
    let rates = result?;
    dropped.context("dropping the scratch table")?;
    Ok(rates)
}
