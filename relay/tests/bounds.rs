//! What one client can hold of a relay (issue "hardening", abuse and limits): replay pages
//! bounded in bytes, replays bounded in number, sessions per device bounded, cursor writes and
//! ephemerals rate limited. Each test fails on the code before its limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ferry_protocol::{ClientFrame, ErrorCode, ServerFrame};
use ferry_relay::hub::MAX_SESSIONS_PER_DEVICE;
use ferry_relay::store::{self, AppendOutcome, AppendRequest, Quota, StoreOptions};
use support::client::Identity;
use support::node::{answers, next_frame, node, send_appends};
use support::storage::*;

crate::storage_story!(
    replay_pages_are_bounded_in_bytes_and_never_empty,
    a_user_stores_up_to_the_quota_and_retention_makes_room,
);

async fn replay_pages_are_bounded_in_bytes_and_never_empty(db: Db) {
    let store = &*db.store;
    let (u, d) = (user(), device());
    admit(store, u, &[d]).await;
    for i in 1..=10u64 {
        let request = AppendRequest {
            user: u,
            device: d,
            device_seq: i,
            payload: ferry_protocol::SealedPayload(vec![i as u8; 100]),
        };
        assert_eq!(append(store, request).await, appended(i));
    }
    let page = |after, limit, max_bytes| async move {
        seqs(&store.read_page(u, after, limit, max_bytes).await.unwrap())
    };
    // Payloads before an event must sum to less than the budget: 0, 100, 200 < 250.
    assert_eq!(page(0, 100, 250).await, [1, 2, 3]);
    assert_eq!(page(3, 100, 300).await, [4, 5, 6]);
    // The count limit still applies, and one event always comes, however large.
    assert_eq!(page(0, 2, 10_000).await, [1, 2]);
    assert_eq!(page(5, 100, 1).await, [6]);
    assert_eq!(page(5, 100, 0).await, [6]);
    assert!(page(10, 100, 250).await.is_empty());
    assert_eq!(
        store.read_page(u, 0, 100, 250).await.unwrap(),
        store.read_events(u, 0, 3).await.unwrap()
    );
}

#[tokio::test]
async fn a_replay_in_byte_bounded_pages_delivers_everything_once() {
    let node = node(|config| config.log.replay_page_bytes = 10_000).await;
    let laptop = Identity::new_user();
    let store = node.store();
    admit_identity(&**store, &laptop).await;
    for i in 1..=40u64 {
        let request = AppendRequest {
            user: laptop.user.id(),
            device: laptop.device.id(),
            device_seq: i,
            payload: ferry_protocol::SealedPayload(vec![7; 3_000]),
        };
        store.append(&request, NOW_MS).await.unwrap();
    }
    let mut b = node.connect(&laptop.another_device("phone"), Some(0)).await;
    let (events, head) = b.replay().await;
    assert_eq!(head, 40);
    assert_eq!(seqs(&events), (1..=40).collect::<Vec<_>>());
}

#[tokio::test]
async fn replays_wait_their_turn_beyond_the_concurrency_limit() {
    let node = node(|config| config.log.max_concurrent_replays = 1).await;
    let laptop = Identity::new_user();
    let mut a = node.connect(&laptop, None).await;
    a.replay().await;
    a.append(1, b"e").await.unwrap();

    // The first replay holds the only turn, stuck in its first read.
    node.faults.pause_reads_after(0);
    let mut b = node.connect(&laptop.another_device("b"), Some(0)).await;
    wait_until(|| node.faults.reads_waiting() == 1).await;
    let mut c = node.connect(&laptop.another_device("c"), Some(0)).await;
    // C's replay does not even read while B's holds the turn.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.faults.reads_waiting(), 1);
    node.faults.resume_reads();
    assert_eq!(seqs(&b.replay().await.0), [1]);
    assert_eq!(seqs(&c.replay().await.0), [1]);
}

#[tokio::test]
async fn a_device_has_a_bounded_number_of_sessions() {
    let node = node(|_| {}).await;
    let laptop = Identity::new_user();
    let mut sessions = Vec::new();
    for _ in 0..MAX_SESSIONS_PER_DEVICE {
        let mut session = node.connect(&laptop, None).await;
        session.replay().await;
        sessions.push(session);
    }
    // One more: the oldest is closed, the others stay.
    let mut newest = node.connect(&laptop, None).await;
    newest.replay().await;
    let replaced = ErrorCode::SessionReplaced.close_code();
    assert_eq!(next_frame(&mut sessions[0]).await, Err(Some(replaced)));
    for (i, session) in sessions.iter_mut().enumerate().skip(1) {
        session.send(&ClientFrame::Ping { nonce: i as u64 }).await;
        let pong = tokio::time::timeout(Duration::from_secs(10), session.recv()).await;
        assert_eq!(pong.unwrap(), Ok(ServerFrame::Pong { nonce: i as u64 }));
    }
    assert_eq!(newest.append(1, b"e").await.unwrap(), 1);
    // Another device of the user is not affected.
    let mut phone = node.connect(&laptop.another_device("phone"), None).await;
    assert_eq!(seqs(&phone.replay().await.0), [1]);
}

