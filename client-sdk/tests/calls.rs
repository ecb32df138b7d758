//! Calls through the SDK against a real relay: Alice and Bob, two devices each, in a 1:1
//! conversation. A call rings on every online device of the callee and not on the caller's
//! other device; the first device to accept gets it and the other stops ringing; ICE
//! candidates go between the two devices in the call; a decline on one device stops the
//! other; the caller records each call in the conversation, and a call nobody answers is a
//! missed call that a device offline at the time reads (and counts as unread) later. TURN
//! credentials come from a relay that has a TURN server, and a clear refusal from one that has
//! none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_client::{
    CallEvent, CallId, CallOutcome, CallRecord, Content, ConvId, ConversationEvent, EndReason,
    UserId,
};
use support::conversations::{Dev, Person, TwoInAChat, two_in_a_chat};
use support::*;

async fn incoming(dev: &mut Dev, call: CallId, from: UserId) -> String {
    match dev
        .until_call(
            "Incoming",
            |e| matches!(e, CallEvent::Incoming { call: c, .. } if *c == call),
        )
        .await
    {
        CallEvent::Incoming {
            from: caller,
            video,
            offer,
            ..
        } => {
            assert_eq!(caller, from, "{}", dev.name);
            assert!(video, "{}", dev.name);
            offer
        }
        other => unreachable!("{other:?}"),
    }
}

async fn ended(dev: &mut Dev, call: CallId) -> EndReason {
    match dev
        .until_call(
            "Ended",
            |e| matches!(e, CallEvent::Ended { call: c, .. } if *c == call),
        )
        .await
    {
        CallEvent::Ended { reason, .. } => reason,
        other => unreachable!("{other:?}"),
    }
}

async fn candidate(dev: &mut Dev, call: CallId) -> String {
    match dev
        .until_call(
            "Candidate",
            |e| matches!(e, CallEvent::Candidate { call: c, .. } if *c == call),
        )
        .await
    {
        CallEvent::Candidate { candidate, .. } => candidate,
        other => unreachable!("{other:?}"),
    }
}

