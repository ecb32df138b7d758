//! `conversations`: one MLS group conversation of `users` users × 2 devices, every device a
//! real MLS member (`ferry_mls::Member`), at a fixed offered load of application messages;
//! beside it, the per-user sync log (the `latency` scenario's engine) at the same load.
//!
//! # Method
//!
//! Setup (untimed), on one in-process relay, as devices do it (see
//! `relay/tests/support/conversation.rs`):
//!
//! 1. Every device connects, replays its log and uploads one KeyPackage and a last-resort one.
//! 2. The creator (the first device of the first user) becomes a contact of every other user:
//!    `ContactRequest` with a real intro (signed, sealed to the target's devices), answered by
//!    `ContactAccept` from the target.
//! 3. The creator creates the conversation (`ConvCreate`), claims the KeyPackages of its own
//!    other device and of every other user, and adds them in one commit, or in several (whole
//!    users each) when the Welcome or the GroupInfo would exceed `MAX_GROUP_BLOB_LEN`.
//! 4. Every other device joins from the Welcome notice in its log, then reads the conversation
//!    to its head (processing the later commits, if any).
//!
//! Measured: each user's first device sends `Content` messages (256-byte plaintext carrying
//! the scheduled and actual send times, encrypted with `Member::encrypt`) on a fixed schedule,
//! `rate / users` per second each, users phase-shifted, open loop (like `latency`). Every
//! device, on `ConvHead`, fetches forward from its cursor (`ConvFetch`, one fetch in flight,
//! again while the head is ahead), decrypts every message of the other devices
//! (`Member::process`) and acknowledges when caught up. Latency is from the actual send to the
//! moment the receiving device has decrypted the message (same process, same clock), over
//! every (message, receiving device) pair of messages scheduled in the measured window (after
//! a warm-up). "Delivered to all devices" counts window messages decrypted by every other
//! device, divided by the time from the window's start to the last of those decryptions.
//!
//! The bench's own devices decrypt in this process, on the same cores as the relay: the time
//! they spend in `Member::process` is reported, since at 2 × `users` devices each message costs
//! that many decryptions (see `mls/benches/mls.rs` for one).
//!
//! The reference (`sync log, same load`) runs `latency::measure` on a fresh relay: `users`
//! users, device A appending 256-byte events at the same total rate, device B receiving them
//! (fan-out 1 instead of 2 × `users` − 1, no MLS).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use ferry_mls::{GroupKind, GroupPolicy, Incoming, Member};
use ferry_protocol::conversations::{
    ConvId, ConvSend, Direction, MAX_CONV_MESSAGES_PER_FRAME, MAX_GROUP_BLOB_LEN,
};
use ferry_protocol::epoch::ExchangeSecret;
use ferry_protocol::people::{Intro, IntroBody, Notice, ProfileKey, RELAY_DEVICE};
use ferry_protocol::{ClientFrame, DeviceId, Event, MessageClass, ServerFrame, UserId};
use futures_util::future::try_join_all;
use hdrhistogram::Histogram;
use rand_core::{OsRng, RngCore};
use tokio::time::Instant;

use super::latency::{self, Load, Placement};
use super::{Options, connect_all, micros_histogram, quantile_ms, record};
use crate::client::{Connection, Identity, Target};
use crate::progress::{Progress, step};
use crate::relay::{BenchRelay, NodeOptions};
use crate::report::Report;

const NAME: &str = "conversations";
/// Plaintext size; the first 16 bytes carry the scheduled and actual send times.
const PAYLOAD: usize = 256;
/// How long any single setup answer may take.
const WAIT: Duration = Duration::from_secs(60);
/// How long after the window devices may take to read what was sent in it.
const DRAIN: Duration = Duration::from_secs(10);
/// Messages asked for per `ConvFetch`.
const FETCH_LIMIT: u16 = 256;
/// Devices connecting at once during setup.
const SETUP_CONCURRENCY: usize = 16;

/// A device of the bench: its connection, MLS state and what it has read.
struct Device {
    id: Identity,
    exchange: [u8; 32],
    connection: Connection,
    mls: Member,
    /// The next `device_seq` for conversation sends.
    next_seq: u64,
    /// The highest `conv_seq` read.
    cursor: u64,
    /// Log events received (the Welcome notice arrives here).
    log: Vec<Event>,
}

impl Device {
    fn user(&self) -> UserId {
        self.id.user()
    }

