//! Conversations against real relays, with real MLS clients on every device: the relay as
//! MLS's Delivery Service (one gapless stream per conversation, first valid commit per epoch
//! wins, Welcomes into the joiners' logs), its membership rules, the KeyPackage directory,
//! read markers and unread counts, typing, and rejoining by external commit. On SQLite, and
//! on PostgreSQL with members on two relay nodes over Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use ferry_mls::GroupKind;
use ferry_protocol::conversations::{ConvId, Direction};
use ferry_protocol::{
    ClientFrame, ErrorCode, MessageClass, RelayId, ServerFrame, SigningKey, UserId,
};
use ferry_relay::{Config, Server};
use support::client::{Identity, revoke_body};
use support::conversation::{Talker, befriend, one_to_one, refusal};
use support::node::{Node, node};

/// Where a device connects: a relay node's address and key.
type At = (SocketAddr, RelayId);

fn at(server: &Server) -> At {
    (server.local_addr(), server.relay_id())
}

async fn talker(at: At, id: &Identity) -> Talker {
    Talker::connect(at.0, at.1, id, 4).await
}

/// Three users with two devices each, `one`'s devices and `two`'s alternating so that every
/// user has a device on each node: Alice, Bob and Carol, all contacts.
async fn three_users(one: At, two: At) -> [Talker; 6] {
    let (alice, bob, carol) = (
        Identity::new_user(),
        Identity::new_user(),
        Identity::new_user(),
    );
    let mut a1 = talker(one, &alice).await;
    let mut b1 = talker(two, &bob).await;
    let mut c1 = talker(one, &carol).await;
    befriend(&mut a1, &mut b1).await;
    befriend(&mut a1, &mut c1).await;
    befriend(&mut b1, &mut c1).await;
    let a2 = talker(two, &alice.another_device("laptop")).await;
    let b2 = talker(one, &bob.another_device("laptop")).await;
    let c2 = talker(two, &carol.another_device("laptop")).await;
    [a1, a2, b1, b2, c1, c2]
}

/// Every device of `devices` reads `conv` to the end; all hold the same transcript (which
/// is `expected`, in order) and the same epoch authenticator.
async fn all_agree(devices: &mut [&mut Talker], conv: ConvId, expected: &[&str]) {
    for device in devices.iter_mut() {
        device.sync(conv).await;
    }
    let first = devices[0].lines(conv);
    let texts: Vec<&[u8]> = first.iter().map(|line| line.2.as_slice()).collect();
    let want: Vec<&[u8]> = expected.iter().map(|t| t.as_bytes()).collect();
    assert_eq!(texts, want, "the transcript of {conv}");
    let authenticator = devices[0].mls.epoch_authenticator(&conv.0).unwrap();
    for device in devices.iter() {
        assert_eq!(
            device.lines(conv),
            first,
            "{:?} holds another transcript",
            device.device()
        );
        assert_eq!(
            device.mls.epoch_authenticator(&conv.0).unwrap(),
            authenticator,
            "{:?} is in another epoch",
            device.device()
        );
    }
}

/// Test 1: a 1:1 and a group of three, every device of every member decrypts every message
/// exactly once, in order; the relay's database holds no plaintext.
async fn one_to_one_and_group(one: At, two: At) -> Vec<String> {
    let [mut a1, mut a2, mut b1, mut b2, mut c1, mut c2] = three_users(one, two).await;

    // Alice opens a 1:1 with Bob: her other device and both of Bob's come in one commit.
    let dm = a1.create(GroupKind::OneToOne, Vec::new()).await;
    let (alice, bob, carol) = (a1.user(), b1.user(), c1.user());
    a1.add_users(dm, &[alice, bob]).await;
    for device in [&mut a2, &mut b1, &mut b2] {
        device.join(dm).await;
    }
    a1.say(dm, "hi bob").await;
    b2.say(dm, "hi alice, from my laptop").await;
    a2.say(dm, "and from mine").await;
    all_agree(
        &mut [&mut a1, &mut a2, &mut b1, &mut b2],
        dm,
        &["hi bob", "hi alice, from my laptop", "and from mine"],
    )
    .await;

    // Bob makes a group of the three of them.
    let group = b1.create(GroupKind::Group, vec![bob]).await;
    b1.add_users(group, &[bob, alice, carol]).await;
    for device in [&mut b2, &mut a1, &mut a2, &mut c1, &mut c2] {
        device.join(group).await;
    }
    c1.say(group, "carol here").await;
    a2.say(group, "alice here").await;
    b1.say(group, "welcome both").await;
    c2.say(group, "carol's laptop too").await;
    all_agree(
        &mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1, &mut c2],
        group,
        &[
            "carol here",
            "alice here",
            "welcome both",
            "carol's laptop too",
        ],
    )
    .await;
    // Carol is in the group only: the 1:1 is not hers to read.
    assert_eq!(
        c1.page(dm, 0, Direction::Forward, 10).await.unwrap_err(),
        ErrorCode::NoSuchConversation
    );
    vec![
        "hi bob".into(),
        "hi alice, from my laptop".into(),
        "carol's laptop too".into(),
    ]
}

