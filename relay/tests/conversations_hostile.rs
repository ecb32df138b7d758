//! Hostile clients against the relay's conversation frames: claims, acks, ephemerals, revocation, limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ferry_mls::GroupKind;
use ferry_protocol::conversations::{
    ConvId, ConvSummary, Direction, MAX_CONV_MESSAGES_PER_FRAME, MemberState,
};
use ferry_protocol::limits::MAX_EPHEMERAL_LEN;
use ferry_protocol::{ClaimedKeyPackage, ClientFrame, ErrorCode, ServerFrame, SigningKey, UserId};
use ferry_relay::bus::LocalBusHub;
use futures_util::SinkExt;
use support::client::{Client, Identity, revoke_body};
use support::conversation::{Talker, befriend, refusal};
use support::node::{Node, next_frame, node, node_on};
use support::storage::{NOW_S, stored_chain};
use tokio_tungstenite::tungstenite::Message;

/// How long a `ConvAck` may take to be written (acks may be batched and written later).
const ACK_WRITTEN_WITHIN: Duration = Duration::from_secs(5);

async fn talker(node: &Node, id: &Identity, packages: usize) -> Talker {
    let (addr, relay) = (node.server.local_addr(), node.server.relay_id());
    Talker::connect(addr, relay, id, packages).await
}

/// Alice and Bob (one device each, contacts) in a 1:1 Alice opened; the commit that added Bob
/// is conv_seq 1.
async fn one_to_one(node: &Node) -> (Talker, Talker, ConvId) {
    let (addr, relay) = (node.server.local_addr(), node.server.relay_id());
    support::conversation::one_to_one(addr, relay, 2).await
}

/// `user`'s state in `summary`.
fn member(summary: &ConvSummary, user: UserId) -> &MemberState {
    let found = summary.members.iter().find(|m| m.user == user);
    found.expect("a member")
}

