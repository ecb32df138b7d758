//! The storage story: one suite, written once against `Arc<dyn Store>`, run against SQLite
//! (a fresh file in a temporary folder) and PostgreSQL (`FERRY_TEST_POSTGRES_URL`, shared
//! with other tests, so every story uses fresh random users and never truncates anything).
//!
//! Events written here carry realistic commit times (`NOW_MS`, or the wall clock through the
//! committer); only the retention story uses times near 0, so its whole-database age trim
//! cannot touch another story's events.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferry_protocol::{
    ChainError, DeviceId, DeviceInfo, DeviceKey, ErrorCode, Event, LinkBody, SigningKey, UserId,
};
use ferry_relay::store::{
    self, AppendOrder, AppendOutcome, AppendRequest, CommitConfig, CommitHandle, CommitReply,
    Committer, DeviceRecord, FaultyStore, LINK_PAGE_BYTES, LogBounds, SessionStart, StoreError,
};
use rand_core::OsRng;
use sqlx::Connection as _;
use support::client::{next_epoch, revoke_body, sealed_key};
use support::storage::*;

crate::storage_story!(
    sequences_are_gapless_per_user_when_users_interleave,
    a_retry_gets_the_original_seq_and_stores_nothing,
    a_different_payload_for_a_used_device_seq_is_a_conflict,
    device_seq_zero_is_refused_and_fails_the_whole_batch,
    repeats_inside_one_batch_are_resolved_in_order,
    group_commit_keeps_seqs_gapless_under_concurrency,
    group_commit_batches_what_is_queued_and_shutdown_answers_everyone,
    a_failed_commit_is_reported_to_every_waiter_and_stores_nothing,
    acks_only_grow_and_never_pass_the_head,
    paging_replay_returns_every_event_exactly_once,
    retention_by_count_and_by_age_moves_earliest_and_keeps_seqs,
    the_chain_admits_devices_respects_the_limit_and_revokes,
    a_revoked_or_never_admitted_device_appends_nothing,
    an_append_sealed_under_a_replaced_epoch_is_refused_in_order,
    chain_pages_are_bounded_and_consecutive,
    the_store_and_a_verifying_client_agree_on_random_links,
    migrations_are_idempotent,
    session_start_reads_what_the_separate_reads_read,
);

/// `session_start` is the four reads of a reconnect in one statement: it must answer what
/// they answer, for an unknown user, a live log, a device with a cursor, a revoked device, and
/// a log whose events were all trimmed (the device's highest sequence then comes from
/// `trimmed_device_seqs`).
async fn session_start_reads_what_the_separate_reads_read(db: Db) {
    async fn both(store: &dyn store::Store, u: UserId, d: DeviceId) -> SessionStart {
        let start = store.session_start(u, d).await.unwrap();
        let separate = SessionStart {
            device: store.device(u, d).await.unwrap(),
            bounds: store.log_bounds(u).await.unwrap(),
            last_device_seq: store.last_device_seq(u, d).await.unwrap(),
            chain_seqno: store.chain_seqno(u).await.unwrap(),
        };
        assert_eq!(start, separate);
        start
    }
    let store = &*db.store;
    let (u, d, other) = (user(), device(), device());
    let unknown = both(store, u, d).await;
    assert_eq!(
        unknown.bounds,
        LogBounds {
            earliest: 1,
            head: 0
        }
    );
    assert_eq!((unknown.last_device_seq, unknown.chain_seqno), (0, 0));
    assert_eq!(unknown.device, None);

    admit(store, u, &[d, other]).await;
    for i in 1..=3 {
        assert_eq!(
            append(store, req(u, d, i, &format!("d{i}"))).await,
            appended(i)
        );
    }
    assert_eq!(append(store, req(u, other, 1, "o1")).await, appended(4));
    let live = both(store, u, d).await;
    assert_eq!(
        live.bounds,
        LogBounds {
            earliest: 1,
            head: 4
        }
    );
    assert_eq!(live.last_device_seq, 3);
    assert!(live.chain_seqno >= 1, "{live:?}");
    let admitted = live.device.expect("an admitted device has a record");
    assert_eq!((admitted.device, admitted.acked), (d, 0));
    assert!(!admitted.is_revoked());
    assert_eq!(both(store, u, other).await.last_device_seq, 1);
    let stranger = both(store, u, device()).await;
    assert_eq!((stranger.last_device_seq, stranger.device), (0, None));

    // The cursor and a revocation are what the record carries.
    assert_eq!(store.set_ack(u, d, 2).await.unwrap(), 2);
    assert_eq!(both(store, u, d).await.device.map(|r| r.acked), Some(2));
    let chain = stored_chain(store, u).await;
    let revoke = revoke_body(&chain, &[other]);
    append_body(store, u, revoke, SigningKey::User(&user_key(u)), 10)
        .await
        .unwrap();
    let revoked = both(store, u, other).await.device;
    assert!(
        revoked.as_ref().is_some_and(DeviceRecord::is_revoked),
        "{revoked:?}"
    );

    assert_eq!(store.trim_user(u, None, Some(0), NOW_MS).await.unwrap(), 4);
    let trimmed = both(store, u, d).await;
    assert_eq!(
        trimmed.bounds,
        LogBounds {
            earliest: 5,
            head: 4
        }
    );
    assert_eq!(trimmed.last_device_seq, 3);
    // The revocation is one more link.
    assert_eq!(trimmed.chain_seqno, live.chain_seqno + 1);
}