#[tokio::test]
async fn acks_beyond_the_rate_are_merged_not_lost() {
    let node = node(|config| config.limits.acks_per_device_per_second = 1).await;
    let laptop = Identity::new_user();
    let mut a = node.connect(&laptop, None).await;
    a.replay().await;
    for i in 1..=30 {
        a.append(i, b"e").await.unwrap();
    }
    let before = node.faults.acks_written();
    for seq in 1..=30 {
        a.send(&ClientFrame::Ack { seq }).await;
    }
    // Within the burst (2) plus the one-second flush, the last one is stored.
    let store = node.store();
    let (user, device) = (laptop.user.id(), laptop.device.id());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let acked = store.device(user, device).await.unwrap().unwrap().acked;
        if acked == 30 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "acked {acked}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writes = node.faults.acks_written() - before;
    assert!(writes <= 4, "{writes} cursor writes for 30 acks");
}

#[tokio::test]
async fn ephemerals_beyond_the_rate_are_dropped() {
    let node = node(|config| config.limits.ephemerals_per_device_per_second = 2).await;
    let laptop = Identity::new_user();
    let mut a = node.connect(&laptop, None).await;
    a.replay().await;
    let mut b = node.connect(&laptop.another_device("phone"), None).await;
    b.replay().await;
    for i in 0..40u8 {
        a.send(&ClientFrame::Ephemeral { body: vec![i] }).await;
    }
    // A ping answered means every ephemeral before it was handled.
    a.send(&ClientFrame::Ping { nonce: 9 }).await;
    loop {
        if let Ok(ServerFrame::Pong { nonce: 9 }) = a.recv().await {
            break;
        }
    }
    let mut received = 0;
    while let Ok(Ok(frame)) = tokio::time::timeout(Duration::from_millis(300), b.recv()).await {
        if matches!(frame, ServerFrame::Ephemeral { .. }) {
            received += 1;
        }
    }
    assert!(
        (1..=6).contains(&received),
        "{received} of 40 ephemerals passed a limit of 2/s (burst 4)"
    );
}

async fn a_user_stores_up_to_the_quota_and_retention_makes_room(db: Db) {
    let options = StoreOptions {
        quota: Quota {
            max_events: 3,
            max_bytes: 1_000,
        },
        ..StoreOptions::default()
    };
    let store = store::open_with(&db.url, &options).await.unwrap();
    let (u, d) = (user(), device());
    admit(&*store, u, &[d]).await;
    let sized = |device_seq: u64, len: usize| AppendRequest {
        user: u,
        device: d,
        device_seq,
        payload: ferry_protocol::SealedPayload(vec![device_seq as u8; len]),
    };
    // Bytes: 400 + 400 fit in 1,000; another 400 does not, nor does what follows it.
    assert_eq!(
        store.append(&sized(1, 400), NOW_MS).await.unwrap(),
        appended(1)
    );
    assert_eq!(
        store.append(&sized(2, 400), NOW_MS).await.unwrap(),
        appended(2)
    );
    let batch = [sized(3, 400), sized(4, 10)];
    assert_eq!(
        store.append_batch(&batch, NOW_MS).await.unwrap(),
        [AppendOutcome::QuotaExceeded, AppendOutcome::QuotaExceeded]
    );
    // Events: a third small one fits, a fourth does not.
    assert_eq!(
        store.append(&sized(3, 10), NOW_MS).await.unwrap(),
        appended(3)
    );
    assert_eq!(
        store.append(&sized(4, 10), NOW_MS).await.unwrap(),
        AppendOutcome::QuotaExceeded
    );
    assert_eq!(seqs(&all_events(&*store, u).await), [1, 2, 3]);
    // Retention frees both: the two 400-byte events go.
    assert_eq!(store.trim_user(u, None, Some(1), NOW_MS).await.unwrap(), 2);
    assert_eq!(
        store.append(&sized(4, 400), NOW_MS).await.unwrap(),
        appended(4)
    );
    assert_eq!(
        store.append(&sized(5, 400), NOW_MS).await.unwrap(),
        appended(5)
    );
    assert_eq!(
        store.append(&sized(6, 400), NOW_MS).await.unwrap(),
        AppendOutcome::QuotaExceeded
    );
    store.close().await;
}

#[tokio::test]
async fn a_full_quota_refuses_in_order_and_recovers_after_retention() {
    let node = node(|config| config.limits.max_events_per_user = 3).await;
    let laptop = Identity::new_user();
    let mut a = node.connect(&laptop, None).await;
    a.replay().await;
    for i in 1..=3 {
        assert_eq!(a.append(i, b"e").await.unwrap(), i);
    }
    send_appends(&mut a, 4..=6).await;
    assert_eq!(
        answers(&mut a, 3).await,
        (4..=6)
            .map(|s| (s, Err(ErrorCode::QuotaExceeded)))
            .collect::<Vec<_>>()
    );
    node.store()
        .trim_user(laptop.user.id(), None, Some(0), NOW_MS)
        .await
        .unwrap();
    send_appends(&mut a, 4..=6).await;
    assert_eq!(
        answers(&mut a, 3).await,
        (4..=6).map(|s| (s, Ok(s))).collect::<Vec<_>>()
    );
}
