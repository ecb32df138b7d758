//! The `ferry` command-line client end to end, against an in-process relay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_client::ClientState;
use support::{TestRelay, another_device_blocking, free_addr};

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

/// A `ferry` process running beside the test, with a deadline: it is killed once the
/// deadline passes, and whenever the test lets go of it (a failed assertion included), so a
/// hung child neither hangs the test nor outlives it.
struct Background {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    deadline: Instant,
}

impl Background {
    fn spawn(command: &mut Command, within: Duration) -> Self {
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            child,
            lines,
            stderr: Some(stderr),
            deadline: Instant::now() + within,
        }
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The next line of its output; `None` once the output ends. Panics (killing the
    /// process) past the deadline.
    fn line(&mut self) -> Option<String> {
        match self.lines.recv_timeout(self.left()) {
            Ok(line) => Some(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the background ferry printed nothing before its deadline")
            }
        }
    }

    /// Waits for it to exit: the rest of its output, its status and its stderr.
    fn finish(mut self) -> (Vec<String>, std::process::ExitStatus, String) {
        let mut rest = Vec::new();
        while let Some(line) = self.line() {
            rest.push(line);
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < self.deadline,
                "the background ferry did not exit before its deadline"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (rest, status, stderr)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Killing a process that has exited (and been waited for) is a harmless error.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Background {
    /// `ferry --state STATE pair ARGS...`, with `answer` on its stdin.
    fn pair(state: &Path, args: &[&str], answer: &str) -> Self {
        let mut pair = Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .arg("--state")
                .arg(state)
                .arg("pair")
                .args(args)
                .env_remove("FERRY_STATE")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            Duration::from_secs(60),
        );
        let mut stdin = pair.child.stdin.take().unwrap();
        stdin.write_all(answer.as_bytes()).unwrap();
        pair
    }
}

/// The code in `pair`'s first line, `code: SLOT-DDDDDD`.
fn code_of(line: &str) -> &str {
    let code = line
        .strip_prefix("code: ")
        .unwrap_or_else(|| panic!("{line}"));
    let (slot, digits) = code.split_once('-').unwrap_or_else(|| panic!("{line}"));
    assert!(
        slot.parse::<u16>().is_ok_and(|n| n >= 1)
            && digits.len() == 6
            && digits.bytes().all(|b| b.is_ascii_digit()),
        "{line}"
    );
    code
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

    // The second device, made with the library (`pair_and_join_then_sync_both_ways` pairs
    // one through the command line).
    let laptop_state = ClientState::open(&laptop).unwrap();
    let phone_state = another_device_blocking(&laptop_state, &phone, "phone");
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

#[test]
fn device_names_are_printed_without_terminal_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = dir.path().join("laptop");
    let evil = dir.path().join("evil");
    let (url, key) = (relay.url(), relay.relay_id.to_hex());
    ok(
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
    // Control characters (a title change, a screen clear, a bell) cannot be in a device name
    // at all: refused before anything is sent (and by the chain, when verified).
    let control = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}";
    let run = ferry(
        &dir.path().join("other"),
        &[
            "init",
            "--relay",
            &url,
            "--relay-key",
            &key,
            "--name",
            control,
        ],
        "",
    );
    assert!(
        !run.success && run.stderr.contains("control character"),
        "{run:?}"
    );
    let laptop_state = ClientState::open(&laptop).unwrap();
    // Bidirectional overrides are allowed in names (they are not control characters) but
    // could reorder what a terminal shows: `ferry` prints them escaped.
    let name = "evil\u{202e}gpj.exe\u{2066}";
    let evil_state = another_device_blocking(&laptop_state, &evil, name);
    let evil_id = evil_state.device_id().to_hex();
    drop((laptop_state, evil_state));
    ok(&evil, &["send", "registered"]);

    let escaped = "evil\\u{202e}gpj.exe\\u{2066}";
    let listed = ok(&laptop, &["devices"]);
    assert!(!listed.contains(['\u{202e}', '\u{2066}']), "{listed:?}");
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&evil_id) && l.contains(escaped)),
        "{listed:?}"
    );
    let revoked = ok(&laptop, &["revoke", &evil_id[..12]]);
    assert!(!revoked.contains(['\u{202e}', '\u{2066}']), "{revoked:?}");
    assert!(revoked.contains(escaped), "{revoked:?}");
}

