//! Faults injected into a running relay (issue "hardening"): a store that fails, holds or
//! loses commit replies ([`FaultyStore`]), a bus that loses wake-ups ([`FaultyBus`]), and
//! retention running under open sessions. Each test fails on the code before its fix.
//!
//! The first group are storage stories (run on SQLite and PostgreSQL); the rest drive a real
//! relay over sockets on SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::{DeviceId, ErrorCode, ServerFrame, SigningKey, UserId};
use ferry_relay::bus::LocalBusHub;
use ferry_relay::store::{
    AppendOrder, AppendOutcome, CommitConfig, Committer, FaultyStore, StoreError,
};
use support::client::{Client, Identity, revoke_body};
use support::node::{answers, next_frame, node, node_on, send_appends};
use support::storage::*;

crate::storage_story!(
    a_trimmed_append_is_expired_and_never_stored_again,
    a_failed_batch_refuses_what_the_session_queued_behind_it,
    an_append_admitted_before_a_batch_fails_is_refused_when_submitted_after,
    unknown_outcomes_and_duplicates_wake_the_user,
);

// ---------------------------------------------------------------------------------------------
// Storage stories.

async fn a_trimmed_append_is_expired_and_never_stored_again(db: Db) {
    let store = &*db.store;
    let (u, d, other) = (user(), device(), device());
    admit(store, u, &[d, other]).await;
    for i in 1..=3 {
        assert_eq!(append(store, req(u, d, i, "e")).await, appended(i));
    }
    assert_eq!(store.trim_user(u, None, Some(1), NOW_MS).await.unwrap(), 2);
    // Retries of trimmed appends (a lost `Appended`, a device offline past retention).
    for i in 1..=2 {
        assert_eq!(
            append(store, req(u, d, i, "e")).await,
            AppendOutcome::Expired
        );
    }
    // Still stored: a plain duplicate. New sequences and other devices are unaffected.
    assert_eq!(
        append(store, req(u, d, 3, "e")).await,
        AppendOutcome::Duplicate { seq: 3 }
    );
    assert_eq!(append(store, req(u, d, 4, "e")).await, appended(4));
    assert_eq!(append(store, req(u, other, 1, "e")).await, appended(5));
    // Inside one batch too.
    let batch = [req(u, d, 2, "e"), req(u, d, 5, "e")];
    assert_eq!(
        store.append_batch(&batch, NOW_MS).await.unwrap(),
        [AppendOutcome::Expired, appended(6)]
    );
    assert_eq!(seqs(&all_events(store, u).await), [3, 4, 5, 6]);

    // The device's highest sequence survives the trim of everything it sent.
    assert_eq!(store.last_device_seq(u, d).await.unwrap(), 5);
    assert_eq!(store.trim_user(u, None, Some(0), NOW_MS).await.unwrap(), 4);
    assert_eq!(store.last_device_seq(u, d).await.unwrap(), 5);
    assert_eq!(store.last_device_seq(u, other).await.unwrap(), 1);
    assert_eq!(store.last_device_seq(u, device()).await.unwrap(), 0);
    assert_eq!(
        append(store, req(u, d, 5, "e")).await,
        AppendOutcome::Expired
    );
    assert!(all_events(store, u).await.is_empty());
}

