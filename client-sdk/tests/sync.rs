//! The client against a real relay started in-process: syncing, catching up, revocation,
//! what the relay stores, and what survives killed relays, dropped connections and crashed
//! clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_client::{
    Client, ClientError, ClientEvent, ClientState, DataKey, ErrorCode, MAX_PLAINTEXT_LEN, RelayId,
};
use futures_util::future::join_all;
use rand_core::OsRng;
use support::*;

#[tokio::test]
async fn two_devices_of_one_user_sync_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone_state = another_device(&laptop_state, &dir.path().join("phone"), "phone").await;
    let (laptop_id, phone_id) = (laptop_state.device_id(), phone_state.device_id());

    let mut laptop = Client::connect(laptop_state, fast()).await.unwrap();
    let mut phone = Client::connect(phone_state, fast()).await.unwrap();
    assert_eq!(laptop.user_id(), phone.user_id());
    assert!(until_caught_up(&mut laptop).await.is_empty());
    assert!(until_caught_up(&mut phone).await.is_empty());

    assert_eq!(laptop.append(b"from the laptop").await.unwrap(), 1);
    let got = next_event(&mut phone).await;
    assert_eq!((got.seq, got.device, got.device_seq), (1, laptop_id, 1));
    assert_eq!(&got.plaintext[..], b"from the laptop");

    assert_eq!(phone.append(b"from the phone").await.unwrap(), 2);
    // The laptop sees the whole log in order, its own event included.
    let got = events(&mut laptop, 2).await;
    assert_eq!(texts(&got), ["from the laptop", "from the phone"]);
    assert_eq!((got[1].device, got[1].device_seq), (phone_id, 1));
    // Debug output never shows a plaintext.
    assert!(!format!("{got:?}").contains("from the"));

    // Appends from several tasks at once, through handles.
    let handle = laptop.handle();
    let seqs = join_all((0..20).map(|i| {
        let handle = handle.clone();
        async move {
            handle
                .append(format!("burst {i}").as_bytes())
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        (3..=22).collect()
    );
    let got = events(&mut phone, 21).await;
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (2..=22).collect::<Vec<_>>()
    );
    assert_eq!(laptop.status().pending, 0);
    assert!(laptop.status().connected);

    let laptop_state = laptop.close().await.unwrap();
    assert_eq!((laptop_state.cursor(), laptop_state.pending()), (2, 0));
    assert_eq!(laptop_state.next_device_seq(), 22);
    let phone_state = phone.close().await.unwrap();
    assert_eq!(phone_state.cursor(), 22);
}

#[tokio::test]
async fn a_device_offline_for_thousands_of_events_catches_up() {
    const EVENTS: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone_state = another_device(&laptop_state, &dir.path().join("phone"), "phone").await;
    drop(phone_state);

    let laptop = Client::connect(laptop_state, fast()).await.unwrap();
    let started = std::time::Instant::now();
    // Enqueued together, they share outbox flushes.
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(500) {
        let texts: Vec<String> = chunk.iter().map(|i| format!("event {i}")).collect();
        let stored = join_all(texts.iter().map(|text| laptop.enqueue(text.as_bytes()))).await;
        assert!(stored.iter().all(Result::is_ok));
    }
    laptop.flush(WAIT).await.unwrap();
    eprintln!("{EVENTS} events appended in {:?}", started.elapsed());

    // The phone's queue holds fewer than that: it must refetch as it drains.
    let started = std::time::Instant::now();
    let phone_state = ClientState::open(dir.path().join("phone")).unwrap();
    let mut phone = Client::connect(phone_state, fast().event_buffer(256))
        .await
        .unwrap();
    let got = events(&mut phone, EVENTS).await;
    eprintln!("{EVENTS} events received in {:?}", started.elapsed());
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=EVENTS as u64).collect::<Vec<_>>()
    );
    let mut by_device_seq: Vec<_> = got
        .iter()
        .map(|e| (e.device_seq, e.plaintext.to_vec()))
        .collect();
    by_device_seq.sort();
    for (i, (device_seq, text)) in by_device_seq.iter().enumerate() {
        assert_eq!(*device_seq, i as u64 + 1);
        assert!(String::from_utf8_lossy(text).starts_with("event "));
    }
    assert_eq!(
        texts(&got).into_iter().collect::<BTreeSet<_>>().len(),
        EVENTS,
        "every event once"
    );
    // Caught up, and the cursor is saved.
    assert!(matches!(
        tokio::time::timeout(WAIT, phone.next_event()).await.unwrap().unwrap(),
        ClientEvent::CaughtUp { head } if head == EVENTS as u64
    ));
    // The queue overflowed and the client refetched from where the app was.
    assert!(phone.status().sessions > 1, "{:?}", phone.status());
    let phone_state = phone.close().await.unwrap();
    assert_eq!(phone_state.cursor(), EVENTS as u64);
    laptop.close().await.unwrap();
}

