//! Conversations through the SDK against a real relay: two users with two devices each talk
//! in a 1:1 and a group, every device receives every message once and in order, a device
//! paired later joins every conversation of its user by itself, a revoked device is taken
//! out of them, read markers and unread counts, typing, and a member removed from a group.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use ferry_client::settings::SETTINGS_PREFIX;
use ferry_client::{
    Client, ClientEvent, ClientHandle, ConvId, ConversationEvent, PeopleEvent, Setting,
    StoredMessage, UserId,
};
use support::*;

/// One device.
struct Dev {
    client: Client,
}

impl Dev {
    fn handle(&self) -> ClientHandle {
        self.client.handle()
    }

    /// The next conversation event matching `want` (every other event is passed over).
    async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&ConversationEvent) -> bool,
    ) -> ConversationEvent {
        loop {
            match tokio::time::timeout(WAIT, self.client.next_event()).await {
                Ok(Ok(ClientEvent::Conversation(event))) if want(&event) => return event,
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => panic!("waiting for {what}: {e:?}"),
                Err(_) => panic!("no {what} within {WAIT:?}"),
            }
        }
    }

    async fn joined(&mut self, conv: ConvId) {
        self.joined_all(&[conv]).await;
    }

    /// Waits until it joined every one of `convs`, in any order.
    async fn joined_all(&mut self, convs: &[ConvId]) {
        let mut left: Vec<ConvId> = convs.to_vec();
        while !left.is_empty() {
            let event = self
                .until(
                    "Joined",
                    |e| matches!(e, ConversationEvent::Joined { conv, .. } if left.contains(conv)),
                )
                .await;
            if let ConversationEvent::Joined { conv, .. } = event {
                left.retain(|c| *c != conv);
            }
        }
    }

    /// Waits until the message at `conv_seq` in `conv` arrived; returns it.
    async fn message(&mut self, conv: ConvId, conv_seq: u64) -> StoredMessage {
        if let Some(m) = self
            .handle()
            .history(conv, 0, usize::MAX)
            .await
            .into_iter()
            .find(|m| m.conv_seq == conv_seq)
        {
            return m;
        }
        match self
            .until("a message", |e| {
                matches!(e, ConversationEvent::Message(m) if m.conv == conv && m.conv_seq == conv_seq)
            })
            .await
        {
            ConversationEvent::Message(m) => m,
            _ => unreachable!(),
        }
    }

    /// Every conversation event up to the message at `conv_seq` in `conv` (included).
    async fn events_through(&mut self, conv: ConvId, conv_seq: u64) -> Vec<ConversationEvent> {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.client.next_event()).await {
                Ok(Ok(ClientEvent::Conversation(event))) => {
                    let last = matches!(&event,
                        ConversationEvent::Message(m) if m.conv == conv && m.conv_seq == conv_seq);
                    seen.push(event);
                    if last {
                        return seen;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("waiting for message {conv_seq}: {e:?}"),
                Err(_) => panic!("no message {conv_seq} within {WAIT:?}; saw {seen:?}"),
            }
        }
    }

    /// Reads what comes until nothing has for a moment (its pushes processed), passing it by.
    async fn settle(&mut self) {
        while let Ok(item) =
            tokio::time::timeout(Duration::from_millis(200), self.client.next_event()).await
        {
            item.unwrap();
        }
    }

    /// Waits for the setting change `setting` (others pass by); the log record that carries
    /// it is never handed over as an event.
    async fn setting(&mut self, setting: Setting) {
        loop {
            match tokio::time::timeout(WAIT, self.client.next_event()).await {
                Ok(Ok(ClientEvent::Setting(got))) if got == setting => return,
                Ok(Ok(ClientEvent::Event(event))) => assert!(
                    !event.plaintext.starts_with(SETTINGS_PREFIX),
                    "a settings record reached the app"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("{e:?}"),
                Err(_) => panic!("no {setting:?} within {WAIT:?}"),
            }
        }
    }

    /// Waits for the people event `event` (others pass by).
    async fn people(&mut self, event: PeopleEvent) {
        loop {
            match tokio::time::timeout(WAIT, self.client.next_event()).await {
                Ok(Ok(ClientEvent::People(got))) if got == event => return,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("{e:?}"),
                Err(_) => panic!("no {event:?} within {WAIT:?}"),
            }
        }
    }

    async fn texts(&self, conv: ConvId) -> Vec<String> {
        self.handle()
            .history(conv, 0, usize::MAX)
            .await
            .into_iter()
            .map(|m| m.text().to_owned())
            .collect()
    }
}