/// Whether `needle` occurs in any of `haystacks`.
fn contains(haystacks: &[Vec<u8>], needle: &[u8]) -> bool {
    haystacks
        .iter()
        .any(|h| h.windows(needle.len()).any(|w| w == needle))
}

/// Every message, GroupInfo, group state, KeyPackage and log payload the relay stores.
async fn stored_blobs(url: &str) -> Vec<Vec<u8>> {
    use sqlx::Row;
    let mut all = Vec::new();
    let queries = [
        "SELECT message FROM conv_messages",
        "SELECT group_state FROM conversations",
        "SELECT group_info FROM conversations",
        "SELECT package FROM key_packages",
        "SELECT payload FROM events",
    ];
    if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        for q in queries {
            for row in sqlx::query(q).fetch_all(&pool).await.unwrap() {
                all.push(row.get::<Vec<u8>, _>(0));
            }
        }
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        for q in queries {
            for row in sqlx::query(q).fetch_all(&pool).await.unwrap() {
                all.push(row.get::<Vec<u8>, _>(0));
            }
        }
    }
    all
}

#[tokio::test]
async fn every_device_of_every_member_reads_every_message_once_in_order_on_sqlite() {
    let node = node(|_| {}).await;
    let texts = one_to_one_and_group(at(&node.server), at(&node.server)).await;
    let blobs = stored_blobs(&node.database_url).await;
    assert!(blobs.len() > 10, "the query found the stored blobs");
    for text in texts {
        assert!(
            !contains(&blobs, text.as_bytes()),
            "the relay stores {text:?} in the clear"
        );
    }
}

/// Two relay nodes on one PostgreSQL database and one Redis.
async fn two_redis_nodes() -> Option<(Server, Server, String, [tempfile::TempDir; 2])> {
    let database = support::postgres_url().await?;
    let redis = support::redis::redis_url().await?;
    let mut dirs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
        config.database_url = Some(database.clone());
        config.redis_url = Some(redis.clone());
        config.log.safety_poll_secs = 3600;
        servers.push(Server::spawn(config).await.unwrap());
        dirs.push(dir);
    }
    let two = servers.pop()?;
    let one = servers.pop()?;
    let dirs: [tempfile::TempDir; 2] = dirs.try_into().ok()?;
    Some((one, two, database, dirs))
}

#[tokio::test]
async fn every_device_of_every_member_reads_every_message_across_two_nodes_on_postgres() {
    let Some((one, two, database, _dirs)) = two_redis_nodes().await else {
        return;
    };
    let texts = one_to_one_and_group(at(&one), at(&two)).await;
    let blobs = stored_blobs(&database).await;
    for text in texts {
        assert!(!contains(&blobs, text.as_bytes()), "{text:?} in the clear");
    }
}

/// Alice and Bob in a 1:1 (each with one device), ready to talk.
async fn pair_talking(node: &Node) -> (Talker, Talker, ConvId) {
    let (addr, relay) = at(&node.server);
    one_to_one(addr, relay, 4).await
}

/// Test 2: two members commit at the same epoch; the first wins, the other is told the epoch
/// and head, catches up and retries; nobody's group diverges.
#[tokio::test]
async fn of_two_commits_at_one_epoch_the_first_wins_and_the_other_retries() {
    let node = node(|_| {}).await;
    let (mut a, mut b, conv) = pair_talking(&node).await;
    let epoch = a.mls.epoch(&conv.0).unwrap();
    assert_eq!(b.mls.epoch(&conv.0).unwrap(), epoch);

    // Both commit an update of their own leaf at the same epoch; Alice's reaches the relay
    // first.
    let first = a
        .commit(conv, |mls| mls.self_update(&conv.0).unwrap())
        .await;
    let ServerFrame::ConvSent { conv_seq, .. } = first else {
        panic!("the first commit answered {first:?}");
    };
    let second = b
        .commit(conv, |mls| mls.self_update(&conv.0).unwrap())
        .await;
    let ServerFrame::ConvStale {
        epoch: now, head, ..
    } = second
    else {
        panic!("the second commit answered {second:?}");
    };
    assert_eq!((now, head), (epoch + 1, conv_seq));
    // Bob catches up and commits again, at the new epoch.
    b.sync(conv).await;
    assert_eq!(b.mls.epoch(&conv.0).unwrap(), epoch + 1);
    let retry = b
        .commit(conv, |mls| mls.self_update(&conv.0).unwrap())
        .await;
    assert!(matches!(retry, ServerFrame::ConvSent { .. }), "{retry:?}");
    a.say(conv, "still in step?").await;
    b.say(conv, "yes").await;
    all_agree(&mut [&mut a, &mut b], conv, &["still in step?", "yes"]).await;
    assert_eq!(a.mls.epoch(&conv.0).unwrap(), epoch + 2);

    // A retry of a stored message is answered with its original place; other bytes under
    // the same device_seq are a conflict.
    let epoch = a.mls.epoch(&conv.0).unwrap();
    let message = a.mls.encrypt(&conv.0, b"once").unwrap();
    let seq = a.next_seq;
    let sent = a
        .send(
            conv,
            MessageClass::Content,
            epoch,
            message.clone(),
            None,
            None,
        )
        .await;
    a.next_seq = seq;
    let again = a
        .send(conv, MessageClass::Content, epoch, message, None, None)
        .await;
    assert_eq!(sent, again);
    a.next_seq = seq;
    let other = a.mls.encrypt(&conv.0, b"other").unwrap();
    let conflict = a
        .send(conv, MessageClass::Content, epoch, other, None, None)
        .await;
    assert_eq!(refusal(&conflict), Some(ErrorCode::Conflict));
}

