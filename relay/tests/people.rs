//! The people frames against a real relay, from a client that does not play by the rules:
//! intros that are not the sender's own, chains and profiles of strangers, lookups past the
//! limits from many devices behind one address, and the frames a recovery session may not send.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_protocol::people::{Intro, IntroBody, ProfileBody, ProfileKey};
use ferry_protocol::{ClientFrame, DeviceKey, ErrorCode, ServerFrame};
use rand_core::OsRng;
use support::client::{Client, Identity};
use support::node::{Node, next_frame, node};

/// The next answer to a people frame (skipping events and presence hints).
async fn answer(client: &mut Client) -> ServerFrame {
    loop {
        match next_frame(client).await.expect("connection open") {
            ServerFrame::Events(_)
            | ServerFrame::CaughtUp { .. }
            | ServerFrame::Presence { .. } => {}
            frame => return frame,
        }
    }
}

async fn ask(client: &mut Client, frame: ClientFrame) -> ServerFrame {
    client.send(&frame).await;
    answer(client).await
}

fn code(frame: &ServerFrame) -> Option<ErrorCode> {
    match frame {
        ServerFrame::Error(e) => Some(e.code),
        _ => None,
    }
}

/// An intro from `from`'s device to `to`'s device, signed with `signer`.
fn intro_signed(from: &Identity, signer: &DeviceKey, to: &Identity) -> Intro {
    let body = IntroBody {
        note: "hello".into(),
        profile_key: ProfileKey::from_bytes(&[3; 32]),
    };
    Intro::seal(
        &mut OsRng,
        from.user.id(),
        signer,
        to.user.id(),
        &[(to.device.id(), to.exchange)],
        &body,
    )
    .unwrap()
}

async fn connect(node: &Node, id: &Identity) -> Client {
    let mut client = node.connect(id, None).await;
    client.replay().await;
    client
}

#[tokio::test]
async fn intros_that_are_not_the_senders_own_are_refused() {
    let node = node(|_| {}).await;
    let (alice, bob) = (Identity::new_user(), Identity::new_user());
    let alice_two = alice.another_device("two");
    let mut a = connect(&node, &alice).await;
    let _b = connect(&node, &bob).await;
    let _a2 = connect(&node, &alice_two).await;

    // Signed by a device of another user, claiming to be Alice.
    let stranger = DeviceKey::generate(&mut OsRng);
    let forged = intro_signed(&alice, &stranger, &bob);
    // Alice's other device's intro sent on this session (the session is its own device's).
    let other_device = intro_signed(&alice, &alice_two.device, &bob);
    // Signed by Alice's device but tampered with after signing.
    let mut tampered = intro_signed(&alice, &alice.device, &bob);
    tampered.ciphertext[0] ^= 1;
    // Bob's intro (another user entirely).
    let bobs = intro_signed(&bob, &bob.device, &alice);
    // To herself.
    let to_self = intro_signed(&alice, &alice.device, &alice);
    for intro in [forged, other_device, tampered, bobs, to_self] {
        for frame in [
            ClientFrame::ContactRequest(Box::new(intro.clone())),
            ClientFrame::ContactAccept(Box::new(intro.clone())),
        ] {
            let answer = ask(&mut a, frame).await;
            assert_eq!(code(&answer), Some(ErrorCode::BadIntro), "{answer:?}");
        }
    }
    // Nothing reached Bob's log or anyone's contacts.
    let contacts = ask(&mut a, ClientFrame::ContactsList).await;
    assert!(
        matches!(&contacts, ServerFrame::Contacts { contacts, .. } if contacts.is_empty()),
        "{contacts:?}"
    );
    assert_eq!(
        node.store().log_bounds(bob.user.id()).await.unwrap().head,
        0
    );

    // Accepting what nobody asked: 602. A profile version that does not grow: 300.
    let honest = intro_signed(&alice, &alice.device, &bob);
    let answer = ask(&mut a, ClientFrame::ContactAccept(Box::new(honest))).await;
    assert_eq!(code(&answer), Some(ErrorCode::NoSuchContact));
    let profile = ProfileBody::default()
        .seal(
            &mut OsRng,
            &ProfileKey::from_bytes(&[1; 32]),
            &alice.user.id(),
            2,
        )
        .unwrap();
    let first = ask(&mut a, ClientFrame::ProfileSet(profile.clone())).await;
    assert_eq!(first, ServerFrame::Done);
    let again = ask(&mut a, ClientFrame::ProfileSet(profile)).await;
    assert_eq!(code(&again), Some(ErrorCode::Conflict));
}