/// `conv`'s summary as soon as `done` holds of it, else the last one read after
/// [`ACK_WRITTEN_WITHIN`] (the caller asserts on what it gets).
async fn summary_once(
    t: &mut Talker,
    conv: ConvId,
    done: impl Fn(&ConvSummary) -> bool,
) -> ConvSummary {
    let deadline = tokio::time::Instant::now() + ACK_WRITTEN_WITHIN;
    loop {
        let seen = t.summary(conv).await;
        if done(&seen) || tokio::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A claim of `user`'s KeyPackages: what it handed out, or the error code.
async fn claim(t: &mut Talker, user: UserId) -> Result<Vec<ClaimedKeyPackage>, ErrorCode> {
    match t.ask(&ClientFrame::KeyPackagesClaim { user }).await {
        ServerFrame::KeyPackagesClaimed {
            user: got,
            packages,
        } => {
            assert_eq!(got, user);
            Ok(packages)
        }
        ServerFrame::Error(e) => Err(e.code),
        other => panic!("a claim answered {other:?}"),
    }
}

/// Sends `frame` on `client`'s socket; whether the write went through (the relay may have
/// closed the socket already).
async fn try_send(client: &mut Client, frame: &ClientFrame) -> bool {
    let bytes = client.channel.seal(frame).unwrap();
    client.ws.send(Message::Binary(bytes.into())).await.is_ok()
}

/// Whether `frame` is an ephemeral.
fn is_ephemeral(frame: &ServerFrame) -> bool {
    matches!(frame, ServerFrame::ConvEphemeral { .. })
}

/// An ephemeral with `body`, to `conv`.
fn ephemeral(conv: ConvId, body: &[u8]) -> ClientFrame {
    ClientFrame::ConvEphemeral {
        conv,
        body: body.to_vec(),
    }
}

/// A send of `t`'s application message `text` under `device_seq`, at `t`'s epoch.
fn content(t: &mut Talker, conv: ConvId, device_seq: u64, text: &[u8]) -> ClientFrame {
    ClientFrame::ConvSend(Box::new(t.content(conv, device_seq, text)))
}

/// Alice (two devices, each with KeyPackages) and Bob in a 1:1 Bob opened, every device
/// joined: (Alice's first device, her laptop, Bob, the conversation).
async fn alice_with_a_laptop(node: &Node) -> (Identity, Talker, Talker, Talker, ConvId) {
    let (alice, bob) = (Identity::new_user(), Identity::new_user());
    let mut a1 = talker(node, &alice, 2).await;
    let mut b = talker(node, &bob, 2).await;
    befriend(&mut a1, &mut b).await;
    let mut a2 = talker(node, &alice.another_device("laptop"), 2).await;
    let conv = b.create(GroupKind::OneToOne, Vec::new()).await;
    let alice_id = a1.user();
    assert_eq!(b.add_users(conv, &[alice_id]).await, 1);
    a1.join(conv).await;
    a2.join(conv).await;
    (alice, a1, a2, b, conv)
}

/// Test 1. Claims take a people-write token of the claiming device: one device claiming a
/// contact's KeyPackages back to back is refused with `rate_limited` before the pool is
/// empty. Once the one-use packages are gone, the last-resort package is handed out again
/// and again: a claim never deletes it.
#[tokio::test]
async fn key_package_claims_are_rate_limited_and_never_take_the_last_resort_package() {
    // One write a second, bursts of two: far below the pool, so the burst cannot drain it.
    let node = node(|config| config.limits.people_writes_per_device_per_second = 1).await;
    let (alice, bob) = (Identity::new_user(), Identity::new_user());
    let mut a1 = talker(&node, &alice, 0).await;
    let mut b = talker(&node, &bob, 0).await;
    befriend(&mut a1, &mut b).await;
    const POOL: usize = 6;
    let last_resort = b.mls.last_resort_key_package().unwrap();
    let upload = ClientFrame::KeyPackagesUpload {
        packages: b
            .mls
            .key_packages(POOL)
            .unwrap()
            .into_iter()
            .map(Into::into)
            .collect(),
        last_resort: Some(last_resort.clone().into()),
    };
    let count = POOL as u64;
    assert_eq!(b.ask(&upload).await, ServerFrame::KeyPackageCount { count });
    let (alice_id, bob_id, bobs) = (a1.user(), b.user(), b.device());

    // A fresh device of Alice (its bucket full) claims Bob's packages many times at once.
    let mut a2 = talker(&node, &alice.another_device("laptop"), 0).await;
    const CLAIMS: usize = 20;
    for _ in 0..CLAIMS {
        let frame = ClientFrame::KeyPackagesClaim { user: bob_id };
        a2.client.send(&frame).await;
    }
    let mut handed = Vec::new();
    for _ in 0..CLAIMS {
        match a2.answer().await {
            ServerFrame::KeyPackagesClaimed { user, packages } => {
                assert_eq!(user, bob_id);
                let [package] = packages.as_slice() else {
                    panic!("one package per device of Bob: {packages:?}");
                };
                assert_eq!(package.device, bobs);
                handed.push(package.package.clone());
            }
            ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}"),
            other => panic!("a claim answered {other:?}"),
        }
    }
    assert!(!handed.is_empty(), "the first claims are within the burst");
    assert!(
        handed.len() < POOL,
        "{} of {CLAIMS} claims went through: the pool of {POOL} is drained",
        handed.len()
    );
    assert!(!handed.contains(&last_resort), "one-use packages first");
    let mut distinct = handed.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        handed.len(),
        "a one-use package is handed out once"
    );

    // The rest of the pool goes (straight from the store, which claims call: no limit there).
    let store = node.store();
    for _ in handed.len()..POOL {
        let claimed = store
            .claim_key_packages(alice_id, a2.device(), bob_id)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_ne!(claimed[0].package, last_resort, "a one-use package is left");
    }
    // Then the last-resort package, to every claim, through the relay and the store alike.
    let mut a3 = talker(&node, &alice.another_device("tablet"), 0).await;
    for _ in 0..2 {
        let claimed = claim(&mut a3, bob_id).await.unwrap();
        let expected = ClaimedKeyPackage {
            device: bobs,
            package: last_resort.clone(),
        };
        assert_eq!(claimed, [expected], "the last-resort package is kept");
    }
    let claimed = store
        .claim_key_packages(alice_id, a3.device(), bob_id)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].package, last_resort);
}

