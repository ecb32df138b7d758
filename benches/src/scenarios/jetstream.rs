//! `jetstream`: NATS JetStream as a reference for Ferry's durable appends and replay.
//!
//! The same load as [`super::appends`] (its `users` × 2 publishers, each with `window`
//! publishes awaiting their ack, 256-byte payloads, the same warm-up and counted time) goes
//! to a JetStream stream with file storage on the NATS server at `--nats` (one connection
//! per publisher, as each Ferry device has its own; the two publishers of a user share a
//! subject, as the two devices share a log). Acknowledged publishes are counted over the
//! counted time. Then the whole stream is replayed by ordered consumers (pull, from the first
//! message, every stream sequence checked once and in order), one after another, and their
//! messages/s counted from the first pull to the last message. The stream is made fresh for
//! the run (a unique name) and deleted at the end.
//!
//! In the same run Ferry's group-commit appends are measured with [`super::appends::measure`]
//! and Ferry's replay with [`super::replay::measure`], over a log as long as the JetStream
//! stream (unless `--events` sets it); the report gives the ratios. What differs: nats-server
//! 2.9 acknowledges a publish once written to its files but before fsync (its default
//! `sync_interval` is 2 minutes), Ferry sends `Appended` after the commit's fsync; and Ferry
//! also delivers every event live to the user's other device meanwhile, JetStream delivers
//! nothing until the replay.
//!
//! Not in `all`: it needs a NATS server with JetStream (`nats-server -js`), and fails with a
//! message saying so when none answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::context::ContextBuilder;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rand_core::{OsRng, RngCore};
use tokio::sync::watch;

use super::{Options, appends, payload, replay};
use crate::progress::{Progress, step};
use crate::relay::Backend;
use crate::report::{Goal, Report, median, number};

const NAME: &str = "jetstream";
/// Payload size, as in `appends`.
const PAYLOAD: usize = 256;
/// How long a connection to NATS may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a replay may go without a message.
const STALL: Duration = Duration::from_secs(60);

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let workload = appends::workload(options);
    let url = &options.services.nats_url;
    step(NAME, format_args!("connecting to NATS at {url}"));
    let client = connect(url).await?;
    let context = jetstream::new(client);
    let id = OsRng.next_u64();
    let stream_name = format!("FERRY_BENCH_{id:016X}");
    let subjects = format!("ferry-bench.{id:016x}");
    context
        .create_stream(StreamConfig {
            name: stream_name.clone(),
            subjects: vec![format!("{subjects}.>")],
            storage: StorageType::File,
            ..StreamConfig::default()
        })
        .await
        .with_context(|| {
            format!(
                "creating a file-backed JetStream stream on {url} (is JetStream enabled, \
                 nats-server -js?)"
            )
        })?;
    let replays = replay::replays(options);
    let measured = async {
        let acked = publish(url, &subjects, workload).await?;
        let messages = context
            .get_stream(&stream_name)
            .await?
            .get_info()
            .await?
            .state
            .messages;
        let mut rates = Vec::with_capacity(replays);
        for _ in 0..replays {
            rates.push(replay_stream(&context, &stream_name, messages).await?);
        }
        anyhow::Ok((acked, messages, rates))
    }
    .await;
    let deleted = context.delete_stream(&stream_name).await;
    let (acked, messages, js_replays) = measured?;
    deleted.with_context(|| format!("deleting the stream {stream_name}"))?;

    let group = appends::measure(options, workload, None, "group commit").await?;
    let events = options
        .events
        .unwrap_or_else(|| usize::try_from(messages).unwrap_or(usize::MAX).max(1));
    let ferry_replays: Vec<f64> = replay::measure(options, events, replays)
        .await?
        .iter()
        .map(|replayed| replayed.rate)
        .collect();

    let backend = match options.services.backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    };
    let mut report = Report::default();
    report.add(NAME, "JetStream acked publishes (file)", acked, "msg/s");
    report.add(
        NAME,
        format!("Ferry durable appends (group commit, {backend})"),
        group.appended,
        "ev/s",
    );
    report.add_goal(
        NAME,
        "Ferry appends ÷ JetStream acks",
        group.appended / acked,
        "×",
        Goal::AtLeast(0.5),
    );
    report.add(
        NAME,
        "Ferry live deliveries meanwhile",
        group.delivered,
        "ev/s",
    );
    let js_replay = median(&js_replays);
    let ferry_replay = median(&ferry_replays);
    report.add(
        NAME,
        format!(
            "JetStream ordered replay, {} messages",
            number(messages as f64)
        ),
        js_replay,
        "msg/s",
    );
    report.add(
        NAME,
        format!("Ferry replay, {} events", number(events as f64)),
        ferry_replay,
        "ev/s",
    );
    report.add_goal(
        NAME,
        "Ferry replay ÷ JetStream replay",
        ferry_replay / js_replay,
        "×",
        Goal::AtLeast(1.0),
    );
    report.note(format!(
        "jetstream: the appends load on both ({} users × 2 publishers/devices, {} publishes \
         awaiting their ack each, {PAYLOAD} B payloads, {:?} warm-up then {:?} counted), to \
         a fresh file-storage JetStream stream on {url} (one connection per publisher) and to \
         a fresh Ferry relay; then {replays} ordered-consumer replay(s) of the whole stream \
         and {replays} fresh Ferry device(s) replaying a log of {} events (replay rates: \
         medians, each from the first pull or SessionEstablished to the last message or \
         CaughtUp, every sequence checked once and in order)",
        workload.users,
        workload.window,
        workload.warmup,
        workload.duration,
        number(events as f64),
    ));
    report.note(
        "jetstream: not like for like: nats-server 2.9 acknowledges a publish once written to \
         its files but before fsync (default sync_interval 2 min, so an OS crash can lose \
         acknowledged messages), Ferry answers Appended after the commit's fsync; Ferry also \
         delivers every event live to the user's other device meanwhile, JetStream delivers \
         nothing until the replay; the replay goal is > 1, checked as ≥ 1",
    );
    Ok(report)
}