async fn sequences_are_gapless_per_user_when_users_interleave(db: Db) {
    let store = &*db.store;
    let (a, b, d) = (user(), user(), device());
    admit(store, a, &[d]).await;
    admit(store, b, &[d]).await;
    for i in 1..=5 {
        assert_eq!(
            append(store, req(a, d, i, &format!("a{i}"))).await,
            appended(i)
        );
        assert_eq!(
            append(store, req(b, d, i, &format!("b{i}"))).await,
            appended(i)
        );
    }
    let batch = [
        req(a, d, 6, "a6"),
        req(b, d, 6, "b6"),
        req(a, d, 7, "a7"),
        req(b, d, 7, "b7"),
        req(a, d, 8, "a8"),
    ];
    let outcomes = store.append_batch(&batch, NOW_MS).await.unwrap();
    assert_eq!(
        outcomes,
        [
            appended(6),
            appended(6),
            appended(7),
            appended(7),
            appended(8)
        ]
    );

    let events = all_events(store, a).await;
    assert_eq!(seqs(&events), (1..=8).collect::<Vec<_>>());
    for event in &events {
        assert_eq!((event.device, event.device_seq), (d, event.seq));
        assert_eq!(event.payload, payload(&format!("a{}", event.seq)));
    }
    assert_eq!(
        seqs(&all_events(store, b).await),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(
        store.log_bounds(a).await.unwrap(),
        LogBounds {
            earliest: 1,
            head: 8
        }
    );
    assert_eq!(
        store.log_bounds(b).await.unwrap(),
        LogBounds {
            earliest: 1,
            head: 7
        }
    );

    let stranger = user();
    assert_eq!(
        store.log_bounds(stranger).await.unwrap(),
        LogBounds {
            earliest: 1,
            head: 0
        }
    );
    assert!(all_events(store, stranger).await.is_empty());
    store.ping().await.unwrap();
}

async fn a_retry_gets_the_original_seq_and_stores_nothing(db: Db) {
    let store = &*db.store;
    let (u, d) = (user(), device());
    admit(store, u, &[d]).await;
    assert_eq!(append(store, req(u, d, 1, "one")).await, appended(1));
    assert_eq!(append(store, req(u, d, 2, "two")).await, appended(2));
    assert_eq!(
        append(store, req(u, d, 1, "one")).await,
        AppendOutcome::Duplicate { seq: 1 }
    );
    let outcomes = store
        .append_batch(&[req(u, d, 2, "two"), req(u, d, 3, "three")], NOW_MS)
        .await
        .unwrap();
    assert_eq!(outcomes, [AppendOutcome::Duplicate { seq: 2 }, appended(3)]);
    assert_eq!(outcomes[0].committed_seq(), Some(2));
    assert!(!outcomes[0].is_new() && outcomes[1].is_new());

    let events = all_events(store, u).await;
    assert_eq!(
        seqs(&events),
        [1, 2, 3],
        "a retry must not consume a sequence"
    );
    assert_eq!(events[0].payload, payload("one"));
    assert_eq!(store.log_bounds(u).await.unwrap().head, 3);
}

async fn a_different_payload_for_a_used_device_seq_is_a_conflict(db: Db) {
    let store = &*db.store;
    let (u, d, other) = (user(), device(), device());
    admit(store, u, &[d, other]).await;
    assert_eq!(append(store, req(u, d, 1, "original")).await, appended(1));
    let conflict = append(store, req(u, d, 1, "forged")).await;
    assert_eq!(conflict, AppendOutcome::Conflict { seq: 1 });
    assert_eq!(conflict.committed_seq(), None);
    assert_eq!(all_events(store, u).await[0].payload, payload("original"));
    assert_eq!(store.log_bounds(u).await.unwrap().head, 1);
    // Device sequences are per device: another device may use 1.
    assert_eq!(append(store, req(u, other, 1, "forged")).await, appended(2));
}

async fn device_seq_zero_is_refused_and_fails_the_whole_batch(db: Db) {
    let store = &*db.store;
    let (u, d) = (user(), device());
    admit(store, u, &[d]).await;
    let batch = [req(u, d, 1, "fine"), req(u, d, 0, "zero")];
    let error = store.append_batch(&batch, NOW_MS).await.unwrap_err();
    assert!(matches!(error, StoreError::InvalidSequence(0)), "{error:?}");
    assert_eq!(error.code(), ErrorCode::InvalidSequence);
    let too_big = store
        .append(&req(u, d, u64::MAX, "huge"), NOW_MS)
        .await
        .unwrap_err();
    assert!(
        matches!(too_big, StoreError::InvalidSequence(u64::MAX)),
        "{too_big:?}"
    );
    assert_eq!(
        store.log_bounds(u).await.unwrap(),
        LogBounds {
            earliest: 1,
            head: 0
        }
    );
    assert!(all_events(store, u).await.is_empty());

    // Through the committer, a bad request fails alone, before it can spoil a batch.
    let handle = Committer::spawn(Arc::clone(&db.store), CommitConfig::default());
    let error = handle.append(req(u, d, 0, "zero")).await.unwrap_err();
    assert!(matches!(error, StoreError::InvalidSequence(0)), "{error:?}");
    assert_eq!(
        handle.append(req(u, d, 1, "fine")).await.unwrap(),
        appended(1)
    );
    handle.shutdown().await;
}

async fn repeats_inside_one_batch_are_resolved_in_order(db: Db) {
    let store = &*db.store;
    let (a, b, d1, d2) = (user(), user(), device(), device());
    admit(store, a, &[d1, d2]).await;
    admit(store, b, &[d1]).await;
    let batch = [
        req(a, d1, 1, "p"),
        req(a, d2, 1, "p"),
        req(a, d1, 1, "p"),
        req(a, d1, 1, "q"),
        req(a, d1, 2, "r"),
        req(b, d1, 1, "p"),
        req(a, d2, 1, "p"),
    ];
    let outcomes = store.append_batch(&batch, NOW_MS).await.unwrap();
    assert_eq!(
        outcomes,
        [
            appended(1),
            appended(2),
            AppendOutcome::Duplicate { seq: 1 },
            AppendOutcome::Conflict { seq: 1 },
            appended(3),
            appended(1),
            AppendOutcome::Duplicate { seq: 2 },
        ]
    );
    let events = all_events(store, a).await;
    assert_eq!(seqs(&events), [1, 2, 3]);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.device, e.device_seq))
            .collect::<Vec<_>>(),
        [(d1, 1), (d2, 1), (d1, 2)]
    );
    assert_eq!(seqs(&all_events(store, b).await), [1]);
    // The same batch again is all repeats and stores nothing.
    let again = store.append_batch(&batch, NOW_MS).await.unwrap();
    assert!(again.iter().all(|o| !o.is_new()), "{again:?}");
    assert_eq!(store.log_bounds(a).await.unwrap().head, 3);
}

/// What an `on_committed` hook was called with.
type Committed = (UserId, Vec<Event>);