/// Test 4 (and the relay's other rules): strangers, removed members, partial adds, non-admins,
/// forged and misplaced messages, blocked users.
#[tokio::test]
async fn the_relay_refuses_what_the_group_and_the_people_rules_forbid() {
    let node = node(|_| {}).await;
    let here = at(&node.server);
    let [mut a1, _a2, mut b1, mut b2, mut c1, mut c2] = three_users(here, here).await;
    let (alice, bob, carol) = (a1.user(), b1.user(), c1.user());
    let group = b1.create(GroupKind::Group, vec![bob]).await;

    // Adding only one of Carol's devices is refused.
    let carols = b1.claim(carol).await.unwrap();
    assert_eq!(carols.len(), 2);
    let partial = b1
        .commit(group, |mls| mls.add(&group.0, &carols[..1]).unwrap())
        .await;
    assert_eq!(
        refusal(&partial),
        Some(ErrorCode::MembershipRefused),
        "{partial:?}"
    );
    // A commit that adds users without their Welcome is refused too.
    let bobs = b1.claim(bob).await.unwrap();
    let mut without_welcome = None;
    let no_welcome = b1
        .commit(group, |mls| {
            let mut out = mls.add(&group.0, &bobs).unwrap();
            without_welcome = out.welcome.take();
            out
        })
        .await;
    assert_eq!(
        refusal(&no_welcome),
        Some(ErrorCode::MlsRefused),
        "{no_welcome:?}"
    );
    assert!(without_welcome.is_some());

    b1.add_users(group, &[bob, alice, carol]).await;
    for device in [&mut b2, &mut a1, &mut c1, &mut c2] {
        device.join(group).await;
    }

    // A non-admin may not remove someone else.
    let alice_devices: Vec<_> = c1
        .mls
        .members(&group.0)
        .unwrap()
        .into_iter()
        .filter(|(user, _)| *user == alice)
        .collect();
    c1.sync(group).await;
    let coup = c1
        .commit(group, |mls| mls.remove(&group.0, &alice_devices).unwrap())
        .await;
    assert_eq!(
        refusal(&coup),
        Some(ErrorCode::MembershipRefused),
        "{coup:?}"
    );

    // Garbage, an application message sent as a commit, a commit naming another epoch.
    let epoch = c1.mls.epoch(&group.0).unwrap();
    let garbage = c1
        .send(
            group,
            MessageClass::Commit,
            epoch,
            vec![1, 2, 3],
            None,
            None,
        )
        .await;
    assert_eq!(refusal(&garbage), Some(ErrorCode::MlsRefused));
    let text = c1.mls.encrypt(&group.0, b"not a commit").unwrap();
    let wrong_class = c1
        .send(group, MessageClass::Commit, epoch, text.clone(), None, None)
        .await;
    assert_eq!(refusal(&wrong_class), Some(ErrorCode::MlsRefused));
    let wrong_epoch = c1
        .send(group, MessageClass::Content, epoch + 1, text, None, None)
        .await;
    assert_eq!(refusal(&wrong_epoch), Some(ErrorCode::MlsRefused));

    // The admin removes Carol (both devices): her devices are told in their log and can no
    // longer read, send or fetch the GroupInfo.
    b1.sync(group).await;
    let carol_devices = [(carol, c1.device()), (carol, c2.device())];
    let removed = b1
        .commit(group, |mls| mls.remove(&group.0, &carol_devices).unwrap())
        .await;
    assert!(
        matches!(removed, ServerFrame::ConvSent { .. }),
        "{removed:?}"
    );
    let epoch = c1.mls.epoch(&group.0).unwrap();
    let late = c1.mls.encrypt(&group.0, b"am I still here?").unwrap();
    let refused = c1
        .send(group, MessageClass::Content, epoch, late, None, None)
        .await;
    assert_eq!(refusal(&refused), Some(ErrorCode::NoSuchConversation));
    assert_eq!(
        c2.page(group, 0, Direction::Forward, 10).await.unwrap_err(),
        ErrorCode::NoSuchConversation
    );
    let info = c2.ask(&ClientFrame::GroupInfoFetch { conv: group }).await;
    assert_eq!(refusal(&info), Some(ErrorCode::NoSuchConversation));
    // Carol's log tells her she was removed (this waits for the notice).
    c1.wait_removed(group).await;
    c2.wait_removed(group).await;
    // A member that has not processed the removal yet cannot send under the old epoch (Carol
    // could read it): it catches up and encrypts again.
    let old_epoch = b2.mls.epoch(&group.0).unwrap();
    let stale = b2.mls.encrypt(&group.0, b"after carol left").unwrap();
    let refused = b2
        .send(group, MessageClass::Content, old_epoch, stale, None, None)
        .await;
    assert_eq!(
        refusal(&refused),
        Some(ErrorCode::MlsRefused),
        "{refused:?}"
    );
    b2.sync(group).await;
    // What is said afterwards is not readable by her devices even with the messages.
    let secret = b2.say(group, "after carol left").await;
    let (messages, _) = b1
        .page(group, secret - 1, Direction::Forward, 1)
        .await
        .unwrap();
    assert!(c1.mls.process(&group.0, &messages[0].message).is_err());

    // Strangers: a user who is not a contact cannot claim, nor read or write a conversation
    // it is not in (the same answer whether the conversation exists or not).
    let dave = Identity::new_user();
    let mut d = talker(here, &dave).await;
    assert_eq!(d.claim(alice).await.unwrap_err(), ErrorCode::NotAContact);
    assert_eq!(
        d.page(group, 0, Direction::Forward, 10).await.unwrap_err(),
        ErrorCode::NoSuchConversation
    );
    assert_eq!(
        d.page(ConvId([9; 16]), 0, Direction::Forward, 10)
            .await
            .unwrap_err(),
        ErrorCode::NoSuchConversation
    );

    // A block: neither can claim the other's KeyPackages (no new 1:1 either way).
    let block = b1.ask(&ClientFrame::Block { peer: alice }).await;
    assert_eq!(block, ServerFrame::Done);
    assert_eq!(a1.claim(bob).await.unwrap_err(), ErrorCode::NotAContact);
    assert_eq!(b1.claim(alice).await.unwrap_err(), ErrorCode::NotAContact);
}