    fn device(&self) -> DeviceId {
        self.id.id()
    }

    /// Sends `frame` and returns its answer (pushed frames are skipped, log events kept).
    async fn ask(&mut self, frame: &ClientFrame) -> anyhow::Result<ServerFrame> {
        self.connection.send(frame).await?;
        loop {
            match self.next().await? {
                ServerFrame::Events(events) => self.log.extend(events),
                ServerFrame::CaughtUp { .. }
                | ServerFrame::ConvHead { .. }
                | ServerFrame::ConvReadBy { .. }
                | ServerFrame::Presence { .. }
                | ServerFrame::Ping { .. } => {}
                answer => return Ok(answer),
            }
        }
    }

    async fn next(&mut self) -> anyhow::Result<ServerFrame> {
        Ok(tokio::time::timeout(WAIT, self.connection.recv())
            .await
            .context("no frame from the relay")??)
    }

    /// Uploads one KeyPackage and a last-resort one.
    async fn upload(&mut self) -> anyhow::Result<()> {
        let packages = self.mls.key_packages(1)?;
        let last_resort = self.mls.last_resort_key_package()?;
        let frame = ClientFrame::KeyPackagesUpload {
            packages: packages.into_iter().map(Into::into).collect(),
            last_resort: Some(last_resort.into()),
        };
        match self.ask(&frame).await? {
            ServerFrame::KeyPackageCount { count: 1 } => Ok(()),
            other => bail!("KeyPackagesUpload answered {other:?}"),
        }
    }

    /// An intro from this device to `to` (sealed to the given devices of `to`).
    fn intro(&self, to: UserId, recipients: &[(DeviceId, [u8; 32])]) -> anyhow::Result<Intro> {
        let body = IntroBody {
            note: "let's talk".into(),
            profile_key: ProfileKey::from_bytes(&[3; 32]),
        };
        Intro::seal(
            &mut OsRng,
            self.user(),
            &self.id.device,
            to,
            recipients,
            &body,
        )
        .context("sealing an intro")
    }

    /// Sends a conversation message; returns the answer.
    async fn send(&mut self, send: ConvSend) -> anyhow::Result<ServerFrame> {
        self.next_seq += 1;
        self.ask(&ClientFrame::ConvSend(Box::new(send))).await
    }

    /// Waits for the Welcome to `conv` in this user's log and joins (the cursor is then the
    /// commit that added this device).
    async fn join(&mut self, conv: ConvId) -> anyhow::Result<()> {
        loop {
            let found = self.log.iter().find_map(|event| {
                if event.device != RELAY_DEVICE {
                    return None;
                }
                match Notice::from_payload(&event.payload.0) {
                    Ok(Notice::Welcome {
                        conv: c,
                        conv_seq,
                        welcome,
                    }) if c == conv => Some((conv_seq, welcome)),
                    _ => None,
                }
            });
            if let Some((conv_seq, welcome)) = found {
                self.mls.join(&welcome)?;
                self.cursor = conv_seq;
                return Ok(());
            }
            if let ServerFrame::Events(events) = self.next().await? {
                self.log.extend(events);
            }
        }
    }

    /// Reads `conv` from the cursor to the head, processing every message of others.
    async fn catch_up(&mut self, conv: ConvId) -> anyhow::Result<()> {
        loop {
            let frame = ClientFrame::ConvFetch {
                conv,
                from: self.cursor,
                direction: Direction::Forward,
                limit: FETCH_LIMIT,
            };
            let (messages, more) = match self.ask(&frame).await? {
                ServerFrame::ConvMessages { messages, more, .. } => (messages, more),
                other => bail!("ConvFetch answered {other:?}"),
            };
            for message in messages {
                self.cursor = message.conv_seq;
                if message.device != self.device() {
                    self.mls.process(&conv.0, &message.message)?;
                }
            }
            if !more {
                return Ok(());
            }
        }
    }
}