/// Two relay nodes (two stores on one database, each with its committer), eight devices of
/// two users appending at once through both.
async fn group_commit_keeps_seqs_gapless_under_concurrency(db: Db) {
    const TASKS: u64 = 8;
    const PER_TASK: u64 = 200;
    const MAX_BATCH: usize = 64;
    let largest = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&largest);
    let woken: Arc<Mutex<Vec<Committed>>> = Arc::default();
    let wake = Arc::clone(&woken);
    let threads: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let thread = Arc::clone(&threads);
    let config = CommitConfig {
        max_batch: MAX_BATCH,
        observer: Some(Arc::new(move |report| {
            seen.fetch_max(report.len, Ordering::Relaxed);
        })),
        on_committed: Some(Arc::new(move |user, events| {
            let name = std::thread::current().name().map(str::to_owned);
            thread.lock().unwrap().push(name);
            wake.lock().unwrap().push((user, events))
        })),
        ..CommitConfig::default()
    };
    let second_node = store::open(&db.url).await.unwrap();
    let nodes = [
        Committer::spawn(Arc::clone(&db.store), config.clone()),
        Committer::spawn(Arc::clone(&second_node), config),
    ];
    let users = [user(), user()];
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let handle = nodes[(t % 2) as usize].clone();
        let u = users[(t / 2 % 2) as usize];
        let store = Arc::clone(&db.store);
        tasks.push(tokio::spawn(async move {
            let d = device();
            admit(&*store, u, &[d]).await;
            let mut answers = Vec::new();
            for i in 1..=PER_TASK {
                let outcome = handle
                    .append(req(u, d, i, &format!("{t}/{i}")))
                    .await
                    .unwrap();
                let AppendOutcome::Appended { seq } = outcome else {
                    panic!("{outcome:?}")
                };
                answers.push((seq, d, i, format!("{t}/{i}")));
            }
            (u, answers)
        }));
    }
    let mut answered: BTreeMap<UserId, Vec<(u64, DeviceId, u64, String)>> = BTreeMap::new();
    for task in tasks {
        let (u, answers) = task.await.unwrap();
        // One device waits for each answer before sending on: its seqs grow.
        assert!(answers.windows(2).all(|w| w[0].0 < w[1].0));
        answered.entry(u).or_default().extend(answers);
    }
    for (u, mut answers) in answered {
        answers.sort();
        let n = TASKS / 2 * PER_TASK;
        assert_eq!(
            answers.iter().map(|a| a.0).collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>()
        );
        let events = all_events(&*db.store, u).await;
        assert_eq!(events.len() as u64, n);
        for (event, (seq, d, device_seq, text)) in events.iter().zip(&answers) {
            assert_eq!(
                (event.seq, event.device, event.device_seq),
                (*seq, *d, *device_seq)
            );
            assert_eq!(event.payload, payload(text));
        }
        assert_eq!(
            db.store.log_bounds(u).await.unwrap(),
            LogBounds {
                earliest: 1,
                head: n
            }
        );
        // The commit hooks of both nodes saw every new event once, each call in seq order.
        let mut hooked: Vec<Event> = Vec::new();
        for (_, batch) in woken.lock().unwrap().iter().filter(|(user, _)| *user == u) {
            assert!(!batch.is_empty() && batch.windows(2).all(|w| w[0].seq < w[1].seq));
            hooked.extend(batch.iter().cloned());
        }
        hooked.sort_by_key(|e| e.seq);
        assert_eq!(hooked, events);
        // A retry through the other node finds the original.
        let (seq, d, device_seq, text) = &answers[17];
        let retry = nodes[1]
            .append(req(u, *d, *device_seq, text))
            .await
            .unwrap();
        assert_eq!(retry, AppendOutcome::Duplicate { seq: *seq });
    }
    let stats = nodes.each_ref().map(|node| node.stats());
    assert_eq!(stats[0].events + stats[1].events, TASKS * PER_TASK + 2);
    for stats in stats {
        assert_eq!(stats.failed_batches, 0);
        assert!(
            stats.batches >= 1 && stats.batches <= stats.events,
            "{stats:?}"
        );
    }
    assert!(largest.load(Ordering::Relaxed) <= MAX_BATCH);
    // Each committer runs on a thread of its own (not the test's runtime).
    let threads = threads.lock().unwrap().clone();
    assert!(!threads.is_empty());
    assert!(
        threads
            .iter()
            .all(|t| t.as_deref() == Some("ferry-committer")),
        "{threads:?}"
    );

    for node in &nodes {
        node.shutdown().await;
        assert!(node.is_stopped());
    }
    let late = nodes[0]
        .append(req(users[0], device(), 1, "late"))
        .await
        .unwrap_err();
    assert!(matches!(late, StoreError::Closed), "{late:?}");
    nodes[0].shutdown().await; // twice is fine
    second_node.close().await;
}

async fn group_commit_batches_what_is_queued_and_shutdown_answers_everyone(db: Db) {
    const MAX_BATCH: usize = 16;
    const APPENDS: u64 = 50;
    let gated = FaultyStore::new(Arc::clone(&db.store));
    let config = CommitConfig {
        max_batch: MAX_BATCH,
        ..CommitConfig::default()
    };
    let handle = Committer::spawn(gated.clone(), config);
    let (u, d) = (user(), device());
    admit(&*db.store, u, &[d]).await;

    // Hold the first commit inside the store while the other appends queue up behind it.
    let gate = gated.hold().await;
    let replies = queue_behind_gate(
        &handle,
        &gated,
        (1..=APPENDS).map(|i| req(u, d, i, "x")).collect(),
    )
    .await;
    let stopping = tokio::spawn({
        let handle = handle.clone();
        async move { handle.shutdown().await }
    });
    // Shutdown refuses new work at once, even before the queue is drained.
    wait_until(|| handle.stats().queued == APPENDS as usize).await;
    let refused = handle
        .append(req(u, d, APPENDS + 1, "x"))
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Closed), "{refused:?}");
    drop(gate);
    stopping.await.unwrap();

    // Submitted one after another from one task: committed in that order.
    for (device_seq, reply) in (1..=APPENDS).zip(replies) {
        let outcome = reply.await.unwrap();
        assert_eq!(
            outcome.unwrap(),
            appended(device_seq),
            "every queued append is committed at shutdown"
        );
    }
    let events = all_events(&*db.store, u).await;
    assert_eq!(seqs(&events), (1..=APPENDS).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.device_seq == e.seq));
    // One batch held at the gate, then the 49 queued ones in batches of at most 16.
    assert_eq!(gated.batch_sizes(), [1, 16, 16, 16, 1]);
    let stats = handle.stats();
    assert_eq!(
        (stats.batches, stats.events, stats.last_batch_len),
        (5, APPENDS, 1)
    );
    assert!(handle.is_stopped());
}