/// A user with two connected devices.
struct Person {
    user: UserId,
    one: Dev,
    two: Dev,
}

/// A user with two connected devices, and (with `spare`) a third the chain admits that has
/// not connected yet (as a device paired while the others were offline would be).
async fn person(
    dir: &Path,
    relay: &TestRelay,
    name: &str,
    spare: bool,
) -> (Person, Option<ferry_client::ClientState>) {
    let first = dir.join(format!("{name}1"));
    let created = new_user_with_recovery(&first, relay, name).await;
    let two_dir = dir.join(format!("{name}2"));
    drop(another_device(&created.state, &two_dir, &format!("{name}-two")).await);
    let two = open_when_free(&two_dir).await;
    let spare = if spare {
        let spare_dir = dir.join(format!("{name}3"));
        drop(another_device(&created.state, &spare_dir, &format!("{name}-three")).await);
        Some(open_when_free(&spare_dir).await)
    } else {
        None
    };
    let user = created.state.user_id();
    let one = Client::connect(created.state, fast()).await.unwrap();
    let two = Client::connect(two, fast()).await.unwrap();
    let mut person = Person {
        user,
        one: Dev { client: one },
        two: Dev { client: two },
    };
    // Both devices caught up once: their KeyPackages are at the relay.
    for dev in [&mut person.one, &mut person.two] {
        loop {
            let event = tokio::time::timeout(WAIT, dev.client.next_event()).await;
            if matches!(event, Ok(Ok(ClientEvent::CaughtUp { .. }))) {
                break;
            }
        }
    }
    (person, spare)
}

async fn befriend(a: &mut Person, b: &mut Person, b_name: &str) {
    let handle = b.one.handle().set_handle(b_name).await.unwrap();
    a.one
        .handle()
        .request_contact_by_handle(&handle, "hi")
        .await
        .unwrap();
    b.one
        .people(PeopleEvent::RequestReceived {
            from: a.user,
            note: Some("hi".into()),
        })
        .await;
    b.one.handle().accept_contact(a.user).await.unwrap();
    a.one.people(PeopleEvent::Accepted { user: b.user }).await;
}

/// Alice (two devices, and a third paired but not connected yet) and Bob (two devices),
/// contacts, in a 1:1 Alice opened that all four connected devices joined.
struct Chat {
    dir: tempfile::TempDir,
    relay: TestRelay,
    alice: Person,
    spare: Option<ferry_client::ClientState>,
    bob: Person,
    chat: ConvId,
}

async fn alice_and_bob_in_a_chat() -> Chat {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let (mut alice, spare) = person(dir.path(), &relay, "alice", true).await;
    let (mut bob, _) = person(dir.path(), &relay, "bob", false).await;
    befriend(&mut alice, &mut bob, "bob").await;
    let chat = alice.one.handle().start_chat(bob.user).await.unwrap();
    for dev in [&mut alice.two, &mut bob.one, &mut bob.two] {
        dev.joined(chat).await;
    }
    Chat {
        dir,
        relay,
        alice,
        spare,
        bob,
        chat,
    }
}