/// Runs the scenario.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let users = options.pick(options.users, 100, 10).max(2);
    let load = Load {
        rate: options.pick(options.rate, 5.0, 20.0),
        warmup: if options.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        },
        duration: options.duration(Duration::from_secs(10), Duration::from_secs(1)),
    };
    let (measured, setup) = measure_group(options, users, load, None).await?;
    let mut report = Report::default();
    add_figures(&mut report, &measured, &load);

    // The same group on a relay that commits every message and every cursor alone (no group
    // commit), for the ratio.
    let (single, _) = measure_group(options, users, load, Some(1)).await?;
    let mut latency = micros_histogram();
    for seen in &single.seen {
        let _ = latency.add(&seen.latency);
    }
    for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
        report.add(
            NAME,
            format!("commit_max_batch = 1 (a transaction per message and cursor): send → decrypted {label}"),
            quantile_ms(&latency, q),
            "ms",
        );
    }

    // The references: the per-user sync log at the same send rate, and at the same rate of
    // deliveries (fan-out 1, so `devices − 1` times the appends), each on a fresh relay.
    let deliveries = load.rate * (2 * users - 1) as f64;
    for (label, rate) in [
        ("same send rate", load.rate),
        ("same deliveries", deliveries),
    ] {
        step(NAME, format_args!("sync log, {label}: {rate} ev/s"));
        let relay = BenchRelay::spawn(&options.services, NodeOptions::default()).await?;
        let target = relay.target();
        let placements: Vec<Placement> = (0..users)
            .map(|_| Placement {
                sender: target,
                receiver: target,
                group: 0,
            })
            .collect();
        let load = Load { rate, ..load };
        let name = format!("{NAME} (sync log, {label})");
        let mut results = latency::measure(&name, load, &placements, 1, options.sources).await?;
        relay.shutdown(Duration::from_secs(5)).await;
        let Some(log) = results.pop() else {
            bail!("no sync-log results");
        };
        let prefix = format!("sync log, {label} ({rate} ev/s): append → event");
        report.add(
            NAME,
            format!("{prefix} p50"),
            quantile_ms(&log.actual, 0.5),
            "ms",
        );
        report.add(
            NAME,
            format!("{prefix} p99"),
            quantile_ms(&log.actual, 0.99),
            "ms",
        );
        report.add(
            NAME,
            format!("sync log, {label}: events not delivered within 5 s"),
            log.sent.saturating_sub(log.received) as f64,
            "ev",
        );
    }
    report.note(format!(
        "conversations: one group of {users} users × 2 devices (set up with {commits} add \
         commit(s), Welcome {welcome} B, GroupInfo {info} B), every device a real MLS member; \
         each user's first device sends Content messages ({PAYLOAD} B plaintext) open loop at \
         {rate} msg/s in total, {warmup:?} warm-up then {window:?} measured; every device \
         fetches on ConvHead and decrypts; latency from the sender's ConvSend to the message \
         decrypted on each receiving device (same process, same clock). \"client MLS\" is the \
         bench's own devices' time in Member::process, on the relay's cores. References: the \
         latency scenario's engine on a fresh relay, {users} users appending {PAYLOAD} B events \
         to their other device (fan-out 1, no MLS), at the same rate and at {deliveries} ev/s \
         (the conversation's deliveries: rate × (devices − 1))",
        commits = setup.commits,
        welcome = setup.welcome_len,
        info = setup.group_info_len,
        rate = load.rate,
        warmup = load.warmup,
        window = load.duration,
        deliveries = load.rate * (2 * users - 1) as f64,
    ));
    Ok(report)
}

/// Starts a relay (with `commit_max_batch`, default if `None`), sets the group up and
/// measures it.
async fn measure_group(
    options: &Options,
    users: usize,
    load: Load,
    commit_max_batch: Option<usize>,
) -> anyhow::Result<(Measured, SetUp)> {
    step(NAME, "starting the relay");
    // The creator sends a contact request and a KeyPackage claim per user in a row.
    let node = NodeOptions {
        people_writes_per_second: Some(1_000_000),
        commit_max_batch,
        ..NodeOptions::default()
    };
    let relay = BenchRelay::spawn(&options.services, node).await?;
    let target = relay.target();
    let (mut devices, conv, setup) = set_up(target, users, options.sources).await?;
    let base_head = devices.first().map_or(0, |d| d.cursor);
    step(
        NAME,
        format_args!(
            "{} msg/s over {users} senders to {} devices for {:?} (commit_max_batch {:?})",
            load.rate,
            devices.len(),
            load.duration,
            commit_max_batch
        ),
    );
    for device in &mut devices {
        device.log.clear();
    }
    let measured = measure(devices, conv, load, base_head).await?;
    relay.shutdown(Duration::from_secs(5)).await;
    Ok((measured, setup))
}

/// What setting the group up took.
#[derive(Debug, Default)]
struct SetUp {
    commits: usize,
    welcome_len: usize,
    group_info_len: usize,
}