/// Test 2 (the story): a member acknowledging past the head gets its cursor at the head: the
/// acked cursor (`delivered` in `ConvList`) is the head, not the number it sent, and does not
/// cover what comes after. Returns the devices, the conversation and the conv_seq of a commit
/// Bob has not read.
async fn ack_past_the_head(node: &Node) -> (Talker, Talker, ConvId, u64) {
    let (mut a, mut b, conv) = one_to_one(node).await;
    let bob = b.user();
    a.say(conv, "one").await;
    let head = a.say(conv, "two").await;
    let before = a.summary(conv).await;
    assert_eq!(
        member(&before, bob).delivered,
        1,
        "Bob's cursor is at his join"
    );

    // Far past the head (acks may be written a little later: wait for the change).
    let seq = head + 1000;
    b.client.send(&ClientFrame::ConvAck { conv, seq }).await;
    let seen = summary_once(&mut a, conv, |s| member(s, bob).delivered != 1).await;
    assert_eq!(member(&seen, bob).delivered, head, "an ack past the head");
    // The largest sequence there is, after one more message.
    let head = a.say(conv, "three").await;
    let seq = u64::MAX;
    b.client.send(&ClientFrame::ConvAck { conv, seq }).await;
    let seen = summary_once(&mut a, conv, |s| member(s, bob).delivered != head - 1).await;
    assert_eq!(member(&seen, bob).delivered, head, "an ack of u64::MAX");

    // A commit after it is not covered by those acks: Alice's cursor passes it, Bob's does not.
    let commit = a
        .commit(conv, |mls| mls.self_update(&conv.0).unwrap())
        .await;
    let ServerFrame::ConvSent { conv_seq, .. } = commit else {
        panic!("the commit answered {commit:?}");
    };
    a.sync(conv).await;
    let alice = a.user();
    let seen = summary_once(&mut a, conv, |s| member(s, alice).delivered == conv_seq).await;
    assert_eq!(member(&seen, alice).delivered, conv_seq);
    assert_eq!(
        member(&seen, bob).delivered,
        head,
        "Bob has not read the commit"
    );
    (a, b, conv, conv_seq)
}

/// Test 2 on SQLite, with retention: the commit Bob has not read (whatever he claimed to have
/// acknowledged) is kept, and he reads it.
#[tokio::test]
async fn an_ack_past_the_head_is_stored_as_the_head_and_retention_keeps_the_next_commit() {
    let node = node(|_| {}).await;
    let (a, mut b, conv, commit) = ack_past_the_head(&node).await;
    const DAY_MS: u64 = 86_400_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Everything is old enough to go; within the lag, an unread commit is kept.
    let deleted = node
        .store()
        .trim_conversations(0, DAY_MS, now + 60_000)
        .await
        .unwrap();
    assert_eq!(deleted, commit - 1, "everything before Bob's unread commit");
    let fetch = ClientFrame::ConvFetch {
        conv,
        from: b.cursors[&conv],
        direction: Direction::Forward,
        limit: 100,
    };
    let earliest = commit;
    let told = b.ask(&fetch).await;
    let expected = ServerFrame::ConvTrimmed {
        conv,
        earliest,
        rejoin: false,
    };
    assert_eq!(
        told, expected,
        "only application messages Bob skipped are gone"
    );
    b.cursors.insert(conv, commit - 1);
    b.sync(conv).await;
    assert_eq!(
        b.mls.epoch_authenticator(&conv.0).unwrap(),
        a.mls.epoch_authenticator(&conv.0).unwrap()
    );
}

/// Test 2 on PostgreSQL (the clamp is written per dialect); no retention there, the database
/// is shared with other tests.
#[tokio::test]
async fn an_ack_past_the_head_is_stored_as_the_head_on_postgres() {
    let Some(url) = support::postgres_url().await else {
        return;
    };
    let node = node_on(&LocalBusHub::new(), Some(url), |_| {}).await;
    ack_past_the_head(&node).await;
}