#[tokio::test]
async fn two_users_talk_on_every_device_a_device_paired_later_joins_in_and_members_leave() {
    // A 1:1: all four devices are in it; every message reaches every device once, in order.
    let Chat {
        // Held to the end: the relay and its folder.
        dir: _dir,
        relay: _relay,
        mut alice,
        spare,
        mut bob,
        chat,
    } = alice_and_bob_in_a_chat().await;
    let first = alice.one.handle().send_text(chat, "hi bob").await.unwrap();
    let second = bob.two.handle().send_text(chat, "hi alice").await.unwrap();
    let third = alice
        .two
        .handle()
        .send_text(chat, "from my laptop")
        .await
        .unwrap();
    assert!(first < second && second < third);
    for dev in [&mut alice.one, &mut alice.two, &mut bob.one, &mut bob.two] {
        let got = dev.message(chat, third).await;
        assert_eq!(got.text(), "from my laptop");
        assert_eq!(got.user, alice.user);
        dev.message(chat, second).await;
        assert_eq!(
            dev.texts(chat).await,
            ["hi bob", "hi alice", "from my laptop"],
            "every message once, in order"
        );
    }

    // Unread counts and read markers: writing "hi alice" marked Bob's read up to it, so
    // only "from my laptop" is unread for him.
    let unread = |infos: Vec<ferry_client::ConversationInfo>| {
        infos
            .into_iter()
            .find(|i| i.conv == chat)
            .unwrap()
            .summary
            .unread
    };
    assert_eq!(unread(bob.one.handle().conversations().await.unwrap()), 1);
    bob.one.handle().mark_read(chat, third).await.unwrap();
    let read_by = alice
        .one
        .until("ReadBy", |e| matches!(e, ConversationEvent::ReadBy { .. }))
        .await;
    assert_eq!(
        read_by,
        ConversationEvent::ReadBy {
            conv: chat,
            user: bob.user,
            seq: third
        }
    );
    assert_eq!(unread(bob.two.handle().conversations().await.unwrap()), 0);

    // Typing reaches the other side's online devices.
    alice.one.handle().typing(chat, true).await.unwrap();
    let typing = bob
        .one
        .until("Typing", |e| matches!(e, ConversationEvent::Typing { .. }))
        .await;
    assert_eq!(
        typing,
        ConversationEvent::Typing {
            conv: chat,
            user: alice.user,
            typing: true
        }
    );

    // Nobody refreshed it: it ends by itself.
    let stopped = bob
        .one
        .until("Typing stopped", |e| {
            matches!(e, ConversationEvent::Typing { typing: false, .. })
        })
        .await;
    assert_eq!(
        stopped,
        ConversationEvent::Typing {
            conv: chat,
            user: alice.user,
            typing: false
        }
    );

    // Receipts of Alice's last message: Bob's devices fetched it, and he read it.
    let receipts = alice.one.handle().receipts(chat, third).await.unwrap();
    assert_eq!(receipts.delivered, [bob.user]);
    assert_eq!(receipts.read, [bob.user]);

    // A group Bob administers.
    let group = bob
        .one
        .handle()
        .create_group(Some("book club"), &[alice.user])
        .await
        .unwrap();
    for dev in [&mut bob.two, &mut alice.one, &mut alice.two] {
        dev.joined(group).await;
    }
    let renamed = alice
        .two
        .until("Renamed", |e| {
            matches!(e, ConversationEvent::Renamed { .. })
        })
        .await;
    assert_eq!(
        renamed,
        ConversationEvent::Renamed {
            conv: group,
            title: "book club".into()
        }
    );
    let hello = alice
        .one
        .handle()
        .send_text(group, "hello group")
        .await
        .unwrap();
    bob.two.message(group, hello).await;

    // Alice's third device (admitted, never connected until now): at its first catch-up
    // it joins both conversations by itself and reads what is said next.
    let mut three = Dev {
        client: Client::connect(spare.unwrap(), fast()).await.unwrap(),
    };
    three.joined_all(&[chat, group]).await;
    // It could not read the group's title, sent before it joined: one of the other devices
    // (Alice's lowest) reads its join and sends the title again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for dev in [&mut alice.one, &mut alice.two, &mut bob.one, &mut bob.two] {
            dev.settle().await;
        }
        three.settle().await;
        let infos = three.handle().conversations().await.unwrap();
        let info = infos.iter().find(|i| i.conv == group).unwrap();
        if let Some(title) = &info.title {
            assert_eq!(title, "book club");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no title for the device that joined by itself within {WAIT:?}"
        );
    }
    // It reads what was said before it joined, from the archive in Alice's log.
    let before: Vec<String> = three
        .handle()
        .history(chat, 0, usize::MAX)
        .await
        .into_iter()
        .map(|m| m.text().to_owned())
        .collect();
    assert_eq!(
        before,
        ["hi bob", "hi alice", "from my laptop"],
        "the archived history"
    );
    let later = bob
        .one
        .handle()
        .send_text(chat, "welcome, new device")
        .await
        .unwrap();
    assert_eq!(
        three.message(chat, later).await.text(),
        "welcome, new device"
    );
    let later_group = bob
        .one
        .handle()
        .send_text(group, "group too")
        .await
        .unwrap();
    assert_eq!(three.message(group, later_group).await.text(), "group too");
    for dev in [&mut alice.one, &mut bob.two] {
        dev.message(chat, later).await;
    }

    // Alice revokes it: its leaves leave both conversations.
    let three_id = three.client.device_id();
    alice.one.handle().revoke(three_id).await.unwrap();
    let infos = bob.one.handle().conversations().await.unwrap();
    for info in infos {
        let alice_state = info
            .summary
            .members
            .iter()
            .find(|m| m.user == alice.user)
            .unwrap();
        assert!(
            !alice_state.devices.contains(&three_id),
            "the revoked device is still in {}",
            info.conv
        );
        assert_eq!(alice_state.devices.len(), 2);
    }
    let after = bob
        .two
        .handle()
        .send_text(chat, "after the revocation")
        .await
        .unwrap();
    alice.two.message(chat, after).await;

    // Bob removes Alice from the group: her devices are told, and can no longer send there.
    bob.one
        .handle()
        .remove_members(group, &[alice.user])
        .await
        .unwrap();
    alice
        .two
        .until(
            "Left",
            |e| matches!(e, ConversationEvent::Left { conv } if *conv == group),
        )
        .await;
    assert!(
        alice
            .two
            .handle()
            .send_text(group, "still here?")
            .await
            .is_err()
    );

    // Alice leaves another group from one device: both her devices go, committed by Bob's.
    let third = bob
        .one
        .handle()
        .create_group(None, &[alice.user])
        .await
        .unwrap();
    alice.one.joined(third).await;
    alice.two.joined(third).await;
    alice.two.handle().leave(third).await.unwrap();
    let changed = bob
        .one
        .until("MembersChanged", |e| {
            matches!(e, ConversationEvent::MembersChanged { conv, removed, .. }
                if *conv == third && !removed.is_empty())
        })
        .await;
    assert_eq!(
        changed,
        ConversationEvent::MembersChanged {
            conv: third,
            added: Vec::new(),
            removed: vec![alice.user]
        }
    );
    alice
        .one
        .until(
            "Left",
            |e| matches!(e, ConversationEvent::Left { conv } if *conv == third),
        )
        .await;

    // Bob blocks Alice: the 1:1 ends for her devices, and nothing she sends reaches him.
    bob.one.handle().block(alice.user).await.unwrap();
    bob.one
        .people(PeopleEvent::Blocked { user: alice.user })
        .await;
    alice
        .two
        .until(
            "Left",
            |e| matches!(e, ConversationEvent::Left { conv } if *conv == chat),
        )
        .await;
    assert!(alice.two.handle().send_text(chat, "hello?").await.is_err());
}

