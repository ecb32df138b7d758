//! People against a real relay: three users with two devices each find each other by handle,
//! ask, accept, decline and block, see profiles and presence, and hit the relay's limits.
//! The story runs on the embedded relay (SQLite) and, with PostgreSQL and Redis, across two
//! relay nodes with each user's devices on different nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use ferry_client::{
    Client, ClientError, ClientEvent, ContactState, IdentityChange, PeopleError, PeopleEvent,
    ProfileBody, RecoveryKey, UserId, account,
};
use support::*;

/// One device: its client, and the presence it heard while waiting for other events.
struct Dev {
    client: Client,
    heard: Vec<(UserId, bool, Option<u64>)>,
}

impl Dev {
    fn handle(&self) -> ferry_client::ClientHandle {
        self.client.handle()
    }

    /// The next people event that is not about presence (presence is kept for later).
    async fn people(&mut self) -> PeopleEvent {
        loop {
            match tokio::time::timeout(WAIT, self.client.next_event()).await {
                Ok(Ok(ClientEvent::People(PeopleEvent::PresenceChanged {
                    user,
                    online,
                    last_seen,
                }))) => self.heard.push((user, online, last_seen)),
                Ok(Ok(ClientEvent::People(event))) => return event,
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => panic!("expected a people event, got {e:?}"),
                Err(_) => panic!("no people event within {WAIT:?}"),
            }
        }
    }

    /// Waits until this device has heard that `user` is online (or offline); returns the
    /// last-seen time that came with it. Any other people event meanwhile is a failure.
    async fn presence(&mut self, user: UserId, online: bool) -> Option<u64> {
        if let Some(i) = self
            .heard
            .iter()
            .rposition(|(who, now, _)| *who == user && *now == online)
        {
            let (_, _, last_seen) = self.heard.remove(i);
            return last_seen;
        }
        loop {
            match tokio::time::timeout(WAIT, self.client.next_event()).await {
                Ok(Ok(ClientEvent::People(PeopleEvent::PresenceChanged {
                    user: who,
                    online: now,
                    last_seen,
                }))) => {
                    if who == user && now == online {
                        return last_seen;
                    }
                    self.heard.push((who, now, last_seen));
                }
                Ok(Ok(ClientEvent::People(event))) => panic!("unexpected {event:?}"),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => panic!("expected presence, got {e:?}"),
                Err(_) => panic!("no presence {online} of {user} within {WAIT:?}"),
            }
        }
    }

    /// Every event until this user's handle changes to `marker.NN`: nothing may come before
    /// it but what `allowed` accepts. The marker is written into the same log after the
    /// thing that must not have reached it, so "nothing arrived" is checked without waiting.
    async fn nothing_before_marker(
        &mut self,
        marker: &str,
        allowed: impl Fn(&PeopleEvent) -> bool,
    ) {
        let prefix = format!("{marker}.");
        loop {
            match self.people().await {
                PeopleEvent::HandleChanged { handle }
                    if handle.as_deref().is_some_and(|h| h.starts_with(&prefix)) =>
                {
                    break;
                }
                event => assert!(allowed(&event), "unexpected before the marker: {event:?}"),
            }
        }
        for (user, online, _) in &self.heard {
            assert!(
                allowed(&PeopleEvent::PresenceChanged {
                    user: *user,
                    online: *online,
                    last_seen: None
                }),
                "presence of {user} heard"
            );
        }
    }

    async fn state_of(&self, user: UserId) -> Option<ContactState> {
        self.handle()
            .contacts()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.user == user)
            .map(|c| c.state)
    }
}

/// One user with two connected devices.
struct Person {
    user: UserId,
    one: Dev,
    two: Dev,
    recovery: RecoveryKey,
}

impl Person {
    /// Both devices see `event` next.
    async fn see(&mut self, event: PeopleEvent) {
        assert_eq!(self.one.people().await, event, "first device");
        assert_eq!(self.two.people().await, event, "second device");
    }
}

/// A user whose first device talks to `first` and second to `second` (the same relay, or
/// two nodes of one cluster sharing the relay key).
async fn person(dir: &Path, first: &TestRelay, second: &TestRelay, name: &str) -> Person {
    let created = new_user_with_recovery(&dir.join(format!("{name}1")), first, name).await;
    let two_dir = dir.join(format!("{name}2"));
    drop(another_device(&created.state, &two_dir, &format!("{name}-two")).await);
    repoint(&two_dir, &second.url(), second.relay_id);
    let two = open_when_free(&two_dir).await;
    let user = created.state.user_id();
    let dev = |client| Dev {
        client,
        heard: Vec::new(),
    };
    Person {
        user,
        one: dev(Client::connect(created.state, fast()).await.unwrap()),
        two: dev(Client::connect(two, fast()).await.unwrap()),
        recovery: created.recovery_key,
    }
}

