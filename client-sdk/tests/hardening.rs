//! The client against what real deployments do to it (issue "hardening"): a state folder
//! restored from a backup, its own events coming back, and a relay process killed with -9
//! under a `ferry send -` burst on PostgreSQL. Each test fails on the code before its fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_client::{Client, ClientState};
use ferry_relay::{Config, Server};
use support::{
    TestRelay, WAIT, another_device, events, fast, free_addr, new_user, new_user_at, next_event,
    postgres_url, texts,
};

/// Copies a state folder (files only, as a backup tool would).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_restored_state_folder_moves_past_what_the_relay_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = TestRelay::start(&dir.path().join("relay"));
    let laptop_dir = dir.path().join("laptop");
    let backup = dir.path().join("backup");
    let laptop = new_user(&laptop_dir, &relay, "laptop").await;
    let phone = another_device(&laptop, &dir.path().join("phone"), "phone").await;
    drop(laptop);
    copy_dir(&laptop_dir, &backup);

    // The laptop appends three events (device sequences 1-3)...
    let client = Client::connect(ClientState::open(&laptop_dir).unwrap(), fast())
        .await
        .unwrap();
    for text in ["a", "b", "c"] {
        client.append(text.as_bytes()).await.unwrap();
    }
    client.close().await.unwrap();

    // ...then its folder is restored from the backup, which knows none of them. Offline,
    // it writes a note, which takes device sequence 1 again locally.
    std::fs::remove_dir_all(&laptop_dir).unwrap();
    copy_dir(&backup, &laptop_dir);
    relay.stop();
    let offline = Client::start(ClientState::open(&laptop_dir).unwrap(), fast());
    assert_eq!(offline.enqueue(b"restored note").await.unwrap(), 1);
    offline.close().await.unwrap();
    relay.restart();

    // Online again: the note is re-sealed under a fresh sequence instead of being dropped on
    // `Conflict`, and new appends number past what the relay holds.
    let client = Client::connect(ClientState::open(&laptop_dir).unwrap(), fast())
        .await
        .unwrap();
    client.flush(WAIT).await.unwrap();
    assert_eq!(client.append(b"after").await.unwrap(), 5);
    let state = client.close().await.unwrap();
    assert_eq!((state.pending(), state.next_device_seq()), (0, 6));

    let mut phone = Client::connect(phone, fast()).await.unwrap();
    let got = events(&mut phone, 5).await;
    assert_eq!(texts(&got), ["a", "b", "c", "restored note", "after"]);
    let device_seqs: Vec<u64> = got.iter().map(|e| e.device_seq).collect();
    assert_eq!(device_seqs, [1, 2, 3, 4, 5]);
    phone.close().await.unwrap();
}

#[tokio::test]
async fn own_events_are_acknowledged_but_not_shown_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone = another_device(&laptop, &dir.path().join("phone"), "phone").await;
    let mut laptop = Client::connect(laptop, fast().own_events(false))
        .await
        .unwrap();
    let mut phone = Client::connect(phone, fast()).await.unwrap();

    laptop.append(b"mine 1").await.unwrap();
    laptop.append(b"mine 2").await.unwrap();
    phone.append(b"theirs").await.unwrap();
    let got = next_event(&mut laptop).await;
    assert_eq!((got.seq, &got.plaintext[..]), (3, &b"theirs"[..]));
    let laptop = laptop.close().await.unwrap();
    assert_eq!(
        laptop.cursor(),
        3,
        "own events are acknowledged in their turn"
    );

    // The phone, which asked for everything, sees its own event too.
    let got = events(&mut phone, 3).await;
    assert_eq!(texts(&got), ["mine 1", "mine 2", "theirs"]);
    phone.close().await.unwrap();
}

#[tokio::test]
async fn a_relay_restored_from_an_old_backup_makes_the_device_resync_not_drop_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let mut relay = TestRelay::start(&data);
    let laptop = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone = another_device(&laptop, &dir.path().join("phone"), "phone").await;
    let laptop = Client::connect(laptop, fast()).await.unwrap();
    let mut phone = Client::connect(phone, fast()).await.unwrap();
    laptop.append(b"one").await.unwrap();
    laptop.append(b"two").await.unwrap();
    assert_eq!(texts(&events(&mut phone, 2).await), ["one", "two"]);

    // The operator backs the database up here (a stopped relay, so the file is complete)...
    relay.stop();
    let backup = dir.path().join("backup");
    copy_dir(&data, &backup);
    relay.restart();
    laptop.append(b"three").await.unwrap();
    assert_eq!(texts(&events(&mut phone, 1).await), ["three"]);
    let phone_state = phone.close().await.unwrap();
    assert_eq!(phone_state.cursor(), 3);
    let laptop_state = laptop.close().await.unwrap();

    // ...and later restores it: the log is back at 2, and new events would take 3 again.
    relay.stop();
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&backup, &data);
    relay.restart();

    // The phone (cursor 3 > head 2) is told to resync rather than go on and take a future
    // event 3 for the "three" it already has. (The laptop's app never read, so its cursor is
    // 0 and it just goes on.)
    let mut phone = Client::connect(phone_state, fast()).await.unwrap();
    match phone.next_event().await {
        Err(ferry_client::ClientError::ResyncRequired { earliest }) => assert_eq!(earliest, 1),
        other => panic!("expected ResyncRequired, got {other:?}"),
    }
    let mut phone_state = phone.close().await.unwrap();
    phone_state.resync(1).unwrap();
    let laptop = Client::connect(laptop_state, fast()).await.unwrap();
    assert_eq!(laptop.append(b"new three").await.unwrap(), 3);
    let mut phone = Client::connect(phone_state, fast()).await.unwrap();
    assert_eq!(
        texts(&events(&mut phone, 3).await),
        ["one", "two", "new three"]
    );
    phone.close().await.unwrap();
    laptop.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// `ferry send -` against a relay process killed with -9.