#[tokio::test]
async fn a_revoked_device_is_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let stolen_state =
        another_device(&laptop_state, &dir.path().join("stolen"), "stolen phone").await;
    let stolen_id = stolen_state.device_id();

    let laptop = Client::connect(laptop_state, fast()).await.unwrap();
    let mut stolen = Client::connect(stolen_state, fast()).await.unwrap();
    until_caught_up(&mut stolen).await;

    let devices = laptop.list_devices().await.unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| !d.revoked));
    assert!(devices.iter().any(|d| d.name == "stolen phone"));
    assert!(
        devices
            .iter()
            .any(|d| d.name == "laptop" && d.this_device && d.last_seen.is_some())
    );

    let unknown = ferry_client::DeviceKey::generate(&mut OsRng).id();
    assert!(matches!(
        laptop.revoke(unknown).await,
        Err(ClientError::UnknownDevice(d)) if d == unknown
    ));
    laptop.revoke(stolen_id).await.unwrap();

    // The open session is closed, with the reason.
    let error = tokio::time::timeout(WAIT, stolen.next_event())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, ClientError::Revoked), "{error:?}");
    assert!(error.is_permanent());
    assert!(matches!(
        stolen.append(b"x").await,
        Err(ClientError::Revoked)
    ));
    // And it cannot come back.
    let stolen_state = stolen.close().await.unwrap();
    assert!(matches!(
        Client::connect(stolen_state, fast()).await,
        Err(ClientError::Revoked)
    ));

    let devices = laptop.list_devices().await.unwrap();
    assert!(devices.iter().any(|d| d.id == stolen_id && d.revoked));
    laptop.close().await.unwrap();
}

#[tokio::test]
async fn neither_the_relay_nor_the_outbox_holds_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let mut relay = TestRelay::start(&relay_dir);
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone_state = another_device(&laptop_state, &dir.path().join("phone"), "phone").await;

    let secrets: Vec<String> = (0..20)
        .map(|i| format!("the launch code is {i:04} swordfish"))
        .collect();
    let laptop = Client::connect(laptop_state, fast()).await.unwrap();
    for secret in &secrets {
        laptop.append(secret.as_bytes()).await.unwrap();
    }
    // Stored while offline: sealed in the outbox too.
    let mut phone = Client::start(phone_state, fast());
    let got = events(&mut phone, secrets.len()).await;
    assert_eq!(texts(&got), secrets);
    relay.stop();
    let unsent = "written while the relay is down, kept sealed";
    phone.enqueue(unsent.as_bytes()).await.unwrap();
    assert_eq!(phone.status().pending, 1);

    for (place, folder) in [
        ("relay", relay_dir.as_path()),
        ("laptop state", &dir.path().join("laptop")),
        ("phone state", &dir.path().join("phone")),
    ] {
        let mut scanned = 0;
        for entry in walk(folder) {
            let bytes = std::fs::read(&entry).unwrap();
            scanned += bytes.len();
            for secret in secrets
                .iter()
                .map(String::as_str)
                .chain([unsent, "swordfish"])
            {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{place}: {} holds {secret:?}",
                    entry.display()
                );
            }
        }
        assert!(scanned > 0, "{place} has files");
    }
    phone.close().await.unwrap();
    laptop.close().await.unwrap();
}

