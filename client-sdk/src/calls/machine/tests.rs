#![allow(clippy::unwrap_used)]

//! The machine between devices on a simulated relay: every signal a device sends reaches
//! every other device of the conversation (as `ConvEphemeral` does), in order.

use super::*;

const RING: Duration = Duration::from_secs(30);
const CONV: ConvId = ConvId([0xcc; 16]);
const ALICE: UserId = UserId([0xa0; 32]);
const BOB: UserId = UserId([0xb0; 32]);
/// Every device's clock, in the tests (ms since the Unix epoch).
const WALL: u64 = 1_700_000_000_000;

struct Dev {
    user: UserId,
    id: DeviceId,
    calls: Calls,
    records: Vec<CallRecord>,
}

impl Dev {
    fn new(user: UserId, n: u8) -> Self {
        let id = DeviceId([n; 32]);
        Self {
            user,
            id,
            calls: Calls::new(user, id, RING),
            records: Vec::new(),
        }
    }

    fn peer(&self) -> UserId {
        if self.user == ALICE { BOB } else { ALICE }
    }

    fn events(&mut self) -> Vec<CallEvent> {
        std::iter::from_fn(|| self.calls.take_event()).collect()
    }

    fn state(&self, call: CallId) -> Option<CallState> {
        self.calls
            .list()
            .into_iter()
            .find(|c| c.call == call)
            .map(|c| c.state)
    }
}

/// Devices: 0 = Alice's phone, 1 = Bob's phone, 2 = Bob's laptop.
fn devices() -> Vec<Dev> {
    vec![Dev::new(ALICE, 1), Dev::new(BOB, 2), Dev::new(BOB, 3)]
}

/// Delivers `out` of device `from` to the others (and what they answer, until quiet);
/// records stay with their device. `deaf` devices hear nothing (offline).
fn deliver(devs: &mut [Dev], from: usize, out: Vec<Out>, now: Instant, deaf: &[usize]) {
    let mut queue: VecDeque<(usize, Out)> = out.into_iter().map(|o| (from, o)).collect();
    while let Some((sender, out)) = queue.pop_front() {
        match out {
            Out::Record(conv, record) => {
                assert_eq!(conv, CONV);
                devs[sender].records.push(record);
            }
            Out::Signal(conv, signal) => {
                let (user, device) = (devs[sender].user, devs[sender].id);
                for (i, dev) in devs.iter_mut().enumerate() {
                    if i == sender || deaf.contains(&i) {
                        continue;
                    }
                    let peer = dev.peer();
                    let answers =
                        dev.calls
                            .on_signal(conv, peer, user, device, signal.clone(), now, WALL);
                    queue.extend(answers.into_iter().map(|o| (i, o)));
                }
            }
        }
    }
}

fn place(devs: &mut [Dev], call: CallId, now: Instant, deaf: &[usize]) {
    let out = devs[0]
        .calls
        .place(call, CONV, BOB, true, "offer".into(), now, WALL)
        .unwrap();
    deliver(devs, 0, out, now, deaf);
}

fn ended(events: &[CallEvent]) -> Option<EndReason> {
    events.iter().find_map(|e| match e {
        CallEvent::Ended { reason, .. } => Some(*reason),
        _ => None,
    })
}