#[test]
fn pair_and_join_then_sync_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = dir.path().join("laptop");
    let phone = dir.path().join("phone");
    let (url, key) = (relay.url(), relay.relay_id.to_hex());
    ok(
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
    ok(&laptop, &["send", "before pairing"]);

    // `pair` prints the code at once and waits for the other device; its user will answer
    // "y" when asked to admit it.
    let mut pair = Background::pair(&laptop, &[], "y\n");
    let first = pair.line().expect("`ferry pair` printed the code");
    let code = code_of(&first);
    // The laptop's folder is free while `pair` waits.
    ok(&laptop, &["send", "while pairing"]);

    let joined = ok(
        &phone,
        &[
            "join",
            "--relay",
            &url,
            "--relay-key",
            &key,
            code,
            "--name",
            "phone",
        ],
    );
    let (rest, status, stderr) = pair.finish();
    eprintln!("ferry pair -> {first} {rest:?} {stderr}");
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("ferry --state DIR join"), "{stderr}");
    assert!(stderr.contains("Admit this device? [y/N]"), "{stderr}");
    // The code is not suggested as an argument (other local users can see those).
    assert!(!stderr.contains(code), "{stderr}");

    // Both screens show the same confirmation; each names the new device.
    let joined: Vec<&str> = joined.lines().collect();
    assert_eq!(joined.len(), 2, "{joined:?}");
    assert!(joined[0].starts_with("confirm: "), "{joined:?}");
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert_eq!(rest[0], joined[0]);
    let device = joined[1].strip_prefix("joined: ").unwrap();
    assert_eq!(rest[1], format!("paired: {device} phone"));
    assert_eq!(
        ClientState::open(&phone).unwrap().device_id().to_hex(),
        device
    );

    // The new device reads the whole log and writes to it.
    assert_eq!(ok(&phone, &["tail"]), "before pairing\nwhile pairing\n");
    ok(&phone, &["send", "from the phone"]);
    assert_eq!(
        ok(&laptop, &["tail"]),
        "before pairing\nwhile pairing\nfrom the phone\n"
    );
    assert!(ok(&laptop, &["devices"]).contains(device));

    // The code worked once.
    let again = dir.path().join("again");
    let run = ferry(
        &again,
        &["join", "--relay", &url, "--relay-key", &key, code],
        "",
    );
    assert!(!run.success, "{run:?}");
    assert!(run.stderr.contains("code already used"), "{run:?}");
}

#[test]
fn join_errors_are_one_line_a_user_can_act_on() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let phone = dir.path().join("phone");
    let (url, key) = (relay.url(), relay.relay_id.to_hex());
    let run = ferry(
        &phone,
        &["join", "--relay", &url, "--relay-key", &key, "1-123456"],
        "",
    );
    assert!(!run.success, "{run:?}");
    assert_eq!(
        run.stderr,
        "ferry: unknown code: check the code shown on the other device\n"
    );
    // The old six-digit form, and a code without its dash, are refused before connecting.
    for typed in ["123456", "1123456"] {
        let run = ferry(
            &phone,
            &["join", "--relay", &url, "--relay-key", &key, typed],
            "",
        );
        assert!(!run.success && run.stderr.contains("a dash"), "{run:?}");
    }
    // No code argument and nothing on stdin: nothing to join with.
    let run = ferry(&phone, &["join", "--relay", &url, "--relay-key", &key], "");
    assert!(!run.success, "{run:?}");
    assert!(run.stderr.contains("no pairing code"), "{run:?}");
    let run = ferry(
        &phone,
        &["join", "--relay", &url, "--relay-key", &key, "12-34"],
        "",
    );
    assert!(!run.success && run.stderr.contains("six digits"), "{run:?}");
    let nowhere = format!("ws://{}/ws", free_addr());
    let run = ferry(
        &phone,
        &[
            "--timeout",
            "2",
            "join",
            "--relay",
            &nowhere,
            "--relay-key",
            &key,
            "1-123456",
        ],
        "",
    );
    assert!(!run.success, "{run:?}");
    assert!(
        run.stderr.starts_with("ferry: relay unreachable: "),
        "{run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    // `pair` needs a device that has the user.
    let run = ferry(&phone, &["pair"], "");
    assert!(
        !run.success && run.stderr.contains("no Ferry state"),
        "{run:?}"
    );
}

