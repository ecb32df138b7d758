//! The `ferry` command-line client end to end, against an in-process relay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_client::ClientState;
use support::{TestRelay, another_device};

/// What one run of `ferry` did.
#[derive(Debug)]
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `ferry --state STATE ARGS...`, feeding `stdin`, killed if it takes over a minute.
fn ferry(state: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--state")
        .arg(state)
        .args(args)
        .env_remove("FERRY_STATE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("ferry {args:?} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let run = Run {
        success: status.success(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    eprintln!("ferry {args:?} -> {run:?}");
    run
}

fn ok(state: &Path, args: &[&str]) -> String {
    let run = ferry(state, args, "");
    assert!(run.success, "ferry {args:?} failed: {}", run.stderr);
    run.stdout
}

#[test]
fn init_send_tail_devices_revoke_and_an_outbox_that_outlives_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = dir.path().join("laptop");
    let phone = dir.path().join("phone");
    let (url, key) = (relay.url(), relay.relay_id.to_hex());

    let shown = ok(
        &laptop,
        &[
            "init",
            "--relay",
            &url,
            "--relay-key",
            &key,
            "--name",
            "laptop",
        ],
    );
    assert!(
        shown.contains("user") && shown.contains("device"),
        "{shown}"
    );
    let again = ferry(&laptop, &["init", "--relay", &url, "--relay-key", &key], "");
    assert!(
        !again.success && again.stderr.contains("already"),
        "{again:?}"
    );

    ok(&laptop, &["send", "hello world"]);

    // The second device, made with the library (pairing comes later).
    let laptop_state = ClientState::open(&laptop).unwrap();
    let phone_state = another_device(&laptop_state, &phone, "phone");
    let phone_id = phone_state.device_id().to_hex();
    drop((laptop_state, phone_state));

    assert_eq!(ok(&phone, &["tail"]), "hello world\n");
    // Each line of stdin is one event; tail prints only what is new.
    let run = ferry(&laptop, &["send", "-"], "line one\nline two\n");
    assert!(run.success, "{run:?}");
    assert_eq!(ok(&phone, &["tail"]), "line one\nline two\n");
    assert_eq!(ok(&phone, &["tail"]), "");

    // The relay is down: the event stays in the outbox and the command says so.
    relay.stop();
    let run = ferry(
        &laptop,
        &["--timeout", "2", "send", "while the relay was down"],
        "",
    );
    assert!(!run.success, "{run:?}");
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
    assert!(
        run.stderr.contains("1 event(s) kept in the outbox"),
        "{}",
        run.stderr
    );
    assert_eq!(ClientState::open(&laptop).unwrap().pending(), 1);

    // The next send delivers both.
    relay.restart();
    ok(&laptop, &["send", "after the restart"]);
    assert_eq!(ClientState::open(&laptop).unwrap().pending(), 0);
    assert_eq!(
        ok(&phone, &["tail", "--limit", "1"]),
        "while the relay was down\n"
    );
    assert_eq!(
        ok(&phone, &["tail", "--follow", "--limit", "1"]),
        "after the restart\n"
    );

    let listed = ok(&laptop, &["devices"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("laptop") && l.contains("(this device)"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("phone") && l.contains(&phone_id))
    );

    // Revoke by a prefix of the id; the phone is then refused.
    let revoked = ok(&laptop, &["revoke", &phone_id[..10]]);
    assert!(revoked.contains(&phone_id), "{revoked}");
    let run = ferry(&phone, &["tail"], "");
    assert!(!run.success && run.stderr.contains("revoked"), "{run:?}");
    assert!(ok(&laptop, &["devices"]).contains("revoked"));
    let run = ferry(&laptop, &["revoke", "ffffffffffffffff"], "");
    assert!(!run.success && run.stderr.contains("no device"), "{run:?}");
}

#[test]
fn usage_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let run = ferry(&missing, &["send", "x"], "");
    assert!(
        !run.success && run.stderr.contains("no Ferry state"),
        "{run:?}"
    );
    let run = ferry(
        &missing,
        &[
            "init",
            "--relay",
            "http://x",
            "--relay-key",
            &"ab".repeat(32),
        ],
        "",
    );
    assert!(
        !run.success && run.stderr.contains("invalid relay URL"),
        "{run:?}"
    );
}