async fn a_failed_batch_refuses_what_the_session_queued_behind_it(db: Db) {
    let faults = FaultyStore::new(Arc::clone(&db.store));
    let handle = Committer::spawn(faults.clone(), CommitConfig::default());
    let (u, d) = (user(), device());
    let (stranger, stranger_device) = (user(), device());
    admit(&*db.store, u, &[d]).await;
    admit(&*db.store, stranger, &[stranger_device]).await;
    let order = AppendOrder::new();

    // Append 1 waits at the gate while 2 and 3 of the same session queue behind it, with
    // another user's append between them.
    let held = faults.hold().await;
    let first = handle
        .submit_in_order(req(u, d, 1, "one"), &order, order.admit(1).unwrap())
        .await
        .unwrap();
    faults.wait_arrived(1).await;
    let second = handle
        .submit_in_order(req(u, d, 2, "two"), &order, order.admit(2).unwrap())
        .await
        .unwrap();
    let theirs = handle
        .submit(req(stranger, stranger_device, 1, "x"))
        .await
        .unwrap();
    let third = handle
        .submit_in_order(req(u, d, 3, "three"), &order, order.admit(3).unwrap())
        .await
        .unwrap();
    faults.fail_next_batches(1);
    drop(held);

    let failed = first.await.unwrap().unwrap_err();
    assert!(matches!(failed, StoreError::Database(_)), "{failed:?}");
    for later in [second, third] {
        let refused = later.await.unwrap().unwrap_err();
        assert!(
            matches!(refused, StoreError::EarlierRefused(ErrorCode::Unavailable)),
            "{refused:?}"
        );
    }
    // Other sessions are not held back.
    assert_eq!(theirs.await.unwrap().unwrap(), appended(1));
    assert!(all_events(&*db.store, u).await.is_empty());

    // The session refuses new appends until the failed one comes again.
    assert_eq!(order.admit(2), Err(ErrorCode::Unavailable));
    assert!(order.admit(1).is_ok());
    assert!(order.admit(2).is_ok());
    for (i, text) in [(1, "one"), (2, "two"), (3, "three")] {
        let reply = handle
            .submit_in_order(req(u, d, i, text), &order, order.admit(i).unwrap())
            .await
            .unwrap();
        assert_eq!(reply.await.unwrap().unwrap(), appended(i));
    }
    let events = all_events(&*db.store, u).await;
    let device_seqs: Vec<u64> = events.iter().map(|e| e.device_seq).collect();
    assert_eq!(device_seqs, [1, 2, 3], "committed in the order sent");
    handle.shutdown().await;
}

/// The session admits an append (nothing refused yet), then the batch holding an earlier
/// append fails, and only then is the admitted append submitted: it must be refused, not
/// committed ahead of the failed one.
async fn an_append_admitted_before_a_batch_fails_is_refused_when_submitted_after(db: Db) {
    let faults = FaultyStore::new(Arc::clone(&db.store));
    let handle = Committer::spawn(faults.clone(), CommitConfig::default());
    let (u, d) = (user(), device());
    admit(&*db.store, u, &[d]).await;
    let order = AppendOrder::new();

    let held = faults.hold().await;
    let first = handle
        .submit_in_order(req(u, d, 1, "one"), &order, order.admit(1).unwrap())
        .await
        .unwrap();
    faults.wait_arrived(1).await;
    // Append 2 passes the session's check while append 1 is still in flight.
    let admitted = order.admit(2).unwrap();
    faults.fail_next_batches(1);
    drop(held);
    assert!(first.await.unwrap().is_err());

    let second = handle
        .submit_in_order(req(u, d, 2, "two"), &order, admitted)
        .await
        .unwrap();
    let refused = second.await.unwrap().unwrap_err();
    assert!(
        matches!(refused, StoreError::EarlierRefused(ErrorCode::Unavailable)),
        "{refused:?}"
    );
    assert!(all_events(&*db.store, u).await.is_empty());
    handle.shutdown().await;
}