async fn a_failed_commit_is_reported_to_every_waiter_and_stores_nothing(db: Db) {
    let gated = FaultyStore::new(Arc::clone(&db.store));
    let handle = Committer::spawn(gated.clone(), CommitConfig::default());
    let (u, d) = (user(), device());
    admit(&*db.store, u, &[d]).await;
    assert_eq!(
        handle.append(req(u, d, 1, "before")).await.unwrap(),
        appended(1)
    );

    gated.fail_next_batches(2);
    let gate = gated.hold().await;
    let replies = queue_behind_gate(
        &handle,
        &gated,
        (2..=21).map(|i| req(u, d, i, "doomed")).collect(),
    )
    .await;
    drop(gate);
    for reply in replies {
        let error = reply.await.unwrap().unwrap_err();
        assert!(matches!(error, StoreError::Database(_)), "{error:?}");
        assert_eq!(error.code(), ErrorCode::Unavailable);
    }
    assert_eq!(handle.stats().failed_batches, 2);
    assert_eq!(all_events(&*db.store, u).await.len(), 1);

    // The retries succeed and continue the log without a gap.
    gated.fail_next_batches(0);
    assert_eq!(
        handle.append(req(u, d, 2, "doomed")).await.unwrap(),
        appended(2)
    );
    handle.shutdown().await;

    // A real database failure: the store is closed under the committer.
    let handle = Committer::spawn(Arc::clone(&db.store), CommitConfig::default());
    db.store.close().await;
    let error = handle
        .append(req(u, d, 3, "after close"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    assert_eq!(handle.stats().failed_batches, 1);
    handle.shutdown().await;
}

async fn acks_only_grow_and_never_pass_the_head(db: Db) {
    let store = &*db.store;
    let (u, d) = (user(), device());
    admit(store, u, &[d]).await;
    for i in 1..=5 {
        append(store, req(u, d, i, "e")).await;
    }
    assert_eq!(store.set_ack(u, d, 3).await.unwrap(), 3);
    assert_eq!(
        store.set_ack(u, d, 2).await.unwrap(),
        3,
        "acks never go backwards"
    );
    assert_eq!(
        store.set_ack(u, d, 100).await.unwrap(),
        5,
        "acks are clamped to the head"
    );
    assert_eq!(store.set_ack(u, d, u64::MAX).await.unwrap(), 5);
    assert_eq!(store.device(u, d).await.unwrap().unwrap().acked, 5);
    append(store, req(u, d, 6, "e")).await;
    assert_eq!(store.set_ack(u, d, 6).await.unwrap(), 6);

    let error = store.set_ack(u, device(), 1).await.unwrap_err();
    assert!(matches!(error, StoreError::UnknownDevice), "{error:?}");
    // A user with no events: nothing to acknowledge yet.
    let (lonely, d) = (user(), device());
    admit(store, lonely, &[d]).await;
    assert_eq!(store.set_ack(lonely, d, 7).await.unwrap(), 0);
}

async fn paging_replay_returns_every_event_exactly_once(db: Db) {
    let store = &*db.store;
    let (u, d) = (user(), device());
    admit(store, u, &[d]).await;
    let mut next = 1;
    for size in [1, 5, 20, 31] {
        let batch: Vec<_> = (next..next + size)
            .map(|i| req(u, d, i, &format!("e{i}")))
            .collect();
        store.append_batch(&batch, NOW_MS).await.unwrap();
        next += size;
    }
    let total = next - 1;
    assert_eq!(total, 57);

    let mut after = 0;
    let mut replayed = Vec::new();
    loop {
        let page = store.read_events(u, after, 10).await.unwrap();
        assert!(page.len() <= 10);
        let Some(last) = page.last() else { break };
        assert_eq!(
            page[0].seq,
            after + 1,
            "pages continue exactly where the last one ended"
        );
        after = last.seq;
        replayed.extend(page);
    }
    assert_eq!(seqs(&replayed), (1..=total).collect::<Vec<_>>());
    assert!(
        replayed
            .iter()
            .all(|e| e.device_seq == e.seq && e.payload == payload(&format!("e{}", e.seq)))
    );
    assert!(store.read_events(u, total, 10).await.unwrap().is_empty());
    assert!(store.read_events(u, 0, 0).await.unwrap().is_empty());
    assert_eq!(
        seqs(&store.read_events(u, 55, usize::MAX).await.unwrap()),
        [56, 57]
    );
    assert!(store.read_events(u, u64::MAX, 10).await.unwrap().is_empty());
}

async fn retention_by_count_and_by_age_moves_earliest_and_keeps_seqs(db: Db) {
    let store = &*db.store;
    let (u, d) = (user(), device());
    admit(store, u, &[d]).await;
    let old: Vec<_> = (1..=10).map(|i| req(u, d, i, "old")).collect();
    store.append_batch(&old, 1_000).await.unwrap();
    let young: Vec<_> = (11..=20).map(|i| req(u, d, i, "young")).collect();
    store.append_batch(&young, 5_000).await.unwrap();

    // By count: keep the newest 15.
    assert_eq!(store.trim_user(u, None, Some(15), 6_000).await.unwrap(), 5);
    let bounds = store.log_bounds(u).await.unwrap();
    assert_eq!(
        bounds,
        LogBounds {
            earliest: 6,
            head: 20
        }
    );
    assert!(bounds.covers(5) && !bounds.covers(4));
    assert_eq!(all_events(store, u).await.first().map(|e| e.seq), Some(6));
    assert_eq!(all_events(store, u).await.len(), 15);

    // By age: everything committed before 4_500 goes.
    assert_eq!(
        store.trim_user(u, Some(1_000), None, 5_500).await.unwrap(),
        5
    );
    assert_eq!(
        store.log_bounds(u).await.unwrap(),
        LogBounds {
            earliest: 11,
            head: 20
        }
    );
    assert_eq!(
        seqs(&all_events(store, u).await),
        (11..=20).collect::<Vec<_>>()
    );

    // A clock that went backwards cannot punch a hole: only a prefix of old events goes.
    assert_eq!(
        store.append(&req(u, d, 21, "skewed"), 100).await.unwrap(),
        appended(21)
    );
    assert_eq!(
        store.trim_user(u, Some(1_000), None, 5_500).await.unwrap(),
        0
    );
    assert_eq!(
        store.log_bounds(u).await.unwrap(),
        LogBounds {
            earliest: 11,
            head: 21
        }
    );

    // The whole database at once: v is old and goes, w is young and stays. The cutoff (2)
    // is below every other story's commit times, as other tests share the database.
    let (v, w) = (user(), user());
    admit(store, v, &[d]).await;
    admit(store, w, &[d]).await;
    let batch: Vec<_> = (1..=3).map(|i| req(v, d, i, "v")).collect();
    store.append_batch(&batch, 1).await.unwrap();
    let batch: Vec<_> = (1..=3).map(|i| req(w, d, i, "w")).collect();
    store.append_batch(&batch, 9_000).await.unwrap();
    let deleted = store.trim(Some(1), None, 3).await.unwrap();
    if store.backend() == "sqlite" {
        assert_eq!(deleted, 3); // alone in its database
    }
    let bounds = store.log_bounds(v).await.unwrap();
    assert_eq!(
        bounds,
        LogBounds {
            earliest: 4,
            head: 3
        }
    );
    assert!(bounds.is_empty() && bounds.covers(3) && !bounds.covers(2));
    assert!(all_events(store, v).await.is_empty());
    assert_eq!(
        store.log_bounds(w).await.unwrap(),
        LogBounds {
            earliest: 1,
            head: 3
        }
    );
    assert_eq!(
        store.log_bounds(u).await.unwrap(),
        LogBounds {
            earliest: 11,
            head: 21
        }
    );
    assert_eq!(
        store.trim(None, Some(u64::MAX / 2), 5_000).await.unwrap(),
        0
    );
    assert_eq!(store.trim(None, None, 5_000).await.unwrap(), 0);

    // Trimmed sequences are never reused.
    assert_eq!(
        store.append(&req(v, d, 4, "v"), 9_000).await.unwrap(),
        appended(4)
    );
    assert_eq!(
        store.log_bounds(v).await.unwrap(),
        LogBounds {
            earliest: 4,
            head: 4
        }
    );
    assert_eq!(store.trim_user(w, None, Some(0), 9_000).await.unwrap(), 3);
    assert_eq!(
        store.log_bounds(w).await.unwrap(),
        LogBounds {
            earliest: 4,
            head: 3
        }
    );

    // Deletes run in slices of TRIM_BATCH; a long log is trimmed all the same.
    let long = user();
    admit(store, long, &[d]).await;
    let n = store::TRIM_BATCH * 2 + 500;
    let batch: Vec<_> = (1..=n).map(|i| req(long, d, i, "")).collect();
    store.append_batch(&batch, 1_000).await.unwrap();
    assert_eq!(
        store.trim_user(long, None, Some(10), 1_000).await.unwrap(),
        n - 10
    );
    assert_eq!(
        store.log_bounds(long).await.unwrap(),
        LogBounds {
            earliest: n - 9,
            head: n
        }
    );
}

async fn the_chain_admits_devices_respects_the_limit_and_revokes(db: Db) {
    let store = &*db.store;
    let u = user();
    let key = user_key(u);
    let (k1, k2, k3) = (
        DeviceKey::generate(&mut OsRng),
        DeviceKey::generate(&mut OsRng),
        DeviceKey::generate(&mut OsRng),
    );
    assert_eq!(store.chain_seqno(u).await.unwrap(), 0);
    // Nothing but a Create signed by the user key starts a chain.
    let early = stored_chain(store, u)
        .await
        .sign(admit_body(k1.id()), SigningKey::User(&key));
    let error = store.append_link(&early, 2, NOW_S).await.unwrap_err();
    assert!(
        matches!(error, StoreError::ChainLinkRefused(ChainError::BadStart)),
        "{error:?}"
    );
    assert_eq!(error.code(), ErrorCode::ChainLinkRefused);
    admit(store, u, &[]).await;
    assert_eq!(store.chain_seqno(u).await.unwrap(), 1);

    // The user key admits the first device, which admits the second.
    let admit_with = |body, signer| append_body(store, u, body, signer, 2);
    admit_with(admit_body(k1.id()), SigningKey::User(&key))
        .await
        .unwrap();
    let phone = admit_with(admit_body(k2.id()), SigningKey::Device(&k1))
        .await
        .unwrap();
    assert_eq!(phone.seqno, 3);
    let first = store.device(u, k1.id()).await.unwrap().unwrap();
    let expected = DeviceRecord {
        device: k1.id(),
        name: format!("device {}", &k1.id().to_hex()[..8]),
        created_at: NOW_S,
        admitted_seqno: 2,
        acked: 0,
        revoked_at: None,
        last_seen: NOW_S,
        registered_at: NOW_S,
    };
    assert_eq!(first, expected);
    // Beyond two active devices: refused, and nothing is stored.
    let error = admit_with(admit_body(k3.id()), SigningKey::Device(&k1))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::TooManyDevices { max: 2 }),
        "{error:?}"
    );
    assert_eq!(error.code(), ErrorCode::TooManyDevices);
    assert_eq!(store.device(u, k3.id()).await.unwrap(), None);
    assert_eq!(store.chain_seqno(u).await.unwrap(), 3);

    // A replayed link (a fork by position) is refused with the chain's reason.
    let error = store.append_link(&phone, 2, NOW_S).await.unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::ChainLinkRefused(ChainError::OutOfOrder {
                expected: 4,
                got: 3
            })
        ),
        "{error:?}"
    );

    for i in 1..=2 {
        append(store, req(u, k1.id(), i, "from the laptop")).await;
    }
    // The phone revokes the laptop: the mirror says so, with the time the link was stored.
    let chain = stored_chain(store, u).await;
    let revoke = chain.sign(revoke_body(&chain, &[k1.id()]), SigningKey::Device(&k2));
    let appended = store.append_link(&revoke, 2, NOW_S + 5).await.unwrap();
    assert_eq!((appended.seqno, appended.revoked), (4, vec![k1.id()]));
    let revoked = store.device(u, k1.id()).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(NOW_S + 5));
    assert!(revoked.is_revoked());
    // A revoked device signs nothing any more, and is never admitted again.
    let error = admit_with(admit_body(k3.id()), SigningKey::Device(&k1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::ChainLinkRefused(ChainError::SignerNotActive)
        ),
        "{error:?}"
    );
    let error = admit_with(admit_body(k1.id()), SigningKey::Device(&k2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::ChainLinkRefused(ChainError::AlreadyKnown)
        ),
        "{error:?}"
    );
    // The revoked device no longer counts against the limit.
    admit_with(admit_body(k3.id()), SigningKey::Device(&k2))
        .await
        .unwrap();

    // One write of many devices, as the relay's write-behind makes it: unknown devices
    // (ignored) first, so that k2 is in the second statement of the batch.
    let mut seen: Vec<(UserId, DeviceId, u64)> = (0..600u16)
        .map(|i| {
            let mut id = [0xEE; 32];
            id[..2].copy_from_slice(&i.to_be_bytes());
            (u, DeviceId(id), NOW_S + 5_000)
        })
        .collect();
    seen.extend([(u, k2.id(), NOW_S + 1_000), (u, device(), 900)]);
    store.touch_devices(&seen).await.unwrap();
    store
        .touch_devices(&[(u, k2.id(), NOW_S + 900)])
        .await
        .unwrap(); // never goes back
    let listed = store.list_devices(u).await.unwrap();
    let info = |device: &DeviceKey, last_seen, revoked| DeviceInfo {
        device: device.id(),
        name: format!("device {}", &device.id().to_hex()[..8]),
        last_seen,
        revoked,
    };
    assert_eq!(
        listed,
        [
            info(&k1, NOW_S, true),
            info(&k2, NOW_S + 1_000, false),
            info(&k3, NOW_S, false),
        ]
    );
    assert_eq!(
        all_events(store, u).await.len(),
        2,
        "a revoked device's events stay in the log"
    );
    // The stored chain is what was appended, and verifies.
    let chain = stored_chain(store, u).await;
    assert_eq!(chain.seqno(), 5);
    assert!(!chain.is_active(&k1.id()) && chain.is_active(&k3.id()));
    assert!(store.list_devices(user()).await.unwrap().is_empty());
}