#[test]
fn every_callee_device_rings_the_first_to_accept_wins_and_the_other_stops() {
    let mut devs = devices();
    let now = Instant::now();
    let call = CallId([1; 16]);
    place(&mut devs, call, now, &[]);
    for bob in [1, 2] {
        assert_eq!(devs[bob].state(call), Some(CallState::Incoming));
        assert!(matches!(
            devs[bob].events().as_slice(),
            [CallEvent::Incoming { from: ALICE, video: true, offer, .. }] if offer == "offer"
        ));
    }
    let ringing = devs[0].events();
    assert_eq!(ringing.len(), 2, "both of Bob's devices ring: {ringing:?}");

    // Alice's candidate while ringing: kept by both of Bob's devices.
    let out = devs[0].calls.candidate(call, "cand-a".into()).unwrap();
    deliver(&mut devs, 0, out, now, &[]);
    assert!(devs[1].events().is_empty(), "not before accepting");

    let out = devs[2].calls.accept(call, "answer".into(), now).unwrap();
    assert_eq!(
        devs[2].events(),
        [CallEvent::Candidate {
            call,
            candidate: "cand-a".into()
        }]
    );
    deliver(&mut devs, 2, out, now, &[]);
    assert_eq!(
        devs[0].events(),
        [CallEvent::Answered {
            call,
            device: devs[2].id,
            answer: "answer".into()
        }]
    );
    assert_eq!(devs[2].events(), [CallEvent::Connected { call }]);
    assert_eq!(ended(&devs[1].events()), Some(EndReason::AnsweredElsewhere));
    assert_eq!(devs[1].state(call), None);

    // Candidates go between the two devices in the call only.
    let out = devs[2].calls.candidate(call, "cand-b".into()).unwrap();
    deliver(&mut devs, 2, out, now, &[]);
    assert_eq!(
        devs[0].events(),
        [CallEvent::Candidate {
            call,
            candidate: "cand-b".into()
        }]
    );

    let later = now + Duration::from_secs(75);
    let out = devs[2].calls.hang_up(call, later).unwrap();
    deliver(&mut devs, 2, out, later, &[]);
    assert_eq!(ended(&devs[0].events()), Some(EndReason::RemoteHungUp));
    assert_eq!(ended(&devs[2].events()), Some(EndReason::HungUp));
    assert_eq!(
        devs[0].records,
        [CallRecord {
            call,
            video: true,
            outcome: CallOutcome::Completed { seconds: 75 }
        }]
    );
    assert!(devs[2].records.is_empty(), "only the caller records");
}

#[test]
fn two_devices_accepting_at_once_get_one_call() {
    let mut devs = devices();
    let now = Instant::now();
    let call = CallId([2; 16]);
    place(&mut devs, call, now, &[]);
    // Both accept before hearing each other.
    let first = devs[1].calls.accept(call, "one".into(), now).unwrap();
    let second = devs[2].calls.accept(call, "two".into(), now).unwrap();
    deliver(&mut devs, 1, first, now, &[]);
    deliver(&mut devs, 2, second, now, &[]);
    let alice = devs[0].events();
    let answered: Vec<_> = alice
        .iter()
        .filter(|e| matches!(e, CallEvent::Answered { .. }))
        .collect();
    assert_eq!(answered.len(), 1, "{alice:?}");
    assert!(devs[1].events().contains(&CallEvent::Connected { call }));
    assert_eq!(ended(&devs[2].events()), Some(EndReason::AnsweredElsewhere));
}

#[test]
fn nobody_answering_records_a_missed_call_and_stops_every_ring() {
    let mut devs = devices();
    let now = Instant::now();
    let call = CallId([3; 16]);
    place(&mut devs, call, now, &[]);
    assert_eq!(devs[0].calls.next_deadline(), Some(now + RING));
    assert!(devs[0].calls.expire(now + RING / 2).is_empty());
    let out = devs[0].calls.expire(now + RING);
    deliver(&mut devs, 0, out, now + RING, &[]);
    assert_eq!(ended(&devs[0].events()), Some(EndReason::NoAnswer));
    for bob in [1, 2] {
        assert_eq!(ended(&devs[bob].events()), Some(EndReason::Missed));
    }
    assert_eq!(
        devs[0].records,
        [CallRecord {
            call,
            video: true,
            outcome: CallOutcome::Missed
        }]
    );
    assert_eq!(
        devs[0].records[0].class(),
        ferry_protocol::conversations::MessageClass::Content
    );
}

#[test]
fn a_callee_device_that_missed_the_hang_up_stops_ringing_by_itself() {
    let mut devs = devices();
    let now = Instant::now();
    let call = CallId([4; 16]);
    place(&mut devs, call, now, &[]);
    let out = devs[0].calls.expire(now + RING);
    deliver(&mut devs, 0, out, now + RING, &[1]);
    devs[1].events();
    assert_eq!(devs[1].calls.next_deadline(), Some(now + RING + RING_GRACE));
    assert!(devs[1].calls.expire(now + RING).is_empty());
    devs[1].calls.expire(now + RING + RING_GRACE);
    assert_eq!(ended(&devs[1].events()), Some(EndReason::Missed));
    assert!(devs[1].records.is_empty());
}

#[test]
fn a_call_with_nobody_online_ends_unanswered_and_is_recorded() {
    let mut devs = devices();
    let now = Instant::now();
    let call = CallId([5; 16]);
    place(&mut devs, call, now, &[1, 2]);
    let out = devs[0].calls.expire(now + RING);
    deliver(&mut devs, 0, out, now + RING, &[1, 2]);
    assert_eq!(ended(&devs[0].events()), Some(EndReason::NoAnswer));
    assert_eq!(devs[0].records[0].outcome, CallOutcome::Missed);
}