#[tokio::test]
async fn killing_the_relay_mid_send_loses_nothing_acknowledged_and_the_outbox_delivers_the_rest() {
    const WRITERS: usize = 4;
    const EACH: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = TestRelay::start(&dir.path().join("relay"));
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone_state = another_device(&laptop_state, &dir.path().join("phone"), "phone").await;
    let laptop = Client::connect(laptop_state, fast()).await.unwrap();

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let handle = laptop.handle();
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                for i in 0..EACH {
                    let text = format!("writer {w} line {i}");
                    let seq = handle.append(text.as_bytes()).await.unwrap();
                    acknowledged.lock().unwrap().push((text, seq));
                }
            })
        })
        .collect();
    // Kill it while appends are in flight.
    while acknowledged.lock().unwrap().len() < 60 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    relay.kill();
    let before_kill = acknowledged.lock().unwrap().clone();
    // The client notices, and each writer has an append waiting: in the outbox, not lost.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = laptop.status();
        if !status.connected && status.pending == WRITERS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected disconnected with {WRITERS} pending: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.restart();

    for writer in writers {
        tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    }
    laptop.flush(WAIT).await.unwrap();

    let mut phone = Client::connect(phone_state, fast()).await.unwrap();
    let got = until_caught_up(&mut phone).await;
    assert_eq!(got.len(), WRITERS * EACH, "every event exactly once");
    assert_eq!(
        texts(&got).into_iter().collect::<BTreeSet<_>>().len(),
        WRITERS * EACH
    );
    // Everything acknowledged before the kill is there, at the sequence it was given.
    for (text, seq) in before_kill
        .iter()
        .chain(acknowledged.lock().unwrap().iter())
    {
        let event = &got[*seq as usize - 1];
        assert_eq!(
            (event.seq, String::from_utf8_lossy(&event.plaintext)),
            (*seq, text.into())
        );
    }
    phone.close().await.unwrap();
    let laptop_state = laptop.close().await.unwrap();
    assert_eq!(laptop_state.pending(), 0);
}