/// A revoked device is refused at once, by the store, whatever its sessions heard.
#[tokio::test]
async fn a_revoked_device_is_refused_at_once() {
    let node = node(|_| {}).await;
    let here = at(&node.server);
    let (alice, bob) = (Identity::new_user(), Identity::new_user());
    let mut a1 = talker(here, &alice).await;
    let mut b = talker(here, &bob).await;
    befriend(&mut a1, &mut b).await;
    let laptop = alice.another_device("laptop");
    let mut a2 = talker(here, &laptop).await;
    let conv = b.create(GroupKind::OneToOne, Vec::new()).await;
    let (alice_id, bob_id) = (a1.user(), b.user());
    b.add_users(conv, &[alice_id, bob_id]).await;
    a1.join(conv).await;
    a2.join(conv).await;
    let epoch = a2.mls.epoch(&conv.0).unwrap();
    let message = a2
        .mls
        .encrypt(&conv.0, b"written before the revocation")
        .unwrap();

    let chain = a1.client.fetch_chain(alice_id).await;
    a1.client
        .sign_and_append(
            alice_id,
            revoke_body(&chain, &[laptop.device.id()]),
            SigningKey::Device(&alice.device),
        )
        .await
        .unwrap();
    let send = ferry_protocol::ConvSend {
        conv,
        device_seq: 99,
        epoch,
        class: MessageClass::Content,
        message,
        welcome: None,
        group_info: None,
        attachments: Vec::new(),
    };
    let stored = node
        .store()
        .send(alice_id, laptop.device.id(), &send, 1)
        .await;
    assert_eq!(
        stored.unwrap_err().code(),
        ErrorCode::NoSuchConversation,
        "the revoked device's message is refused"
    );
    let read = node
        .store()
        .read_messages(conv, laptop.device.id(), 0, Direction::Forward, 10)
        .await;
    assert_eq!(read.unwrap_err().code(), ErrorCode::NoSuchConversation);
}

