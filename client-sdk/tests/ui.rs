//! `ferry ui`'s local HTTP API, end to end without a browser: two users through their own
//! `ferry ui` processes against an in-process relay, and what a hostile web page, another
//! local user or a hostile contact cannot make it do. (`ui-tests/` drives the page itself in
//! Chromium.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::TestRelay;

/// One answer of the local server.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A `ferry ui` process and the cookie its login gave.
struct Ui {
    child: Child,
    port: u16,
    token: String,
    cookie: String,
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ui {
    fn start(state: &Path, relay: &TestRelay) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--state")
            .arg(state)
            .args(["ui", "--no-open", "--relay", &relay.url()])
            .args(["--relay-key", &relay.relay_id.to_hex()])
            .env_remove("FERRY_STATE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("ui: ")
            .unwrap_or_else(|| panic!("{line}"));
        let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
        let (port, token) = rest.split_once("/?token=").unwrap();
        let mut ui = Self {
            child,
            port: port.parse().unwrap(),
            token: token.to_owned(),
            cookie: String::new(),
        };
        let login = ui.send("GET", &format!("/?token={token}"), &[], b"");
        assert_eq!(login.status, 200, "{login:?}");
        let set = login.header("set-cookie").unwrap();
        ui.cookie = set.split(';').next().unwrap().to_owned();
        ui
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A raw HTTP/1.1 request; `headers` may override Host.
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {}\r\n", self.host()));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        parse(&raw)
    }

    fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[("Cookie", &self.cookie)], b"")
    }

    /// A POST as the page sends it: the cookie and our own Origin.
    fn post(&self, path: &str, body: &Value) -> Answer {
        let origin = self.origin();
        self.send(
            "POST",
            path,
            &[
                ("Cookie", &self.cookie),
                ("Origin", &origin),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
    }

    fn ok(&self, path: &str, body: &Value) -> Value {
        let answer = self.post(path, body);
        assert_eq!(answer.status, 200, "POST {path}: {answer:?}");
        answer.json()
    }

    fn upload(&self, conv: &str, name: &str, bytes: &[u8]) -> Answer {
        let origin = self.origin();
        self.send(
            "POST",
            &format!("/api/convs/{conv}/files?name={name}"),
            &[
                ("Cookie", &self.cookie),
                ("Origin", &origin),
                ("Content-Type", "application/octet-stream"),
            ],
            bytes,
        )
    }

    /// Polls `GET path` until `found` picks something out of its JSON.
    fn until<T>(&self, path: &str, found: impl Fn(&Value) -> Option<T>) -> T {
        let deadline = Instant::now() + support::WAIT;
        loop {
            let answer = self.get(path);
            if answer.status == 200
                && let Some(value) = found(&answer.json())
            {
                return value;
            }
            assert!(Instant::now() < deadline, "GET {path}: {answer:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A whole HTTP/1.1 answer (the server sends `Content-Length` or closes, or chunks).
fn parse(raw: &[u8]) -> Answer {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let len =
                usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap(), 16).unwrap();
            if len == 0 {
                break;
            }
            out.extend_from_slice(&rest[end + 2..end + 2 + len]);
            rest = &rest[end + 2 + len + 2..];
        }
        body = out;
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn create(ui: &Ui, relay: &TestRelay, name: &str) -> Value {
    ui.ok(
        "/api/setup/create",
        &json!({
            "relay_url": relay.url(),
            "relay_key": relay.relay_id.to_hex(),
            "device_name": format!("{name}-device"),
            "name": name,
        }),
    )
}

#[test]
fn ui_serves_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .args(["ui", "--no-open", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
}

#[test]
fn two_users_through_their_local_apis_and_what_hostile_pages_and_contacts_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let alice = Ui::start(&dir.path().join("alice"), &relay);
    let bob = Ui::start(&dir.path().join("bob"), &relay);

    // The guard, before anything is set up.
    assert_eq!(alice.send("GET", "/api/state", &[], b"").status, 401);
    let wrong = alice.send(
        "GET",
        &format!("/?token={}", "0".repeat(alice.token.len())),
        &[],
        b"",
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let rebound = alice.send(
        "GET",
        "/api/state",
        &[
            ("Host", &format!("evil.example:{}", alice.port)),
            ("Cookie", &alice.cookie),
        ],
        b"",
    );
    assert_eq!(rebound.status, 421);
    let bobs_cookie_at_alice = alice.send("GET", "/api/state", &[("Cookie", &bob.cookie)], b"");
    assert_eq!(
        bobs_cookie_at_alice.status, 401,
        "one ui's cookie is not another's"
    );
    let state = alice.get("/api/state");
    assert!(
        state
            .header("content-security-policy")
            .unwrap()
            .starts_with("default-src 'none'")
    );
    assert_eq!(state.json()["mode"], "setup");
    // A cross-site page cannot create an account in the user's name.
    let forged = alice.send(
        "POST",
        "/api/setup/create",
        &[("Cookie", &alice.cookie), ("Origin", "http://evil.example")],
        br#"{"relay_url":"ws://evil.example/ws","relay_key":"00","device_name":"x"}"#,
    );
    assert_eq!(forged.status, 403);

    // Two users; the recovery key is in the one answer that made it.
    let made = create(&alice, &relay, "Alice");
    assert_eq!(made["recovery_key"].as_str().unwrap().len(), 65);
    create(&bob, &relay, "Bob");
    assert!(!String::from_utf8_lossy(&alice.get("/api/state").body).contains("recovery"));
    let again = alice.post(
        "/api/setup/create",
        &json!({ "relay_url": relay.url(), "relay_key": relay.relay_id.to_hex(), "device_name": "x" }),
    );
    assert_eq!(again.status, 409, "a set-up device is not set up again");
    let alice_id = alice.get("/api/me").json()["user"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_id = bob.get("/api/me").json()["user"]
        .as_str()
        .unwrap()
        .to_owned();

    // Contacts, then a 1:1.
    let handle = bob.ok("/api/handle", &json!({ "name": "bob" }))["handle"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.ok(
        "/api/contacts/request",
        &json!({ "handle": handle, "note": "hi" }),
    );
    bob.until("/api/contacts", |list| {
        list.as_array()?
            .iter()
            .any(|c| c["user"] == alice_id.as_str() && c["state"] == "incoming")
            .then_some(())
    });
    bob.ok("/api/contacts/accept", &json!({ "user": alice_id }));
    let conv = alice.ok("/api/convs/chat", &json!({ "user": bob_id }))["conv"]
        .as_str()
        .unwrap()
        .to_owned();
    let same = alice.ok("/api/convs/chat", &json!({ "user": bob_id }))["conv"].clone();
    assert_eq!(
        same,
        conv.as_str(),
        "the 1:1 is opened again, not made twice"
    );
    alice.ok(
        &format!("/api/convs/{conv}/send"),
        &json!({ "text": "hello" }),
    );

    // A contact sends an HTML page and an SVG: bob's server hands them over as downloads,
    // sandboxed, never as a page of its origin; a PNG is shown inline.
    let page = b"<html><script>fetch('/api/devices/revoke')</script></html>";
    for (name, bytes) in [
        ("evil.html", &page[..]),
        ("evil.svg", &page[..]),
        ("pixel.png", b"\x89PNG\r\n\x1a\nfake"),
    ] {
        let upload = alice.upload(&conv, name, bytes);
        assert_eq!(upload.status, 200, "{upload:?}");
    }
    let files: Vec<(u64, String)> = bob.until(&format!("/api/convs/{conv}/messages"), |page| {
        let files: Vec<(u64, String)> = page
            .as_array()?
            .iter()
            .filter(|m| m["kind"] == "file")
            .map(|m| {
                (
                    m["seq"].as_u64().unwrap(),
                    m["file"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (files.len() == 3).then_some(files)
    });
    for (seq, name) in &files {
        let got = bob.get(&format!("/api/convs/{conv}/files/{seq}"));
        assert_eq!(got.status, 200, "{name}");
        let csp = got.header("content-security-policy").unwrap();
        assert!(csp.starts_with("sandbox"), "{name}: {csp}");
        assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
        if name == "pixel.png" {
            assert_eq!(got.header("content-type"), Some("image/png"));
            assert!(got.header("content-disposition").is_none());
        } else {
            assert_eq!(
                got.header("content-type"),
                Some("application/octet-stream"),
                "{name}"
            );
            assert!(
                got.header("content-disposition")
                    .unwrap()
                    .starts_with("attachment"),
                "{name}"
            );
            assert_eq!(got.body, page, "{name}: the bytes, decrypted by the SDK");
        }
    }
    let text_seq = bob.until(&format!("/api/convs/{conv}/messages"), |page| {
        page.as_array()?
            .iter()
            .find(|m| m["kind"] == "text")
            .and_then(|m| m["seq"].as_u64())
    });
    assert_eq!(
        bob.get(&format!("/api/convs/{conv}/files/{text_seq}"))
            .status,
        404
    );

    // Names that would leave the uploads folder, or hide in it, are refused.
    for name in [
        "..%2Fescape",
        "%2Fetc%2Fpasswd",
        ".hidden",
        "a%5Cb",
        "",
        "nul%00byte",
    ] {
        let refused = alice.upload(&conv, name, b"x");
        assert_eq!(refused.status, 400, "{name}: {refused:?}");
    }
    // Nobody revokes the device in use from its own page by mistake.
    let me = alice.get("/api/me").json();
    let self_revoke = alice.post("/api/devices/revoke", &json!({ "device": me["device"] }));
    assert_eq!(self_revoke.status, 400);
}