/// Steps 1–4 of the method: returns the devices (creator first) in the group, at its head.
async fn set_up(
    target: Target,
    users: usize,
    sources: usize,
) -> anyhow::Result<(Vec<Device>, ConvId, SetUp)> {
    step(
        NAME,
        format_args!("connecting {users} users × 2 devices, KeyPackages"),
    );
    let people: Vec<Vec<(Identity, [u8; 32])>> = (0..users)
        .map(|_| {
            let exchange = [
                ExchangeSecret::generate(&mut OsRng).public(),
                ExchangeSecret::generate(&mut OsRng).public(),
            ];
            Identity::new_user_with_exchange(&exchange)
                .into_iter()
                .zip(exchange)
                .collect()
        })
        .collect();
    let ids: Vec<(Target, &Identity)> = people
        .iter()
        .flatten()
        .map(|(id, _)| (target, id))
        .collect();
    let connections = connect_all(NAME, &ids, SETUP_CONCURRENCY, sources).await?;
    let mut devices: Vec<Device> = people
        .into_iter()
        .flatten()
        .zip(connections)
        .map(|((id, exchange), connection)| Device {
            mls: Member::new(id.user(), &id.device),
            id,
            exchange,
            connection,
            next_seq: 1,
            cursor: 0,
            log: Vec::new(),
        })
        .collect();
    try_join_all(devices.iter_mut().map(Device::upload)).await?;

    step(NAME, "contacts: the creator and every other user");
    let (mine, rest) = devices.split_at_mut(2);
    let [creator, laptop] = mine else {
        bail!("the creator without two devices");
    };
    for pair in rest.chunks_mut(2) {
        let [first, second] = pair else {
            bail!("a user without two devices");
        };
        let recipients = [
            (first.device(), first.exchange),
            (second.device(), second.exchange),
        ];
        let ask = creator.intro(first.user(), &recipients)?;
        match creator
            .ask(&ClientFrame::ContactRequest(Box::new(ask)))
            .await?
        {
            ServerFrame::Done => {}
            other => bail!("ContactRequest answered {other:?}"),
        }
        let accept = first.intro(creator.user(), &[(creator.device(), creator.exchange)])?;
        match first
            .ask(&ClientFrame::ContactAccept(Box::new(accept)))
            .await?
        {
            ServerFrame::Done => {}
            other => bail!("ContactAccept answered {other:?}"),
        }
    }

    step(NAME, "creating the group");
    let mut id = [0; 16];
    OsRng.fill_bytes(&mut id);
    let conv = ConvId(id);
    let policy = GroupPolicy {
        kind: GroupKind::Group,
        admins: Vec::new(),
    };
    let group_info = creator.mls.create_group(&conv.0, policy)?;
    match creator
        .ask(&ClientFrame::ConvCreate { conv, group_info })
        .await?
    {
        ServerFrame::ConvCreated { .. } => {}
        other => bail!("ConvCreate answered {other:?}"),
    }
    // Every user's packages (the creator's own other device with the first).
    let mut claimed: Vec<Vec<Vec<u8>>> = Vec::new();
    let users: Vec<UserId> = std::iter::once(creator.user())
        .chain(rest.chunks(2).map(|pair| pair[0].user()))
        .collect();
    for user in users {
        match creator.ask(&ClientFrame::KeyPackagesClaim { user }).await? {
            ServerFrame::KeyPackagesClaimed { packages, .. } => {
                claimed.push(packages.into_iter().map(|p| p.package).collect());
            }
            other => bail!("KeyPackagesClaim answered {other:?}"),
        }
    }
    let setup = add_all(creator, conv, &claimed).await?;

    step(NAME, "joining from the Welcome");
    let others = std::iter::once(laptop).chain(rest.iter_mut());
    try_join_all(others.map(|device| async move {
        device.join(conv).await?;
        device.catch_up(conv).await
    }))
    .await?;
    let head = devices[0].cursor;
    if let Some(behind) = devices.iter().find(|d| d.cursor != head) {
        bail!(
            "a device is at {} after joining, the head is {head}",
            behind.cursor
        );
    }
    Ok((devices, conv, setup))
}