/// Test 3. An ephemeral to a conversation from a device that is not in it (a contact of a
/// member, a stranger) reaches no member's device; one from a member does (sent after, so
/// anything from the others would have come first). Neither outsider gets the GroupInfo.
#[tokio::test]
async fn an_ephemeral_from_outside_the_group_reaches_no_member() {
    let node = node(|_| {}).await;
    let (mut a, mut b, conv) = one_to_one(&node).await;
    let mut carol = talker(&node, &Identity::new_user(), 0).await;
    befriend(&mut a, &mut carol).await;
    let mut dave = talker(&node, &Identity::new_user(), 0).await;

    for outsider in [&mut carol, &mut dave] {
        outsider.client.send(&ephemeral(conv, b"outsider")).await;
        // A round trip: the ephemeral was handled (and any delivery queued) before this answer.
        let info = outsider.ask(&ClientFrame::GroupInfoFetch { conv }).await;
        assert_eq!(refusal(&info), Some(ErrorCode::NoSuchConversation));
    }
    a.client.send(&ephemeral(conv, b"alice types")).await;
    let got = b.pushed_frame(is_ephemeral).await;
    let from_alice = ServerFrame::ConvEphemeral {
        conv,
        user: a.user(),
        from: a.device(),
        body: b"alice types".to_vec(),
    };
    assert_eq!(got, from_alice, "the first ephemeral Bob gets is Alice's");
    b.client.send(&ephemeral(conv, b"bob types")).await;
    let got = a.pushed_frame(is_ephemeral).await;
    let from_bob = ServerFrame::ConvEphemeral {
        conv,
        user: b.user(),
        from: b.device(),
        body: b"bob types".to_vec(),
    };
    assert_eq!(got, from_bob, "the first ephemeral Alice gets is Bob's");
    for m in [&mut a, &mut b] {
        let _ = m.list().await;
        assert!(!m.pushed.iter().any(is_ephemeral), "{:?}", m.pushed);
    }
}

/// Test 4. A device its user revokes: its session ends at once (an encrypted `Error(203)`,
/// then close code 4203) whatever it sent after the revocation (a KeyPackage upload, a
/// message, a fetch: none is answered, nothing is stored), it cannot connect again, and a
/// claim of its user's KeyPackages hands out none of its packages.
#[tokio::test]
async fn a_revoked_device_is_closed_refused_and_its_packages_are_not_handed_out() {
    let node = node(|_| {}).await;
    let (alice, mut a1, mut a2, mut b, conv) = alice_with_a_laptop(&node).await;
    let (alice_id, laptop) = (a1.user(), a2.device());
    let send = content(&mut a2, conv, 1, b"written before the revocation");
    let packages = a2.mls.key_packages(2).unwrap();

    let chain = a1.client.fetch_chain(alice_id).await;
    let revoke = revoke_body(&chain, &[laptop]);
    let signer = SigningKey::Device(&alice.device);
    let revoked = a1.client.sign_and_append(alice_id, revoke, signer).await;
    revoked.unwrap();

    // The hub closed the laptop's session before Alice's first device heard `ChainAppended`,
    // so everything below reaches a session that is ending (or a socket already closed: the
    // writes may fail).
    let upload = ClientFrame::KeyPackagesUpload {
        packages: packages.into_iter().map(Into::into).collect(),
        last_resort: None,
    };
    let fetch = ClientFrame::ConvFetch {
        conv,
        from: 0,
        direction: Direction::Forward,
        limit: 100,
    };
    for frame in [&upload, &send, &fetch] {
        try_send(&mut a2.client, frame).await;
    }
    loop {
        match next_frame(&mut a2.client).await {
            Ok(ServerFrame::Error(e)) => {
                assert_eq!(e.code, ErrorCode::DeviceRevoked, "{e:?}");
                break;
            }
            // Pushed before the revocation.
            Ok(
                ServerFrame::Events(_)
                | ServerFrame::ConvHead { .. }
                | ServerFrame::Presence { .. },
            ) => {}
            other => panic!("the revoked device got {other:?}"),
        }
    }
    let close = ErrorCode::DeviceRevoked.close_code();
    assert_eq!(next_frame(&mut a2.client).await, Err(Some(close)));
    let (addr, relay) = (node.server.local_addr(), node.server.relay_id());
    let again = Client::connect_as(addr, relay, &a2.id, None).await;
    let refused = again.err().expect("the revoked device connects no more");
    assert_eq!(
        refused.code(),
        Some(ErrorCode::DeviceRevoked),
        "{refused:?}"
    );

    // Bob gets a package of Alice's first device only; nothing the laptop sent was stored.
    let claimed = claim(&mut b, alice_id).await.unwrap();
    let devices: Vec<_> = claimed.iter().map(|p| p.device).collect();
    assert_eq!(devices, [a1.device()]);
    assert_eq!(
        b.summary(conv).await.head,
        1,
        "only the commit that added Alice"
    );
    let page = a1.page(conv, 0, Direction::Forward, 100).await;
    assert_eq!(
        page,
        Ok((Vec::new(), false)),
        "Alice's first device reads, nothing new"
    );
}

