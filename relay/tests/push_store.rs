//! Push targets and the queue of wake-ups in the store, on SQLite and PostgreSQL: one
//! wake-up per device however many are queued (coalesced: urgent if any was, due at the
//! earliest), never for the devices that caused it, claimed by one sender at a time, kept
//! for a retry, bounded, and gone with the target. Plus what decides whether an online
//! device needs one: whether it has anything unread.
//!
//! Wake-ups here are due near time 0, so the relay tests' workers (real clocks, another test
//! binary) and this story never claim each other's rows on a shared database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_protocol::DeviceId;
use ferry_relay::store::{PushTargetRow, QueuedWakeUps, Store, WakeUp};
use support::storage::*;

crate::storage_story!(
    wake_ups_are_coalesced_claimed_once_retried_bounded_and_removed_with_the_target,
    a_device_has_unread_until_it_acknowledged_its_log,
    a_revoked_device_has_no_push_target_and_gets_none,
);

fn target(n: u8) -> PushTargetRow {
    PushTargetRow::web_push(
        format!("https://push.example.net/push/{n}"),
        vec![4; 65],
        vec![n; 16],
    )
}

/// The claimed wake-ups of `devices`, among whatever else the claim returned.
async fn claim_mine(store: &dyn Store, now_ms: u64, devices: &[DeviceId]) -> Vec<WakeUp> {
    let mut mine: Vec<WakeUp> = store
        .claim_wake_ups(now_ms, 60_000, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|w| devices.contains(&w.device))
        .collect();
    mine.sort_by_key(|w| w.device);
    mine
}

async fn wake_ups_are_coalesced_claimed_once_retried_bounded_and_removed_with_the_target(db: Db) {
    let store = &*db.store;
    let (alice, bob) = (user(), user());
    let (a1, a2, b1) = (device(), device(), device());
    admit(store, alice, &[a1, a2]).await;
    admit(store, bob, &[b1]).await;
    store
        .set_push_target(alice, a2, &target(2), NOW_MS)
        .await
        .unwrap();
    store
        .set_push_target(bob, b1, &target(3), NOW_MS)
        .await
        .unwrap();
    // a1 has no target, and is the sender anyway.
    store
        .set_push_target(alice, a1, &target(1), NOW_MS)
        .await
        .unwrap();
    assert_eq!(
        store.push_target(a1).await.unwrap().map(|t| t.endpoint),
        Some(target(1).endpoint)
    );
    // Replacing a target keeps one.
    store
        .set_push_target(alice, a1, &target(9), NOW_MS)
        .await
        .unwrap();
    assert_eq!(store.push_target(a1).await.unwrap(), Some(target(9)));

    let queued = store
        .queue_wake_ups(&[alice, bob], &[a1], false, 1_000, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        queued,
        QueuedWakeUps {
            new: 2,
            coalesced: 0,
            dropped: 0
        }
    );
    // A burst: the same devices again, one urgent and earlier: still one each.
    let queued = store
        .queue_wake_ups(&[alice, bob], &[a1], true, 900, u64::MAX)
        .await
        .unwrap();
    assert_eq!((queued.new, queued.coalesced), (0, 2));
    let queued = store
        .queue_wake_ups(&[bob], &[], false, 5_000, u64::MAX)
        .await
        .unwrap();
    assert_eq!((queued.new, queued.coalesced), (0, 1));

    // Not due yet at 899; due at 900, urgent, and for the right target.
    assert!(claim_mine(store, 899, &[a1, a2, b1]).await.is_empty());
    let claimed = claim_mine(store, 900, &[a1, a2, b1]).await;
    let mut want = vec![(a2, target(2)), (b1, target(3))];
    want.sort_by_key(|(d, _)| *d);
    assert_eq!(
        claimed
            .iter()
            .map(|w| (w.device, w.target.clone()))
            .collect::<Vec<_>>(),
        want
    );
    assert!(claimed.iter().all(|w| w.urgent && w.attempts == 0));
    assert_eq!(claimed.iter().find(|w| w.device == a2).unwrap().user, alice);
    // Claimed: nobody else gets them while the lease lasts.
    assert!(claim_mine(store, 1_000, &[a2, b1]).await.is_empty());

    // One is sent, the other fails and is tried again later, counting the attempt.
    store.finish_wake_up(a2).await.unwrap();
    store.retry_wake_up(b1, 3_000).await.unwrap();
    assert!(claim_mine(store, 2_999, &[a2, b1]).await.is_empty());
    let again = claim_mine(store, 3_000, &[a2, b1]).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].device, again[0].attempts), (b1, 1));

    // A lease that ran out (the sending node died) is claimed again.
    let after_lease = claim_mine(store, 3_000 + 60_000, &[b1]).await;
    assert_eq!(after_lease.len(), 1);
    // Deferred (its push service was busy): due later, no attempt counted.
    store.defer_wake_up(b1, 70_000).await.unwrap();
    assert!(claim_mine(store, 69_999, &[b1]).await.is_empty());
    let deferred = claim_mine(store, 70_000, &[b1]).await;
    assert_eq!(deferred.len(), 1);
    assert_eq!(deferred[0].attempts, 1);

    // The queue is bounded: nothing is queued once it holds `max_queued`.
    let pending = store.queued_wake_ups().await.unwrap();
    let queued = store
        .queue_wake_ups(&[alice], &[], false, 1_000, pending)
        .await
        .unwrap();
    assert_eq!(
        queued,
        QueuedWakeUps {
            new: 0,
            coalesced: 0,
            dropped: 2
        }
    );

    // Removing the target removes its pending wake-up; a user with no target gets none.
    assert!(store.remove_push_target(b1).await.unwrap());
    assert!(!store.remove_push_target(b1).await.unwrap());
    assert_eq!(store.push_target(b1).await.unwrap(), None);
    assert!(claim_mine(store, u64::MAX / 4, &[b1]).await.is_empty());
    let queued = store
        .queue_wake_ups(&[bob], &[], true, 1_000, u64::MAX)
        .await
        .unwrap();
    assert_eq!(queued, QueuedWakeUps::default());
    for device in [a1, a2] {
        store.remove_push_target(device).await.unwrap();
    }
}

