//! A device that was offline catches up with its conversations through the SDK: through many
//! messages and several epochs when nothing was deleted (it reads everything, once, in
//! order, and ends in the others' epoch); past application messages retention deleted (the
//! relay says `ConvTrimmed` without `rejoin`: it reads on from what was kept); and past
//! commits retention deleted (`ConvTrimmed` with `rejoin`: it rejoins by external commit,
//! reads what is said after, and the others read it).
//!
//! Retention is run by the test, not by the relay's timer: `trim_conversations` on the
//! relay's own database, with an age and a lag counted from a "now" chosen between two
//! bursts of messages, so exactly the first burst is old enough.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use ferry_client::{ConvId, ConversationEvent, UserId};
use ferry_relay::store::Store;
use support::conversations::{Dev, Person, Transcript, befriend, person, same_epoch};
use support::*;

const DAY_MS: u64 = 86_400_000;

/// On one relay, Alice and Bob, two devices each, contacts, in a conversation Alice made
/// (a group of the two called `title`, or a 1:1 when `title` is `None`) that every device
/// joined; Bob's devices apart, as the tests take his second one offline. With `carol`,
/// Carol too: two devices, Alice's contact, in no conversation.
struct Start {
    relay: TestRelay,
    alice: Person,
    bob: UserId,
    bob_one: Dev,
    bob_two: Dev,
    carol: Option<Person>,
    conv: ConvId,
    /// The folders of the relay and of every device (bind it: dropped, they go).
    _dir: tempfile::TempDir,
}

async fn start(title: Option<&str>, carol: bool) -> Start {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let mut alice = person(dir.path(), &relay, &relay, "alice").await;
    let mut bob = person(dir.path(), &relay, &relay, "bob").await;
    let mut carol = if carol {
        Some(person(dir.path(), &relay, &relay, "carol").await)
    } else {
        None
    };
    befriend(&mut alice, &mut bob).await;
    if let Some(carol) = &mut carol {
        befriend(&mut alice, carol).await;
    }
    let Person {
        user: bob,
        one: mut bob_one,
        two: mut bob_two,
        ..
    } = bob;
    let made = match title {
        Some(title) => alice.one.handle().create_group(Some(title), &[bob]).await,
        None => alice.one.handle().start_chat(bob).await,
    };
    let conv = made.unwrap();
    for dev in [&mut alice.two, &mut bob_one, &mut bob_two] {
        dev.joined(conv).await;
    }
    Start {
        relay,
        alice,
        bob,
        bob_one,
        bob_two,
        carol,
        conv,
        _dir: dir,
    }
}

/// Alice says "hello" in `conv` and Bob "hello back": all four devices read both, and the
/// relay stored their cursors. Returns what was said, and the two messages' `conv_seq`.
async fn greet(
    alice: &mut Person,
    bob_one: &mut Dev,
    bob_two: &mut Dev,
    conv: ConvId,
) -> (Transcript, u64, u64) {
    let mut said = Transcript::default();
    let hello = said.say(&alice.one, conv, "hello").await;
    let read = said.say(bob_one, conv, "hello back").await;
    read_and_settle(
        &mut [&mut alice.one, &mut alice.two, bob_one, bob_two],
        conv,
        &said,
    )
    .await;
    (said, hello, read)
}

/// The relay's own database, through a second connection (`mode` `rw` or `ro`).
async fn relay_store(relay: &TestRelay, mode: &str) -> Arc<dyn Store> {
    let path = relay.data.join("ferry.db");
    let url = format!("sqlite://{}?mode={mode}", path.display());
    ferry_relay::store::open(&url).await.unwrap()
}

/// Runs the relay's conversation retention once, as its timer does: messages older than
/// `max_age_ms` go, but not a commit some device has not read that is younger than
/// `lag_ms`, both counted back from `now_ms`. On the relay's database, through a second
/// connection. Returns how many messages were deleted.
async fn trim(relay: &TestRelay, max_age_ms: u64, lag_ms: u64, now_ms: u64) -> u64 {
    let store = relay_store(relay, "rw").await;
    let deleted = store
        .trim_conversations(max_age_ms, lag_ms, now_ms)
        .await
        .unwrap();
    store.close().await;
    deleted
}

