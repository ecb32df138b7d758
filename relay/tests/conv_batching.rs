//! Group commit of conversations (`store::conv_committer`): many senders' application
//! messages share one transaction and one wake-up per conversation, each sender still gets
//! its own answer (stored, duplicate, refused), a failed batch stores nothing and answers
//! everyone, and cursors are merged and clamped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use ferry_mls::GroupKind;
use ferry_protocol::conversations::ConvId;
use ferry_protocol::{DeviceId, ErrorCode, UserId};
use ferry_relay::store::conv_committer::{ConvCommitConfig, ConvCommitHandle, ConvCommitter};
use ferry_relay::store::{ConvCursor, ConvSendRequest, SendOutcome, StoreError};
use futures_util::future::join_all;
use support::conversation::{Talker, one_to_one};
use support::node::{Node, node};

/// What the committer's hooks saw: batch sizes, and (conv, head, members) per wake-up.
#[derive(Default)]
struct Seen {
    batches: Vec<usize>,
    woken: Vec<(ConvId, u64, Vec<UserId>)>,
}

fn committer(node: &Node) -> (ConvCommitHandle, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (on_batch, on_stored) = (Arc::clone(&seen), Arc::clone(&seen));
    let config = ConvCommitConfig {
        observer: Some(Arc::new(move |len, _| {
            on_batch.lock().unwrap().batches.push(len);
        })),
        on_stored: Some(Arc::new(
            move |conv, head, members: &[UserId], _senders: &[DeviceId]| {
                let mut seen = on_stored.lock().unwrap();
                seen.woken.push((conv, head, members.to_vec()));
            },
        )),
        ..ConvCommitConfig::default()
    };
    let store: Arc<dyn ferry_relay::store::Store> = node.faults.clone();
    (ConvCommitter::spawn(store, config), seen)
}

/// Alice and Bob, contacts, in a 1:1 and a group of the two.
async fn two_conversations(node: &Node) -> (Talker, Talker, ConvId, ConvId) {
    let (addr, relay) = (node.server.local_addr(), node.server.relay_id());
    let (mut a, mut b, one) = one_to_one(addr, relay, 4).await;
    let group = a.create(GroupKind::Group, Vec::new()).await;
    let bob_id = b.user();
    a.add_users(group, &[bob_id]).await;
    b.join(group).await;
    (a, b, one, group)
}

/// `text` encrypted by `talker` for `conv`, as a request with the talker's next `device_seq`.
fn said(talker: &mut Talker, conv: ConvId, text: &str) -> ConvSendRequest {
    let device_seq = talker.next_seq;
    talker.next_seq += 1;
    ConvSendRequest {
        user: talker.user(),
        device: talker.device(),
        send: talker.content(conv, device_seq, text.as_bytes()),
    }
}

fn stored_at(answer: &Result<SendOutcome, StoreError>) -> u64 {
    match answer {
        Ok(SendOutcome::Stored { conv_seq, .. }) => *conv_seq,
        other => panic!("expected a stored message, got {other:?}"),
    }
}