async fn a_device_has_unread_until_it_acknowledged_its_log(db: Db) {
    let store = &*db.store;
    let alice = user();
    let (a1, a2) = (device(), device());
    admit(store, alice, &[a1, a2]).await;
    assert!(!store.has_unread(alice, a2).await.unwrap(), "nothing yet");
    for i in 1..=3 {
        append(store, req(alice, a1, i, &format!("e{i}"))).await;
    }
    assert!(store.has_unread(alice, a2).await.unwrap());
    store.set_ack(alice, a2, 2).await.unwrap();
    assert!(store.has_unread(alice, a2).await.unwrap(), "one left");
    store.set_ack(alice, a2, 3).await.unwrap();
    assert!(!store.has_unread(alice, a2).await.unwrap());
}

async fn a_revoked_device_has_no_push_target_and_gets_none(db: Db) {
    use ferry_protocol::SigningKey;
    let store = &*db.store;
    let alice = user();
    let (a1, a2, stranger) = (device(), device(), device());
    admit(store, alice, &[a1, a2]).await;
    store
        .set_push_target(alice, a2, &target(2), NOW_MS)
        .await
        .unwrap();
    store
        .queue_wake_ups(&[alice], &[a1], false, 1_000, u64::MAX)
        .await
        .unwrap();
    // An APNs target reads back as one, and replaces the Web Push one.
    let apns = PushTargetRow::apns(&[0xa1; 32], true);
    store
        .set_push_target(alice, a1, &apns, NOW_MS)
        .await
        .unwrap();
    let stored = store.push_target(a1).await.unwrap().unwrap();
    assert_eq!(stored.kind, ferry_relay::store::PushKind::ApnsSandbox);
    assert_eq!(stored.endpoint, hex::encode([0xa1; 32]));
    // A device the chain never admitted gets none.
    let refused = store
        .set_push_target(alice, stranger, &target(3), NOW_MS)
        .await;
    assert_eq!(
        refused.unwrap_err().code(),
        ferry_protocol::ErrorCode::DeviceRevoked
    );
    // Revoked: its target and its pending wake-up go in the revocation's transaction, and it
    // cannot register again.
    let chain = stored_chain(store, alice).await;
    let body = support::client::revoke_body(&chain, &[a2]);
    let key = user_key(alice);
    let revoke = chain.sign(body, SigningKey::User(&key));
    store.append_link(&revoke, 8, NOW_S).await.unwrap();
    assert_eq!(store.push_target(a2).await.unwrap(), None);
    assert!(claim_mine(store, 1_000, &[a2]).await.is_empty());
    let refused = store.set_push_target(alice, a2, &target(2), NOW_MS).await;
    assert_eq!(
        refused.unwrap_err().code(),
        ferry_protocol::ErrorCode::DeviceRevoked
    );
}