/// Revokes `device` of `id`'s user behind the relay's back (straight into the store, as a
/// revocation this node's hub never heard of: a lost bus message), so its session stays open
/// until its next device check (an hour away in these tests).
async fn revoke_unheard(node: &Node, id: &Identity, device: ferry_protocol::DeviceId) {
    let store = node.store();
    let user = id.user.id();
    let chain = stored_chain(&**store, user).await;
    let link = chain.sign(
        revoke_body(&chain, &[device]),
        SigningKey::Device(&id.device),
    );
    store.append_link(&link, 64, NOW_S).await.unwrap();
}

/// Test 4, when the hub's word never reached the revoked device's session: the store refuses
/// it on its own (a message, a fetch, the GroupInfo), and a claim never hands out a package
/// of it, even one it uploaded after its revocation.
#[tokio::test]
async fn a_revoked_device_whose_session_missed_the_revocation_is_refused_by_the_store() {
    let node = node(|_| {}).await;
    let (alice, a1, mut a2, mut b, conv) = alice_with_a_laptop(&node).await;
    let (alice_id, laptop) = (a1.user(), a2.device());
    revoke_unheard(&node, &alice, laptop).await;

    let send = content(&mut a2, conv, 1, b"after my revocation");
    let answer = a2.ask(&send).await;
    assert_eq!(
        refusal(&answer),
        Some(ErrorCode::NoSuchConversation),
        "{answer:?}"
    );
    let answer = a2.page(conv, 0, Direction::Forward, 100).await;
    assert_eq!(answer.unwrap_err(), ErrorCode::NoSuchConversation);
    let answer = a2.ask(&ClientFrame::GroupInfoFetch { conv }).await;
    assert_eq!(
        refusal(&answer),
        Some(ErrorCode::NoSuchConversation),
        "{answer:?}"
    );
    // The upload is not checked against the chain (the answer may be a count), but what it
    // stores is never handed out.
    let upload = ClientFrame::KeyPackagesUpload {
        packages: a2
            .mls
            .key_packages(2)
            .unwrap()
            .into_iter()
            .map(Into::into)
            .collect(),
        last_resort: Some(a2.mls.last_resort_key_package().unwrap().into()),
    };
    let answer = a2.ask(&upload).await;
    assert!(
        matches!(answer, ServerFrame::KeyPackageCount { .. }) || refusal(&answer).is_some(),
        "{answer:?}"
    );
    for _ in 0..3 {
        let claimed = claim(&mut b, alice_id).await.unwrap();
        let devices: Vec<_> = claimed.iter().map(|p| p.device).collect();
        assert_eq!(devices, [a1.device()], "a package of the revoked device");
    }
    // Nor does it claim a contact's packages (to open something new).
    let bob_id = b.user();
    assert_eq!(
        claim(&mut a2, bob_id).await.unwrap_err(),
        ErrorCode::UnknownDevice
    );
    assert_eq!(
        b.summary(conv).await.head,
        1,
        "nothing of the laptop stored"
    );
}

/// Found while writing these tests (and fixed): a revoked device whose session outlived the
/// revocation (as above) reached the members with `ConvEphemeral` and moved its user's read
/// marker with `ConvRead` (`conversation_members` checked the leaf, not the chain).
#[tokio::test]
async fn a_revoked_device_whose_session_missed_the_revocation_is_silent() {
    let node = node(|_| {}).await;
    let (alice, mut a1, mut a2, mut b, conv) = alice_with_a_laptop(&node).await;
    b.say(conv, "one").await;
    let laptop = a2.device();
    revoke_unheard(&node, &alice, laptop).await;

    a2.client.send(&ephemeral(conv, b"revoked")).await;
    a2.client
        .send(&ClientFrame::ConvRead { conv, seq: 2 })
        .await;
    let _ = a2.list().await; // a round trip: both were handled
    // Alice's first device types after: anything from the laptop would reach Bob first.
    a1.client.send(&ephemeral(conv, b"alice types")).await;
    let got = b.pushed_frame(is_ephemeral).await;
    let ServerFrame::ConvEphemeral { from, .. } = got else {
        unreachable!()
    };
    assert_eq!(from, a1.device(), "Bob heard the revoked device first");
    let read = member(&b.summary(conv).await, a1.user()).read;
    assert_eq!(read, 1, "the revoked device moved Alice's read marker");
}