/// A client connected to `url`, or an error that says NATS is not there.
async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    match async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
    {
        Ok(client) => Ok(client),
        Err(e) => bail!(
            "NATS is not reachable at {url} ({e}): the jetstream scenario needs a NATS server \
             with JetStream (nats-server -js), or --nats URL / FERRY_BENCH_NATS_URL"
        ),
    }
}

/// The appends load as JetStream publishes; returns acknowledged publishes per second over
/// the counted time.
async fn publish(url: &str, subjects: &str, workload: appends::Workload) -> anyhow::Result<f64> {
    let label = format!("{NAME}, JetStream publishes");
    let publishers = workload.users * 2;
    step(&label, format_args!("connecting {publishers} publishers"));
    let clients: Vec<async_nats::Client> = futures_util::stream::iter(0..publishers)
        .map(|_| connect(url))
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let acked = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let publisher = Publisher {
                subject: format!("{subjects}.{}", i / 2),
                window: workload.window.max(1),
                acked: Arc::clone(&acked),
                stop: stopped.clone(),
            };
            tokio::spawn(publisher.run(client))
        })
        .collect();
    let progress = Progress::start(label.clone(), Arc::clone(&acked), "acks");
    tokio::time::sleep(workload.warmup).await;
    let (acked_0, started) = (acked.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(workload.duration).await;
    let (acked_1, elapsed) = (acked.load(Ordering::Relaxed), started.elapsed());
    stop.send_replace(true);
    drop(progress);
    for task in tasks {
        task.await?
            .with_context(|| format!("{label}: a publisher failed"))?;
    }
    Ok((acked_1 - acked_0) as f64 / elapsed.as_secs_f64())
}

/// One publisher: keep `window` publishes awaiting their ack until told to stop, then wait
/// for the last acks (so the stream holds everything before the replay).
struct Publisher {
    subject: String,
    window: usize,
    acked: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
}

impl Publisher {
    async fn run(mut self, client: async_nats::Client) -> anyhow::Result<()> {
        // The client's own cap on acks in flight is the window too (it waits, not fails).
        let context = ContextBuilder::new()
            .max_ack_inflight(self.window)
            .backpressure_on_inflight(true)
            .build(client);
        let body = Bytes::from(payload(PAYLOAD));
        let mut pending = FuturesUnordered::new();
        loop {
            let stopping = *self.stop.borrow();
            while !stopping && pending.len() < self.window {
                let ack = context.publish(self.subject.clone(), body.clone()).await?;
                pending.push(ack.into_future());
            }
            tokio::select! {
                _ = self.stop.wait_for(|stop| *stop), if !stopping => {}
                ack = pending.next() => match ack {
                    Some(ack) => {
                        ack?;
                        self.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    None => return Ok(()),
                },
            }
        }
    }
}

/// Replays the whole stream (`messages` long) with an ordered consumer; messages per second
/// from the first pull to the last message.
async fn replay_stream(context: &Context, stream_name: &str, messages: u64) -> anyhow::Result<f64> {
    let label = format!("{NAME}, JetStream ordered replay");
    step(&label, format_args!("{} messages", number(messages as f64)));
    let consumer = context
        .get_stream(stream_name)
        .await?
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            replay_policy: ReplayPolicy::Instant,
            ..OrderedConfig::default()
        })
        .await
        .context("creating an ordered consumer")?;
    let count = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(label, Arc::clone(&count), "msg");
    let started = Instant::now();
    let mut stream = consumer.messages().await?;
    let mut next = 1;
    while next <= messages {
        let message = tokio::time::timeout(STALL, stream.next())
            .await
            .with_context(|| format!("replay stalled for {STALL:?}"))?
            .context("the ordered consumer ended early")??;
        let seq = message
            .info()
            .map_err(|e| anyhow::anyhow!("a message without JetStream metadata: {e}"))?
            .stream_sequence;
        ensure!(seq == next, "stream sequence {seq} where {next} was due");
        next += 1;
        count.fetch_add(1, Ordering::Relaxed);
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(progress);
    Ok(messages as f64 / seconds)
}