#[tokio::test]
async fn strangers_chains_and_profiles_are_not_shown() {
    let node = node(|_| {}).await;
    let (alice, bob, carol) = (
        Identity::new_user(),
        Identity::new_user(),
        Identity::new_user(),
    );
    let mut a = connect(&node, &alice).await;
    let mut b = connect(&node, &bob).await;
    let _c = connect(&node, &carol).await;
    let chain_of = |user| ClientFrame::UserChainFetch { user, after: 0 };

    // Bob has no handle and nothing to do with Alice: an empty page, as for nobody at all.
    let hidden = ask(&mut a, chain_of(bob.user.id())).await;
    assert!(
        matches!(&hidden, ServerFrame::UserChainLinks { links, more: false, .. } if links.is_empty()),
        "{hidden:?}"
    );
    let nobody = ask(&mut a, chain_of(Identity::new_user().user.id())).await;
    assert!(matches!(&nobody, ServerFrame::UserChainLinks { links, .. } if links.is_empty()));
    // With a handle, Bob's chain is shown to whoever looks him up.
    let handle = ask(
        &mut b,
        ClientFrame::HandleSet {
            name: Some("bob".into()),
        },
    )
    .await;
    assert!(
        matches!(handle, ServerFrame::HandleIs { handle: Some(_) }),
        "{handle:?}"
    );
    let shown = ask(&mut a, chain_of(bob.user.id())).await;
    assert!(
        matches!(&shown, ServerFrame::UserChainLinks { links, .. } if links.len() == 2),
        "{shown:?}"
    );
    // Carol has no handle; once Alice asks her, each may see the other's chain.
    let intro = intro_signed(&alice, &alice.device, &carol);
    assert_eq!(
        ask(&mut a, ClientFrame::ContactRequest(Box::new(intro))).await,
        ServerFrame::Done
    );
    let carols = ask(&mut a, chain_of(carol.user.id())).await;
    assert!(matches!(&carols, ServerFrame::UserChainLinks { links, .. } if links.len() == 2));
    // Profiles: only contacts (and oneself).
    for user in [bob.user.id(), carol.user.id()] {
        let answer = ask(&mut a, ClientFrame::ProfileFetch { user }).await;
        assert_eq!(code(&answer), Some(ErrorCode::NotAContact), "{answer:?}");
    }
    let own = ask(
        &mut a,
        ClientFrame::ProfileFetch {
            user: alice.user.id(),
        },
    )
    .await;
    assert!(matches!(own, ServerFrame::Profile { profile: None, .. }));
}

#[tokio::test]
async fn lookups_are_limited_per_device_and_per_address() {
    // Six a minute: bursts of two per device and per address.
    let node = node(|config| config.limits.lookups_per_minute = 6).await;
    let users: Vec<Identity> = (0..3).map(|_| Identity::new_user()).collect();
    let mut clients = Vec::new();
    for user in &users {
        clients.push(connect(&node, user).await);
    }
    let whois = |handle: &str| ClientFrame::Whois {
        handle: handle.into(),
    };
    // Two lookups from the first device pass; the third is refused.
    for _ in 0..2 {
        let answer = ask(&mut clients[0], whois("alice.01")).await;
        assert!(
            matches!(answer, ServerFrame::WhoisResult { user: None, .. }),
            "{answer:?}"
        );
    }
    let refused = ask(&mut clients[0], whois("alice.01")).await;
    assert_eq!(code(&refused), Some(ErrorCode::LookupLimit));
    // Another device from the same address (all tests run on 127.0.0.1): the address's
    // bucket is spent too, so fresh devices do not multiply the allowance.
    let refused = ask(&mut clients[1], whois("alice.01")).await;
    assert_eq!(code(&refused), Some(ErrorCode::LookupLimit));
    // A malformed handle is refused for what it is.
    let bad = ask(&mut clients[2], whois("not a handle")).await;
    assert!(
        matches!(
            code(&bad),
            Some(ErrorCode::HandleInvalid | ErrorCode::LookupLimit)
        ),
        "{bad:?}"
    );
}