/// Test 6: unread counts and read markers across devices; typing reaches online devices.
#[tokio::test]
async fn unread_counts_read_markers_and_typing() {
    let node = node(|_| {}).await;
    let here = at(&node.server);
    let (alice, bob) = (Identity::new_user(), Identity::new_user());
    let mut a1 = talker(here, &alice).await;
    let mut b = talker(here, &bob).await;
    befriend(&mut a1, &mut b).await;
    let mut a2 = talker(here, &alice.another_device("laptop")).await;
    let conv = b.create(GroupKind::OneToOne, Vec::new()).await;
    let (alice_id, bob_id) = (a1.user(), b.user());
    b.add_users(conv, &[alice_id, bob_id]).await;
    a1.join(conv).await;
    a2.join(conv).await;

    b.say(conv, "one").await;
    b.say(conv, "two").await;
    b.say_as(conv, MessageClass::Control, "a receipt, not counted")
        .await;
    let three = b.say(conv, "three").await;
    let summary = |list: Vec<ferry_protocol::ConvSummary>| {
        list.into_iter().find(|s| s.conv == conv).expect("listed")
    };
    let mine = summary(a2.list().await);
    assert_eq!((mine.unread, mine.head), (3, three));
    assert_eq!(
        summary(b.list().await).unread,
        0,
        "a sender has read its own"
    );

    // Alice reads up to "two" on one device: both of her devices, and Bob, see the marker.
    a1.sync(conv).await;
    let two = three - 2;
    a1.client
        .send(&ClientFrame::ConvRead { conv, seq: two })
        .await;
    let marker = |user: UserId| move |f: &ServerFrame| matches!(f, ServerFrame::ConvReadBy { user: u, .. } if *u == user);
    let seen = b.pushed_frame(marker(alice_id)).await;
    assert_eq!(
        seen,
        ServerFrame::ConvReadBy {
            conv,
            user: alice_id,
            seq: two
        }
    );
    a2.pushed_frame(marker(alice_id)).await;
    let mine = summary(a2.list().await);
    assert_eq!(mine.unread, 1, "only \"three\" is unread");
    let alice_state = mine.members.iter().find(|m| m.user == alice_id).unwrap();
    assert_eq!(alice_state.read, two);
    assert_eq!(alice_state.delivered, three, "a1 acknowledged everything");
    assert_eq!(alice_state.devices.len(), 2);
    // A marker never moves back.
    a1.client
        .send(&ClientFrame::ConvRead { conv, seq: 1 })
        .await;
    assert_eq!(summary(a2.list().await).unread, 1);

    // Typing: to the other members' online devices (and the typist's other devices), not
    // stored, not back to the typist.
    a1.client
        .send(&ClientFrame::ConvEphemeral {
            conv,
            body: b"typing".to_vec(),
        })
        .await;
    let typing = |f: &ServerFrame| matches!(f, ServerFrame::ConvEphemeral { .. });
    let got = b.pushed_frame(typing).await;
    assert_eq!(
        got,
        ServerFrame::ConvEphemeral {
            conv,
            user: alice_id,
            from: a1.device(),
            body: b"typing".to_vec()
        }
    );
    a2.pushed_frame(typing).await;
    let _ = a1.list().await; // a round trip: anything for a1 would have arrived by now
    assert!(!a1.pushed.iter().any(typing), "the typist hears itself");

    // Once Bob blocks Alice, her typing no longer reaches him (a block is silence); her own
    // other device still hears it.
    assert_eq!(
        b.ask(&ClientFrame::Block { peer: alice_id }).await,
        ServerFrame::Done
    );
    b.pushed.retain(|f| !typing(f));
    a1.client
        .send(&ClientFrame::ConvEphemeral {
            conv,
            body: b"typing again".to_vec(),
        })
        .await;
    a2.pushed_frame(
        |f| matches!(f, ServerFrame::ConvEphemeral { body, .. } if body == b"typing again"),
    )
    .await;
    let _ = b.list().await; // a round trip: anything for Bob would have arrived by now
    assert!(
        !b.pushed.iter().any(typing),
        "the blocker hears the blocked user type"
    );
}

/// Test 5 (in part): a device whose group state is lost rejoins by external commit from the
/// stored GroupInfo and reads what is said next.
#[tokio::test]
async fn a_device_that_lost_its_group_rejoins_by_external_commit() {
    let node = node(|_| {}).await;
    let (mut a, mut b, conv) = pair_talking(&node).await;
    a.say(conv, "before").await;
    b.sync(conv).await;
    // Bob's device loses its state for this group (a restore from an old backup, say): it
    // rejoins from the GroupInfo, which is the group's current epoch.
    b.mls.forget(&conv.0).unwrap();
    let (epoch, _) = b.group_info(conv).await;
    assert_eq!(epoch, a.mls.epoch(&conv.0).unwrap());
    b.rejoin(conv).await;
    // A message Alice sent before she heard of the rejoin would be from the old epoch, which
    // the rejoined device cannot open (it is skipped); Alice reads the commit first.
    a.sync(conv).await;
    a.say(conv, "after").await;
    b.say(conv, "back").await;
    a.sync(conv).await;
    b.sync(conv).await;
    assert_eq!(
        a.mls.epoch_authenticator(&conv.0).unwrap(),
        b.mls.epoch_authenticator(&conv.0).unwrap()
    );
    let heard: Vec<_> = b.lines(conv).into_iter().map(|l| l.2).collect();
    assert_eq!(
        heard,
        [b"before".to_vec(), b"after".to_vec(), b"back".to_vec()]
    );
}