/// A read marker past the head lands on the head (the last message there is): the members
/// are told that, and a message after it is unread.
#[tokio::test]
async fn a_read_marker_past_the_head_is_the_head() {
    let node = node(|_| {}).await;
    let (mut a, mut b, conv) = one_to_one(&node).await;
    let bob = b.user();
    a.say(conv, "one").await;
    let mut head = a.say(conv, "two").await;
    assert_eq!(b.summary(conv).await.unread, 2);
    let read_by_bob =
        |f: &ServerFrame| matches!(f, ServerFrame::ConvReadBy { user, .. } if *user == bob);

    for (seq, next) in [(u64::MAX, "three"), (head + 1001, "four")] {
        b.client.send(&ClientFrame::ConvRead { conv, seq }).await;
        let told = a.pushed_frame(read_by_bob).await;
        let expected = ServerFrame::ConvReadBy {
            conv,
            user: bob,
            seq: head,
        };
        assert_eq!(told, expected, "a marker at {seq}");
        let seen = b.summary(conv).await;
        assert_eq!((member(&seen, bob).read, seen.unread), (head, 0));
        head = a.say(conv, next).await;
        let seen = b.summary(conv).await;
        assert_eq!(seen.unread, 1, "a message after the marker is unread");
    }
}

/// A `device_seq` of 0, or past what the database holds, is refused with `invalid_sequence`
/// and stores nothing; the conversation goes on.
#[tokio::test]
async fn a_send_with_device_seq_zero_or_past_i64_is_refused() {
    let node = node(|_| {}).await;
    let (mut a, mut b, conv) = one_to_one(&node).await;
    for device_seq in [0, i64::MAX as u64 + 1, u64::MAX] {
        let send = content(&mut a, conv, device_seq, b"out of range");
        let answer = a.ask(&send).await;
        let ServerFrame::ConvRefused {
            device_seq: named,
            error,
            ..
        } = &answer
        else {
            panic!("device_seq {device_seq} answered {answer:?}");
        };
        assert_eq!(
            (*named, error.code),
            (device_seq, ErrorCode::InvalidSequence)
        );
    }
    assert_eq!(b.summary(conv).await.head, 1, "nothing stored");
    let said = a.say(conv, "in range").await;
    b.sync(conv).await;
    let lines: Vec<_> = b.lines(conv).into_iter().map(|l| (l.0, l.2)).collect();
    assert_eq!(lines, [(said, b"in range".to_vec())]);
}

/// `ConvFetch` limits are clamped: 0 is one message (never an empty page that says more
/// follow), and more than a frame holds is a full frame; a `from` past the head (even past
/// what the database holds) is an empty last page.
#[tokio::test]
async fn a_fetch_limit_of_zero_or_too_many_is_clamped() {
    let node = node(|_| {}).await;
    let (mut a, mut b, conv) = one_to_one(&node).await;
    // More messages than a page holds, sent back to back (answers read after).
    let total = MAX_CONV_MESSAGES_PER_FRAME + 2;
    for i in 0..total {
        let device_seq = a.next_seq;
        a.next_seq += 1;
        let send = content(&mut a, conv, device_seq, format!("{i}").as_bytes());
        a.client.send(&send).await;
    }
    for _ in 0..total {
        let answer = a.answer().await;
        assert!(matches!(answer, ServerFrame::ConvSent { .. }), "{answer:?}");
    }
    let head = 1 + total as u64;

    let (messages, more) = b.page(conv, 1, Direction::Forward, 0).await.unwrap();
    let seqs: Vec<_> = messages.iter().map(|m| m.conv_seq).collect();
    assert_eq!((seqs, more), (vec![2], true), "limit 0, forward");
    let (messages, more) = b.page(conv, 0, Direction::Backward, 0).await.unwrap();
    let seqs: Vec<_> = messages.iter().map(|m| m.conv_seq).collect();
    assert_eq!((seqs, more), (vec![head], true), "limit 0, backward");

    let (messages, more) = b.page(conv, 1, Direction::Forward, u16::MAX).await.unwrap();
    assert_eq!(messages.len(), MAX_CONV_MESSAGES_PER_FRAME);
    assert!(more);
    assert_eq!(
        messages.last().unwrap().conv_seq,
        1 + MAX_CONV_MESSAGES_PER_FRAME as u64
    );
    let (messages, more) = b
        .page(conv, 0, Direction::Backward, u16::MAX)
        .await
        .unwrap();
    assert_eq!(messages.len(), MAX_CONV_MESSAGES_PER_FRAME);
    assert!(more);
    assert_eq!(messages[0].conv_seq, head);

    for from in [head, head + 1, i64::MAX as u64 + 1] {
        let page = b.page(conv, from, Direction::Forward, 10).await.unwrap();
        assert_eq!(page, (Vec::new(), false), "from {from}");
    }
}