/// The recovery key line of `ferry init`'s output.
fn recovery_line(shown: &str) -> String {
    let lines: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with("recovery key: "))
        .collect();
    assert_eq!(lines.len(), 1, "{shown}");
    lines[0]["recovery key: ".len()..].to_owned()
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn init_shows_the_recovery_key_once_and_keeps_no_user_key() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = dir.path().join("laptop");
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
    let written = recovery_line(&shown);
    for words in [
        "shown this once",
        "Write it down",
        "password",
        "controls your account",
    ] {
        assert!(shown.contains(words), "{shown}");
    }
    let recovery = ferry_client::RecoveryKey::parse(&written).unwrap();
    let user_key = recovery.user_key();
    let state = ClientState::open(&laptop).unwrap();
    assert_eq!(user_key.id(), state.user_id());
    assert!(shown.contains(&state.user_id().to_hex()), "{shown}");
    drop(state);

    // Other commands never show it again.
    ok(&laptop, &["send", "hello"]);
    for args in [&["tail"][..], &["devices"], &["send", "again"]] {
        let run = ferry(&laptop, args, "");
        assert!(run.success, "{run:?}");
        assert!(!run.stdout.contains(&written) && !run.stderr.contains(&written));
    }
    // No file of the folder holds the user key or the recovery key, raw or in hex.
    let secret = user_key.secret_bytes();
    let compact: String = written.chars().filter(|c| *c != '-').collect();
    let needles = [
        secret.to_vec(),
        hex::encode(*secret).into_bytes(),
        written.clone().into_bytes(),
        compact.into_bytes(),
    ];
    let found = files(&laptop);
    assert!(found.len() > 5, "{found:?}");
    for file in found {
        let bytes = std::fs::read(&file).unwrap();
        for needle in &needles {
            assert!(
                !holds(&bytes, needle),
                "{} holds a user secret",
                file.display()
            );
        }
    }
}

#[test]
fn recover_on_a_fresh_folder_revokes_the_lost_device_and_reads_the_whole_history() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let (laptop, phone, rescue) = (
        dir.path().join("laptop"),
        dir.path().join("phone"),
        dir.path().join("rescue"),
    );
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
    let written = recovery_line(&shown);
    let laptop_state = ClientState::open(&laptop).unwrap();
    let laptop_id = laptop_state.device_id().to_hex();
    let phone_state = another_device_blocking(&laptop_state, &phone, "phone");
    let phone_id = phone_state.device_id().to_hex();
    drop((laptop_state, phone_state));

    // History across an earlier revocation (epoch 0, then epoch 1).
    ok(&laptop, &["send", "before"]);
    ok(&laptop, &["revoke", &phone_id[..12]]);
    ok(&laptop, &["send", "after"]);

    let recover = [
        "recover",
        "--relay",
        &url,
        "--relay-key",
        &key,
        "--name",
        "rescue",
    ];
    // A typo: caught on this machine, nothing sent, no folder written.
    let mut typo: Vec<char> = written.chars().collect();
    let at = typo.iter().position(|c| *c != '-').unwrap();
    typo[at] = if typo[at] == 'A' { 'B' } else { 'A' };
    let typo: String = typo.into_iter().collect();
    let run = ferry(&rescue, &recover, &format!("{typo}\n"));
    assert!(!run.success, "{run:?}");
    assert!(run.stderr.contains("mistyped"), "{run:?}");
    assert!(run.stderr.contains("nothing was sent"), "{run:?}");
    assert!(ClientState::open(&rescue).is_err());
    // A valid key of no account at this relay: refused with what it means.
    let stranger = ferry_client::RecoveryKey::generate(&mut rand_core::OsRng);
    let run = ferry(
        &rescue,
        &recover,
        &format!("{}\n", stranger.display().as_str()),
    );
    assert!(!run.success, "{run:?}");
    assert!(run.stderr.contains("not this account's"), "{run:?}");
    assert!(ClientState::open(&rescue).is_err());

    // The right key, typed in lower case with spaces.
    let typed = written.to_lowercase().replace('-', " ");
    let run = ferry(&rescue, &recover, &format!("{typed}\n"));
    assert!(run.success, "{run:?}");
    assert!(!run.stdout.contains(&written), "{run:?}");
    let rescue_id = ClientState::open(&rescue).unwrap().device_id().to_hex();
    assert!(run.stdout.contains(&rescue_id), "{run:?}");

    // The lost laptop is revoked from the new device; the new device reads everything.
    ok(&rescue, &["revoke", &laptop_id[..12]]);
    let run = ferry(&laptop, &["tail"], "");
    assert!(!run.success && run.stderr.contains("revoked"), "{run:?}");
    assert_eq!(ok(&rescue, &["tail"]), "before\nafter\n");
    ok(&rescue, &["send", "recovered"]);
    assert_eq!(ok(&rescue, &["tail"]), "recovered\n");
    let listed = ok(&rescue, &["devices"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert_eq!(
        listed.lines().filter(|l| l.contains("revoked")).count(),
        2,
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&rescue_id) && l.contains("(this device)")),
        "{listed}"
    );
}

