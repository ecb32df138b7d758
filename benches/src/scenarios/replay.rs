//! `replay`: a fresh device catching up a long log.
//!
//! The log of one user is pre-filled with `events` events of 256 bytes straight through the
//! relay's store (in transactions of 1,000, before the relay starts), then a new device of
//! that user connects with no cursor and reads `Events` pages until `CaughtUp`. The rate is
//! events over the time from `SessionEstablished` to `CaughtUp`; every event is checked to
//! arrive once, in order. Several fresh devices replay in turn, one sample each.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ferry_protocol::{SealedPayload, ServerFrame};
use ferry_relay::Config;
use ferry_relay::store::{self, AppendRequest};

use super::{Options, payload};
use crate::client::{Connection, Identity};
use crate::progress::step;
use crate::relay::{Backend, BenchRelay, NodeOptions};
use crate::report::{Goal, Report, number};

const NAME: &str = "replay";
const PAYLOAD: usize = 256;
const PREFILL_BATCH: usize = 1000;

/// One fresh device's replay of the whole log.
#[derive(Clone, Copy, Debug)]
pub struct Replayed {
    /// Events per second from `SessionEstablished` to `CaughtUp`.
    pub rate: f64,
    /// Time from connecting to `CaughtUp`, handshake included.
    pub total: Duration,
}

/// The scenario's log length: `--events`, or 100,000 (quick 2,000).
pub fn events(options: &Options) -> usize {
    options.pick(options.events, 100_000, 2_000)
}

/// Fresh devices replaying the log in turn: 3 (quick 1).
pub fn replays(options: &Options) -> usize {
    if options.quick { 1 } else { 3 }
}

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let events = events(options);
    let replays = replays(options);
    let mut report = Report::default();
    for replayed in measure(options, events, replays).await? {
        report.add_goal(
            NAME,
            format!("{} events, after the handshake", number(events as f64)),
            replayed.rate,
            "ev/s",
            Goal::AtLeast(200_000.0),
        );
        report.add(
            NAME,
            "time to CaughtUp, handshake included",
            replayed.total.as_secs_f64() * 1000.0,
            "ms",
        );
    }
    report.note(format!(
        "replay: one user's log pre-filled with {events} events of {PAYLOAD} B, then \
         {replays} fresh device(s) in turn replay it from 0 to CaughtUp (each one sample; \
         every event checked once and in order); pages of the relay's default replay_page"
    ));
    Ok(report)
}

/// Pre-fills one user's log with `events` events, starts a relay on it, and lets `replays`
/// fresh devices replay it in turn (each checked: every event once, in order).
pub async fn measure(
    options: &Options,
    events: usize,
    replays: usize,
) -> anyhow::Result<Vec<Replayed>> {
    let ids = Identity::new_user(1 + replays);

    let dir = tempfile::Builder::new().prefix("ferry-bench-").tempdir()?;
    let mut config = Config::new(([127, 0, 0, 1], 0).into(), dir.path());
    if options.services.backend == Backend::Postgres {
        config.database_url = Some(options.services.postgres_url.clone());
    }
    step(
        NAME,
        format_args!("pre-filling the log with {events} events"),
    );
    let log = store::open(&config.database_url())
        .await
        .context("opening the store to pre-fill it")?;
    // The user's chain first: only devices it admits may append.
    for link in ids[0].setup().links() {
        log.append_link(link, usize::MAX, 0).await?;
    }
    ids[0].setup().mark_registered();
    let body = payload(PAYLOAD);
    let writer = &ids[0];
    let mut device_seq = 0;
    while device_seq < events {
        let requests: Vec<AppendRequest> = (device_seq + 1
            ..=(device_seq + PREFILL_BATCH).min(events))
            .map(|seq| AppendRequest {
                user: writer.user(),
                device: writer.id(),
                device_seq: seq as u64,
                payload: SealedPayload(body.clone()),
            })
            .collect();
        device_seq += requests.len();
        log.append_batch(&requests, 0).await?;
    }
    log.close().await;

    step(NAME, "starting the relay");
    let relay = BenchRelay::spawn(
        &options.services,
        NodeOptions {
            data_dir: Some(dir.path().to_owned()),
            ..NodeOptions::default()
        },
    )
    .await?;
    let mut replayed_all = Vec::with_capacity(replays);
    for id in &ids[1..] {
        step(NAME, "a fresh device replays the log");
        let connecting = Instant::now();
        let mut connection = Connection::connect(relay.target(), id, None, None).await?;
        let established = Instant::now();
        let mut next = 1;
        let head = loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), connection.recv())
                .await
                .context("replay stalled for 60 s")??;
            match frame {
                ServerFrame::Events(page) => {
                    for event in page {
                        ensure!(event.seq == next, "seq {} where {next} was due", event.seq);
                        next += 1;
                    }
                }
                ServerFrame::CaughtUp { head } => break head,
                other => bail!("unexpected frame during replay: {other:?}"),
            }
        };
        let done = Instant::now();
        let replayed = next - 1;
        ensure!(
            head == events as u64 && replayed == head,
            "replayed {replayed} events to head {head}, expected {events}"
        );
        let seconds = done.duration_since(established).as_secs_f64();
        replayed_all.push(Replayed {
            rate: replayed as f64 / seconds,
            total: done.duration_since(connecting),
        });
    }
    relay.shutdown(Duration::from_secs(5)).await;
    Ok(replayed_all)
}