/// Found while writing these tests (and fixed): `read_messages` computed `from.max(joined) + 1`
/// on the client's `from`, which overflowed at `u64::MAX`: a panic in debug builds (the
/// session died), and in release a wrap to 0, answered `ConvTrimmed { rejoin: true }` though
/// nothing was trimmed.
#[tokio::test]
async fn a_fetch_from_u64_max_is_an_empty_page() {
    let node = node(|_| {}).await;
    let (_a, mut b, conv) = one_to_one(&node).await;
    for direction in [Direction::Forward, Direction::Backward] {
        let fetch = ClientFrame::ConvFetch {
            conv,
            from: u64::MAX,
            direction,
            limit: 10,
        };
        b.client.send(&fetch).await;
        let answer = next_frame(&mut b.client).await;
        assert!(
            matches!(&answer, Ok(ServerFrame::ConvMessages { more: false, .. })),
            "{direction:?} from u64::MAX answered {answer:?}"
        );
    }
}

/// An ephemeral body over the protocol's limit ends the sender's session (`payload_too_large`)
/// and reaches nobody; the sender's next session is heard.
#[tokio::test]
async fn an_oversized_ephemeral_closes_the_session_and_reaches_nobody() {
    let node = node(|_| {}).await;
    let (mut a, mut b, conv) = one_to_one(&node).await;
    let body = vec![7; MAX_EPHEMERAL_LEN + 1];
    a.client.send(&ephemeral(conv, &body)).await;
    let close = ErrorCode::PayloadTooLarge.close_code();
    loop {
        match next_frame(&mut a.client).await {
            Err(code) => {
                assert_eq!(code, Some(close));
                break;
            }
            Ok(ServerFrame::Error(e)) => assert_eq!(e.code, ErrorCode::PayloadTooLarge),
            Ok(ServerFrame::Events(_) | ServerFrame::ConvHead { .. }) => {}
            Ok(other) => panic!("the oversized ephemeral got {other:?}"),
        }
    }
    let mut again = talker(&node, &a.id, 0).await;
    again.client.send(&ephemeral(conv, b"small")).await;
    let got = b.pushed_frame(is_ephemeral).await;
    let ServerFrame::ConvEphemeral { body, .. } = got else {
        unreachable!()
    };
    assert_eq!(
        body, b"small",
        "the first ephemeral Bob gets is the small one"
    );
}

/// Found while writing these tests (and fixed: pages are also cut at `MAX_CONV_PAGE_BYTES`):
/// `ConvFetch` pages were cut by count only, so a page of large messages (each within
/// `MAX_MLS_MESSAGE_LEN`) passed the 1 MiB frame limit; the relay could not seal it and
/// closed the reader's session, at every retry.
#[tokio::test]
async fn a_page_of_large_messages_is_served() {
    let node = node(|_| {}).await;
    let (mut a, mut b, conv) = one_to_one(&node).await;
    let big = vec![b'x'; 180 * 1024];
    for _ in 0..6 {
        let device_seq = a.next_seq;
        a.next_seq += 1;
        let send = content(&mut a, conv, device_seq, &big);
        let answer = a.ask(&send).await;
        assert!(matches!(answer, ServerFrame::ConvSent { .. }), "{answer:?}");
    }
    // The SDK reads pages of 200.
    let fetch = ClientFrame::ConvFetch {
        conv,
        from: 1,
        direction: Direction::Forward,
        limit: 200,
    };
    b.client.send(&fetch).await;
    let answer = loop {
        match next_frame(&mut b.client).await {
            Ok(ServerFrame::ConvHead { .. } | ServerFrame::Events(_)) => {}
            answer => break answer,
        }
    };
    assert!(
        matches!(answer, Ok(ServerFrame::ConvMessages { .. })),
        "a page of six 180 KiB messages answered {answer:?}"
    );
}