/// The KeyPackage directory: uploads checked, counted and limited; a claim hands out each
/// one-use package once and falls back to the last-resort package.
#[tokio::test]
async fn key_packages_are_checked_handed_out_once_and_fall_back_to_last_resort() {
    let node = node(|config| config.limits.key_packages_per_device = 3).await;
    let here = at(&node.server);
    let (alice, bob) = (Identity::new_user(), Identity::new_user());
    let mut a = Talker::connect(here.0, here.1, &alice, 0).await;
    let mut b = Talker::connect(here.0, here.1, &bob, 0).await;
    befriend(&mut a, &mut b).await;
    assert_eq!(b.upload(2).await, 2);
    // Past the limit: refused, nothing stored.
    let too_many = b.mls.key_packages(2).unwrap();
    let frame = ClientFrame::KeyPackagesUpload {
        packages: too_many.into_iter().map(Into::into).collect(),
        last_resort: None,
    };
    assert_eq!(
        refusal(&b.ask(&frame).await),
        Some(ErrorCode::KeyPackageLimit)
    );
    // A package of another device (Alice's, uploaded by Bob) is refused.
    let alices = a.mls.key_packages(1).unwrap();
    let frame = ClientFrame::KeyPackagesUpload {
        packages: alices.into_iter().map(Into::into).collect(),
        last_resort: None,
    };
    assert_eq!(refusal(&b.ask(&frame).await), Some(ErrorCode::MlsRefused));

    // Two one-use packages, then the last-resort one again and again.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut claimed = a.claim(b.user()).await.unwrap();
        assert_eq!(claimed.len(), 1);
        seen.push(claimed.remove(0));
    }
    assert_ne!(seen[0], seen[1], "a one-use package is handed out once");
    assert_eq!(seen[2], seen[3], "then the last-resort package");
    assert!(!seen[..2].contains(&seen[2]));
    match b
        .ask(&ClientFrame::KeyPackagesUpload {
            packages: Vec::new(),
            last_resort: None,
        })
        .await
    {
        ServerFrame::KeyPackageCount { count } => assert_eq!(count, 0),
        other => panic!("{other:?}"),
    }
}