#[test]
fn pair_admits_nobody_unless_its_user_says_yes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = dir.path().join("laptop");
    let phone = dir.path().join("phone");
    let (url, key) = (relay.url(), relay.relay_id.to_hex());
    ok(
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

    // The user answers "n": the device typed the right code, but gets nothing.
    let mut pair = Background::pair(&laptop, &[], "n\n");
    let first = pair.line().expect("`ferry pair` printed the code");
    let code = code_of(&first).to_owned();
    let run = ferry(
        &phone,
        &[
            "join",
            "--relay",
            &url,
            "--relay-key",
            &key,
            &code,
            "--name",
            "phone",
        ],
        "",
    );
    assert!(!run.success, "{run:?}");
    assert!(run.stdout.starts_with("confirm: "), "{run:?}");
    assert!(run.stderr.contains("refused"), "{run:?}");
    let (rest, status, stderr) = pair.finish();
    assert!(!status.success(), "{rest:?} {stderr}");
    assert_eq!(
        rest,
        [run.stdout.trim_end()],
        "only the confirmation: no `paired:`"
    );
    assert!(stderr.contains("Admit this device? [y/N]"), "{stderr}");
    assert!(stderr.contains("not admitted"), "{stderr}");
    assert!(ClientState::open(&phone).is_err(), "no state was written");
    assert_eq!(ok(&laptop, &["devices"]).lines().count(), 1);

    // No answer at all (stdin closed) is no "yes" either.
    let mut pair = Background::pair(&laptop, &[], "");
    let code = code_of(&pair.line().unwrap()).to_owned();
    let run = ferry(
        &phone,
        &["join", "--relay", &url, "--relay-key", &key, &code],
        "",
    );
    assert!(!run.success, "{run:?}");
    let (_, status, stderr) = pair.finish();
    assert!(
        !status.success() && stderr.contains("not admitted"),
        "{stderr}"
    );
    assert_eq!(ok(&laptop, &["devices"]).lines().count(), 1);
}

#[test]
fn pair_yes_admits_without_asking_and_join_reads_the_code_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop = dir.path().join("laptop");
    let phone = dir.path().join("phone");
    let (url, key) = (relay.url(), relay.relay_id.to_hex());
    ok(
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
    ok(&laptop, &["send", "hello"]);

    // Nothing on `pair`'s stdin: with --yes it does not ask.
    let mut pair = Background::pair(&laptop, &["--yes"], "");
    let code = code_of(&pair.line().unwrap()).to_owned();
    // The code is typed, not an argument.
    let run = ferry(
        &phone,
        &[
            "join",
            "--relay",
            &url,
            "--relay-key",
            &key,
            "--name",
            "phone",
        ],
        &format!("{code}\n"),
    );
    assert!(run.success, "{run:?}");
    assert!(run.stderr.contains("Pairing code"), "{run:?}");
    let joined: Vec<&str> = run.stdout.lines().collect();
    let (rest, status, stderr) = pair.finish();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("Admit this device"), "{stderr}");
    assert_eq!(rest[0], joined[0]);
    let device = joined[1].strip_prefix("joined: ").unwrap();
    assert_eq!(rest[1], format!("paired: {device} phone"));
    assert_eq!(ok(&phone, &["tail"]), "hello\n");
}