/// The check that makes revocation race-free: the append transaction itself refuses a device
/// the chain does not admit, under the same user row lock that `append_link` takes.
async fn a_revoked_or_never_admitted_device_appends_nothing(db: Db) {
    let store = &*db.store;
    let (u, laptop, phone, stranger) = (user(), device(), device(), device());
    admit(store, u, &[laptop]).await;
    let key = DeviceKey::generate(&mut OsRng);
    append_body(
        store,
        u,
        admit_body(key.id()),
        SigningKey::User(&user_key(u)),
        10,
    )
    .await
    .unwrap();
    let thief = key.id();
    assert_eq!(append(store, req(u, thief, 1, "t1")).await, appended(1));
    assert_eq!(append(store, req(u, laptop, 1, "l1")).await, appended(2));

    // Never admitted: refused, alone or in a batch with others.
    assert_eq!(
        append(store, req(u, stranger, 1, "s1")).await,
        AppendOutcome::Revoked
    );
    assert_eq!(
        AppendOutcome::Revoked.answer(),
        Err(ErrorCode::DeviceRevoked)
    );

    // The laptop revokes the thief; the thief's next batch is refused whole, even a retry
    // of what it stored before, and the laptop's appends in the same batch go through.
    let chain = stored_chain(store, u).await;
    let revoke = revoke_body(&chain, &[thief]);
    append_body(store, u, revoke, SigningKey::User(&user_key(u)), 10)
        .await
        .unwrap();
    let batch = [
        req(u, thief, 2, "t2"),
        req(u, laptop, 2, "l2"),
        req(u, thief, 1, "t1"),
        req(u, stranger, 1, "s1"),
        req(u, phone, 1, "p1"),
    ];
    assert_eq!(
        store.append_batch(&batch, NOW_MS).await.unwrap(),
        [
            AppendOutcome::Revoked,
            appended(3),
            AppendOutcome::Revoked,
            AppendOutcome::Revoked,
            AppendOutcome::Revoked,
        ]
    );
    // Through the committer too.
    let handle = Committer::spawn(Arc::clone(&db.store), CommitConfig::default());
    assert_eq!(
        handle.append(req(u, thief, 3, "t3")).await.unwrap(),
        AppendOutcome::Revoked
    );
    handle.shutdown().await;
    assert_eq!(
        all_events(store, u)
            .await
            .iter()
            .map(|e| (e.device, e.device_seq))
            .collect::<Vec<_>>(),
        [(thief, 1), (laptop, 1), (laptop, 2)]
    );
    assert_eq!(store.log_bounds(u).await.unwrap().head, 3);
    // A device admitted later appends from then on.
    admit(store, u, &[phone]).await;
    assert_eq!(append(store, req(u, phone, 1, "p1")).await, appended(4));
}