#[tokio::test]
async fn the_outbox_survives_a_client_crash() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let relay_dir = dir.path().join("relay");
    // Start once to learn the relay key, then take it down.
    let mut relay = TestRelay::start_on(&relay_dir, addr);
    let laptop_dir = dir.path().join("laptop");
    let laptop_state = new_user(&laptop_dir, &relay, "laptop").await;
    let phone_state = another_device(&laptop_state, &dir.path().join("phone"), "phone").await;
    drop(laptop_state);
    relay.stop();

    // A client on its own runtime appends while the relay is down, then dies mid-flight.
    let crashing_dir = laptop_dir.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async {
            let client = Client::start(ClientState::open(&crashing_dir).unwrap(), fast());
            for i in 0..5 {
                client
                    .enqueue(format!("typed offline {i}").as_bytes())
                    .await
                    .unwrap();
            }
            client
        });
        runtime.shutdown_background();
        std::mem::forget(client);
    })
    .join()
    .unwrap();

    let laptop_state = open_when_free(&laptop_dir).await;
    assert_eq!(
        (laptop_state.pending(), laptop_state.next_device_seq()),
        (5, 6)
    );
    relay.restart();
    let laptop = Client::start(laptop_state, fast());
    laptop.flush(WAIT).await.unwrap();
    assert_eq!(laptop.append(b"after the crash").await.unwrap(), 6);

    let mut phone = Client::connect(phone_state, fast()).await.unwrap();
    let got = until_caught_up(&mut phone).await;
    assert_eq!(
        texts(&got),
        [
            "typed offline 0",
            "typed offline 1",
            "typed offline 2",
            "typed offline 3",
            "typed offline 4",
            "after the crash"
        ]
    );
    assert_eq!(
        got.iter().map(|e| e.device_seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    phone.close().await.unwrap();
    laptop.close().await.unwrap();
}

#[tokio::test]
async fn it_reconnects_with_backoff_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = TestRelay::start(&dir.path().join("relay"));
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone_state = another_device(&laptop_state, &dir.path().join("phone"), "phone").await;
    let laptop = Client::connect(laptop_state, fast()).await.unwrap();
    let mut phone = Client::connect(phone_state, fast()).await.unwrap();
    laptop.append(b"before").await.unwrap();
    assert_eq!(texts(&[next_event(&mut phone).await]), ["before"]);

    relay.stop();
    let down = tokio::time::timeout(WAIT, async {
        while laptop.status().connected || phone.status().connected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(down.is_ok(), "both noticed the relay went away");
    // An append while the relay is down waits in the outbox...
    let handle = laptop.handle();
    let waiting = tokio::spawn(async move { handle.append(b"during").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished());
    assert_eq!(laptop.status().pending, 1);
    assert!(laptop.status().last_error.is_some());

    // ...and leaves when the relay is back; both devices reconnect by themselves.
    relay.restart();
    assert_eq!(
        tokio::time::timeout(WAIT, waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        2
    );
    let got = next_event(&mut phone).await;
    assert_eq!((got.seq, &got.plaintext[..]), (2, &b"during"[..]));
    assert!(laptop.status().sessions >= 2 && phone.status().sessions >= 2);
    phone.close().await.unwrap();
    laptop.close().await.unwrap();
}

#[tokio::test]
async fn delivery_to_the_app_is_exactly_once_across_reconnects_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = TestRelay::start(&dir.path().join("relay"));
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let phone_dir = dir.path().join("phone");
    let phone_state = another_device(&laptop_state, &phone_dir, "phone").await;
    let laptop = Client::connect(laptop_state, fast()).await.unwrap();
    let texts_sent: Vec<_> = (1..=200).map(|i| format!("n{i}")).collect();
    for text in &texts_sent {
        laptop.enqueue(text.as_bytes()).await.unwrap();
    }
    laptop.flush(WAIT).await.unwrap();

    let mut seen = Vec::new();
    let mut phone = Client::connect(phone_state, fast().event_buffer(16))
        .await
        .unwrap();
    seen.extend(events(&mut phone, 50).await);
    // The connection drops twice while the phone reads.
    relay.kill();
    relay.restart();
    seen.extend(events(&mut phone, 30).await);
    relay.stop();
    relay.restart();
    seen.extend(events(&mut phone, 40).await);
    assert!(phone.status().sessions >= 3, "{:?}", phone.status());
    // A clean close acknowledges the last event returned.
    let state = phone.close().await.unwrap();
    assert_eq!(state.cursor(), 120);

    // The app stops without asking for more: the last event it got is not acknowledged,
    // so it comes again.
    let mut phone = Client::connect(state, fast()).await.unwrap();
    seen.extend(events(&mut phone, 10).await);
    drop(phone);
    let state = open_when_free(&phone_dir).await;
    assert_eq!(state.cursor(), 129);
    let mut phone = Client::connect(state, fast()).await.unwrap();
    let again = next_event(&mut phone).await;
    assert_eq!(again.seq, 130);
    seen.pop();
    seen.push(again);
    let rest = until_caught_up(&mut phone).await;
    seen.extend(rest);

    assert_eq!(
        seen.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    assert_eq!(texts(&seen), texts_sent);
    phone.close().await.unwrap();
    laptop.close().await.unwrap();
}

#[tokio::test]
async fn a_payload_that_does_not_open_is_reported_not_skipped_silently() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let rogue_state = another_device_with_data_key(
        &laptop_state,
        &dir.path().join("rogue"),
        "rogue",
        DataKey::generate(&mut OsRng),
    )
    .await;
    let rogue_id = rogue_state.device_id();
    let phone_state = another_device(&laptop_state, &dir.path().join("phone"), "phone").await;

    let rogue = Client::connect(rogue_state, fast()).await.unwrap();
    rogue.append(b"sealed under the wrong key").await.unwrap();
    let laptop = Client::connect(laptop_state, fast()).await.unwrap();
    laptop.append(b"fine").await.unwrap();

    let mut phone = Client::connect(phone_state, fast()).await.unwrap();
    let error = tokio::time::timeout(WAIT, phone.next_event())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, ClientError::Undecryptable { seq: 1, device, device_seq: 1 } if device == rogue_id),
        "{error:?}"
    );
    assert!(!error.is_permanent());
    // The next call moves past it.
    let got = next_event(&mut phone).await;
    assert_eq!((got.seq, &got.plaintext[..]), (2, &b"fine"[..]));
    assert_eq!(phone.close().await.unwrap().cursor(), 2);
    rogue.close().await.unwrap();
    laptop.close().await.unwrap();
}

#[tokio::test]
async fn connection_failures_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));

    // A relay presenting another key than the pinned one.
    let pinned = RelayId([7; 32]);
    let state = new_user_pointed_at(&dir.path().join("a"), &relay, "a", &relay.url(), pinned).await;
    let error = Client::connect(state, fast()).await.unwrap_err();
    assert!(
        matches!(error, ClientError::WrongRelayKey { pinned: p, found } if p == pinned && found == relay.relay_id),
        "{error:?}"
    );
    assert!(error.is_permanent());

    // Nobody listening: unreachable, after the connect timeout; appends wait in the outbox.
    let addr = free_addr();
    let url = format!("ws://{addr}/ws");
    let state = new_user_pointed_at(&dir.path().join("b"), &relay, "b", &url, relay.relay_id).await;
    let options = fast().connect_timeout(Duration::from_millis(500));
    let error = Client::connect(state, options.clone()).await.unwrap_err();
    assert!(
        matches!(error, ClientError::RelayUnreachable(_)),
        "{error:?}"
    );
    assert!(!error.is_permanent());
    let state = open_when_free(&dir.path().join("b")).await;
    let client = Client::start(state, options);
    client.enqueue(b"later").await.unwrap();
    let error = client.flush(Duration::from_millis(500)).await.unwrap_err();
    assert!(
        matches!(error, ClientError::RelayUnreachable(_)),
        "{error:?}"
    );
    assert_eq!(client.status().pending, 1);

    // Too large for one event: refused at once, nothing stored.
    let huge = vec![0u8; MAX_PLAINTEXT_LEN + 1];
    assert!(matches!(
        client.append(&huge).await,
        Err(ClientError::PayloadTooLarge { len }) if len == huge.len()
    ));
    let state = client.close().await.unwrap();
    assert_eq!((state.pending(), state.next_device_seq()), (1, 2));
}