async fn unknown_outcomes_and_duplicates_wake_the_user(db: Db) {
    let faults = FaultyStore::new(Arc::clone(&db.store));
    let woken: Arc<Mutex<Vec<UserId>>> = Arc::default();
    let config = CommitConfig {
        on_uncertain: Some(Arc::new({
            let woken = Arc::clone(&woken);
            move |user| woken.lock().unwrap().push(user)
        })),
        ..CommitConfig::default()
    };
    let handle = Committer::spawn(faults.clone(), config);
    let (u, d) = (user(), device());
    admit(&*db.store, u, &[d]).await;

    // The commit happens but its reply is lost: the appender hears of a failure.
    faults.lose_next_replies(1);
    let lost = handle.append(req(u, d, 1, "e")).await.unwrap_err();
    assert!(matches!(lost, StoreError::Database(_)), "{lost:?}");
    assert_eq!(seqs(&all_events(&*db.store, u).await), [1]);
    assert_eq!(
        *woken.lock().unwrap(),
        [u],
        "a failed batch may have committed"
    );

    // The retry finds it: Duplicate, and another wake-up in case the first never went out.
    let retry = handle.append(req(u, d, 1, "e")).await.unwrap();
    assert_eq!(retry, AppendOutcome::Duplicate { seq: 1 });
    assert_eq!(*woken.lock().unwrap(), [u, u]);

    // A plain new append is not "uncertain".
    assert_eq!(handle.append(req(u, d, 2, "e")).await.unwrap(), appended(2));
    assert_eq!(woken.lock().unwrap().len(), 2);
    handle.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// A relay over a faulty store and bus.

#[tokio::test]
async fn a_trim_under_an_open_session_is_a_resync_never_a_gap() {
    let node = node(|_| {}).await;
    let laptop = Identity::new_user();
    let phone = laptop.another_device("phone");
    let mut b = node.connect(&phone, Some(0)).await;
    assert_eq!(b.replay().await, (vec![], 0));

    // Another node appends 1..=10 (no wake-up reaches this one), then retention keeps 2.
    let store = node.store();
    for i in 1..=10 {
        let request = req(laptop.user.id(), laptop.device.id(), i, "e");
        store.append(&request, NOW_MS).await.unwrap();
    }
    store
        .trim_user(laptop.user.id(), None, Some(2), NOW_MS)
        .await
        .unwrap();

    // A live append wakes B, whose next event is 1 but the log now starts at 9.
    let mut a = node.connect(&laptop, Some(10)).await;
    a.replay().await;
    assert_eq!(a.append(11, b"eleven").await.unwrap(), 11);
    match next_frame(&mut b).await {
        Ok(ServerFrame::ResyncRequired { earliest }) => assert_eq!(earliest, 9),
        other => panic!("expected ResyncRequired, got {other:?}"),
    }
    let code = ErrorCode::ResyncRequired.close_code();
    assert_eq!(next_frame(&mut b).await, Err(Some(code)));
}

#[tokio::test]
async fn a_trim_between_replay_pages_is_a_resync_never_a_gap() {
    let node = node(|config| config.log.replay_page = 4).await;
    let laptop = Identity::new_user();
    let store = node.store();
    admit_identity(&**store, &laptop).await;
    for i in 1..=20 {
        let request = req(laptop.user.id(), laptop.device.id(), i, "e");
        store.append(&request, NOW_MS).await.unwrap();
    }
    // The replay's first page is read; the second read waits while retention runs.
    node.faults.pause_reads_after(1);
    let mut b = node.connect(&laptop.another_device("phone"), Some(0)).await;
    let first = match next_frame(&mut b).await.unwrap() {
        ServerFrame::Events(events) => events,
        other => panic!("expected the first page, got {other:?}"),
    };
    assert_eq!(
        first.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    wait_until(|| node.faults.reads_waiting() == 1).await;
    store
        .trim_user(laptop.user.id(), None, Some(5), NOW_MS)
        .await
        .unwrap();
    node.faults.resume_reads();
    assert_eq!(
        next_frame(&mut b).await,
        Ok(ServerFrame::ResyncRequired { earliest: 16 })
    );
}

#[tokio::test]
async fn a_cursor_ahead_of_the_head_is_asked_to_resync() {
    let node = node(|_| {}).await;
    let laptop = Identity::new_user();
    let mut a = node.connect(&laptop, None).await;
    a.replay().await;
    for i in 1..=3 {
        a.append(i, b"e").await.unwrap();
    }
    // The device saw up to 10 before the relay's database was restored to head 3.
    let mut b = node
        .connect(&laptop.another_device("phone"), Some(10))
        .await;
    assert_eq!(b.session.head, 3);
    assert_eq!(
        next_frame(&mut b).await,
        Ok(ServerFrame::ResyncRequired { earliest: 1 })
    );
}

#[tokio::test]
async fn a_late_retry_of_a_trimmed_append_is_answered_expired() {
    let node = node(|_| {}).await;
    let laptop = Identity::new_user();
    let mut a = node.connect(&laptop, None).await;
    a.replay().await;
    assert_eq!(a.append(1, b"one").await.unwrap(), 1);
    assert_eq!(a.append(2, b"two").await.unwrap(), 2);
    node.store()
        .trim_user(laptop.user.id(), None, Some(0), NOW_MS)
        .await
        .unwrap();
    let expired = a.append(1, b"one").await.unwrap_err();
    assert_eq!(expired.code, ErrorCode::AppendExpired);
    assert_eq!(
        node.store()
            .log_bounds(laptop.user.id())
            .await
            .unwrap()
            .head,
        2
    );

    // A new session learns how far this device got, even with its events trimmed.
    let again = node.connect(&laptop, None).await;
    assert_eq!(again.session.last_device_seq, 2);
    let fresh = node.connect(&laptop.another_device("new"), None).await;
    assert_eq!(fresh.session.last_device_seq, 0);
}

#[tokio::test]
async fn a_rate_limited_burst_commits_in_the_order_sent() {
    let node = node(|config| config.limits.appends_per_device_per_second = 5).await;
    let laptop = Identity::new_user();
    let mut a = node.connect(&laptop, None).await;
    a.replay().await;

    // A burst past the bucket (10 tokens): the first refusal holds back everything after it,
    // even after tokens come back, and the answers keep the order of the appends.
    send_appends(&mut a, 1..=30).await;
    let first_round = answers(&mut a, 30).await;
    assert_eq!(
        first_round.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>(),
        "answers in the order sent"
    );
    let refused_from = first_round
        .iter()
        .position(|(_, answer)| answer.is_err())
        .expect("the burst is rate limited") as u64
        + 1;
    for (device_seq, answer) in &first_round {
        if *device_seq < refused_from {
            assert_eq!(*answer, Ok(*device_seq));
        } else {
            assert_eq!(*answer, Err(ErrorCode::RateLimited), "#{device_seq}");
        }
    }

    // The client re-sends from the first refused one, in order, as the SDK does.
    let mut next = refused_from;
    while next <= 30 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_appends(&mut a, next..=30).await;
        let round = answers(&mut a, (31 - next) as usize).await;
        for (device_seq, answer) in round {
            if answer.is_ok() && device_seq == next {
                next += 1;
            }
        }
    }
    let events = node
        .store()
        .read_events(laptop.user.id(), 0, 100)
        .await
        .unwrap();
    let device_seqs: Vec<u64> = events.iter().map(|e| e.device_seq).collect();
    assert_eq!(device_seqs, (1..=30).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_failed_batch_keeps_the_device_in_order_over_the_wire() {
    let node = node(|_| {}).await;
    let laptop = Identity::new_user();
    let mut a = node.connect(&laptop, None).await;
    a.replay().await;
    let arrived = node.faults.arrived();

    let held = node.faults.hold().await;
    send_appends(&mut a, 1..=1).await;
    node.faults.wait_arrived(arrived + 1).await;
    send_appends(&mut a, 2..=6).await;
    // Give the reader time to queue 2..=6 behind the held batch.
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.faults.fail_next_batches(1);
    drop(held);
    let refused = answers(&mut a, 6).await;
    assert_eq!(
        refused,
        (1..=6)
            .map(|s| (s, Err(ErrorCode::Unavailable)))
            .collect::<Vec<_>>()
    );
    // 3 out of turn is refused; 1 again re-opens the session's appends.
    send_appends(&mut a, [3]).await;
    assert_eq!(answers(&mut a, 1).await, [(3, Err(ErrorCode::Unavailable))]);
    send_appends(&mut a, 1..=6).await;
    let ok = answers(&mut a, 6).await;
    assert_eq!(ok, (1..=6).map(|s| (s, Ok(s))).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_commit_with_an_unknown_outcome_still_wakes_the_other_devices() {
    let node = node(|_| {}).await;
    let laptop = Identity::new_user();
    let mut b = node.connect(&laptop.another_device("phone"), None).await;
    b.replay().await;
    let mut a = node.connect(&laptop, None).await;
    a.replay().await;

    // Another node stored A's append, but its wake-up never came here (the COMMIT reply was
    // lost there); A's retry is answered as a duplicate, and that wakes B.
    let request = req(laptop.user.id(), laptop.device.id(), 1, "one");
    node.store().append(&request, NOW_MS).await.unwrap();
    assert_eq!(a.append(1, b"one").await.unwrap(), 1);
    let events = tokio::time::timeout(Duration::from_secs(2), b.events(1))
        .await
        .expect("B is woken by the duplicate");
    assert_eq!(events[0].seq, 1);

    // Here the COMMIT goes through but its reply is lost: A hears "unavailable".
    node.faults.lose_next_replies(1);
    assert_eq!(
        a.append(2, b"two").await.unwrap_err().code,
        ErrorCode::Unavailable
    );
    let events = tokio::time::timeout(Duration::from_secs(2), b.events(1))
        .await
        .expect("B is woken although the commit reported a failure");
    assert_eq!(events[0].seq, 2);
}

#[tokio::test]
async fn a_lost_wake_up_is_caught_by_the_safety_poll() {
    let hub = LocalBusHub::new();
    let one = node_on(&hub, None, |config| config.log.safety_poll_secs = 1).await;
    let url = one.database_url.clone();
    let two = node_on(&hub, Some(url), |config| config.log.safety_poll_secs = 1).await;
    let laptop = Identity::new_user();
    let mut b = two.connect(&laptop.another_device("phone"), None).await;
    b.replay().await;
    let mut a = one.connect(&laptop, None).await;
    a.replay().await;

    assert_eq!(a.append(1, b"one").await.unwrap(), 1);
    assert_eq!(b.events(1).await[0].seq, 1, "over the bus");
    one.bus.drop_next_publishes(1);
    assert_eq!(a.append(2, b"two").await.unwrap(), 2);
    let events = tokio::time::timeout(Duration::from_secs(5), b.events(1))
        .await
        .expect("the safety poll reads the log within its period");
    assert_eq!(events[0].seq, 2);
    assert_eq!(one.bus.lost(), 1);
}

/// A revocation the hub never delivered to a session (stored between the session's admission
/// check and its joining the hub, or, as here, behind this node's back like a bus message it
/// missed) is caught by the session's re-check right after it joined: an encrypted 203, then
/// 4203, before any replay. The safety poll is an hour away, so nothing else would catch it.
#[tokio::test]
async fn a_revocation_the_hub_missed_is_caught_right_after_joining() {
    let node = node(|_| {}).await;
    let (addr, relay_id) = (node.server.local_addr(), node.server.relay_id());
    let laptop = Identity::new_user();
    let phone = laptop.another_device("phone");
    phone.admit(addr, relay_id).await;

    // The handshake's check reads the phone's record; the next read, the session's re-check
    // once it has joined the hub, waits.
    node.faults.pause_device_reads_after(1);
    let mut p = Client::connect_as(addr, relay_id, &phone, None)
        .await
        .unwrap();
    wait_until(|| node.faults.device_reads_waiting() == 1).await;
    let store = node.store();
    let chain = stored_chain(&**store, laptop.user.id()).await;
    let revoke = chain.sign(
        revoke_body(&chain, &[phone.device.id()]),
        SigningKey::Device(&laptop.device),
    );
    store.append_link(&revoke, 10, NOW_S).await.unwrap();
    node.faults.resume_device_reads();

    match next_frame(&mut p).await {
        Ok(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::DeviceRevoked),
        other => panic!("expected Error(203) before anything else, got {other:?}"),
    }
    assert_eq!(
        next_frame(&mut p).await,
        Err(Some(ErrorCode::DeviceRevoked.close_code()))
    );
}

/// A cursor write the store refuses is not answered (an `Ack` has no answer, and an `Error`
/// without `device_seq` would be taken for the answer to the device's oldest request): it is
/// written again at the next flush, and the cursor lands where the device put it.
#[tokio::test]
async fn a_refused_cursor_write_is_retried_and_never_answered() {
    let node = node(|_| {}).await;
    let laptop = Identity::new_user();
    let mut a = node.connect(&laptop, Some(0)).await;
    a.replay().await;
    for i in 1..=3 {
        assert_eq!(a.append(i, b"e").await.unwrap(), i);
    }
    node.faults.fail_next_acks(1);
    a.send(&ferry_protocol::ClientFrame::Ack { seq: 3 }).await;
    a.send(&ferry_protocol::ClientFrame::Ping { nonce: 7 })
        .await;
    // The first frame after the refused write is the answer to the ping, not an error.
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), a.recv())
            .await
            .expect("a frame within 10 s")
            .unwrap();
        match frame {
            ServerFrame::Events(_) | ServerFrame::Ping { .. } => continue,
            frame => {
                assert_eq!(frame, ServerFrame::Pong { nonce: 7 });
                break;
            }
        }
    }
    // Within the next flush (one second), the cursor is stored.
    let store = node.store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let record = store
            .device(laptop.user.id(), laptop.device.id())
            .await
            .unwrap()
            .unwrap();
        if record.acked == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cursor was not written again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        node.faults.acks_written() >= 2,
        "written once more after the refusal"
    );
}

/// The `last_seen` of a user (`people`) or of one of its devices (`devices`), as stored in the
/// node's SQLite file.
async fn stored_last_seen(url: &str, user: UserId, device: Option<DeviceId>) -> Option<i64> {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    let seen = match device {
        None => sqlx::query_scalar("SELECT last_seen FROM people WHERE user_id = ?")
            .bind(user.as_bytes().as_slice())
            .fetch_optional(&pool)
            .await
            .unwrap(),
        Some(device) => {
            sqlx::query_scalar("SELECT last_seen FROM devices WHERE user_id = ? AND device_id = ?")
                .bind(user.as_bytes().as_slice())
                .bind(device.as_bytes().as_slice())
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    };
    pool.close().await;
    seen
}

#[tokio::test]
async fn a_failed_last_seen_write_is_tried_again_with_what_came_since() {
    let node = node(|_| {}).await;
    let laptop = Identity::new_user();
    let (user, device) = (laptop.user.id(), laptop.device.id());
    let mut first = node.connect(&laptop, None).await;
    first.replay().await;
    drop(first);
    // The device was last seen long ago, so its next session moves its time.
    let pool = sqlx::SqlitePool::connect(&node.database_url).await.unwrap();
    sqlx::query("UPDATE devices SET last_seen = 0 WHERE user_id = ? AND device_id = ?")
        .bind(user.as_bytes().as_slice())
        .bind(device.as_bytes().as_slice())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let before = node.faults.last_seen_writes();
    node.faults.fail_next_last_seen_writes(1);
    let mut again = node.connect(&laptop, Some(0)).await;
    again.replay().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let device_seen = stored_last_seen(&node.database_url, user, Some(device)).await;
        if device_seen.unwrap() > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the device's time was not written after the failed write"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stored_last_seen(&node.database_url, user, None)
            .await
            .unwrap()
            > 0
    );
    // The refused write, then the one that wrote the user and the device.
    assert!(node.faults.last_seen_writes() >= before + 2);
}

#[tokio::test]
async fn last_seen_times_still_pending_are_written_at_shutdown() {
    let node = node(|_| {}).await;
    // Every write of the write-behind fails while the session lives and ends...
    node.faults.fail_next_last_seen_writes(usize::MAX);
    let laptop = Identity::new_user();
    let mut a = node.connect(&laptop, None).await;
    a.replay().await;
    a.close().await;
    let url = node.database_url.clone();
    let user = laptop.user.id();
    wait_until(|| node.server.metrics().sessions.get() == 0).await;
    assert_eq!(stored_last_seen(&url, user, None).await, None);
    // ...so only the shutdown's write can store them.
    node.faults.fail_next_last_seen_writes(0);
    let support::node::Node { server, dir, .. } = node;
    server.shutdown().await;
    assert!(stored_last_seen(&url, user, None).await.is_some());
    drop(dir);
}