#[tokio::test]
async fn a_blocked_member_of_a_shared_group_is_hidden_on_every_device_of_the_blocker() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let (mut alice, _) = person(dir.path(), &relay, "alice", false).await;
    let (mut bob, _) = person(dir.path(), &relay, "bob", false).await;
    let (mut carol, _) = person(dir.path(), &relay, "carol", false).await;
    befriend(&mut carol, &mut alice, "alice").await;
    befriend(&mut carol, &mut bob, "bob").await;
    let group = carol
        .one
        .handle()
        .create_group(Some("trio"), &[alice.user, bob.user])
        .await
        .unwrap();
    for dev in [
        &mut carol.two,
        &mut alice.one,
        &mut alice.two,
        &mut bob.one,
        &mut bob.two,
    ] {
        dev.joined(group).await;
    }
    let before = bob.one.handle().send_text(group, "hi all").await.unwrap();
    alice.one.message(group, before).await;
    alice.two.message(group, before).await;

    // Alice blocks Bob on one device; her other device hears of it from the relay's notice.
    alice.one.handle().block(bob.user).await.unwrap();
    for dev in [&mut alice.one, &mut alice.two] {
        dev.people(PeopleEvent::Blocked { user: bob.user }).await;
    }

    // Bob types and writes in the group: Carol sees it, Alice's devices do not.
    bob.one.handle().typing(group, true).await.unwrap();
    carol
        .one
        .until("Bob typing", |e| {
            matches!(e, ConversationEvent::Typing { user, typing: true, .. } if *user == bob.user)
        })
        .await;
    let spam = bob.two.handle().send_text(group, "spam").await.unwrap();
    assert_eq!(carol.one.message(group, spam).await.text(), "spam");
    // Carol writes after it: Alice's devices read past Bob's message to hers (they processed
    // it: the group did not stall), and were shown nothing of Bob's on the way.
    let hello = carol
        .one
        .handle()
        .send_text(group, "hello alice")
        .await
        .unwrap();
    for dev in [&mut alice.one, &mut alice.two] {
        let seen = dev.events_through(group, hello).await;
        for event in &seen {
            let from_bob = match event {
                ConversationEvent::Message(m) => m.user == bob.user,
                ConversationEvent::Typing { user, .. } => *user == bob.user,
                _ => false,
            };
            assert!(!from_bob, "a blocked member's {event:?} reached the app");
        }
        assert_eq!(dev.texts(group).await, ["hello alice"], "history hides Bob");
    }

    // Unblocked (from her other device): what Bob says next reaches both her devices, and
    // what he said before shows again in history.
    alice.two.handle().unblock(bob.user).await.unwrap();
    for dev in [&mut alice.one, &mut alice.two] {
        dev.people(PeopleEvent::Unblocked { user: bob.user }).await;
    }
    let sorry = bob.one.handle().send_text(group, "sorry").await.unwrap();
    for dev in [&mut alice.one, &mut alice.two] {
        let seen = dev.events_through(group, sorry).await;
        assert!(matches!(seen.last(), Some(ConversationEvent::Message(m)) if m.text() == "sorry"));
        assert_eq!(
            dev.texts(group).await,
            ["hi all", "spam", "hello alice", "sorry"]
        );
    }
}