/// The hex after `label` in a line of `ferry init`'s output (`user   HEX`, `device HEX (…)`).
fn id_after(shown: &str, label: &str) -> String {
    shown
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {label:?} in {shown}"))
        .to_owned()
}

/// The digits of `contact show`'s safety number (three lines of four groups).
fn safety_digits(shown: &str) -> String {
    let lines: Vec<&str> = shown.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("safety number"))
        .unwrap_or_else(|| panic!("no safety number in {shown}"));
    let rows = &lines[at..at + 3];
    assert!(
        rows.iter()
            .all(|row| row.split_whitespace().filter(|g| g.len() == 5).count() == 4)
    );
    rows.iter()
        .flat_map(|row| row.chars().filter(char::is_ascii_digit))
        .collect()
}

/// The only line of `contacts` that mentions `who`.
fn entry_of<'a>(listed: &'a str, who: &str) -> &'a str {
    let found: Vec<&str> = listed.lines().filter(|l| l.contains(who)).collect();
    assert_eq!(found.len(), 1, "{who} in {listed}");
    found[0]
}

#[test]
fn two_people_find_each_other_from_two_terminals_and_one_blocks_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let (url, key) = (relay.url(), relay.relay_id.to_hex());
    let init = |state: &Path, name: &str| {
        let args = ["init", "--relay", &url, "--relay-key", &key, "--name", name];
        ok(state, &args)
    };
    let alice_init = init(&alice, "alice-laptop");
    let bob_init = init(&bob, "bob-laptop");
    let (alice_id, bob_id) = (id_after(&alice_init, "user"), id_after(&bob_init, "user"));
    let alice_device = id_after(&alice_init, "device");

    // Alice takes a handle and tells Bob.
    let run = ferry(&alice, &["handle", "set", "Alice"], "");
    assert!(run.success, "{run:?}");
    let handle = run
        .stdout
        .trim()
        .strip_prefix("handle: ")
        .unwrap()
        .to_owned();
    assert!(
        handle.starts_with("alice.") && handle.len() == "alice.07".len(),
        "{handle}"
    );
    assert!(run.stderr.contains("share"), "{run:?}");
    assert_eq!(ok(&bob, &["whois", &handle]).trim(), alice_id);

    // Bob asks, with a note; the number is part of the handle.
    let run = ferry(&bob, &["contact", "add", "alice", "hi"], "");
    assert!(!run.success && run.stderr.contains("number"), "{run:?}");
    let asked = ok(&bob, &["contact", "add", &handle, "hi"]);
    assert!(
        asked.contains(&format!("request sent to {handle}")),
        "{asked}"
    );

    // Alice's live view shows the request and its note, opened on her device.
    let bob_short = &bob_id[..16];
    let tail = ok(&alice, &["tail"]);
    assert!(
        tail.contains(&format!("request from {bob_short}: \"hi\"")),
        "{tail}"
    );
    let listed = ok(&alice, &["contacts"]);
    let entry = entry_of(&listed, bob_short);
    assert!(entry.starts_with("incoming "), "{listed}");
    // She accepts with the short id `contacts` shows.
    let accepted = ok(&alice, &["contact", "accept", bob_short]);
    assert!(accepted.contains("is a contact now"), "{accepted}");

    // Both are contacts, on both screens; Bob's shows Alice by her handle.
    let tail = ok(&bob, &["tail"]);
    assert!(
        tail.contains(&format!("{handle} ({}…) is a contact now", &alice_id[..8])),
        "{tail}"
    );
    assert!(entry_of(&ok(&alice, &["contacts"]), bob_short).starts_with("contact "));
    assert!(entry_of(&ok(&bob, &["contacts"]), &handle).starts_with("contact "));

    // Alice's profile reaches Bob, sealed with the key her acceptance carried.
    let saved = ok(&alice, &["profile", "set", "--name", "Alice"]);
    assert!(saved.contains("Alice"), "{saved}");
    assert_eq!(ok(&alice, &["profile", "show"]), "name    Alice\n");
    assert_eq!(ok(&bob, &["profile", "show", &handle]), "name    Alice\n");

    // Both screens show the same safety number, and Bob sees Alice's device.
    let bob_sees = ok(&bob, &["contact", "show", &handle]);
    let alice_sees = ok(&alice, &["contact", "show", &bob_id]);
    let digits = safety_digits(&bob_sees);
    assert_eq!(digits.len(), 60, "{bob_sees}");
    assert_eq!(digits, safety_digits(&alice_sees), "{alice_sees}");
    let expected =
        ferry_client::people::safety_number(&alice_id.parse().unwrap(), &bob_id.parse().unwrap());
    assert_eq!(digits, expected.replace(' ', ""));
    for words in [&alice_id, &handle, "contact", "Alice", &alice_device] {
        assert!(bob_sees.contains(words), "{words} in {bob_sees}");
    }

    // Bob recovers his account on a new folder: Alice's device says so, loudly, and shows
    // his new device.
    let bob_again = dir.path().join("bob-again");
    let recover = [
        "recover",
        "--relay",
        &url,
        "--relay-key",
        &key,
        "--name",
        "bob-new",
    ];
    let run = ferry(
        &bob_again,
        &recover,
        &format!("{}\n", recovery_line(&bob_init)),
    );
    assert!(run.success, "{run:?}");
    let new_device = ClientState::open(&bob_again).unwrap().device_id().to_hex();
    let run = ferry(&alice, &["contact", "show", bob_short], "");
    assert!(run.success, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "WARNING: the identity of {bob_short} changed: they recovered their account"
        )),
        "{run:?}"
    );
    assert!(run.stdout.contains(&new_device), "{run:?}");
    assert_eq!(
        safety_digits(&run.stdout),
        digits,
        "the same keys, the same number"
    );

    // Alice blocks Bob (he is not told); her list says so.
    let blocked = ok(&alice, &["block", &bob_id]);
    assert!(blocked.starts_with("blocked "), "{blocked}");
    assert!(entry_of(&ok(&alice, &["contacts"]), bob_short).starts_with("blocked "));

    // Nobody has this handle: exit status 1.
    let run = ferry(&alice, &["whois", "nobody.00"], "");
    assert!(!run.success && run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.contains("nobody has"), "{run:?}");
    let run = ferry(&alice, &["contact", "show", "not-a-handle!"], "");
    assert!(!run.success && run.stderr.contains("neither"), "{run:?}");
}

