//! Crash safety of the real binary: `kill -9` the relay while two devices append with
//! pipelining, restart it on the same data, and check what survived.
//!
//! After the restart:
//! - every acknowledged append is in the log exactly once, at the sequence it was given;
//! - the log is `1..=head` with no gap, and no `(device, device_seq)` appears twice;
//! - what the crash cut short is all or nothing per commit: each device's stored appends are
//!   a prefix of what it sent (appends of one connection are committed in order);
//! - the original devices resume from their cursors and receive exactly the events after
//!   them;
//! - re-sending the unanswered appends (same device sequence, same payload) is answered with
//!   the original sequence when the append had been committed before the crash, and stores it
//!   now otherwise; nothing is stored twice.
//!
//! Run with embedded SQLite, and with PostgreSQL (skipped without it unless
//! `FERRY_REQUIRE_SERVICES=1`; the database is shared, so the test uses a fresh user).
//!
//! And two real relay processes on one PostgreSQL and one Redis: a device of the user on each,
//! one node killed with -9 while its device appends; the device reconnects to the other node,
//! re-sends what was never answered, and every append is in the log exactly once, while the
//! device on the surviving node received each event once, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_protocol::{ClientFrame, DeviceId, Event, RelayId, SealedPayload};
use support::client::{Client, Identity};
use support::device::{Device, Seen, exactly_once_in_order};

/// How long anything that should happen may take.
const PATIENCE: Duration = Duration::from_secs(30);
/// The whole story, start to end.
const DEADLINE: Duration = Duration::from_secs(180);
/// Appends each device keeps in flight.
const WINDOW: u64 = 64;
/// Answers each device must have had before the crash, so that the crash cuts into a log
/// with some history.
const BEFORE_CRASH: usize = 150;
/// How long a device must stay quiet for the test to believe nothing more is coming.
const QUIET: Duration = Duration::from_millis(400);

/// A `ferry-relay serve` process, killed (SIGKILL) when dropped, so a failing test never
/// leaves it behind.
struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    relay_id: RelayId,
    log: PathBuf,
}

impl RelayProcess {
    /// Starts the relay on a free port with `data_dir` and, if given, PostgreSQL; waits until
    /// it prints the address it listens on and its key.
    async fn start(data_dir: &Path, database: Option<&str>, log: PathBuf) -> Self {
        Self::start_with(data_dir, database, None, log).await
    }