/// The call record `dev` was given as a message of `conv`.
async fn record(dev: &mut Dev, conv: ConvId, call: CallId) -> CallRecord {
    let is_it = |e: &ConversationEvent| {
        matches!(e, ConversationEvent::Message(m)
            if m.conv == conv && matches!(&m.content, Content::Call(r) if r.call == call))
    };
    match dev.until("a call record", is_it).await {
        ConversationEvent::Message(message) => match message.content {
            Content::Call(record) => record,
            Content::Text(_) | Content::File(_) => unreachable!(),
        },
        other => unreachable!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_rings_every_device_of_the_callee_and_the_first_to_accept_gets_it() {
    let TwoInAChat {
        mut alice,
        mut bob,
        conv,
        relay: _relay,
        dir: _dir,
    } = two_in_a_chat().await;
    let caller = alice.one.handle();
    let call = caller
        .place_call(conv, true, "v=0 offer".into())
        .await
        .unwrap();
    assert_eq!(incoming(&mut bob.one, call, alice.user).await, "v=0 offer");
    assert_eq!(incoming(&mut bob.two, call, alice.user).await, "v=0 offer");
    alice
        .one
        .until_call("Ringing", |e| matches!(e, CallEvent::Ringing { .. }))
        .await;
    // An app that looks while it rings (started late, reloaded) finds the offer to answer;
    // the caller's own list carries none.
    let ringing = bob.one.handle().calls();
    assert_eq!(ringing.len(), 1);
    assert_eq!(ringing[0].offer.as_deref(), Some("v=0 offer"));
    assert_eq!(caller.calls()[0].offer, None);
    // Alice's candidate while Bob's devices ring: the one that accepts gets it.
    caller
        .send_ice_candidate(call, "candidate:alice".into())
        .await
        .unwrap();

    bob.two
        .handle()
        .accept_call(call, "v=0 answer".into())
        .await
        .unwrap();
    let answered = alice
        .one
        .until_call("Answered", |e| matches!(e, CallEvent::Answered { .. }))
        .await;
    assert_eq!(
        answered,
        CallEvent::Answered {
            call,
            device: bob.two.id(),
            answer: "v=0 answer".into()
        }
    );
    bob.two
        .until_call("Connected", |e| *e == CallEvent::Connected { call })
        .await;
    assert_eq!(
        bob.two.handle().calls()[0].offer,
        None,
        "no offer once answered"
    );
    // Alice's candidate comes before or after Connected, as the signals cross.
    let alices = CallEvent::Candidate {
        call,
        candidate: "candidate:alice".into(),
    };
    if !bob.two.calls.contains(&alices) {
        bob.two
            .until_call("Alice's candidate", |e| *e == alices)
            .await;
    }
    assert_eq!(
        ended(&mut bob.one, call).await,
        EndReason::AnsweredElsewhere
    );
    assert!(bob.one.handle().calls().is_empty());

    bob.two
        .handle()
        .send_ice_candidate(call, "candidate:bob".into())
        .await
        .unwrap();
    assert_eq!(candidate(&mut alice.one, call).await, "candidate:bob");

    caller.hang_up(call).await.unwrap();
    assert_eq!(ended(&mut bob.two, call).await, EndReason::RemoteHungUp);
    assert_eq!(ended(&mut alice.one, call).await, EndReason::HungUp);
    // Every device gets the record, the caller's own too (its app did not write it).
    for dev in [&mut alice.one, &mut alice.two, &mut bob.one, &mut bob.two] {
        let got = record(dev, conv, call).await;
        assert!(
            matches!(got.outcome, CallOutcome::Completed { .. }),
            "{}: {got:?}",
            dev.name
        );
    }
    // Alice's other device never rang: the call was hers.
    assert!(
        !alice
            .two
            .calls
            .iter()
            .any(|e| matches!(e, CallEvent::Incoming { .. })),
        "{:?}",
        alice.two.calls
    );

    // A second call, declined on one of Bob's devices: the other stops ringing.
    let second = caller.place_call(conv, true, "again".into()).await.unwrap();
    incoming(&mut bob.one, second, alice.user).await;
    incoming(&mut bob.two, second, alice.user).await;
    bob.one.handle().decline_call(second).await.unwrap();
    assert_eq!(ended(&mut alice.one, second).await, EndReason::Declined);
    assert_eq!(
        ended(&mut bob.two, second).await,
        EndReason::DeclinedElsewhere
    );
    assert_eq!(
        record(&mut bob.two, conv, second).await.outcome,
        CallOutcome::Declined
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_answers_is_a_missed_call_that_offline_devices_read_later() {
    let TwoInAChat {
        mut alice,
        bob,
        conv,
        relay: _relay,
        dir: _dir,
    } = two_in_a_chat().await;
    let Person {
        user: bob_user,
        one: bob_one,
        two: bob_two,
        ..
    } = bob;
    // Bob is offline: nothing rings.
    let bob_one = bob_one.close().await;
    let bob_two = bob_two.close().await;
    let call = alice
        .one
        .handle()
        .place_call(conv, true, "offer".into())
        .await
        .unwrap();
    assert_eq!(ended(&mut alice.one, call).await, EndReason::NoAnswer);
    let kept = alice.one.handle().history(conv, 0, 10).await;
    assert!(
        kept.iter().any(|m| m.content
            == Content::Call(CallRecord {
                call,
                video: true,
                outcome: CallOutcome::Missed
            })),
        "{kept:?}"
    );

    // Bob's phone comes back: the missed call is there, and counts as unread.
    let mut bob_one = Dev::connect("bob.one", &bob_one).await;
    bob_one.caught_up().await;
    assert_eq!(
        record(&mut bob_one, conv, call).await.outcome,
        CallOutcome::Missed
    );
    let listed = bob_one.handle().conversations().await.unwrap();
    let summary = &listed.iter().find(|c| c.conv == conv).unwrap().summary;
    assert_eq!(summary.unread, 1);
    assert!(summary.members.iter().any(|m| m.user == bob_user));
    // It never rang there, nor on the other device that comes back after.
    let mut bob_two = Dev::connect("bob.two", &bob_two).await;
    bob_two.caught_up().await;
    record(&mut bob_two, conv, call).await;
    for dev in [&bob_one, &bob_two] {
        assert!(dev.calls.is_empty(), "{}: {:?}", dev.name, dev.calls);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_for_one_to_one_conversations() {
    let TwoInAChat {
        alice,
        bob,
        conv,
        relay: _relay,
        dir: _dir,
    } = two_in_a_chat().await;
    let group = alice
        .one
        .handle()
        .create_group(Some("team"), &[bob.user])
        .await
        .unwrap();
    let refused = alice
        .one
        .handle()
        .place_call(group, false, "offer".into())
        .await;
    assert!(
        matches!(refused, Err(ferry_client::ClientError::Call(_))),
        "{refused:?}"
    );
    // One call at a time on a device.
    let caller = alice.one.handle();
    let first = caller.place_call(conv, false, "o".into()).await.unwrap();
    assert!(caller.place_call(conv, false, "o".into()).await.is_err());
    caller.hang_up(first).await.unwrap();
    assert!(caller.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_come_from_a_relay_with_a_turn_server_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let urls = vec![
        "turn:127.0.0.1:3478?transport=udp".to_owned(),
        "turns:turn.example.org:5349?transport=tcp".to_owned(),
    ];
    let configured = urls.clone();
    let with_turn = TestRelay::start_with(
        &dir.path().join("relay"),
        free_addr(),
        std::sync::Arc::new(move |config: &mut ferry_relay::Config| {
            config.turn.urls = configured.clone();
            config.turn.secret = Some("shared with coturn".into());
        }),
    );
    let state = new_user(&dir.path().join("alice"), &with_turn, "alice").await;
    let alice = ferry_client::Client::connect(state, fast()).await.unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let credentials = alice.handle().turn_credentials().await.unwrap();
    assert_eq!(credentials.urls, urls);
    let (expiry, id) = credentials.username.split_once(':').unwrap();
    assert_eq!(expiry.parse::<u64>().unwrap(), credentials.expires_at);
    let ttl = credentials.expires_at - before;
    assert!((4 * 3600 - 5..=4 * 3600 + 5).contains(&ttl), "{ttl}");
    assert!(!id.is_empty() && !credentials.password.is_empty());
    // Each call gets its own.
    let again = alice.handle().turn_credentials().await.unwrap();
    assert_ne!(again.username, credentials.username);
    drop(alice.close().await.unwrap());

    let without = TestRelay::start(&dir.path().join("plain"));
    let state = new_user(&dir.path().join("bob"), &without, "bob").await;
    let bob = ferry_client::Client::connect(state, fast()).await.unwrap();
    let refused = bob.handle().turn_credentials().await;
    assert!(
        matches!(
            &refused,
            Err(ferry_client::ClientError::Relay {
                code: ferry_client::ErrorCode::TurnUnavailable,
                ..
            })
        ),
        "{refused:?}"
    );
    drop(bob.close().await.unwrap());
}