/// Alice and Bob, each initialised in a folder of `dir` against `relay`, with handles, and
/// contacts (Bob asked, Alice accepted): (alice's folder, bob's, alice's handle, bob's).
fn two_contacts(dir: &Path, relay: &TestRelay) -> (PathBuf, PathBuf, String, String) {
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    let (url, key) = (relay.url(), relay.relay_id.to_hex());
    for (state, name) in [(&alice, "alice-laptop"), (&bob, "bob-laptop")] {
        ok(
            state,
            &["init", "--relay", &url, "--relay-key", &key, "--name", name],
        );
    }
    let handle_of = |state: &Path, name: &str| {
        ok(state, &["handle", "set", name])
            .trim()
            .strip_prefix("handle: ")
            .unwrap()
            .to_owned()
    };
    let (alice_handle, bob_handle) = (handle_of(&alice, "alice"), handle_of(&bob, "bob"));
    ok(&bob, &["contact", "add", &alice_handle, "hi"]);
    ok(&alice, &["contact", "accept", &bob_handle]);
    (alice, bob, alice_handle, bob_handle)
}

/// The conversation id in `sent: CONV SEQ`.
fn sent_conv(sent: &str) -> String {
    let conv = sent
        .trim()
        .strip_prefix("sent: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{sent}"))
        .to_owned();
    assert_eq!(conv.len(), 32, "{sent}");
    conv
}