#[tokio::test]
async fn a_recovery_session_may_not_use_the_people_frames() {
    let node = node(|_| {}).await;
    let alice = Identity::new_user();
    drop(connect(&node, &alice).await);
    let mut recovery =
        Client::connect_recovery(node.server.local_addr(), node.server.relay_id(), &alice)
            .await
            .unwrap();
    recovery
        .send(&ClientFrame::HandleSet {
            name: Some("alice".into()),
        })
        .await;
    let answer = next_frame(&mut recovery).await.unwrap();
    assert_eq!(
        code(&answer),
        Some(ErrorCode::UnexpectedFrame),
        "{answer:?}"
    );
    // And the connection ends.
    loop {
        match recovery.recv().await {
            Err(close) => {
                assert_eq!(close, Some(4104));
                break;
            }
            Ok(_) => continue,
        }
    }
}

#[tokio::test]
async fn people_writes_are_rate_limited_per_device() {
    // One a second: bursts of two.
    let node = node(|config| config.limits.people_writes_per_device_per_second = 1).await;
    let alice = Identity::new_user();
    let mut a = connect(&node, &alice).await;
    let peer = Identity::new_user().user.id();
    for _ in 0..2 {
        assert_eq!(
            ask(&mut a, ClientFrame::Unblock { peer }).await,
            ServerFrame::Done
        );
    }
    let refused = ask(&mut a, ClientFrame::Unblock { peer }).await;
    assert_eq!(code(&refused), Some(ErrorCode::RateLimited));
    // Reads are not writes: still answered.
    let list = ask(&mut a, ClientFrame::ContactsList).await;
    assert!(matches!(list, ServerFrame::Contacts { .. }), "{list:?}");
}

#[tokio::test]
async fn a_long_contact_list_comes_in_pages() {
    let node = node(|_| {}).await;
    let alice = Identity::new_user();
    let mut a = connect(&node, &alice).await;
    // 600 blocked users, straight in the store (blocking needs no chain).
    let limits = ferry_relay::store::PeopleLimits::default();
    for _ in 0..600 {
        let peer = Identity::new_user().user.id();
        let change = ferry_relay::store::ContactChange::Block;
        let notified = node
            .store()
            .change_contact(alice.user.id(), peer, change, &limits, 1_700_000_000_000)
            .await
            .unwrap();
        drop(notified);
    }
    a.send(&ClientFrame::ContactsList).await;
    let mut pages = Vec::new();
    loop {
        match answer(&mut a).await {
            ServerFrame::Contacts { contacts, more, .. } => {
                pages.push(contacts.len());
                if !more {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pages, [512, 88]);
}

#[tokio::test]
async fn a_failed_people_write_is_answered_unavailable_and_a_retry_goes_through() {
    let node = node(|_| {}).await;
    let (alice, bob) = (Identity::new_user(), Identity::new_user());
    let mut a = connect(&node, &alice).await;
    let _b = connect(&node, &bob).await;
    let intro = intro_signed(&alice, &alice.device, &bob);
    node.faults.fail_next_people_ops(1);
    let failed = ask(&mut a, ClientFrame::ContactRequest(Box::new(intro.clone()))).await;
    assert_eq!(code(&failed), Some(ErrorCode::Unavailable), "{failed:?}");
    // Nothing was written: no notice in either log.
    for user in [alice.user.id(), bob.user.id()] {
        assert_eq!(node.store().log_bounds(user).await.unwrap().head, 0);
    }
    // The same request again: stored once, both logs get their notice.
    let done = ask(&mut a, ClientFrame::ContactRequest(Box::new(intro))).await;
    assert_eq!(done, ServerFrame::Done);
    for user in [alice.user.id(), bob.user.id()] {
        assert_eq!(node.store().log_bounds(user).await.unwrap().head, 1);
    }
}