#[test]
fn declining_on_one_device_declines_the_call_everywhere() {
    let mut devs = devices();
    let now = Instant::now();
    let call = CallId([6; 16]);
    place(&mut devs, call, now, &[]);
    let out = devs[1].calls.decline(call).unwrap();
    deliver(&mut devs, 1, out, now, &[]);
    assert_eq!(ended(&devs[0].events()), Some(EndReason::Declined));
    assert_eq!(ended(&devs[1].events()), Some(EndReason::HungUp));
    assert_eq!(ended(&devs[2].events()), Some(EndReason::DeclinedElsewhere));
    assert_eq!(devs[0].records[0].outcome, CallOutcome::Declined);
    assert_eq!(
        devs[0].records[0].class(),
        ferry_protocol::conversations::MessageClass::Control
    );
}

#[test]
fn a_callee_in_another_call_is_busy() {
    let mut devs = vec![Dev::new(ALICE, 1), Dev::new(BOB, 2)];
    let now = Instant::now();
    // Bob's phone is in a call in another conversation.
    let other = CallId([0xee; 16]);
    devs[1]
        .calls
        .place(
            other,
            ConvId([0xdd; 16]),
            UserId([9; 32]),
            false,
            "o".into(),
            now,
            WALL,
        )
        .unwrap();
    let call = CallId([7; 16]);
    place(&mut devs, call, now, &[]);
    assert_eq!(ended(&devs[0].events()), Some(EndReason::Busy));
    assert_eq!(devs[0].records[0].outcome, CallOutcome::Busy);
    assert_eq!(devs[1].state(other), Some(CallState::Outgoing));
    assert!(devs[1].events().is_empty(), "the busy device does not ring");
}

#[test]
fn two_users_calling_each_other_at_once_keep_the_call_with_the_lower_id() {
    let mut devs = vec![Dev::new(ALICE, 1), Dev::new(BOB, 2)];
    let now = Instant::now();
    let (low, high) = (CallId([1; 16]), CallId([2; 16]));
    let alices = devs[0]
        .calls
        .place(high, CONV, BOB, false, "a".into(), now, WALL)
        .unwrap();
    let bobs = devs[1]
        .calls
        .place(low, CONV, ALICE, false, "b".into(), now, WALL)
        .unwrap();
    // The offers cross.
    deliver(&mut devs, 0, alices, now, &[]);
    deliver(&mut devs, 1, bobs, now, &[]);
    assert_eq!(devs[0].state(high), None, "Alice's call gave way");
    assert_eq!(devs[0].state(low), Some(CallState::Incoming));
    assert_eq!(devs[1].state(low), Some(CallState::Outgoing));
    assert!(devs[0].records.is_empty() && devs[1].records.is_empty());
}

#[test]
fn signals_from_devices_outside_the_call_change_nothing() {
    let mut devs = devices();
    let now = Instant::now();
    let call = CallId([8; 16]);
    place(&mut devs, call, now, &[]);
    let out = devs[1].calls.accept(call, "answer".into(), now).unwrap();
    deliver(&mut devs, 1, out, now, &[]);
    for dev in &mut devs {
        dev.events();
    }
    let stranger = DeviceId([0x66; 32]);
    let forged = [
        // Another device of Bob's: neither its candidates nor its hang-up count.
        (BOB, stranger, CallSignal::HangUp { call }),
        (
            BOB,
            stranger,
            CallSignal::Candidate {
                call,
                candidate: "x".into(),
            },
        ),
        // Alice herself (another device) offering in the same conversation.
        (
            ALICE,
            stranger,
            CallSignal::Offer {
                call: CallId([9; 16]),
                video: false,
                sdp: "o".into(),
                sent_at: WALL,
            },
        ),
        // A second accept after the call is on.
        (
            BOB,
            stranger,
            CallSignal::Accept {
                call,
                sdp: "late".into(),
            },
        ),
    ];
    for (user, device, signal) in forged {
        let out = devs[0]
            .calls
            .on_signal(CONV, BOB, user, device, signal.clone(), now, WALL);
        assert!(out.is_empty(), "{signal:?}");
    }
    assert!(devs[0].events().is_empty());
    assert_eq!(devs[0].state(call), Some(CallState::Connected));
    // Bob's phone hears a Selected naming another device from someone not the caller.
    let out = devs[1].calls.on_signal(
        CONV,
        ALICE,
        ALICE,
        stranger,
        CallSignal::Selected {
            call,
            device: stranger,
        },
        now,
        WALL,
    );
    assert!(out.is_empty());
    assert_eq!(devs[1].state(call), Some(CallState::Connected));
    // An offer over the size limit is refused when sent and ignored when heard.
    let huge = "x".repeat(super::super::MAX_SDP_LEN + 1);
    assert!(
        Dev::new(ALICE, 9)
            .calls
            .place(CallId([10; 16]), CONV, BOB, false, huge.clone(), now, WALL)
            .is_err()
    );
    let mut idle = Dev::new(BOB, 8);
    let offer = CallSignal::Offer {
        call: CallId([10; 16]),
        video: false,
        sdp: huge,
        sent_at: WALL,
    };
    assert!(
        idle.calls
            .on_signal(CONV, ALICE, ALICE, stranger, offer, now, WALL)
            .is_empty()
    );
    assert!(idle.events().is_empty());
}