/// A payload with a format-2 header naming `epoch` (the relay reads no further).
fn sealed_under(epoch: u32, text: &str) -> ferry_protocol::SealedPayload {
    let mut bytes = vec![ferry_protocol::seal::FORMAT_V2];
    bytes.extend_from_slice(&epoch.to_be_bytes());
    bytes.extend_from_slice(text.as_bytes());
    ferry_protocol::SealedPayload(bytes)
}

fn sealed_req(user: UserId, device: DeviceId, device_seq: u64, epoch: u32) -> AppendRequest {
    AppendRequest {
        payload: sealed_under(epoch, &format!("{device_seq} under {epoch}")),
        ..req(user, device, device_seq, "")
    }
}

/// After a revocation, a device that has not heard of it may still seal under the old epoch,
/// whose key the revoked device holds: the append batch refuses such payloads under the user's
/// row lock (the lock `append_link` raises the epoch under), and holds the device's later
/// appends back so that they stay in the order sent.
async fn an_append_sealed_under_a_replaced_epoch_is_refused_in_order(db: Db) {
    let store = &*db.store;
    let (u, laptop, phone, thief) = (user(), device(), device(), device());
    admit(store, u, &[laptop, phone, thief]).await;
    // Epoch 0 is current: epoch-0 payloads are stored.
    assert_eq!(
        append(store, sealed_req(u, laptop, 1, 0)).await,
        appended(1)
    );
    assert_eq!(append(store, sealed_req(u, thief, 1, 0)).await, appended(2));

    let chain = stored_chain(store, u).await;
    append_body(
        store,
        u,
        revoke_body(&chain, &[thief]),
        SigningKey::User(&user_key(u)),
        10,
    )
    .await
    .unwrap();
    assert_eq!(stored_chain(store, u).await.epoch(), 1);

    let stale = AppendOutcome::StaleEpoch { current: 1 };
    let batch = [
        // Sealed under the replaced epoch: refused...
        sealed_req(u, laptop, 2, 0),
        // ... and the laptop's next append with it, though it is sealed under epoch 1.
        sealed_req(u, laptop, 3, 1),
        // Another device is not held back; payloads without a format-2 header are opaque.
        sealed_req(u, phone, 1, 1),
        req(u, phone, 2, "opaque"),
        // A retry of an epoch-0 event stored before the revocation is still a duplicate.
        sealed_req(u, laptop, 1, 0),
    ];
    assert_eq!(
        store.append_batch(&batch, NOW_MS).await.unwrap(),
        [
            stale,
            stale,
            appended(3),
            appended(4),
            AppendOutcome::Duplicate { seq: 1 }
        ]
    );
    assert_eq!(stale.answer(), Err(ErrorCode::StaleEpoch));
    let message = stale.refusal_message().unwrap();
    assert!(message.contains("epoch is 1"), "{message}");
    // Sealed again under epoch 1 with the same device sequences: stored, in order.
    let resent = [sealed_req(u, laptop, 2, 1), sealed_req(u, laptop, 3, 1)];
    assert_eq!(
        store.append_batch(&resent, NOW_MS).await.unwrap(),
        [appended(5), appended(6)]
    );

    // A Rotate moves to epoch 2: epoch 1 is refused now, through the committer too, and the
    // session's order refuses the device's later appends until the refused one comes again.
    let chain = stored_chain(store, u).await;
    append_body(
        store,
        u,
        rotate_body(&chain),
        SigningKey::User(&user_key(u)),
        10,
    )
    .await
    .unwrap();
    let handle = Committer::spawn(Arc::clone(&db.store), CommitConfig::default());
    let order = AppendOrder::new();
    // The session admits both before either is answered (as when they arrive together).
    let (fourth, fifth) = (order.admit(4).unwrap(), order.admit(5).unwrap());
    let first = handle
        .submit_in_order(sealed_req(u, laptop, 4, 1), &order, fourth)
        .await
        .unwrap();
    let second = handle
        .submit_in_order(sealed_req(u, laptop, 5, 2), &order, fifth)
        .await
        .unwrap();
    assert_eq!(
        first.await.unwrap().unwrap(),
        AppendOutcome::StaleEpoch { current: 2 }
    );
    // Refused in the same batch (StaleEpoch) or queued behind it (EarlierRefused).
    let code = match second.await.unwrap() {
        Ok(outcome) => outcome.answer().unwrap_err(),
        Err(e) => e.code(),
    };
    assert_eq!(code, ErrorCode::StaleEpoch);
    assert_eq!(order.admit(5), Err(ErrorCode::StaleEpoch));
    assert!(order.admit(4).is_ok());
    for (device_seq, seq) in [(4, 7), (5, 8)] {
        let reply = handle
            .submit_in_order(
                sealed_req(u, laptop, device_seq, 2),
                &order,
                order.admit(device_seq).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(reply.await.unwrap().unwrap(), appended(seq));
    }
    handle.shutdown().await;
    assert_eq!(
        all_events(store, u)
            .await
            .iter()
            .map(|e| (e.device, e.device_seq))
            .collect::<Vec<_>>(),
        [
            (laptop, 1),
            (thief, 1),
            (phone, 1),
            (phone, 2),
            (laptop, 2),
            (laptop, 3),
            (laptop, 4),
            (laptop, 5)
        ]
    );
}

/// A `Rotate` body moving `chain` to its next epoch.
fn rotate_body(chain: &ferry_protocol::Chain) -> LinkBody {
    LinkBody::Rotate {
        epoch: next_epoch(chain, &[]),
    }
}

async fn chain_pages_are_bounded_and_consecutive(db: Db) {
    let store = &*db.store;
    let u = user();
    admit(store, u, &[device()]).await;
    let key = user_key(u);
    // Rotations sealed to many devices make big links: a few fill a page's byte budget.
    let many: Vec<DeviceId> = (0..200).map(|_| device()).collect();
    admit(store, u, &many).await;
    for _ in 0..30 {
        let chain = stored_chain(store, u).await;
        let rotate = LinkBody::Rotate {
            epoch: next_epoch(&chain, &[]),
        };
        append_body(store, u, rotate, SigningKey::User(&key), 1000)
            .await
            .unwrap();
    }
    let head = store.chain_seqno(u).await.unwrap();
    assert_eq!(head, 1 + 1 + 200 + 30);
    let mut after = 0;
    let mut pages = 0;
    while after < head {
        let page = store.chain_links(u, after, 256).await.unwrap();
        assert!(!page.is_empty() && page.len() <= 256);
        let bytes: Vec<usize> = page
            .iter()
            .map(|l| ferry_protocol::codec::encode(l).len())
            .collect();
        // Below the budget before the last link of the page.
        assert!(bytes[..bytes.len() - 1].iter().sum::<usize>() < LINK_PAGE_BYTES);
        for (i, link) in page.iter().enumerate() {
            assert_eq!(link.seqno, after + 1 + i as u64);
        }
        after = page.last().unwrap().seqno;
        pages += 1;
    }
    // The admissions and the first rotations (about 28 KiB each), then the other rotations,
    // in pages of about 384 KiB.
    assert!(pages >= 3, "{pages} pages");
    assert!(store.chain_links(u, head, 10).await.unwrap().is_empty());
    assert!(store.chain_links(u, 0, 0).await.unwrap().is_empty());
}

async fn migrations_are_idempotent(db: Db) {
    let (u, d) = (user(), device());
    admit(&*db.store, u, &[d]).await;
    append(&*db.store, req(u, d, 1, "kept")).await;
    for _ in 0..2 {
        let again = store::open(&db.url).await.unwrap();
        again.ping().await.unwrap();
        assert_eq!(
            again.read_events(u, 0, 10).await.unwrap()[0].payload,
            payload("kept")
        );
        assert_eq!(
            again.append(&req(u, d, 1, "kept"), NOW_MS).await.unwrap(),
            AppendOutcome::Duplicate { seq: 1 }
        );
        again.close().await;
    }
    db.store.ping().await.unwrap();
}

#[tokio::test]
async fn unknown_schemes_are_refused_without_echoing_the_url() {
    let error = store::open("mysql://ferry:hunter2@db/ferry")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::InvalidUrl(_)), "{error:?}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

/// Submits the first request and waits until the committer holds it at the (locked) gate,
/// then queues all the others behind it; returns where their answers will arrive.
async fn queue_behind_gate(
    handle: &CommitHandle,
    gated: &FaultyStore,
    requests: Vec<AppendRequest>,
) -> Vec<CommitReply> {
    let count = requests.len();
    let reached = gated.arrived();
    let mut replies = Vec::new();
    for (i, request) in requests.into_iter().enumerate() {
        replies.push(handle.submit(request).await.unwrap());
        if i == 0 {
            wait_until(|| gated.arrived() == reached + 1).await;
        }
    }
    assert_eq!(handle.stats().queued, count - 1);
    replies
}

/// A small deterministic generator (xorshift64*), so a failing sequence can be replayed from
/// its seed.
struct Draws(u64);

impl Draws {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % below
    }
}