/// Adds every user of `claimed` (their packages) in as few commits as fit the blob limit.
async fn add_all(
    creator: &mut Device,
    conv: ConvId,
    claimed: &[Vec<Vec<u8>>],
) -> anyhow::Result<SetUp> {
    let mut setup = SetUp::default();
    let mut rest = claimed;
    let mut chunk = claimed.len();
    while !rest.is_empty() {
        let take = chunk.min(rest.len());
        let packages: Vec<Vec<u8>> = rest[..take].iter().flatten().cloned().collect();
        let epoch = creator.mls.epoch(&conv.0)?;
        let out = creator.mls.add(&conv.0, &packages)?;
        let welcome_len = out.welcome.as_ref().map_or(0, Vec::len);
        if welcome_len.max(out.group_info.len()) > MAX_GROUP_BLOB_LEN {
            creator.mls.discard_pending(&conv.0)?;
            if take == 1 {
                bail!("one user's Welcome exceeds {MAX_GROUP_BLOB_LEN} B");
            }
            chunk = take.div_ceil(2);
            continue;
        }
        setup.welcome_len = setup.welcome_len.max(welcome_len);
        setup.group_info_len = setup.group_info_len.max(out.group_info.len());
        let send = ConvSend {
            conv,
            device_seq: creator.next_seq,
            epoch,
            class: MessageClass::Commit,
            message: out.commit,
            welcome: out.welcome.map(Into::into),
            group_info: Some(out.group_info.into()),
            attachments: Vec::new(),
        };
        match creator.send(send).await? {
            ServerFrame::ConvSent { conv_seq, .. } => {
                creator.mls.merge_pending(&conv.0)?;
                creator.cursor = conv_seq;
            }
            other => {
                creator.mls.discard_pending(&conv.0)?;
                bail!("the add commit was answered {other:?}");
            }
        }
        setup.commits += 1;
        rest = &rest[take..];
    }
    Ok(setup)
}

/// What one device saw during the measurement.
#[derive(Debug)]
struct Seen {
    /// Send → decrypted, for window messages of other devices, in µs.
    latency: Histogram<u64>,
    /// Window messages of other devices decrypted.
    decrypted: u64,
    /// When the last of them was decrypted (µs since the base).
    last_at: u64,
    /// Window messages this device sent (and had stored).
    sent: u64,
    /// Messages of other devices processed (warm-up included).
    processed: u64,
    /// Time spent in `Member::process` on them.
    mls: Duration,
}

/// The measurement's figures.
#[derive(Debug)]
struct Measured {
    seen: Vec<Seen>,
    window_start_us: u64,
    /// From the first scheduled send to the last device done.
    elapsed: Duration,
    devices: usize,
}

/// Runs the load: every device its own task (sending if it is a user's first device).
async fn measure(
    devices: Vec<Device>,
    conv: ConvId,
    load: Load,
    base_head: u64,
) -> anyhow::Result<Measured> {
    let count = devices.len();
    let senders = count / 2;
    let base = Instant::now();
    let start = base + Duration::from_millis(200);
    let window_start = start + load.warmup;
    let window_end = window_start + load.duration;
    let deadline = window_end + DRAIN;
    let period = Duration::from_secs_f64(senders as f64 / load.rate);
    let shared = Arc::new(Shared {
        sent_total: AtomicU64::new(0),
        senders_done: AtomicU64::new(0),
        decrypted: Arc::new(AtomicU64::new(0)),
    });
    let progress = Progress::start(
        format!("{NAME}: decryptions"),
        Arc::clone(&shared.decrypted),
        "msg",
    );
    // Each user's first device sends from its phase on, if that falls before the window's end
    // (at low rates a sender's period is longer than the run).
    let first_sends: Vec<Option<Instant>> = (0..count)
        .map(|i| {
            let phase = period.mul_f64((i / 2) as f64 / senders as f64);
            Some(start + phase).filter(|at| i % 2 == 0 && *at < window_end)
        })
        .collect();
    let active = first_sends.iter().flatten().count();
    let mut tasks = Vec::with_capacity(count);
    for (device, sends) in devices.into_iter().zip(first_sends) {
        let run = Run {
            conv,
            base,
            window: (
                micros_since(base, window_start),
                micros_since(base, window_end),
            ),
            window_end,
            deadline,
            period,
            first_send: sends,
            senders: active as u64,
            base_head,
            shared: Arc::clone(&shared),
        };
        tasks.push(tokio::spawn(run.device(device)));
    }
    let mut seen = Vec::with_capacity(count);
    for task in tasks {
        seen.push(task.await??);
    }
    drop(progress);
    Ok(Measured {
        seen,
        window_start_us: micros_since(base, window_start),
        elapsed: start.elapsed(),
        devices: count,
    })
}