/// A device of a member user that is not in the group joins by itself (GroupInfo, external
/// commit); a device of a user who is not a member cannot. Proposals are taken only when they
/// can be committed. After an add, a lagging sender is refused until it catches up.
#[tokio::test]
async fn devices_join_by_themselves_only_for_member_users_and_proposals_are_limited() {
    let node = node(|_| {}).await;
    let here = at(&node.server);
    let [mut a1, mut a2, mut b1, mut b2, mut c1, _c2] = three_users(here, here).await;
    let (alice, bob, carol) = (a1.user(), b1.user(), c1.user());
    let group = a1.create(GroupKind::Group, vec![alice]).await;
    a1.add_users(group, &[bob]).await;
    b1.join(group).await;
    b2.join(group).await;

    // Carol is not a member: her device gets nothing, and cannot commit its way in.
    let info = c1.ask(&ClientFrame::GroupInfoFetch { conv: group }).await;
    assert_eq!(refusal(&info), Some(ErrorCode::NoSuchConversation));
    let member_info = b1.ask(&ClientFrame::GroupInfoFetch { conv: group }).await;
    let ServerFrame::GroupInfo {
        epoch, group_info, ..
    } = member_info
    else {
        panic!("{member_info:?}");
    };
    let (_, out) = c1.mls.join_external(&group_info).unwrap();
    let intrusion = c1
        .send(
            group,
            MessageClass::Commit,
            epoch,
            out.commit,
            None,
            Some(out.group_info),
        )
        .await;
    assert_eq!(refusal(&intrusion), Some(ErrorCode::NoSuchConversation));

    // Alice's second device was never added (the whole-user rule let Alice's first device
    // create the group alone): it joins by itself, but may send nothing else before.
    let info = a2.ask(&ClientFrame::GroupInfoFetch { conv: group }).await;
    let ServerFrame::GroupInfo {
        epoch, group_info, ..
    } = info
    else {
        panic!("{info:?}");
    };
    let (_, out) = a2.mls.join_external(&group_info).unwrap();
    let text = a2.mls.encrypt(&group.0, b"too early").unwrap();
    let early = a2
        .send(group, MessageClass::Content, epoch + 1, text, None, None)
        .await;
    assert_eq!(refusal(&early), Some(ErrorCode::NoSuchConversation));
    let joined = a2
        .send(
            group,
            MessageClass::Commit,
            epoch,
            out.commit,
            None,
            Some(out.group_info),
        )
        .await;
    let ServerFrame::ConvSent { conv_seq, .. } = joined else {
        panic!("{joined:?}");
    };
    a2.mls.merge_pending(&group.0).unwrap();
    a2.cursors.insert(group, conv_seq);
    a2.joined_epoch.insert(group, epoch + 1);

    // Bob has not read Alice's join: his message under the old epoch is refused (Alice's
    // new device could not open it); read, then sent again, everyone opens it.
    let old = b2.mls.epoch(&group.0).unwrap();
    let stale = b2.mls.encrypt(&group.0, b"hello?").unwrap();
    let refused = b2
        .send(group, MessageClass::Content, old, stale, None, None)
        .await;
    assert_eq!(
        refusal(&refused),
        Some(ErrorCode::MlsRefused),
        "{refused:?}"
    );
    b2.sync(group).await;
    b2.say(group, "hello all").await;
    a2.sync(group).await;
    let heard: Vec<_> = a2.lines(group).into_iter().map(|l| l.2).collect();
    assert_eq!(heard, [b"hello all".to_vec()]);

    // Bob (not an admin) may not propose Alice's removal: it could never be committed, and a
    // queued proposal would hold everyone's messages. He may propose his own user's leaving.
    b1.sync(group).await;
    let epoch = b1.mls.epoch(&group.0).unwrap();
    let alice_leaf = (alice, a1.device());
    let mut probe = ferry_mls::Member::from_bytes(&b1.mls.to_bytes(), &b1.id.device).unwrap();
    let proposal = probe
        .propose_remove(&group.0, &[alice_leaf])
        .unwrap()
        .remove(0);
    let not_admin = b1
        .send(group, MessageClass::Proposal, epoch, proposal, None, None)
        .await;
    assert_eq!(
        refusal(&not_admin),
        Some(ErrorCode::MembershipRefused),
        "{not_admin:?}"
    );
    // Nor commit it.
    let mut probe = ferry_mls::Member::from_bytes(&b1.mls.to_bytes(), &b1.id.device).unwrap();
    let commit = probe.remove(&group.0, &[alice_leaf]).unwrap().commit;
    let coup = b1
        .send(group, MessageClass::Commit, epoch, commit, None, None)
        .await;
    assert_eq!(
        refusal(&coup),
        Some(ErrorCode::MembershipRefused),
        "{coup:?}"
    );
    for proposal in b1.mls.propose_leave(&group.0).unwrap() {
        let sent = b1
            .send(group, MessageClass::Proposal, epoch, proposal, None, None)
            .await;
        assert!(matches!(sent, ServerFrame::ConvSent { .. }), "{sent:?}");
    }
    // Alice's device commits them: Bob's user is out, with both devices.
    a1.sync(group).await;
    assert!(a1.mls.has_pending_proposals(&group.0).unwrap());
    let committed = a1
        .commit(group, |mls| mls.commit_pending_proposals(&group.0).unwrap())
        .await;
    assert!(
        matches!(committed, ServerFrame::ConvSent { .. }),
        "{committed:?}"
    );
    b1.wait_removed(group).await;
    b2.wait_removed(group).await;
    let members: Vec<UserId> = a1
        .mls
        .members(&group.0)
        .unwrap()
        .into_iter()
        .map(|(user, _)| user)
        .collect();
    assert!(
        !members.contains(&bob) && members.contains(&alice),
        "{members:?}"
    );
    let _ = carol;
}

/// Retention deletes a prefix of a conversation: expired application messages are skipped
/// by a device that had not read them, a commit some device has not read is kept (until the
/// lag), and a device whose unread commit was deleted is told to rejoin, and does.
#[tokio::test]
async fn retention_keeps_unread_commits_and_a_device_behind_it_rejoins_on_sqlite() {
    retention_story(&node(|_| {}).await).await;
}

#[tokio::test]
async fn retention_keeps_unread_commits_and_a_device_behind_it_rejoins_on_postgres() {
    // Retention runs over every conversation of a database: this test gets one of its own,
    // so it deletes nothing of the tests running beside it on the shared one.
    let Some(database) = support::private_postgres("retention").await else {
        return;
    };
    let hub = ferry_relay::bus::LocalBusHub::new();
    let node = support::node::node_on(&hub, Some(database.url.clone()), |_| {}).await;
    retention_story(&node).await;
    let store = std::sync::Arc::clone(node.store());
    node.server.shutdown().await;
    store.close().await;
    database.drop().await;
}