/// Random links (creates, admissions, revocations and rotations, signed by the user key, by
/// active, revoked or unknown devices, some against an old copy of the chain, some with a
/// broken signature) go to the store and to a client's own copy of the chain, which verifies
/// each link as the SDK does (`Chain::apply`). Their verdicts agree link by link, no link
/// signed by a device that is not active is ever stored, and the stored chain ends equal to
/// the client's.
async fn the_store_and_a_verifying_client_agree_on_random_links(db: Db) {
    let store = &*db.store;
    for seed in 1..=6u64 {
        let u = user();
        let key = user_key(u);
        let devices: Vec<DeviceKey> = (0..5).map(|_| DeviceKey::generate(&mut OsRng)).collect();
        let mut draws = Draws(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut client = ferry_protocol::Chain::new(u);
        let mut old = client.clone();
        let (mut stored, mut refused) = (0, 0);
        for step in 0..80 {
            let ids: Vec<DeviceId> = devices.iter().map(DeviceKey::id).collect();
            // The chain starts as a user's does (Create, then a first device by the user key),
            // so that most sequences go somewhere; from then on, anything.
            let action = match step {
                0 => 0,
                1 => 1,
                _ => draws.next(6),
            };
            let body = match action {
                0 => LinkBody::Create {
                    recovery_exchange: [9; 32],
                    epoch_key: sealed_key(),
                },
                1 | 2 => admit_body(ids[if step == 1 { 0 } else { draws.next(ids.len()) }]),
                3 => {
                    let mut leaving: Vec<DeviceId> = client
                        .active_devices()
                        .map(|(d, _)| *d)
                        .filter(|_| draws.next(2) == 0)
                        .collect();
                    if draws.next(4) == 0 {
                        leaving.push(ids[draws.next(ids.len())]); // maybe not active
                    }
                    revoke_body(&client, &leaving)
                }
                4 => LinkBody::Rotate {
                    epoch: next_epoch(&client, &[]),
                },
                _ => LinkBody::Rotate {
                    epoch: next_epoch(&old, &[]), // an epoch that may be stale
                },
            };
            let signer = match draws.next(4) {
                _ if step < 2 => SigningKey::User(&key),
                0 => SigningKey::User(&key),
                _ => SigningKey::Device(&devices[draws.next(devices.len())]),
            };
            let base = if step >= 2 && draws.next(8) == 0 {
                &old
            } else {
                &client
            };
            let mut link = base.sign(body, signer);
            if step >= 2 && draws.next(12) == 0 {
                link.signature[draws.next(64)] ^= 1;
            }
            let signer_active = match link.signer {
                ferry_protocol::Signer::User => true,
                ferry_protocol::Signer::Device(d) => client.is_active(&d),
            };
            let verdict = client.clone().apply(&link);
            let answer = store.append_link(&link, 1000, NOW_S).await;
            match (&verdict, answer) {
                (Ok(()), Ok(appended)) => {
                    assert!(
                        signer_active,
                        "a link by a device that is not active was stored"
                    );
                    assert_eq!(appended.seqno, link.seqno);
                    old = client.clone();
                    client.apply(&link).unwrap();
                    stored += 1;
                }
                (Err(expected), Err(StoreError::ChainLinkRefused(got))) => {
                    assert_eq!(&got, expected, "seed {seed}: same reason");
                    refused += 1;
                }
                (verdict, answer) => {
                    panic!("seed {seed}: the client says {verdict:?}, the store {answer:?}")
                }
            }
        }
        assert_eq!(stored_chain(store, u).await, client, "seed {seed}");
        assert!(
            stored > 0 && refused > 0,
            "seed {seed}: {stored} stored, {refused} refused"
        );
    }
}

/// PostgreSQL: append batches run on a connection of their own
/// ([`store::APPEND_CONNECTION_NAME`]). One closed under the store between batches
/// (PostgreSQL restarted, an idle timeout, a proxy) costs no append: the next batch's `BEGIN`
/// fails and the batch begins again on a new connection. A batch abandoned before it commits
/// closes its connection, so the next batch can never run inside its transaction.
#[tokio::test]
async fn the_append_connection_is_replaced_when_closed_or_abandoned() {
    let Some(database) = support::private_postgres("appends").await else {
        return;
    };
    let store = store::open(&database.url).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let (u, d) = (user(), device());
    admit(&*store, u, &[d]).await;
    assert_eq!(append(&*store, req(u, d, 1, "first")).await, appended(1));
    let first = append_backend(&mut admin, None).await;

    // Closed by the server between two batches.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first)
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(append(&*store, req(u, d, 2, "second")).await, appended(2));
    let second = append_backend(&mut admin, Some(first)).await;

    // Abandoned midway: the batch waits for the user's row, which another transaction holds,
    // and is dropped there.
    let mut holder = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let mut holding = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE")
        .bind(u.as_bytes().as_slice())
        .execute(&mut *holding)
        .await
        .unwrap();
    let batch = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.append(&req(u, d, 3, "abandoned"), NOW_MS).await }
    });
    wait_for_lock_wait(&mut admin, second).await;
    batch.abort();
    assert!(batch.await.unwrap_err().is_cancelled());
    holding.rollback().await.unwrap();
    assert_eq!(append(&*store, req(u, d, 3, "third")).await, appended(3));
    // Waits for a connection other than the abandoned batch's.
    append_backend(&mut admin, Some(second)).await;

    let events = all_events(&*store, u).await;
    let texts: Vec<_> = events.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(
        texts,
        [payload("first"), payload("second"), payload("third")]
    );
    store.close().await;
    let _ = admin.close().await;
    let _ = holder.close().await;
    database.drop().await;
}

/// The backend pid of the store's one append connection, once it is not `old` (waits for
/// `old` to be gone: a terminated backend lingers for a moment).
async fn append_backend(admin: &mut sqlx::PgConnection, old: Option<i32>) -> i32 {
    for _ in 0..500 {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind(store::APPEND_CONNECTION_NAME)
        .fetch_all(&mut *admin)
        .await
        .unwrap();
        if let [pid] = pids[..]
            && Some(pid) != old
        {
            return pid;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no single append connection other than {old:?}");
}

/// Waits until backend `pid` waits for a lock.
async fn wait_for_lock_wait(admin: &mut sqlx::PgConnection, pid: i32) {
    for _ in 0..500 {
        let waiting: Option<String> =
            sqlx::query_scalar("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_optional(&mut *admin)
                .await
                .unwrap()
                .flatten();
        if waiting.as_deref() == Some("Lock") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("backend {pid} never waited for a lock");
}