#[test]
fn two_people_chat_from_two_terminals_in_a_one_to_one_and_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let (alice, bob, alice_handle, bob_handle) = two_contacts(dir.path(), &relay);
    // Each names the other by the handle they used: Bob found Alice by hers, Alice accepted
    // Bob by his.
    let bob_id = ok(&alice, &["whois", &bob_handle]).trim().to_owned();
    let bob_name = format!("{bob_handle} ({}…)", &bob_id[..8]);

    // Bob writes first; Alice sees one unread message and reads it.
    let conv = sent_conv(&ok(&bob, &["chat", &alice_handle, "hello", "alice"]));
    let listed = ok(&alice, &["convs"]);
    let entry = entry_of(&listed, &conv[..12]);
    assert!(
        entry.contains("1 unread") && entry.contains(&bob_name),
        "{listed}"
    );
    let read = ok(&alice, &["read", &conv[..8]]);
    assert!(read.contains(&format!("{bob_name}: hello alice")), "{read}");

    // Alice chats interactively: she sees the backlog, her line is sent, and what Bob says
    // meanwhile shows up as it arrives.
    let mut chat = Background::spawn(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--state")
            .arg(&alice)
            .args(["chat", &bob_handle])
            .env_remove("FERRY_STATE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(60),
    );
    let backlog = chat.line().unwrap();
    assert!(
        backlog.ends_with(&format!("{bob_name}: hello alice")),
        "{backlog}"
    );
    let mut stdin = chat.child.stdin.take().unwrap();
    stdin.write_all(b"hi bob, typing live\n").unwrap();
    stdin.flush().unwrap();
    let mine = chat.line().unwrap();
    assert!(mine.ends_with("you: hi bob, typing live"), "{mine}");
    ok(&bob, &["say", &conv, "good", "to", "see", "you"]);
    let heard = chat.line().unwrap();
    assert!(
        heard.ends_with(&format!("{bob_name}: good to see you")),
        "{heard}"
    );
    drop(stdin);
    let (_, status, stderr) = chat.finish();
    assert!(status.success(), "{stderr}");
    // Bob reads the conversation in order; Alice's interactive chat marked it read.
    let read = ok(&bob, &["read", &conv]);
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!(lines.len(), 3, "{read}");
    assert!(
        lines[1].contains(&alice_handle) && lines[1].ends_with(": hi bob, typing live"),
        "{read}"
    );
    assert!(entry_of(&ok(&alice, &["convs"]), &conv[..12]).contains(" 0 unread"));

    // A group by its title.
    let created = ok(
        &alice,
        &["group", "create", "book club", "--with", &bob_handle],
    );
    assert!(created.starts_with("conversation: "), "{created}");
    ok(&bob, &["say", "book club", "hello club"]);
    let read = ok(&alice, &["read", "book club"]);
    assert!(read.contains(&format!("{bob_name}: hello club")), "{read}");
    let run = ferry(&alice, &["read", "no such club"], "");
    assert!(
        !run.success && run.stderr.contains("no conversation"),
        "{run:?}"
    );
}

#[test]
fn a_file_sent_from_one_terminal_is_saved_in_another() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let (alice, bob, alice_handle, _) = two_contacts(dir.path(), &relay);
    let said = ok(&bob, &["chat", &alice_handle, "sending the report"]);
    let (conv, text_seq) = (
        sent_conv(&said),
        said.trim().rsplit(' ').next().unwrap().to_owned(),
    );
    let report: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join("report.txt");
    std::fs::write(&path, &report).unwrap();
    let sent = ok(&alice, &["send-file", &conv[..8], path.to_str().unwrap()]);
    let seq = sent.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(sent.starts_with(&format!("sent: {conv} ")), "{sent}");

    let read = ok(&bob, &["read", &conv]);
    assert!(read.contains(": [file report.txt, 683.6 KiB]"), "{read}");
    let out = dir.path().join("downloads");
    std::fs::create_dir(&out).unwrap();
    let args = ["get-file", &conv, &seq, "--out", out.to_str().unwrap()];
    let saved = ok(&bob, &args);
    let dest = out.join("report.txt");
    assert!(saved.contains(&dest.display().to_string()), "{saved}");
    assert_eq!(std::fs::read(&dest).unwrap(), report);
    // Never over an existing file unless asked; and only the file of a file message.
    let run = ferry(&bob, &args, "");
    assert!(
        !run.success && run.stderr.contains("exists already"),
        "{run:?}"
    );
    ok(&bob, &[&args[..], &["--force"]].concat());
    let run = ferry(&bob, &["get-file", &conv, &text_seq], "");
    assert!(
        !run.success && run.stderr.contains("holds no file"),
        "{run:?}"
    );
    let run = ferry(&alice, &["send-file", &conv, "/no/such/file"], "");
    assert!(
        !run.success && run.stderr.contains("/no/such/file"),
        "{run:?}"
    );
}