async fn retention_story(node: &Node) {
    let store = std::sync::Arc::clone(node.store());
    let (mut a, mut b, conv) = pair_talking(node).await;
    let fetch = |from: u64| ClientFrame::ConvFetch {
        conv,
        from,
        direction: Direction::Forward,
        limit: 100,
    };
    let far_future = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        now + 60_000
    };
    const DAY_MS: u64 = 86_400_000;
    for text in ["one", "two"] {
        a.say(conv, text).await;
    }
    a.sync(conv).await;
    a.list().await; // a round trip: the cursor it acknowledged is stored
    b.sync(conv).await;
    b.list().await;

    // A commit Bob has not read is kept, however old, within the lag.
    a.commit(conv, |mls| mls.self_update(&conv.0).unwrap())
        .await;
    let commit_seq = a.cursors[&conv];
    let deleted = store
        .trim_conversations(0, DAY_MS, far_future())
        .await
        .unwrap();
    assert_eq!(
        deleted,
        commit_seq - 1,
        "everything before the unread commit"
    );
    // From its join (the add commit) Bob needs no deleted commit; Alice, who created the
    // group, would need the add commit from the start.
    let answer = b.ask(&fetch(0)).await;
    assert_eq!(
        answer,
        ServerFrame::ConvTrimmed {
            conv,
            earliest: commit_seq,
            rejoin: false
        }
    );
    let answer = a.ask(&fetch(0)).await;
    assert_eq!(
        answer,
        ServerFrame::ConvTrimmed {
            conv,
            earliest: commit_seq,
            rejoin: true
        }
    );
    b.sync(conv).await;
    b.list().await;
    assert_eq!(b.mls.epoch(&conv.0).unwrap(), a.mls.epoch(&conv.0).unwrap());

    // Expired application messages Bob had not read: he is told, and reads on.
    let expired = a.say(conv, "expired before bob read it").await;
    a.sync(conv).await;
    a.list().await; // a round trip: the cursor it acknowledged is stored
    store
        .trim_conversations(0, DAY_MS, far_future())
        .await
        .unwrap();
    let cursor = b.cursors[&conv];
    let answer = b.ask(&fetch(cursor)).await;
    assert_eq!(
        answer,
        ServerFrame::ConvTrimmed {
            conv,
            earliest: expired + 1,
            rejoin: false
        }
    );
    b.cursors.insert(conv, expired);
    let kept = a.say(conv, "kept").await;
    b.sync(conv).await;
    b.list().await;
    assert_eq!(b.lines(conv).last().unwrap().0, kept);

    // Past the lag, a commit Bob has not read goes too: he must rejoin, and does.
    a.commit(conv, |mls| mls.self_update(&conv.0).unwrap())
        .await;
    a.say(conv, "after the lost commit").await;
    a.sync(conv).await;
    a.list().await; // a round trip: the cursor it acknowledged is stored
    store.trim_conversations(0, 0, far_future()).await.unwrap();
    let answer = b.ask(&fetch(b.cursors[&conv])).await;
    let ServerFrame::ConvTrimmed { rejoin: true, .. } = answer else {
        panic!("{answer:?}");
    };
    b.rejoin(conv).await;
    a.sync(conv).await;
    a.list().await; // a round trip: the cursor it acknowledged is stored
    let back = a.say(conv, "welcome back").await;
    b.sync(conv).await;
    b.list().await;
    assert_eq!(
        b.lines(conv).last().unwrap(),
        &(back, a.device(), b"welcome back".to_vec())
    );
    assert_eq!(
        a.mls.epoch_authenticator(&conv.0).unwrap(),
        b.mls.epoch_authenticator(&conv.0).unwrap()
    );
}

/// `ConvCreate`: a group whose only leaf is another device is refused, and so is an id
/// already taken (nothing of the first conversation changes).
#[tokio::test]
async fn a_conversation_is_created_only_by_its_one_leaf_and_only_once() {
    let node = node(|_| {}).await;
    let (mut a, mut b, conv) = pair_talking(&node).await;

    // Bob sends Alice's GroupInfo as his own new conversation.
    let mut id = [0; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    let other = ConvId(id);
    let policy = ferry_mls::GroupPolicy {
        kind: GroupKind::Group,
        admins: vec![a.user()],
    };
    let alices = a.mls.create_group(&other.0, policy).unwrap();
    let answer = b
        .ask(&ClientFrame::ConvCreate {
            conv: other,
            group_info: alices.clone(),
        })
        .await;
    assert_eq!(refusal(&answer), Some(ErrorCode::MlsRefused), "{answer:?}");

    // An id that is taken, even with a valid group of the sender's own.
    let policy = ferry_mls::GroupPolicy {
        kind: GroupKind::Group,
        admins: vec![b.user()],
    };
    let mut fresh = ferry_mls::Member::new(b.user(), &b.id.device);
    let bobs = fresh.create_group(&conv.0, policy).unwrap();
    let answer = b
        .ask(&ClientFrame::ConvCreate {
            conv,
            group_info: bobs,
        })
        .await;
    assert_eq!(
        refusal(&answer),
        Some(ErrorCode::ConversationExists),
        "{answer:?}"
    );
    let listed = a.list().await;
    let summary = listed.iter().find(|s| s.conv == conv).unwrap();
    assert_eq!(summary.head, 1, "the add commit and nothing after it");
    assert_eq!(summary.members.len(), 2);
}