/// The test runtime has one thread: every send below is queued before the committer task
/// runs, so they are one batch.
#[tokio::test]
async fn many_senders_share_one_transaction_and_one_wake_up_per_conversation() {
    let node = node(|_| {}).await;
    let (mut a, mut b, one, group) = two_conversations(&node).await;
    let (first_one, first_group) = (
        a.summary(one).await.head + 1,
        a.summary(group).await.head + 1,
    );
    let (handle, seen) = committer(&node);

    let mut requests = vec![
        said(&mut a, one, "a1"),
        said(&mut b, one, "b1"),
        said(&mut a, group, "a-group"),
        said(&mut b, one, "b2"),
    ];
    // A retry of a1 (same device_seq, same bytes), a different message under a1's
    // device_seq, one sealed under an epoch the conversation never had, and one from a
    // device that is not a member.
    let retry = requests[0].clone();
    let mut conflict = said(&mut a, one, "not a1");
    conflict.send.device_seq = retry.send.device_seq;
    let mut future_epoch = said(&mut a, one, "future");
    future_epoch.send.epoch += 7;
    let mut stranger = said(&mut b, one, "stranger");
    stranger.device = DeviceId([9; 32]);
    requests.extend([retry, conflict, future_epoch, stranger]);
    requests.push(said(&mut a, one, "a2"));

    let answers = join_all(requests.iter().cloned().map(|r| handle.send(r))).await;

    assert_eq!(seen.lock().unwrap().batches, vec![requests.len()]);
    let stored: Vec<u64> = [0, 1, 3, 8]
        .iter()
        .map(|&i| stored_at(&answers[i]))
        .collect();
    assert_eq!(
        stored,
        (first_one..first_one + 4).collect::<Vec<_>>(),
        "gapless, in queue order; refusals take no position"
    );
    assert_eq!(stored_at(&answers[2]), first_group);
    assert!(
        matches!(answers[4], Ok(SendOutcome::Duplicate { conv_seq }) if conv_seq == first_one),
        "{:?}",
        answers[4]
    );
    let code = |i: usize| answers[i].as_ref().map_err(StoreError::code).err();
    assert_eq!(code(5), Some(ErrorCode::Conflict));
    assert_eq!(code(6), Some(ErrorCode::MlsRefused));
    assert_eq!(code(7), Some(ErrorCode::NoSuchConversation));

    // One wake-up per conversation, with its last position and its members.
    let mut woken = std::mem::take(&mut seen.lock().unwrap().woken);
    woken.sort_by_key(|(conv, ..)| *conv);
    let mut members = vec![a.user(), b.user()];
    members.sort();
    let mut expected = vec![
        (one, first_one + 3, members.clone()),
        (group, first_group, members),
    ];
    expected.sort_by_key(|(conv, ..)| *conv);
    assert_eq!(woken, expected);

    // What was stored is what was sent: Bob's device reads the 1:1 in order and opens
    // Alice's messages (its own it skips).
    let read: Vec<(u64, DeviceId)> = b
        .sync(one)
        .await
        .iter()
        .map(|m| (m.conv_seq, m.device))
        .collect();
    let (ad, bd) = (a.device(), b.device());
    let sent: Vec<_> = (first_one..).zip([ad, bd, bd, ad]).collect();
    assert_eq!(read[read.len() - 4..], sent);
    let texts: Vec<Vec<u8>> = b.lines(one).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(texts[texts.len() - 2..], [b"a1".to_vec(), b"a2".to_vec()]);
    handle.shutdown().await;
}

#[tokio::test]
async fn a_failed_batch_answers_every_sender_and_stores_nothing() {
    let node = node(|_| {}).await;
    let (mut a, mut b, one, _) = two_conversations(&node).await;
    let before = a.summary(one).await.head;
    let (handle, seen) = committer(&node);
    let requests = [said(&mut a, one, "x"), said(&mut b, one, "y")];

    node.faults.fail_next_conv_ops(1);
    let answers = join_all(requests.iter().cloned().map(|r| handle.send(r))).await;
    assert!(answers.iter().all(|a| a.is_err()), "{answers:?}");
    assert!(
        seen.lock().unwrap().woken.is_empty(),
        "nobody woken for nothing"
    );
    assert_eq!(a.summary(one).await.head, before);

    // Sent again, the same messages are stored once each.
    let answers = join_all(requests.iter().cloned().map(|r| handle.send(r))).await;
    let stored: Vec<u64> = answers.iter().map(stored_at).collect();
    assert_eq!(stored, vec![before + 1, before + 2]);
    assert_eq!(a.summary(one).await.head, before + 2);
    handle.shutdown().await;
}

#[tokio::test]
async fn cursors_are_merged_clamped_to_the_head_and_never_move_back() {
    let node = node(|_| {}).await;
    let (mut a, mut b, one, group) = two_conversations(&node).await;
    a.say(one, "hello").await;
    let head_one = a.summary(one).await.head;
    let (handle, _) = committer(&node);
    let cursor = |conv, seq| ConvCursor {
        conv,
        device: b.device(),
        seq,
    };
    let delivered = |list: &[ferry_protocol::conversations::ConvSummary], conv, user| {
        let summary = list.iter().find(|c| c.conv == conv).unwrap();
        summary
            .members
            .iter()
            .find(|m| m.user == user)
            .unwrap()
            .delivered
    };

    let list = a.list().await;
    assert!(
        delivered(&list, one, b.user()) < head_one,
        "Bob has not read hello"
    );

    // Far beyond the head, then lower ones in the same batch: the cursor ends at the head.
    let acks = [
        cursor(one, u64::MAX),
        cursor(one, 2),
        cursor(group, 1),
        cursor(one, 1),
    ];
    join_all(acks.into_iter().map(|c| handle.ack(c))).await;
    handle.shutdown().await;
    let list = a.list().await;
    assert_eq!(delivered(&list, one, b.user()), head_one);

    // A later, lower cursor does not move it back.
    let (handle, _) = committer(&node);
    handle.ack(cursor(one, 1)).await.unwrap();
    handle.shutdown().await;
    let list = a.list().await;
    assert_eq!(delivered(&list, one, b.user()), head_one);
    // And a message sent afterwards is beyond it.
    a.say(one, "later").await;
    let list = b.list().await;
    assert_eq!(delivered(&list, one, b.user()), head_one);
}