/// A "now" for retention just after the message at `seq` of `conv` was stored, and no
/// later than the one at `later` was (the relay's clock, as `dev` heard them).
async fn just_after(dev: &mut Dev, conv: ConvId, seq: u64, later: u64) -> u64 {
    let now = dev.message(conv, seq).await.sent_at + 1;
    assert!(dev.message(conv, later).await.sent_at >= now);
    now
}

/// A round trip to the relay: what `dev` sent before (its acknowledged cursors) is stored.
async fn settle(dev: &Dev) {
    dev.handle().conversations().await.unwrap();
}

/// Each of `devs` heard every message of `said` another device sent, and the relay stored
/// their cursors.
async fn read_and_settle(devs: &mut [&mut Dev], conv: ConvId, said: &Transcript) {
    for dev in devs.iter_mut() {
        dev.read_all(conv, said, 0).await;
        settle(dev).await;
    }
}

/// `by` adds `who` to `conv`, and both of its devices join.
async fn add(by: &Dev, who: &mut Person, conv: ConvId) {
    by.handle().add_members(conv, &[who.user]).await.unwrap();
    who.joined(conv).await;
}

/// `by` removes `who` from `conv`, and both of its devices leave.
async fn remove(by: &Dev, who: &mut Person, conv: ConvId) {
    by.handle().remove_members(conv, &[who.user]).await.unwrap();
    who.left(conv).await;
}

/// `dev` says "`what` 0" to "`what` `n - 1`" in `conv`; returns the texts, in order.
async fn say_many(
    said: &mut Transcript,
    dev: &Dev,
    conv: ConvId,
    what: &str,
    n: usize,
) -> Vec<String> {
    let mut texts = Vec::new();
    for i in 0..n {
        let text = format!("{what} {i}");
        said.say(dev, conv, &text).await;
        texts.push(text);
    }
    texts
}

/// `from` says `text` in `conv`, and each of `readers` reads it as it was said. Returns its
/// `conv_seq`.
async fn said_and_read(
    said: &mut Transcript,
    from: &Dev,
    conv: ConvId,
    text: &str,
    readers: &mut [&mut Dev],
) -> u64 {
    let seq = said.say(from, conv, text).await;
    for dev in readers.iter_mut() {
        assert_eq!(dev.message(conv, seq).await.text(), text, "{}", dev.name);
    }
    seq
}

/// Each of `devs` was given every message of `conv` in `said` that it did not send, once,
/// in order.
fn heard_each_once(devs: &[&Dev], conv: ConvId, said: &Transcript) {
    for dev in devs {
        assert_eq!(
            dev.heard_messages(conv),
            said.heard_by(dev, 0),
            "{}",
            dev.name
        );
    }
}

/// `dev`'s history of `conv` is in order, each message once and as it was sent, and holds
/// every one of `must` (what it read or sent itself; what it missed may be there too, from
/// the archive its user's other devices keep in the log).
async fn history_holds(dev: &Dev, conv: ConvId, said: &Transcript, must: &[u64]) {
    let history = dev.history(conv).await;
    let seqs: Vec<u64> = history.iter().map(|(seq, _)| *seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{}: history out of order or doubled: {seqs:?}",
        dev.name
    );
    for (seq, text) in &history {
        assert_eq!(
            Some(text),
            said.0.get(seq).map(|(_, t)| t),
            "{}: {seq}",
            dev.name
        );
    }
    for seq in must {
        assert!(
            seqs.contains(seq),
            "{}: {seq} missing from {seqs:?}",
            dev.name
        );
    }
}

/// `user`'s devices in `conv`, as the relay lists them to `dev`.
async fn devices_of(dev: &Dev, conv: ConvId, user: UserId) -> Vec<ferry_client::DeviceId> {
    let infos = dev.handle().conversations().await.unwrap();
    let info = infos.into_iter().find(|i| i.conv == conv).unwrap();
    let member = info.summary.members.into_iter().find(|m| m.user == user);
    member.map(|m| m.devices).unwrap_or_default()
}