#[tokio::test]
async fn archiving_is_a_setting_of_the_user_that_all_its_devices_follow() {
    let Chat {
        // Held to the end: the relay and its folder.
        dir: _dir,
        relay: _relay,
        mut alice,
        spare,
        bob,
        chat,
    } = alice_and_bob_in_a_chat().await;

    // Archived (the default): what Alice says, and what Bob says (by Alice's lowest device).
    alice
        .two
        .handle()
        .send_text(chat, "archived, mine")
        .await
        .unwrap();
    let theirs = bob
        .one
        .handle()
        .send_text(chat, "archived, theirs")
        .await
        .unwrap();
    for dev in [&mut alice.one, &mut alice.two] {
        dev.message(chat, theirs).await;
    }

    // Alice turns archiving off on one device: her other device follows it from her log.
    assert!(alice.one.handle().archive_history());
    alice.one.handle().set_archive_history(false).await.unwrap();
    assert!(!alice.one.handle().archive_history());
    alice.two.setting(Setting::ArchiveHistory(false)).await;
    assert!(!alice.two.handle().archive_history());

    // Nothing said from now on is archived, by either of her devices.
    alice
        .two
        .handle()
        .send_text(chat, "not archived, from two")
        .await
        .unwrap();
    alice
        .one
        .handle()
        .send_text(chat, "not archived, from one")
        .await
        .unwrap();
    let theirs_after = bob
        .two
        .handle()
        .send_text(chat, "not archived, theirs")
        .await
        .unwrap();
    for dev in [&mut alice.one, &mut alice.two] {
        dev.message(chat, theirs_after).await;
        // Whatever they archived is at the relay.
        dev.handle().flush(WAIT).await.unwrap();
    }

    // A device paired afterwards follows the setting, and reads the earlier messages from
    // the archive but none of the later ones.
    let mut three = Dev {
        client: Client::connect(spare.unwrap(), fast()).await.unwrap(),
    };
    three.joined(chat).await;
    assert!(!three.handle().archive_history());
    assert_eq!(
        three.texts(chat).await,
        ["archived, mine", "archived, theirs"],
        "the archive holds what was said before archiving was turned off, only"
    );
}