/// Counters shared by the device tasks.
#[derive(Debug)]
struct Shared {
    /// Messages stored (answered `ConvSent`), warm-up included.
    sent_total: AtomicU64,
    /// Senders that sent their last message and had it stored.
    senders_done: AtomicU64,
    /// Messages decrypted by any device (the progress line).
    decrypted: Arc<AtomicU64>,
}

/// One device's part of the measurement.
struct Run {
    conv: ConvId,
    base: Instant,
    /// The measured window, in µs since the base (by scheduled send time).
    window: (u64, u64),
    window_end: Instant,
    deadline: Instant,
    period: Duration,
    /// When this device sends first (`None`: it only reads). Sends stop at the window's end.
    first_send: Option<Instant>,
    /// Devices that send.
    senders: u64,
    base_head: u64,
    shared: Arc<Shared>,
}

impl Run {
    async fn device(self, mut device: Device) -> anyhow::Result<Seen> {
        let conv = self.conv;
        let me = device.device();
        let mut seen = Seen {
            latency: micros_histogram(),
            decrypted: 0,
            last_at: 0,
            sent: 0,
            processed: 0,
            mls: Duration::ZERO,
        };
        let mut next_send = self.first_send;
        let mut unanswered = 0_u64;
        let mut known_head = device.cursor;
        let mut fetching = false;
        let mut body = vec![0x42; PAYLOAD];
        let mut check = tokio::time::interval(Duration::from_millis(50));
        loop {
            // Done when every sender is done and this device has read every stored message.
            let final_head = (self.shared.senders_done.load(Ordering::Acquire) == self.senders)
                .then(|| self.base_head + self.shared.sent_total.load(Ordering::Acquire));
            if next_send.is_none() && unanswered == 0 && final_head == Some(device.cursor) {
                break;
            }
            let send_at = next_send.unwrap_or(self.deadline);
            tokio::select! {
                frame = tokio::time::timeout_at(self.deadline, device.connection.recv()) => {
                    let Ok(frame) = frame else { break };
                    match frame? {
                        refused @ (ServerFrame::ConvStale { .. }
                        | ServerFrame::ConvRefused { .. }
                        | ServerFrame::Error(_)) => bail!("the relay answered {refused:?}"),
                        ServerFrame::ConvHead { head, .. } => known_head = known_head.max(head),
                        ServerFrame::ConvSent { .. } => {
                            unanswered = unanswered.saturating_sub(1);
                            self.shared.sent_total.fetch_add(1, Ordering::AcqRel);
                            if next_send.is_none() && unanswered == 0 {
                                self.shared.senders_done.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                        ServerFrame::ConvMessages { messages, more, .. } => {
                            fetching = false;
                            for message in messages {
                                if message.conv_seq != device.cursor + 1 {
                                    bail!("a gap: {} after {}", message.conv_seq, device.cursor);
                                }
                                device.cursor = message.conv_seq;
                                known_head = known_head.max(message.conv_seq);
                                if message.device == me {
                                    continue;
                                }
                                let started = std::time::Instant::now();
                                let incoming = device.mls.process(&conv.0, &message.message)?;
                                seen.mls += started.elapsed();
                                seen.processed += 1;
                                let Incoming::Application { plaintext, .. } = incoming else {
                                    bail!("expected an application message, got {incoming:?}");
                                };
                                let now = micros_since(self.base, Instant::now());
                                self.shared.decrypted.fetch_add(1, Ordering::Relaxed);
                                let Some((scheduled, actual)) = send_times(&plaintext) else {
                                    bail!("a message without its send times");
                                };
                                if scheduled >= self.window.0 && scheduled < self.window.1 {
                                    seen.decrypted += 1;
                                    seen.last_at = now;
                                    record(
                                        &mut seen.latency,
                                        Duration::from_micros(now.saturating_sub(actual)),
                                    );
                                }
                            }
                            if !more && known_head <= device.cursor {
                                device
                                    .connection
                                    .send(&ClientFrame::ConvAck { conv, seq: device.cursor })
                                    .await?;
                            }
                        }
                        _ => {}
                    }
                }
                () = tokio::time::sleep_until(send_at), if next_send.is_some() => {
                    let now = Instant::now();
                    body[..8].copy_from_slice(&micros_since(self.base, send_at).to_le_bytes());
                    body[8..16].copy_from_slice(&micros_since(self.base, now).to_le_bytes());
                    let epoch = device.mls.epoch(&conv.0)?;
                    let message = device.mls.encrypt(&conv.0, &body)?;
                    let send = ConvSend {
                        conv,
                        device_seq: device.next_seq,
                        epoch,
                        class: MessageClass::Content,
                        message,
                        welcome: None,
                        group_info: None,
                        attachments: Vec::new(),
                    };
                    device.next_seq += 1;
                    device.connection.send(&ClientFrame::ConvSend(Box::new(send))).await?;
                    unanswered += 1;
                    let scheduled = micros_since(self.base, send_at);
                    if scheduled >= self.window.0 && scheduled < self.window.1 {
                        seen.sent += 1;
                    }
                    let next = send_at + self.period;
                    next_send = (next < self.window_end).then_some(next);
                }
                _ = check.tick() => {}
            }
            if !fetching && known_head > device.cursor {
                let frame = ClientFrame::ConvFetch {
                    conv,
                    from: device.cursor,
                    direction: Direction::Forward,
                    limit: FETCH_LIMIT.min(MAX_CONV_MESSAGES_PER_FRAME as u16),
                };
                device.connection.send(&frame).await?;
                fetching = true;
            }
        }
        let _ = device.connection.ws.close(None).await;
        Ok(seen)
    }
}

/// Adds the conversation's figures to `report`.
fn add_figures(report: &mut Report, measured: &Measured, load: &Load) {
    let mut latency = micros_histogram();
    let mut sent = 0;
    let mut mls = Duration::ZERO;
    let mut decrypted = 0;
    let mut last_at = measured.window_start_us;
    let mut fewest = u64::MAX;
    for seen in &measured.seen {
        // Every device decrypts every window message but its own.
        let _ = latency.add(&seen.latency);
        sent += seen.sent;
        mls += seen.mls;
        decrypted += seen.decrypted;
        last_at = last_at.max(seen.last_at);
    }
    for seen in &measured.seen {
        fewest = fewest.min(seen.decrypted + seen.sent);
    }
    let expected = sent * (measured.devices as u64 - 1);
    // Open loop: nothing is delivered faster than it was offered; a backlog stretches this.
    let span = ((last_at - measured.window_start_us) as f64 / 1e6).max(load.duration.as_secs_f64());
    let all = fewest.min(sent);
    report.add(
        NAME,
        "offered load achieved",
        sent as f64 / load.duration.as_secs_f64(),
        "msg/s",
    );
    report.add(
        NAME,
        "delivered to all devices",
        if span > 0.0 { all as f64 / span } else { 0.0 },
        "msg/s",
    );
    report.add(
        NAME,
        "decryptions (message × device)",
        if span > 0.0 {
            decrypted as f64 / span
        } else {
            0.0
        },
        "msg/s",
    );
    report.add(
        NAME,
        "send → decrypted p50",
        quantile_ms(&latency, 0.5),
        "ms",
    );
    report.add(
        NAME,
        "send → decrypted p99",
        quantile_ms(&latency, 0.99),
        "ms",
    );
    report.add(
        NAME,
        "send → decrypted p99.9",
        quantile_ms(&latency, 0.999),
        "ms",
    );
    report.add(
        NAME,
        "send → decrypted max",
        latency.max() as f64 / 1000.0,
        "ms",
    );
    report.add(
        NAME,
        format!("decryptions missing {}s after the window", DRAIN.as_secs()),
        expected.saturating_sub(decrypted) as f64,
        "msg",
    );
    let processed: u64 = measured.seen.iter().map(|s| s.processed).sum();
    report.add(
        NAME,
        "client MLS: time per Member::process",
        mls.as_secs_f64() * 1e6 / processed.max(1) as f64,
        "µs",
    );
    report.add(
        NAME,
        "client MLS: cores busy decrypting",
        mls.as_secs_f64() / measured.elapsed.as_secs_f64(),
        "cores",
    );
}

fn send_times(plaintext: &[u8]) -> Option<(u64, u64)> {
    let scheduled = u64::from_le_bytes(plaintext.get(..8)?.try_into().ok()?);
    let actual = u64::from_le_bytes(plaintext.get(8..16)?.try_into().ok()?);
    Some((scheduled, actual))
}

fn micros_since(base: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base).as_micros()).unwrap_or(u64::MAX)
}