/// A change of members as [`story`] tells it.
fn change(added: &[UserId], removed: &[UserId]) -> String {
    format!("added {added:?}, removed {removed:?}")
}

/// What a device was told about `conv`, in order: texts, and users added or removed.
fn story(heard: &[ConversationEvent], conv: ConvId) -> Vec<String> {
    heard
        .iter()
        .filter_map(|e| match e {
            ConversationEvent::Message(m) if m.conv == conv => Some(m.text().to_owned()),
            ConversationEvent::MembersChanged {
                conv: c,
                added,
                removed,
            } if *c == conv => Some(change(added, removed)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_through_many_messages_and_epochs_reads_them_all_once_in_order() {
    let Start {
        relay: _relay,
        mut alice,
        mut bob_one,
        mut bob_two,
        carol,
        conv: group,
        _dir,
        ..
    } = start(Some("catching up"), true).await;
    let mut carol = carol.unwrap();
    let mut said = Transcript::default();
    let hello = said.say(&alice.one, group, "hello").await;
    for dev in [&mut alice.one, &mut alice.two, &mut bob_one, &mut bob_two] {
        dev.message(group, hello).await;
    }
    let (left_at_epoch, _) = bob_two.epoch(group);

    // Bob's second device goes offline; `expected` is what it will be told, in order: more
    // than a page of messages, and three commits (Carol in, out, and in again).
    let bob_two_dir = bob_two.close().await;
    let mut expected = say_many(&mut said, &alice.one, group, "first", 110).await;
    add(&alice.one, &mut carol, group).await;
    expected.push(change(&[carol.user], &[]));
    for (dev, text) in [
        (&carol.one, "carol here"),
        (&bob_one, "hi carol"),
        (&carol.two, "carol's laptop"),
        (&alice.two, "alice's laptop"),
    ] {
        said.say(dev, group, text).await;
        expected.push(text.into());
    }
    remove(&alice.one, &mut carol, group).await;
    expected.push(change(&[], &[carol.user]));
    expected.extend(say_many(&mut said, &alice.one, group, "second", 110).await);
    add(&alice.one, &mut carol, group).await;
    expected.push(change(&[carol.user], &[]));
    let last = said.say(&carol.two, group, "carol again").await;
    expected.push("carol again".into());
    for dev in [&mut alice.one, &mut alice.two, &mut bob_one, &mut carol.one] {
        dev.message(group, last).await;
    }

    // Back online: it reads the whole stretch, commits in their places, nothing twice.
    let mut bob_two = Dev::connect("bob.two", &bob_two_dir).await;
    assert_eq!(bob_two.message(group, last).await.text(), "carol again");
    assert_eq!(
        bob_two.heard_messages(group),
        said.heard_by(&bob_two, hello),
        "every message after it left, once, in order"
    );
    assert_eq!(
        story(&bob_two.heard, group),
        expected,
        "messages and membership changes, in the order they happened"
    );
    assert_eq!(bob_two.history(group).await, said.all(), "nothing missing");
    let everyone = [
        &alice.one, &alice.two, &bob_one, &bob_two, &carol.one, &carol.two,
    ];
    let epoch = same_epoch(&everyone, group);
    assert_eq!(epoch, left_at_epoch + 3, "three commits while it was away");

    // It talks again, and everyone reads it; nobody heard anything twice.
    said_and_read(
        &mut said,
        &bob_two,
        group,
        "back",
        &mut [
            &mut alice.one,
            &mut alice.two,
            &mut bob_one,
            &mut carol.one,
            &mut carol.two,
        ],
    )
    .await;
    heard_each_once(&[&alice.one, &alice.two, &bob_one], group, &said);
    assert_eq!(
        bob_two.heard_messages(group),
        said.heard_by(&bob_two, hello)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_unread_messages_expired_reads_on_from_what_retention_kept() {
    let Start {
        relay,
        mut alice,
        mut bob_one,
        mut bob_two,
        conv: chat,
        _dir,
        ..
    } = start(None, false).await;
    let (mut said, hello, read) = greet(&mut alice, &mut bob_one, &mut bob_two, chat).await;

    // Bob's second device goes offline, having read (and acknowledged) everything. Five
    // messages are sent, then, a little later, three more.
    let bob_two_dir = bob_two.close().await;
    let mut expiring = Vec::new();
    for i in 1..=5 {
        let dev = if i % 2 == 0 { &alice.two } else { &alice.one };
        expiring.push(said.say(dev, chat, &format!("expires {i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 1..=3 {
        said.say(&alice.one, chat, &format!("kept {i}")).await;
    }
    let (last_expiring, last) = (*expiring.last().unwrap(), said.last());
    read_and_settle(
        &mut [&mut alice.one, &mut alice.two, &mut bob_one],
        chat,
        &said,
    )
    .await;

    // Retention, as of just after the fifth message was stored (the relay's clock, as Bob's
    // first device heard it): everything up to it is old enough, and no commit anyone has
    // not read stands in the way.
    let now = just_after(&mut bob_one, chat, last_expiring, last_expiring + 1).await;
    assert_eq!(
        trim(&relay, 0, DAY_MS, now).await,
        last_expiring,
        "the conversation up to the last expiring message"
    );

    // Back online: told the messages after its cursor are gone (no commit among them), it
    // reads on from the first kept one.
    let mut bob_two = Dev::connect("bob.two", &bob_two_dir).await;
    assert_eq!(bob_two.message(chat, last).await.text(), "kept 3");
    assert_eq!(
        bob_two.heard_messages(chat),
        said.heard_by(&bob_two, last_expiring),
        "the kept messages, once, in order, and none of the deleted ones"
    );
    let mut must = vec![hello, read];
    must.extend(last_expiring + 1..=last);
    history_holds(&bob_two, chat, &said, &must).await;

    // It talks, and is read; it is in everyone's epoch.
    said_and_read(
        &mut said,
        &bob_two,
        chat,
        "back after the gap",
        &mut [&mut alice.one, &mut alice.two, &mut bob_one],
    )
    .await;
    same_epoch(&[&alice.one, &alice.two, &bob_one, &bob_two], chat);
    heard_each_once(&[&alice.one, &alice.two, &bob_one], chat, &said);
}

/// Alice (two devices) and Bob (two devices) in a group of Alice's. Bob's second device
/// went offline; retention then deleted two commits it had not read (Carol added and
/// removed) and what followed; it came back and rejoined by external commit.
struct Rejoined {
    relay: TestRelay,
    alice: Person,
    bob: UserId,
    bob_one: Dev,
    bob_two: Dev,
    group: ConvId,
    said: Transcript,
    /// What it had read before it left.
    read_before: Vec<u64>,
    /// Its epoch of the group when it left.
    left_at_epoch: u64,
    /// The folders of the relay and of every device (bind it: dropped, they go).
    _dir: tempfile::TempDir,
}

async fn rejoined() -> Rejoined {
    let Start {
        relay,
        mut alice,
        bob,
        mut bob_one,
        mut bob_two,
        carol,
        conv: group,
        _dir,
    } = start(Some("rejoining"), true).await;
    let mut carol = carol.unwrap();
    let (mut said, hello, read) = greet(&mut alice, &mut bob_one, &mut bob_two, group).await;
    let (left_at_epoch, _) = bob_two.epoch(group);

    // Bob's second device goes offline. Carol comes in and goes (two commits it has not
    // read), three messages are sent, then, a little later, one more.
    let bob_two_dir = bob_two.close().await;
    add(&alice.one, &mut carol, group).await;
    said.say(&carol.one, group, "carol was here").await;
    remove(&alice.one, &mut carol, group).await;
    let mut lost = 0;
    for i in 1..=3 {
        lost = said.say(&alice.one, group, &format!("lost {i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let last = said
        .say(&alice.two, group, "said before it came back")
        .await;
    read_and_settle(
        &mut [&mut alice.one, &mut alice.two, &mut bob_one],
        group,
        &said,
    )
    .await;

    // Retention as of just after the third message. Within the lag, the commits Bob's
    // second device has not read are kept, and everything after them: only what it read goes.
    let now = just_after(&mut bob_one, group, lost, last).await;
    assert_eq!(
        trim(&relay, 0, DAY_MS, now).await,
        read,
        "up to the first commit it has not read"
    );
    // Past the lag they go too.
    assert_eq!(
        trim(&relay, 0, 0, now).await,
        lost - read,
        "the commits and the messages up to the third"
    );

    // Back online: told a commit it had not read is gone, it rejoins by external commit.
    let mut bob_two = Dev::connect("bob.two", &bob_two_dir).await;
    bob_two.joined(group).await;
    Rejoined {
        relay,
        alice,
        bob,
        bob_one,
        bob_two,
        group,
        said,
        read_before: vec![hello, read],
        left_at_epoch,
        _dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_unread_commits_expired_rejoins_and_talks_again() {
    let Rejoined {
        mut alice,
        bob,
        mut bob_one,
        mut bob_two,
        group,
        mut said,
        read_before,
        left_at_epoch,
        relay: _relay,
        _dir,
    } = rejoined().await;
    let bob_two_id = bob_two.id();

    // What was said before it rejoined (in epochs it has no keys of) it never hears. It
    // speaks, everyone reads it (so everyone processed its external commit); then they
    // answer, and it reads them.
    let back = said_and_read(
        &mut said,
        &bob_two,
        group,
        "glad to be back",
        &mut [&mut alice.one, &mut alice.two, &mut bob_one],
    )
    .await;
    let welcome = said.say(&alice.one, group, "welcome back").await;
    let too = said.say(&bob_one, group, "from your other device").await;
    assert_eq!(
        bob_two.message(group, too).await.text(),
        "from your other device"
    );
    assert_eq!(
        bob_two.heard_messages(group),
        said.heard_by(&bob_two, back),
        "only what was said after it rejoined, once, in order"
    );
    let mut must = read_before.clone();
    must.extend([back, welcome, too]);
    history_holds(&bob_two, group, &said, &must).await;
    let epoch = same_epoch(&[&alice.one, &alice.two, &bob_one, &bob_two], group);
    assert_eq!(
        epoch,
        left_at_epoch + 3,
        "the two commits it missed, and its own external commit"
    );
    // Its external commit took its old leaf out: Bob still has two devices in the group.
    let devices = devices_of(&alice.one, group, bob).await;
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert!(devices.contains(&bob_two_id));
    for dev in [&mut alice.one, &mut alice.two, &mut bob_one] {
        dev.read_all(group, &said, 0).await;
    }
    heard_each_once(&[&alice.one, &alice.two, &bob_one], group, &said);
}

/// Found by this test (and fixed in the relay): the relay raised its floor epoch (the oldest
/// epoch it takes application messages for) only at a commit whose set of `(user, device)`
/// leaves differs: a device's external commit that replaces its own leaf (the rejoin above)
/// leaves the set as it was, so a member that had not read that commit yet could still
/// encrypt under the epoch before it, which the rejoined device has no key of. The SDK skips
/// such a message (`epoch < joined_epoch` in `catch_up`): the rejoined device never saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_member_that_has_not_read_a_rejoin_reaches_the_rejoined_device() {
    let Rejoined {
        relay,
        alice,
        mut bob_two,
        group,
        mut said,
        _dir,
        ..
    } = rejoined().await;
    let (joined_at, _) = bob_two.epoch(group);
    // Alice's first device has not read the external commit: it encrypts under the epoch
    // before it, and the relay takes that.
    let welcome = said.say(&alice.one, group, "welcome back").await;
    let store = relay_store(&relay, "ro").await;
    let page = store
        .read_messages(
            group,
            alice.one.id(),
            welcome - 1,
            ferry_protocol::conversations::Direction::Forward,
            1,
        )
        .await
        .unwrap();
    store.close().await;
    let ferry_relay::store::ConvPage::Messages { messages, .. } = page else {
        panic!("{page:?}");
    };
    assert!(
        messages[0].epoch >= joined_at,
        "stored under epoch {}, before the rejoined device's {joined_at}",
        messages[0].epoch
    );
    assert_eq!(bob_two.message(group, welcome).await.text(), "welcome back");
}