#[tokio::test]
async fn rate_limited_appends_are_retried_and_none_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(
        &dir.path().join("relay"),
        free_addr(),
        Arc::new(|c| c.limits.appends_per_device_per_second = 40), // bursts of 80
    );
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let laptop = Client::connect(laptop_state, fast()).await.unwrap();
    let handle = laptop.handle();
    let seqs = tokio::time::timeout(
        WAIT,
        join_all((0..160).map(|i| {
            let handle = handle.clone();
            async move { handle.append(format!("{i}").as_bytes()).await }
        })),
    )
    .await
    .unwrap();
    let seqs: BTreeSet<u64> = seqs.into_iter().map(Result::unwrap).collect();
    assert_eq!(seqs, (1..=160).collect());
    let metrics = relay.metrics();
    assert!(
        metrics.contains("code=\"rate_limited\""),
        "the relay did refuse some: {metrics}"
    );
    laptop.close().await.unwrap();
}

#[tokio::test]
async fn limits_and_retention_answer_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(
        &dir.path().join("relay"),
        free_addr(),
        Arc::new(|c| {
            c.limits.max_devices_per_user = 2;
            c.log.retention_max_events = Some(3);
            c.log.retention_interval_secs = 1;
        }),
    );
    let laptop_state = new_user(&dir.path().join("laptop"), &relay, "laptop").await;
    let late_state = another_device(&laptop_state, &dir.path().join("late"), "late").await;
    // Two devices admitted (laptop, late): the chain link admitting a third is refused.
    let refused = try_another_device(&laptop_state, &dir.path().join("phone"), "phone")
        .await
        .unwrap_err()
        .expect("an error frame");
    assert_eq!(refused.code, ErrorCode::TooManyDevices, "{refused:?}");
    assert!(ClientState::open(dir.path().join("phone")).is_err());

    let laptop = Client::connect(laptop_state, fast()).await.unwrap();
    for i in 0..10 {
        laptop.append(format!("{i}").as_bytes()).await.unwrap();
    }
    // Retention keeps the last 3 events; a new device's cursor (0) is below that.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !relay.metrics().contains("ferry_trimmed_events_total 7\n") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run: {}",
            relay.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The relay accepts the device, then says the log no longer reaches back that far.
    let mut late = Client::connect(late_state, fast()).await.unwrap();
    let error = tokio::time::timeout(WAIT, late.next_event())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, ClientError::ResyncRequired { earliest: 8 }),
        "{error:?}"
    );
    assert!(error.is_permanent());
    assert!(matches!(
        late.status().stopped,
        Some(ClientError::ResyncRequired { .. })
    ));
    // The app accepts the gap and starts from what is kept.
    let mut state = late.close().await.unwrap();
    state.resync(8).unwrap();
    let mut late = Client::connect(state, fast()).await.unwrap();
    assert_eq!(texts(&until_caught_up(&mut late).await), ["7", "8", "9"]);
    late.close().await.unwrap();

    laptop.close().await.unwrap();
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