    /// [`RelayProcess::start`], also on Redis when given (a node of a cluster).
    async fn start_with(
        data_dir: &Path,
        database: Option<&str>,
        redis: Option<&str>,
        log: PathBuf,
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry-relay"));
        // Only what this test says: no FERRY_* setting from the environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FERRY_") {
                command.env_remove(name);
            }
        }
        command
            .env("FERRY_LOG", "info")
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            // Rate limiting is tested elsewhere; here it would only refuse appends.
            .arg("--appends-per-device-per-second")
            .arg("1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("relay log file"));
        if let Some(database) = database {
            command.arg("--database-url").arg(database);
        }
        if let Some(redis) = redis {
            command.arg("--redis-url").arg(redis);
        }
        let mut child = command.spawn().expect("start ferry-relay");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut process = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            relay_id: RelayId([0; 32]),
            log,
        };

        // Read stdout on a thread (to its end, so the pipe never fills); the lines come here.
        let (lines, mut line_rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let (mut addr, mut relay_id) = (None, None);
        while addr.is_none() || relay_id.is_none() {
            let line = match tokio::time::timeout(PATIENCE, line_rx.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => panic!("the relay exited at start:\n{}", process.log_text()),
                Err(_) => panic!("the relay did not start in time:\n{}", process.log_text()),
            };
            if let Some(rest) = line.strip_prefix("ferry-relay listening on ws://") {
                addr = rest.strip_suffix("/ws").and_then(|a| a.parse().ok());
            } else if let Some(key) = line.strip_prefix("relay key (pin this in clients): ") {
                relay_id = key.parse().ok();
            }
        }
        process.addr = addr.unwrap();
        process.relay_id = relay_id.unwrap();
        process
    }

    /// `kill -9`, and waits for the process to be gone.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the relay");
        let status = self.child.wait().expect("reap the relay");
        assert!(
            !status.success(),
            "the relay was killed, not stopped: {status}"
        );
    }

    async fn connect(&self, id: &Identity, resume: Option<u64>) -> Device {
        let client = Client::connect(self.addr, self.relay_id, id, resume)
            .await
            .unwrap_or_else(|refused| panic!("connection refused: {refused:?}"));
        let device = Device::spawn(client, id.device.id());
        device.caught_up(PATIENCE).await;
        device
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The payload `device` sends with `device_seq`: the same on every retry.
fn payload(device: DeviceId, device_seq: u64) -> Vec<u8> {
    format!("{}:{device_seq}", &device.to_hex()[..16]).into_bytes()
}

/// Keeps [`WINDOW`] appends in flight until the connection ends. Every [`ack_every`] events
/// received it sends an `Ack` for them; returns the acks sent.
async fn keep_appending(device: &Device, ack_every: Option<u64>) -> Vec<u64> {
    let mut watch = device.watch();
    let mut acks = Vec::new();
    loop {
        let (answered, received, closed) = {
            let seen = watch.borrow_and_update();
            (
                seen.answers.len() as u64,
                seen.last_seq(),
                seen.closed.is_some(),
            )
        };
        if closed {
            return acks;
        }
        while device.highest_sent() < answered + WINDOW {
            let device_seq = device.highest_sent() + 1;
            device.append(device_seq, &payload(device.id, device_seq));
        }
        if let Some(every) = ack_every
            && received >= acks.last().copied().unwrap_or(0) + every
        {
            device.send(ClientFrame::Ack { seq: received });
            acks.push(received);
        }
        if watch.changed().await.is_err() {
            return acks;
        }
    }
}

/// What a device had when the relay died.
struct BeforeCrash {
    id: DeviceId,
    /// device_seq → seq, for every acknowledged append.
    acked: HashMap<u64, u64>,
    /// The highest device sequence it sent.
    sent: u64,
    /// The last stream sequence it received (everything up to it, in order).
    cursor: u64,
    /// The `Ack`s it sent.
    acks: Vec<u64>,
}

impl BeforeCrash {
    fn of(device: &Device, seen: &Seen, acks: Vec<u64>) -> Self {
        assert!(
            seen.errors().is_empty(),
            "no append was refused: {:?}",
            seen.errors()
        );
        let answered: Vec<u64> = seen.answers.iter().map(|(d, _)| *d).collect();
        assert_eq!(
            answered,
            (1..=answered.len() as u64).collect::<Vec<_>>(),
            "answers came once each, in the order sent"
        );
        assert!(
            seen.answers.len() >= BEFORE_CRASH,
            "the crash came after {BEFORE_CRASH} answers"
        );
        let cursor = seen.last_seq();
        if let Err(problem) = exactly_once_in_order(&seen.events, 1, cursor) {
            panic!("live delivery before the crash: {problem}");
        }
        Self {
            id: device.id,
            acked: seen.acked(),
            sent: device.highest_sent(),
            cursor,
            acks,
        }
    }
}

/// The log as a fresh device replays it, checked for gaps and duplicates.
async fn replay_everything(relay: &RelayProcess, id: &Identity) -> Vec<Event> {
    let device = relay.connect(id, None).await;
    let seen = device.seen();
    let head = seen.caught_up[0].0;
    assert_eq!(head, device.head_at_connect);
    if let Err(problem) = exactly_once_in_order(&seen.events, 1, head) {
        panic!("the log after the crash: {problem}");
    }
    let mut pairs = HashSet::new();
    for event in &seen.events {
        assert!(
            pairs.insert((event.device, event.device_seq)),
            "({:?}, {}) stored twice",
            event.device,
            event.device_seq
        );
    }
    seen.events
}

async fn crash_and_recover(database: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let user = Identity::new_user();
    let ids = [user.another_device("a"), user.another_device("b")];

    // 1. Two devices append concurrently, WINDOW in flight each, and the relay dies mid-way.
    let mut relay = RelayProcess::start(&data, database, dir.path().join("relay-1.log")).await;
    let relay_id = relay.relay_id;
    let a = relay.connect(&ids[0], None).await;
    let b = relay.connect(&ids[1], None).await;
    assert_eq!(a.head_at_connect, 0, "a fresh user");
    let appending = async { tokio::join!(keep_appending(&a, Some(40)), keep_appending(&b, None)) };
    let crash = async {
        for device in [&a, &b] {
            device
                .wait_for("answers before the crash", PATIENCE, |seen| {
                    seen.answers.len() >= BEFORE_CRASH
                })
                .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        relay.kill();
    };
    let ((a_acks, b_acks), ()) = tokio::join!(appending, crash);
    let before = [
        BeforeCrash::of(&a, &a.closed(PATIENCE).await, a_acks),
        BeforeCrash::of(&b, &b.closed(PATIENCE).await, b_acks),
    ];
    drop((a, b));
    let unanswered: u64 = before.iter().map(|d| d.sent - d.acked.len() as u64).sum();
    assert!(
        unanswered > 0,
        "the crash came while appends were in flight"
    );
    let acked_seqs: HashSet<u64> = before
        .iter()
        .flat_map(|d| d.acked.values().copied())
        .collect();
    assert_eq!(
        acked_seqs.len(),
        before.iter().map(|d| d.acked.len()).sum::<usize>(),
        "no sequence was given to two appends"
    );

    // 2. Restarted on the same data: the same relay key, and a log with every acknowledged
    //    event once, at its acknowledged sequence, and no gap.
    let relay = RelayProcess::start(&data, database, dir.path().join("relay-2.log")).await;
    assert_eq!(relay.relay_id, relay_id, "the relay key survived");
    let log = replay_everything(&relay, &user.another_device("fresh")).await;
    let head = log.len() as u64;
    let stored: HashMap<(DeviceId, u64), u64> = log
        .iter()
        .map(|e| ((e.device, e.device_seq), e.seq))
        .collect();
    for device in &before {
        for (device_seq, seq) in &device.acked {
            assert_eq!(
                stored.get(&(device.id, *device_seq)),
                Some(seq),
                "acknowledged append {device_seq} of {:?} is in the log at {seq}",
                device.id
            );
        }
        let mine: Vec<u64> = {
            let mut mine: Vec<u64> = log
                .iter()
                .filter(|e| e.device == device.id)
                .map(|e| e.device_seq)
                .collect();
            mine.sort_unstable();
            mine
        };
        assert_eq!(
            mine,
            (1..=mine.len() as u64).collect::<Vec<_>>(),
            "a device's stored appends are a prefix of what it sent"
        );
        assert!(mine.len() >= device.acked.len() && mine.len() as u64 <= device.sent);
    }
    for event in &log {
        assert!(
            before.iter().any(|d| d.id == event.device),
            "only our devices"
        );
        assert_eq!(
            event.payload,
            SealedPayload(payload(event.device, event.device_seq))
        );
    }
    for device in &before {
        assert!(
            device.cursor <= head,
            "nothing was delivered that is not in the log"
        );
    }

    // 3. The devices come back from their cursors and receive exactly what follows them.
    let mut again = Vec::new();
    for (device, id) in before.iter().zip(&ids) {
        let back = relay.connect(id, Some(device.cursor)).await;
        let seen = back.seen();
        assert_eq!(seen.caught_up[0].0, head);
        if let Err(problem) = exactly_once_in_order(&seen.events, device.cursor + 1, head) {
            panic!("a device resuming at {}: {problem}", device.cursor);
        }
        assert!(
            seen.events == log[device.cursor as usize..],
            "a device resuming at {} gets the same events as the log after it",
            device.cursor
        );
        assert!(
            back.acked_at_connect == 0 || device.acks.contains(&back.acked_at_connect),
            "the stored cursor {} is one the device sent (or none): {:?}",
            back.acked_at_connect,
            device.acks
        );
        assert!(back.acked_at_connect <= device.cursor);
        again.push(back);
    }

    // 4. Re-sending what was never answered, and one append that was: each answered with its
    //    original sequence if it was stored, stored now if not, never twice.
    let mut expected_new = 0;
    for (device, back) in before.iter().zip(&again) {
        let unanswered: Vec<u64> = (1..=device.sent)
            .filter(|ds| !device.acked.contains_key(ds))
            .collect();
        for &device_seq in unanswered.iter().chain([&1]) {
            back.append(device_seq, &payload(device.id, device_seq));
        }
        let retried = unanswered.len() + 1;
        let seen = back
            .wait_for("answers to the retries", PATIENCE, |seen| {
                seen.answers.len() >= retried
            })
            .await;
        assert!(
            seen.errors().is_empty(),
            "retries accepted: {:?}",
            seen.errors()
        );
        for (device_seq, answer) in &seen.answers {
            let seq = *answer.as_ref().unwrap();
            match stored.get(&(device.id, *device_seq)) {
                Some(original) => assert_eq!(seq, *original, "a retry gets the original seq"),
                None => {
                    assert!(
                        seq > head,
                        "a lost append is stored now, after the old head"
                    );
                    expected_new += 1;
                }
            }
        }
    }
    let final_head = head + expected_new;
    for back in &again {
        back.wait_for("the retried events live", PATIENCE, |seen| {
            seen.last_seq() >= final_head
        })
        .await;
    }
    tokio::time::sleep(QUIET).await;
    for (device, back) in before.iter().zip(&again) {
        if let Err(problem) =
            exactly_once_in_order(&back.seen().events, device.cursor + 1, final_head)
        {
            panic!("after resuming at {}: {problem}", device.cursor);
        }
    }

    // 5. In the end every append each device ever sent is in the log exactly once.
    let log = replay_everything(&relay, &user.another_device("final")).await;
    assert_eq!(log.len() as u64, final_head);
    let expected: HashSet<(DeviceId, u64)> = before
        .iter()
        .flat_map(|d| (1..=d.sent).map(move |ds| (d.id, ds)))
        .collect();
    let found: HashSet<(DeviceId, u64)> = log.iter().map(|e| (e.device, e.device_seq)).collect();
    assert_eq!(found, expected);
    eprintln!(
        "crash test ({}): {} acknowledged before the crash, {} in flight, {} of those committed \
         before it, {} stored on retry",
        if database.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        acked_seqs.len(),
        unanswered,
        head - acked_seqs.len() as u64,
        expected_new,
    );
    drop(again);
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_appending_sqlite() {
    tokio::time::timeout(DEADLINE, crash_and_recover(None))
        .await
        .expect("the crash test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_appending_postgres() {
    let Some(database) = support::postgres_url().await else {
        return;
    };
    tokio::time::timeout(DEADLINE, crash_and_recover(Some(&database)))
        .await
        .expect("the crash test finished in time");
}

/// Two `ferry-relay` processes on one PostgreSQL and one Redis; node one dies mid-append.
async fn two_nodes_one_killed(database: &str, redis: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (data_one, data_two) = (dir.path().join("one"), dir.path().join("two"));
    let mut one = RelayProcess::start_with(
        &data_one,
        Some(database),
        Some(redis),
        dir.path().join("one.log"),
    )
    .await;
    // The nodes of a cluster share the relay key that clients pin.
    std::fs::create_dir_all(&data_two).unwrap();
    let key = ferry_relay::relay_key::KEY_FILE;
    std::fs::copy(data_one.join(key), data_two.join(key)).unwrap();
    let two = RelayProcess::start_with(
        &data_two,
        Some(database),
        Some(redis),
        dir.path().join("two.log"),
    )
    .await;
    assert_eq!(one.relay_id, two.relay_id);

    let user = Identity::new_user();
    let (writer_id, reader_id) = (user.another_device("writer"), user.another_device("reader"));
    let writer = one.connect(&writer_id, None).await;
    let reader = two.connect(&reader_id, None).await;

    // The writer appends on node one (WINDOW in flight); node one dies mid-way.
    let appending = keep_appending(&writer, None);
    let crash = async {
        writer
            .wait_for("answers before the crash", PATIENCE, |seen| {
                seen.answers.len() >= BEFORE_CRASH
            })
            .await;
        one.kill();
    };
    let (_, ()) = tokio::join!(appending, crash);
    let before = BeforeCrash::of(&writer, &writer.closed(PATIENCE).await, Vec::new());
    drop(writer);
    assert!(
        before.sent > before.acked.len() as u64,
        "the crash came while appends were in flight"
    );

    // The writer reconnects to node two from its cursor and re-sends what was not answered.
    let back = two.connect(&writer_id, Some(before.cursor)).await;
    let unanswered: Vec<u64> = (1..=before.sent)
        .filter(|ds| !before.acked.contains_key(ds))
        .collect();
    for &device_seq in &unanswered {
        back.append(device_seq, &payload(before.id, device_seq));
    }
    let seen = back
        .wait_for("answers to the retries", PATIENCE, |seen| {
            seen.answers.len() >= unanswered.len()
        })
        .await;
    assert!(seen.errors().is_empty(), "retries: {:?}", seen.errors());
    let retried: Vec<u64> = seen.answers.iter().map(|(ds, _)| *ds).collect();
    assert_eq!(retried, unanswered, "answers in the order sent");

    // The log: every append once, acknowledged ones where they were acknowledged.
    let log = replay_everything(&two, &user.another_device("fresh")).await;
    let head = log.len() as u64;
    assert_eq!(head, before.sent);
    for (device_seq, seq) in &before.acked {
        let event = &log[(*seq - 1) as usize];
        assert_eq!((event.device, event.device_seq), (before.id, *device_seq));
    }
    let device_seqs: Vec<u64> = log.iter().map(|e| e.device_seq).collect();
    assert_eq!(
        device_seqs,
        (1..=before.sent).collect::<Vec<_>>(),
        "committed in the order sent, across the crash"
    );

    // The reader, on the node that survived, had every event once, in order, live.
    reader
        .wait_for("every event live on node two", PATIENCE, |seen| {
            seen.last_seq() >= head
        })
        .await;
    tokio::time::sleep(QUIET).await;
    if let Err(problem) = exactly_once_in_order(&reader.seen().events, 1, head) {
        panic!("the reader on node two: {problem}");
    }
    drop((back, reader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_one_of_two_nodes_while_appending() {
    let Some(database) = support::postgres_url().await else {
        return;
    };
    let Some(redis) = support::redis::redis_url().await else {
        return;
    };
    tokio::time::timeout(DEADLINE, two_nodes_one_killed(&database, &redis))
        .await
        .expect("the two-node crash test finished in time");
}