#[test]
fn a_ringing_device_keeps_a_bounded_number_of_candidates() {
    let mut devs = devices();
    let now = Instant::now();
    let call = CallId([11; 16]);
    place(&mut devs, call, now, &[]);
    for i in 0..MAX_BUFFERED_CANDIDATES + 10 {
        let out = devs[0].calls.candidate(call, format!("c{i}")).unwrap();
        deliver(&mut devs, 0, out, now, &[]);
    }
    devs[1].events();
    devs[1].calls.accept(call, "answer".into(), now).unwrap();
    assert_eq!(devs[1].events().len(), MAX_BUFFERED_CANDIDATES);
}

#[test]
fn an_accept_the_caller_never_confirms_ends_the_call() {
    let mut devs = devices();
    let now = Instant::now();
    let call = CallId([12; 16]);
    place(&mut devs, call, now, &[]);
    devs[1].events();
    // The accept is lost: the caller never hears it.
    let out = devs[1].calls.accept(call, "answer".into(), now).unwrap();
    assert!(matches!(
        out.as_slice(),
        [Out::Signal(_, CallSignal::Accept { .. })]
    ));
    let out = devs[1].calls.expire(now + SELECT_TIMEOUT);
    assert!(matches!(
        out.as_slice(),
        [Out::Signal(_, CallSignal::HangUp { .. })]
    ));
    assert_eq!(ended(&devs[1].events()), Some(EndReason::Unconfirmed));
}

#[test]
fn a_late_signal_about_an_ended_call_is_ignored() {
    let mut devs = devices();
    let now = Instant::now();
    let call = CallId([13; 16]);
    place(&mut devs, call, now, &[]);
    let out = devs[1].calls.decline(call).unwrap();
    deliver(&mut devs, 1, out, now, &[]);
    devs[1].events();
    // The same offer again (a relay replaying it) does not ring again.
    let replay = CallSignal::Offer {
        call,
        video: true,
        sdp: "offer".into(),
        sent_at: WALL,
    };
    let (alice, alice_device) = (devs[0].user, devs[0].id);
    let out = devs[1]
        .calls
        .on_signal(CONV, ALICE, alice, alice_device, replay, now, WALL);
    assert!(out.is_empty());
    assert!(devs[1].events().is_empty());
}

#[test]
fn an_offer_from_far_in_the_past_or_future_does_not_ring() {
    let now = Instant::now();
    let alice_device = DeviceId([1; 32]);
    for (sent_at, rings) in [
        (WALL - MAX_OFFER_SKEW_MS - 1, false),
        (WALL - MAX_OFFER_SKEW_MS, true),
        (WALL + MAX_OFFER_SKEW_MS, true),
        (WALL + MAX_OFFER_SKEW_MS + 1, false),
    ] {
        let mut bob = Dev::new(BOB, 2);
        let offer = CallSignal::Offer {
            call: CallId([14; 16]),
            video: false,
            sdp: "offer".into(),
            sent_at,
        };
        let out = bob
            .calls
            .on_signal(CONV, ALICE, ALICE, alice_device, offer, now, WALL);
        assert_eq!(!out.is_empty(), rings, "sent at {sent_at}");
        assert_eq!(bob.events().len(), usize::from(rings), "sent at {sent_at}");
    }
}