fn handle_changed(handle: &str) -> PeopleEvent {
    PeopleEvent::HandleChanged {
        handle: Some(handle.to_owned()),
    }
}

/// The whole story, with each user's two devices on `first` and `second`.
async fn story(dir: &Path, first: &TestRelay, second: &TestRelay) {
    let mut alice = person(dir, first, second, "alice").await;
    let mut bob = person(dir, second, first, "bob").await;
    let mut carol = person(dir, first, second, "carol").await;

    // Handles: the relay picks the number; every device of the user hears of it.
    let alice_handle = alice.one.handle().set_handle("Alice").await.unwrap();
    assert!(alice_handle.starts_with("alice."), "{alice_handle}");
    alice.see(handle_changed(&alice_handle)).await;
    let bob_handle = bob.two.handle().set_handle("bob").await.unwrap();
    bob.see(handle_changed(&bob_handle)).await;
    let carol_handle = carol.one.handle().set_handle("carol").await.unwrap();
    carol.see(handle_changed(&carol_handle)).await;
    // Lookups are exact, after normalisation; look-alikes from other scripts are refused.
    let whois = |dev: &Dev, handle: &str| {
        let handle = handle.to_owned();
        let client = dev.handle();
        async move { client.whois(&handle).await }
    };
    assert_eq!(
        whois(&carol.one, &bob_handle).await.unwrap(),
        Some(bob.user)
    );
    assert_eq!(
        whois(&carol.one, &bob_handle.to_uppercase()).await.unwrap(),
        Some(bob.user)
    );
    let wrong_number = if bob_handle.ends_with(".00") {
        "bob.01"
    } else {
        "bob.00"
    };
    assert_eq!(whois(&carol.one, wrong_number).await.unwrap(), None);
    assert!(matches!(
        whois(&carol.one, "b\u{043e}b.01").await,
        Err(ClientError::People(PeopleError::HandleInvalid(_)))
    ));

    // Alice asks Bob; Bob accepts on his second device; all four devices see it.
    let asked = alice
        .one
        .handle()
        .request_contact_by_handle(&bob_handle, "hi Bob, it's Alice")
        .await
        .unwrap();
    assert_eq!(asked, bob.user);
    alice.see(PeopleEvent::RequestSent { to: bob.user }).await;
    bob.see(PeopleEvent::RequestReceived {
        from: alice.user,
        note: Some("hi Bob, it's Alice".into()),
    })
    .await;
    assert_eq!(
        bob.one.state_of(alice.user).await,
        Some(ContactState::Incoming)
    );
    assert_eq!(
        alice.two.state_of(bob.user).await,
        Some(ContactState::Outgoing)
    );
    let accepted = bob
        .two
        .handle()
        .accept_contact_by_handle(&alice_handle)
        .await
        .unwrap();
    assert_eq!(accepted, alice.user);
    bob.see(PeopleEvent::Accepted { user: alice.user }).await;
    alice.see(PeopleEvent::Accepted { user: bob.user }).await;
    assert_eq!(
        alice.one.state_of(bob.user).await,
        Some(ContactState::Contact)
    );
    let bobs = bob.one.handle().contacts().await.unwrap();
    let alices = alice.one.handle().contacts().await.unwrap();
    let seen_alice = bobs.iter().find(|c| c.user == alice.user).unwrap();
    let seen_bob = alices.iter().find(|c| c.user == bob.user).unwrap();
    assert_eq!(seen_alice.safety_number, seen_bob.safety_number);
    assert_eq!(seen_bob.handle.as_deref(), Some(bob_handle.as_str()));
    // Accepted by handle on Bob's second device: his first knows Alice by it too (her card).
    assert_eq!(seen_alice.handle.as_deref(), Some(alice_handle.as_str()));

    // Presence: contacts who both show it see each other, across nodes.
    alice.one.presence(bob.user, true).await;
    alice.two.presence(bob.user, true).await;
    bob.one.presence(alice.user, true).await;
    bob.two.presence(alice.user, true).await;

    // Hiding is reciprocal and reaches every node; showing again is announced by every node
    // holding one of Alice's sessions (her devices are on both).
    alice
        .two
        .handle()
        .set_presence_visible(false)
        .await
        .unwrap();
    alice
        .see(PeopleEvent::PresenceVisibility { visible: false })
        .await;
    bob.one.presence(alice.user, false).await;
    bob.two.presence(alice.user, false).await;
    alice.one.presence(bob.user, false).await;
    alice.two.handle().set_presence_visible(true).await.unwrap();
    alice
        .see(PeopleEvent::PresenceVisibility { visible: true })
        .await;
    bob.one.presence(alice.user, true).await;
    bob.two.presence(alice.user, true).await;
    alice.one.presence(bob.user, true).await;
    for dev in [&mut alice.one, &mut alice.two, &mut bob.one, &mut bob.two] {
        dev.heard.clear();
    }

    // Profiles: sealed with Alice's profile key, which Bob got in her intro.
    let profile = ProfileBody {
        display_name: "Alice Liddell".into(),
        avatar: Some("blob:wonderland".into()),
    };
    alice.two.handle().set_profile(&profile).await.unwrap();
    alice
        .see(PeopleEvent::ProfileChanged {
            user: alice.user,
            profile: profile.clone(),
        })
        .await;
    for dev in [&bob.one, &bob.two] {
        assert_eq!(
            dev.handle().profile(alice.user).await.unwrap(),
            Some(profile.clone()),
            "both of Bob's devices hold Alice's profile key"
        );
    }
    assert!(matches!(
        carol.one.handle().profile(alice.user).await,
        Err(ClientError::People(PeopleError::NotAContact))
    ));

    // A decline: Carol asks Bob, Bob declines; both sides hear it.
    carol
        .two
        .handle()
        .request_contact_by_handle(&bob_handle, "hello")
        .await
        .unwrap();
    carol.see(PeopleEvent::RequestSent { to: bob.user }).await;
    bob.see(PeopleEvent::RequestReceived {
        from: carol.user,
        note: Some("hello".into()),
    })
    .await;
    bob.one.handle().decline_contact(carol.user).await.unwrap();
    bob.see(PeopleEvent::Declined {
        user: carol.user,
        by_me: true,
    })
    .await;
    carol
        .see(PeopleEvent::Declined {
            user: bob.user,
            by_me: false,
        })
        .await;
    assert_eq!(carol.one.state_of(bob.user).await, None);

    // A block: Alice blocks Carol. Every path Carol has towards Alice is checked one by one,
    // and Carol's view is that of a request nobody answered.
    alice.one.handle().block(carol.user).await.unwrap();
    alice.see(PeopleEvent::Blocked { user: carol.user }).await;
    // 1. A contact request: answered as any request, seen as sent on both of Carol's
    //    devices; and a request to Bob, who has not blocked her, looks the same.
    carol
        .one
        .handle()
        .request_contact_by_handle(&alice_handle, "it's Carol")
        .await
        .unwrap();
    carol.see(PeopleEvent::RequestSent { to: alice.user }).await;
    carol
        .one
        .handle()
        .request_contact_by_handle(&bob_handle, "again")
        .await
        .unwrap();
    carol.see(PeopleEvent::RequestSent { to: bob.user }).await;
    bob.see(PeopleEvent::RequestReceived {
        from: carol.user,
        note: Some("again".into()),
    })
    .await;
    let carols_view = carol.two.handle().contacts().await.unwrap();
    let view = |user: UserId| carols_view.iter().find(|c| c.user == user).unwrap();
    let (to_alice, to_bob) = (view(alice.user), view(bob.user));
    assert_eq!(to_alice.state, ContactState::Outgoing);
    assert_eq!(
        (
            to_alice.state,
            to_alice.online,
            to_alice.last_seen,
            &to_alice.profile
        ),
        (
            to_bob.state,
            to_bob.online,
            to_bob.last_seen,
            &to_bob.profile
        ),
        "a blocked request looks exactly like a pending one"
    );
    // 2. Asking again: the same answer as any repeat.
    carol
        .one
        .handle()
        .request_contact(alice.user, "it's Carol")
        .await
        .unwrap();
    carol.see(PeopleEvent::RequestSent { to: alice.user }).await;
    // 3. Her profile: what any stranger gets.
    assert!(matches!(
        carol.one.handle().profile(alice.user).await,
        Err(ClientError::People(PeopleError::NotAContact))
    ));
    // 4. Withdrawing it: done, as for a pending one.
    carol.two.handle().cancel_request(alice.user).await.unwrap();
    carol
        .see(PeopleEvent::Cancelled {
            user: alice.user,
            by_me: true,
        })
        .await;
    // 5. Presence: neither hears of the other (checked with the markers).
    // Nothing of it reached Alice: her next events are the marker (her own handle change),
    // with no request, cancellation or presence of Carol's before it.
    alice.one.handle().set_handle("alicemarker").await.unwrap();
    for dev in [&mut alice.one, &mut alice.two] {
        dev.nothing_before_marker("alicemarker", |event| {
            matches!(event, PeopleEvent::PresenceChanged { user, .. } if *user != carol.user)
        })
        .await;
    }
    carol.one.handle().set_handle("carolmarker").await.unwrap();
    for dev in [&mut carol.one, &mut carol.two] {
        dev.nothing_before_marker("carolmarker", |event| {
            matches!(event, PeopleEvent::PresenceChanged { user, .. } if *user != alice.user)
        })
        .await;
    }
    assert_eq!(
        alice.one.state_of(carol.user).await,
        Some(ContactState::Blocked)
    );

    // Unblocking restores nothing by itself; a new request gets through.
    alice.two.handle().unblock(carol.user).await.unwrap();
    alice.see(PeopleEvent::Unblocked { user: carol.user }).await;
    assert_eq!(alice.one.state_of(carol.user).await, None);
    carol
        .one
        .handle()
        .request_contact(alice.user, "may I?")
        .await
        .unwrap();
    carol.see(PeopleEvent::RequestSent { to: alice.user }).await;
    alice
        .see(PeopleEvent::RequestReceived {
            from: carol.user,
            note: Some("may I?".into()),
        })
        .await;

    // Presence goes when the last session goes: Bob's devices close.
    let Person {
        one: bob_one,
        two: bob_two,
        user: bob_user,
        recovery: bob_recovery,
    } = bob;
    bob_one.client.close().await.unwrap();
    bob_two.client.close().await.unwrap();
    let last_seen = alice.one.presence(bob_user, false).await;
    assert!(last_seen.is_some(), "a coarse last-seen time comes with it");

    // An identity change: Bob recovers his account with the recovery key (a new device,
    // the chain grows by a link the user key signed). Alice's device surfaces it.
    let recovered = account::recover(
        dir.join("bob3"),
        &first.url(),
        first.relay_id,
        "bob-new",
        &bob_recovery,
        false,
        &fast(),
    )
    .await
    .unwrap();
    drop(recovered);
    let devices = alice.one.handle().verify_contact(bob_user).await.unwrap();
    assert_eq!(devices.len(), 3, "Bob's two devices and the recovered one");
    assert!(matches!(
        alice.one.people().await,
        PeopleEvent::IdentityChanged {
            user,
            change: IdentityChange::Recovered { .. }
        } if user == bob_user
    ));
    for dev in [alice.one, alice.two, carol.one, carol.two] {
        dev.client.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_find_ask_accept_decline_block_and_see_each_other_on_one_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    story(dir.path(), &relay, &relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_across_two_nodes_on_postgres_and_redis() {
    let Some((database, redis)) = services().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let adjust: Adjust = Arc::new(move |config| {
        config.database_url = Some(database.clone());
        config.redis_url = Some(redis.clone());
    });
    let first = TestRelay::start_with(&data, free_addr(), Arc::clone(&adjust));
    let second = TestRelay::start_with(&data, free_addr(), adjust);
    assert_eq!(
        first.relay_id, second.relay_id,
        "one cluster, one relay key"
    );
    story(dir.path(), &first, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_answered_with_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_with(
        &dir.path().join("relay"),
        free_addr(),
        Arc::new(|config| {
            config.limits.contact_requests_per_day = 3;
            config.limits.max_pending_requests = 2;
            config.limits.max_contacts = 1;
            config.limits.lookups_per_minute = 6;
        }),
    );
    let mut users = Vec::new();
    for name in ["ann", "ben", "cat", "dan", "eve"] {
        let state = new_user(&dir.path().join(name), &relay, name).await;
        users.push(Client::connect(state, fast()).await.unwrap());
    }
    let ids: Vec<UserId> = users.iter().map(Client::user_id).collect();
    for (i, client) in users.iter().enumerate().skip(1) {
        client
            .handle()
            .set_handle(&format!("user{i}"))
            .await
            .unwrap();
    }
    let ann = users[0].handle();

    // Lookups: two in a burst (a third of six a minute), then refused.
    let mut refused = None;
    for _ in 0..5 {
        if let Err(e) = ann.whois("user1.00").await {
            refused = Some(e);
            break;
        }
    }
    assert!(
        matches!(refused, Some(ClientError::People(PeopleError::LookupLimit))),
        "{refused:?}"
    );

    // Pending requests: two, then refused.
    ann.request_contact(ids[1], "").await.unwrap();
    ann.request_contact(ids[2], "").await.unwrap();
    assert!(matches!(
        ann.request_contact(ids[3], "").await,
        Err(ClientError::People(PeopleError::PendingLimit))
    ));
    // Requests per day: the third (a repeat, which frees nothing) passes, the fourth not.
    ann.request_contact(ids[1], "").await.unwrap();
    ann.cancel_request(ids[2]).await.unwrap();
    assert!(matches!(
        ann.request_contact(ids[3], "").await,
        Err(ClientError::People(PeopleError::RequestLimit))
    ));
    // Contacts: one; accepting a second is refused.
    let ben = users[1].handle();
    ben.accept_contact(ids[0]).await.unwrap();
    let eve = users[4].handle();
    eve.request_contact(ids[1], "").await.unwrap();
    assert!(matches!(
        ben.accept_contact(ids[4]).await,
        Err(ClientError::People(PeopleError::ContactLimit))
    ));
    // Nothing to act on.
    assert!(matches!(
        ben.decline_contact(ids[3]).await,
        Err(ClientError::People(PeopleError::NoSuchContact))
    ));
    // A handle nobody can have, and every number of a name taken is 601 (not tested: it
    // takes a hundred users; the store suite covers it).
    assert!(matches!(
        ben.set_handle("no").await,
        Err(ClientError::People(PeopleError::HandleInvalid(_)))
    ));
    let metrics = relay.metrics();
    assert!(metrics.contains("lookup_limit"), "refusals are counted");
    for client in users {
        client.close().await.unwrap();
    }
}

/// PostgreSQL and Redis URLs, or `None` (skipped) when they are unreachable and
/// `FERRY_REQUIRE_SERVICES` is not `1`.
async fn services() -> Option<(String, String)> {
    Some((postgres_url().await?, redis_url().await?))
}

/// A device paired after two users became contacts was not among the recipients of either
/// intro: it learns the contact's profile key (and pin, and handle) from the card the user's
/// other device stored, sealed under the user's data key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_paired_later_knows_its_users_contacts() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let alice_state = new_user(&dir.path().join("alice"), &relay, "alice").await;
    let bob_state = new_user(&dir.path().join("bob"), &relay, "bob").await;
    let (alice_id, bob_id) = (alice_state.user_id(), bob_state.user_id());
    let mut alice = Client::connect(alice_state, fast()).await.unwrap();
    let mut bob = Client::connect(bob_state, fast()).await.unwrap();
    let handle = alice.handle().set_handle("alice").await.unwrap();
    bob.handle()
        .request_contact_by_handle(&handle, "hi")
        .await
        .unwrap();
    loop {
        if let ClientEvent::People(PeopleEvent::RequestReceived { .. }) =
            tokio::time::timeout(WAIT, alice.next_event())
                .await
                .unwrap()
                .unwrap()
        {
            break;
        }
    }
    alice.handle().accept_contact(bob_id).await.unwrap();
    loop {
        if let ClientEvent::People(PeopleEvent::Accepted { .. }) =
            tokio::time::timeout(WAIT, bob.next_event())
                .await
                .unwrap()
                .unwrap()
        {
            break;
        }
    }
    let profile = ProfileBody {
        display_name: "Alice".into(),
        avatar: None,
    };
    alice.handle().set_profile(&profile).await.unwrap();
    assert_eq!(
        bob.handle().profile(alice_id).await.unwrap(),
        Some(profile.clone())
    );

    // Bob pairs a new device.
    let bob_state = bob.close().await.unwrap();
    let later = another_device(&bob_state, &dir.path().join("bob-later"), "later").await;
    drop(bob_state);
    let mut later = Client::connect(later, fast()).await.unwrap();
    // It replays Bob's log (the intros in it are not sealed to it) and catches up; the
    // catch-up takes the cards in and fetches the profiles that moved.
    let heard_profile;
    loop {
        match tokio::time::timeout(WAIT, later.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            ClientEvent::People(PeopleEvent::ProfileChanged { user, profile: p }) => {
                assert_eq!((user, &p), (alice_id, &profile));
                heard_profile = true;
                break;
            }
            ClientEvent::People(PeopleEvent::Unverified { reason, .. }) => panic!("{reason}"),
            _ => {}
        }
    }
    assert!(heard_profile);
    assert_eq!(
        later.handle().profile(alice_id).await.unwrap(),
        Some(profile)
    );
    let contacts = later.handle().contacts().await.unwrap();
    let alice_entry = contacts.iter().find(|c| c.user == alice_id).unwrap();
    assert_eq!(alice_entry.handle.as_deref(), Some(handle.as_str()));
    later.close().await.unwrap();
    alice.close().await.unwrap();
}