/// Set for the child process that runs a relay (see [`relay_child_process`]).
const CHILD: &str = "FERRY_TEST_RELAY_CHILD";
/// The relay child's append rate limit per device.
const APPENDS_PER_SECOND: u32 = 400;

/// Not a test of its own: the body of the relay process the kill -9 test starts (this test
/// binary again, with `CHILD` set to `listen|data dir|database URL`). Without it, it returns.
#[test]
fn relay_child_process() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let (listen, data, database) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = Config::new(listen.parse().unwrap(), data);
        config.database_url = Some(database.to_owned());
        // Below what `ferry send` can push, so appends are refused (rate limited) all along,
        // as on a busy relay: each refusal is a chance for later appends to overtake.
        config.limits.appends_per_device_per_second = APPENDS_PER_SECOND;
        let server = Server::spawn(config).await.unwrap();
        println!("relay ready on {}", server.local_addr());
        std::future::pending::<()>().await;
    });
}

/// A relay in a process of its own, killed with SIGKILL on drop.
struct RelayProcess(Child);

impl RelayProcess {
    fn start(listen: SocketAddr, data: &Path, database: &str) -> Self {
        let spec = format!("{listen}|{}|{database}", data.display());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["relay_child_process", "--exact", "--nocapture"])
                .env(CHILD, &spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let ready = BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.starts_with("relay ready"));
            if ready {
                return Self(child);
            }
            // The port may still be held by the process just killed.
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "the relay process did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_9(&mut self) {
        self.0.kill().unwrap(); // SIGKILL on Unix
        self.0.wait().unwrap();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Seen from outside before the fix: `ferry send -` of 20,000 lines to a PostgreSQL-backed
/// relay killed with -9 mid-send and restarted lost and doubled nothing, but the other
/// device received runs of events out of order (the outbox backlog went out in a burst, one
/// append was refused, the ones behind it committed first). Now every line arrives once, in
/// the order it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_send_through_a_relay_killed_with_9_arrives_once_in_order() {
    const LINES: u64 = 20_000;
    let Some(database) = postgres_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let (relay_key, _) = ferry_relay::relay_key::load_or_create(&data).unwrap();
    let listen = free_addr();
    let url = format!("ws://{listen}/ws");
    let laptop_dir = dir.path().join("laptop");
    let mut relay = RelayProcess::start(listen, &data, &database);
    let laptop = new_user_at(&laptop_dir, &url, relay_key.id(), "laptop", &fast()).await;
    let user = laptop.user_id();
    let phone = another_device(&laptop, &dir.path().join("phone"), "phone").await;
    drop(laptop);

    let input: String = (1..=LINES).map(|i| format!("line {i}\n")).collect();
    let mut send = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--state")
        .arg(&laptop_dir)
        .args(["--timeout", "300", "send", "-"])
        .env_remove("FERRY_STATE")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    send.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut send = KillOnDrop(send);

    // Kill the relay once part of the burst is committed.
    let store = ferry_relay::store::open(&database).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let head = store.log_bounds(user).await.unwrap().head;
        if head >= 1_000 {
            break head;
        }
        assert!(Instant::now() < deadline, "the send never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    relay.kill_9();
    assert!(
        at_kill < LINES && send.0.try_wait().unwrap().is_none(),
        "the relay must die mid-send (head {at_kill} of {LINES})"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _relay = RelayProcess::start(listen, &data, &database);

    // `ferry send` rides out the restart and exits once everything is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = send.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ferry send did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "ferry send failed: {status}");

    // The relay's log itself: every line once, stored in the order sent. (Checked here and
    // not only through the phone, whose replay check would hide a reordered event and make
    // the read below time out instead of naming the fault.)
    let mut stored = Vec::new();
    while stored.len() < LINES as usize {
        let page = store
            .read_events(user, stored.len() as u64, 4096)
            .await
            .unwrap();
        assert!(!page.is_empty(), "the log holds {} events", stored.len());
        stored.extend(page.into_iter().map(|e| e.device_seq));
    }
    let stored_out_of_order: Vec<(u64, u64)> = stored
        .windows(2)
        .filter(|pair| pair[1] != pair[0] + 1)
        .map(|pair| (pair[0], pair[1]))
        .collect();
    assert!(
        stored_out_of_order.is_empty(),
        "stored out of order: {stored_out_of_order:?}"
    );

    // The other device: every line once, in the order sent, gapless.
    let mut phone = Client::connect(phone, fast()).await.unwrap();
    let got = events(&mut phone, LINES as usize).await;
    let out_of_order: Vec<(u64, u64)> = got
        .windows(2)
        .filter(|pair| pair[1].device_seq != pair[0].device_seq + 1)
        .map(|pair| (pair[0].device_seq, pair[1].device_seq))
        .collect();
    assert!(out_of_order.is_empty(), "out of order: {out_of_order:?}");
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=LINES).collect::<Vec<_>>()
    );
    for (i, event) in got.iter().enumerate() {
        assert_eq!(event.plaintext[..], *format!("line {}", i + 1).as_bytes());
    }
    assert_eq!(phone.status().replayed_events, 0);
    phone.close().await.unwrap();
    store.close().await;
}
