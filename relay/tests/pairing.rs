//! Pairing over a real relay: the relay assigns slots and routes opaque PAKE messages by
//! slot, one join per code, so a guesser gets one try in 10^6 per pairing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_protocol::pairing::{Inviter, Joiner, PairingCode};
use ferry_protocol::seal::DataKey;
use ferry_protocol::{
    ClientFrame, DeviceKey, ErrorCode, LinkBody, RelayId, ServerFrame, SigningKey,
};
use ferry_relay::{Config, Server};
use rand_core::OsRng;
use support::client::{Client, Identity, close_code};
use support::pairing::pair;

async fn relay(adjust: impl FnOnce(&mut Config)) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
    adjust(&mut config);
    (Server::spawn(config).await.unwrap(), dir)
}

/// `slot` with six fixed digits.
fn code_for(slot: u16, digits: &str) -> PairingCode {
    PairingCode::parse(&format!("{slot}-{digits}")).unwrap()
}

/// An authenticated session of a new user, replayed.
async fn inviter(addr: std::net::SocketAddr, relay_id: RelayId) -> Client {
    let mut client = Client::connect(addr, relay_id, &Identity::new_user(), None)
        .await
        .unwrap();
    client.replay().await;
    client
}

fn error_code(frame: &ServerFrame) -> Option<ErrorCode> {
    match frame {
        ServerFrame::Error(e) => Some(e.code),
        ServerFrame::PairClosed { code, .. } => *code,
        _ => None,
    }
}

#[tokio::test]
async fn a_new_device_pairs_and_syncs() {
    let (server, _dir) = relay(|_| {}).await;
    let (addr, relay_id) = (server.local_addr(), server.relay_id());
    let laptop = Identity::new_user();
    let data_key = DataKey::generate(&mut OsRng);
    let mut a = Client::connect(addr, relay_id, &laptop, None)
        .await
        .unwrap();
    a.replay().await;
    a.append(1, b"before pairing").await.unwrap();

    // Device B types the code.
    let mut b = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let (code, paired) = pair(&mut a, &mut b, &laptop, &data_key).await;

    // The new device is a device of the user now.
    let mut t = Client::connect(addr, relay_id, &paired, None)
        .await
        .unwrap();
    let (events, _) = t.replay().await;
    assert_eq!(events[0].payload.0, b"before pairing");
    // The code is single use.
    let mut late = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let (_, hello) = Joiner::start(&code, &relay_id, &mut OsRng);
    late.send(&ClientFrame::PairJoin {
        slot: code.slot(),
        body: hello,
    })
    .await;
    assert_eq!(
        error_code(&late.pairing_frame().await),
        Some(ErrorCode::PairingCodeUsed)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_wrong_code_burns_the_slot() {
    let (server, _dir) = relay(|_| {}).await;
    let (addr, relay_id) = (server.local_addr(), server.relay_id());
    let laptop = Identity::new_user();
    let mut a = Client::connect(addr, relay_id, &laptop, None)
        .await
        .unwrap();
    a.replay().await;
    let slot = a.open_pairing().await.unwrap();
    let code = code_for(slot, "314159");
    // One open slot per user: a second is refused until this pairing ends.
    assert_eq!(a.open_pairing().await, Err(ErrorCode::RateLimited));
    let inviter = Inviter::start(&code, &relay_id, &mut OsRng);

    // A device types a wrong code (same slot); a second device, later, is told the code is
    // used (racing joins are `concurrent_joins_have_one_winner`).
    let wrong = code_for(slot, "314000");
    let mut b = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let mut c = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let (joiner, hello) = Joiner::start(&wrong, &relay_id, &mut OsRng);
    b.send(&ClientFrame::PairJoin {
        slot: wrong.slot(),
        body: hello,
    })
    .await;
    let ServerFrame::PairPeer { body, .. } = a.pairing_frame().await else {
        panic!("hello")
    };
    let (_c_joiner, c_hello) = Joiner::start(&code, &relay_id, &mut OsRng);
    c.send(&ClientFrame::PairJoin {
        slot: code.slot(),
        body: c_hello,
    })
    .await;
    assert_eq!(
        error_code(&c.pairing_frame().await),
        Some(ErrorCode::PairingCodeUsed)
    );

    // The wrong code is caught by the joiner before anything is revealed; it burns the slot.
    let (_, reply) = inviter.handle_joiner_hello(&body).unwrap();
    a.send(&ClientFrame::PairForward {
        slot: code.slot(),
        body: reply,
    })
    .await;
    let ServerFrame::PairPeer { body, .. } = b.pairing_frame().await else {
        panic!("reply")
    };
    let failed = joiner
        .handle_inviter_hello(&body, &DeviceKey::generate(&mut OsRng), [3; 32], "x")
        .unwrap_err();
    assert_eq!(failed.code(), ErrorCode::PairingFailed);
    b.send(&ClientFrame::PairClose {
        slot: code.slot(),
        success: false,
    })
    .await;
    assert_eq!(
        error_code(&a.pairing_frame().await),
        Some(ErrorCode::PairingFailed)
    );

    // Even the right code is refused now.
    let mut d = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let (_, hello) = Joiner::start(&code, &relay_id, &mut OsRng);
    d.send(&ClientFrame::PairJoin {
        slot: code.slot(),
        body: hello,
    })
    .await;
    assert_eq!(
        error_code(&d.pairing_frame().await),
        Some(ErrorCode::PairingCodeUsed)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_joins_have_one_winner() {
    // Six joins from one address: above the default burst.
    let (server, _dir) = relay(|c| c.limits.pair_joins_per_ip_per_minute = 600).await;
    let (addr, relay_id) = (server.local_addr(), server.relay_id());
    let laptop = Identity::new_user();
    let data_key = DataKey::generate(&mut OsRng);
    let mut a = Client::connect(addr, relay_id, &laptop, None)
        .await
        .unwrap();
    a.replay().await;
    for round in 0..3u32 {
        let slot = a.open_pairing().await.unwrap();
        let code = PairingCode::generate(slot, &mut OsRng);
        let inviter = Inviter::start(&code, &relay_id, &mut OsRng);

        // Two devices that both typed the right code send their joins at the same moment,
        // each from a task of its own. Each task returns the first pairing frame it gets:
        // the loser's is the refusal; the winner's comes once the inviter answers it.
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let mut racers = Vec::new();
        for _ in 0..2 {
            let mut client = Client::connect_anonymous(addr, relay_id).await.unwrap();
            let (joiner, hello) = Joiner::start(&code, &relay_id, &mut OsRng);
            let barrier = std::sync::Arc::clone(&barrier);
            let slot = code.slot();
            let body = hello.clone();
            let task = tokio::spawn(async move {
                barrier.wait().await;
                client.send(&ClientFrame::PairJoin { slot, body }).await;
                let first = client.pairing_frame().await;
                (client, first)
            });
            racers.push((hello, joiner, task));
        }

        // Exactly one hello reaches the inviter; the other device is told the code is used.
        let ServerFrame::PairPeer { body: hello, .. } = a.pairing_frame().await else {
            panic!("round {round}: a joiner's hello")
        };
        let winner = racers
            .iter()
            .position(|(sent, ..)| *sent == hello)
            .expect("the hello is one of the racers'");
        let (_, winner_joiner, winner_task) = racers.remove(winner);
        let (_, _, loser_task) = racers.remove(0);
        let (_loser, refused) = tokio::time::timeout(support::client::WAIT, loser_task)
            .await
            .expect("the loser was answered")
            .unwrap();
        assert_eq!(
            error_code(&refused),
            Some(ErrorCode::PairingCodeUsed),
            "round {round}: {refused:?}"
        );

        // The winner pairs.
        let (inviter, reply) = inviter.handle_joiner_hello(&hello).unwrap();
        a.send(&ClientFrame::PairForward {
            slot: code.slot(),
            body: reply,
        })
        .await;
        let (mut winner, first) = tokio::time::timeout(support::client::WAIT, winner_task)
            .await
            .expect("the winner got the inviter's answer")
            .unwrap();
        let ServerFrame::PairPeer { body, .. } = first else {
            panic!("round {round}: inviter hello, got {first:?}")
        };
        let tablet = DeviceKey::generate(&mut OsRng);
        let (joiner, request) = winner_joiner
            .handle_inviter_hello(&body, &tablet, [3; 32], "tablet")
            .unwrap();
        winner
            .send(&ClientFrame::PairForward {
                slot: code.slot(),
                body: request,
            })
            .await;
        let ServerFrame::PairPeer { body, .. } = a.pairing_frame().await else {
            panic!("round {round}: joiner request")
        };
        let (request, ready) = inviter.handle_joiner_request(&body).unwrap();
        assert_eq!(request.device, tablet.id());
        // Admitted in the chain before anything is granted.
        let admit = LinkBody::Admit {
            device: request.device,
            exchange: request.exchange,
            name: request.name,
            created_at: 1_700_000_000,
        };
        a.sign_and_append(laptop.user.id(), admit, SigningKey::Device(&laptop.device))
            .await
            .unwrap();
        let grant = ready.grant(laptop.user.id(), &[(0, &data_key)]);
        a.send(&ClientFrame::PairForward {
            slot: code.slot(),
            body: grant,
        })
        .await;
        a.send(&ClientFrame::PairClose {
            slot: code.slot(),
            success: true,
        })
        .await;
        let ServerFrame::PairPeer { body, .. } = winner.pairing_frame().await else {
            panic!("round {round}: grant")
        };
        let grant = joiner.handle_grant(&body).unwrap();
        assert_eq!(grant.user, laptop.user.id());
        assert_eq!(grant.epochs[0].1.bytes(), data_key.bytes());
        assert_eq!(
            winner.pairing_frame().await,
            ServerFrame::PairClosed {
                slot: code.slot(),
                code: None
            }
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_hostile_joiner_request_gets_the_pairing_closed_and_no_grant() {
    let (server, _dir) = relay(|_| {}).await;
    let (addr, relay_id) = (server.local_addr(), server.relay_id());
    let laptop = Identity::new_user();
    let mut a = Client::connect(addr, relay_id, &laptop, None)
        .await
        .unwrap();
    a.replay().await;
    let code = code_for(a.open_pairing().await.unwrap(), "161803");
    let inviter = Inviter::start(&code, &relay_id, &mut OsRng);

    // The joiner typed the right code, but what it (or anyone on the way) forwards as its
    // request is tampered with: the confirmation is right, the sealed request is not.
    let mut b = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let (joiner, hello) = Joiner::start(&code, &relay_id, &mut OsRng);
    b.send(&ClientFrame::PairJoin {
        slot: code.slot(),
        body: hello,
    })
    .await;
    let ServerFrame::PairPeer { body, .. } = a.pairing_frame().await else {
        panic!("joiner hello")
    };
    let (inviter, reply) = inviter.handle_joiner_hello(&body).unwrap();
    a.send(&ClientFrame::PairForward {
        slot: code.slot(),
        body: reply,
    })
    .await;
    let ServerFrame::PairPeer { body, .. } = b.pairing_frame().await else {
        panic!("inviter hello")
    };
    let (_, request) = joiner
        .handle_inviter_hello(&body, &DeviceKey::generate(&mut OsRng), [3; 32], "tablet")
        .unwrap();
    let ferry_protocol::pairing::PairingMessage::JoinerRequest {
        confirm,
        mut sealed,
    } = ferry_protocol::codec::decode(&request).unwrap()
    else {
        panic!("a JoinerRequest")
    };
    sealed[0] ^= 1;
    b.send(&ClientFrame::PairForward {
        slot: code.slot(),
        body: ferry_protocol::codec::encode(
            &ferry_protocol::pairing::PairingMessage::JoinerRequest { confirm, sealed },
        ),
    })
    .await;

    // The relay forwards it as it forwards everything; the inviter refuses it and closes
    // the pairing as failed; the joiner is told, and nothing else reaches it.
    let ServerFrame::PairPeer { body, .. } = a.pairing_frame().await else {
        panic!("joiner request")
    };
    let refused = inviter.handle_joiner_request(&body).unwrap_err();
    assert_eq!(refused.code(), ErrorCode::PairingFailed);
    // Nothing was admitted: the chain is still Create and the laptop's Admit.
    assert_eq!(a.fetch_links(0).await.len(), 2);
    a.send(&ClientFrame::PairClose {
        slot: code.slot(),
        success: false,
    })
    .await;
    assert_eq!(
        b.pairing_frame().await,
        ServerFrame::PairClosed {
            slot: code.slot(),
            code: Some(ErrorCode::PairingFailed)
        }
    );
    // The slot is burned for everyone after.
    let mut c = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let (_, hello) = Joiner::start(&code, &relay_id, &mut OsRng);
    c.send(&ClientFrame::PairJoin {
        slot: code.slot(),
        body: hello,
    })
    .await;
    assert_eq!(
        error_code(&c.pairing_frame().await),
        Some(ErrorCode::PairingCodeUsed)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_and_expired_codes_are_refused_and_anonymous_sessions_only_pair() {
    let (server, _dir) = relay(|c| c.limits.pairing_ttl_secs = 1).await;
    let (addr, relay_id) = (server.local_addr(), server.relay_id());
    let mut b = Client::connect_anonymous(addr, relay_id).await.unwrap();
    // The first slot the relay will assign, before anyone opened it.
    let code = code_for(1, "271828");
    let (_, hello) = Joiner::start(&code, &relay_id, &mut OsRng);
    b.send(&ClientFrame::PairJoin {
        slot: code.slot(),
        body: hello.clone(),
    })
    .await;
    assert_eq!(
        error_code(&b.pairing_frame().await),
        Some(ErrorCode::PairingUnknownCode)
    );

    let laptop = Identity::new_user();
    let mut a = Client::connect(addr, relay_id, &laptop, None)
        .await
        .unwrap();
    a.replay().await;
    assert_eq!(a.open_pairing().await, Ok(code.slot()));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut b = Client::connect_anonymous(addr, relay_id).await.unwrap();
    b.send(&ClientFrame::PairJoin {
        slot: code.slot(),
        body: hello,
    })
    .await;
    assert_eq!(
        error_code(&b.pairing_frame().await),
        Some(ErrorCode::PairingExpired)
    );

    // An anonymous session cannot touch any log.
    b.send(&ClientFrame::ListDevices).await;
    assert_eq!(
        close_code(&mut b.ws).await,
        Some(ErrorCode::UnexpectedFrame.close_code())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn join_attempts_are_limited_per_address() {
    let (server, _dir) = relay(|c| c.limits.pair_joins_per_ip_per_minute = 8).await;
    let (addr, relay_id) = (server.local_addr(), server.relay_id());
    let mut b = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let mut codes = Vec::new();
    for n in 0..6u16 {
        b.send(&ClientFrame::PairJoin {
            slot: n,
            body: vec![0],
        })
        .await;
        codes.push(error_code(&b.pairing_frame().await));
    }
    assert!(codes.contains(&Some(ErrorCode::RateLimited)), "{codes:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_relay_assigns_the_smallest_free_slot_once() {
    let (server, _dir) = relay(|c| c.limits.pair_joins_per_ip_per_minute = 6000).await;
    let (addr, relay_id) = (server.local_addr(), server.relay_id());
    // Five users, one slot each: 1 to 5, no number twice.
    let mut inviters = Vec::new();
    let mut slots = Vec::new();
    for _ in 0..5 {
        let mut a = inviter(addr, relay_id).await;
        slots.push(a.open_pairing().await.unwrap());
        inviters.push(a);
    }
    assert_eq!(slots, [1, 2, 3, 4, 5]);
    // The inviter of slot 2 leaves: its slot burns, and stays taken (a code someone may still
    // type must not reach a newer pairing); the next pairing gets 6.
    let gone = inviters.remove(1);
    drop(gone);
    let mut late = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let mut answer = None;
    for _ in 0..50 {
        let (_, hello) = Joiner::start(&code_for(2, "000000"), &relay_id, &mut OsRng);
        late.send(&ClientFrame::PairJoin {
            slot: 2,
            body: hello,
        })
        .await;
        answer = error_code(&late.pairing_frame().await);
        if answer == Some(ErrorCode::PairingCodeUsed) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(answer, Some(ErrorCode::PairingCodeUsed));
    let mut next = inviter(addr, relay_id).await;
    assert_eq!(next.open_pairing().await, Ok(6));
    server.shutdown().await;
}

#[tokio::test]
async fn a_scan_of_every_open_slot_gets_one_guess_at_each_pairing() {
    // The scanner is not slowed by the join limits here: what stops it is the one guess.
    let (server, _dir) = relay(|c| {
        c.limits.pair_joins_per_ip_per_minute = 6000;
        c.limits.pair_failed_joins_per_minute = 6000;
    })
    .await;
    let (addr, relay_id) = (server.local_addr(), server.relay_id());
    // Four users wait for their new devices, each with a code of its own.
    let mut pairings = Vec::new();
    for _ in 0..4 {
        let mut a = inviter(addr, relay_id).await;
        let slot = a.open_pairing().await.unwrap();
        let code = PairingCode::generate(slot, &mut OsRng);
        let pake = Inviter::start(&code, &relay_id, &mut OsRng);
        pairings.push((a, code, Some(pake)));
    }
    let live: Vec<u16> = pairings.iter().map(|(_, code, _)| code.slot()).collect();
    assert_eq!(live, [1, 2, 3, 4]);

    // The scanner tries every slot number up to past the last one, twice, each time with a
    // wrong code for that slot (the right one with one digit changed). The inviters answer
    // what reaches them as an honest inviter does.
    let mut scanner = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let mut reached = vec![0; pairings.len()];
    for pass in 0..2 {
        for slot in 1..=8u16 {
            let index = live.iter().position(|&s| s == slot);
            let guess = match index {
                Some(i) => {
                    let right: u32 = pairings[i].1.digits().parse().unwrap();
                    code_for(slot, &format!("{:06}", (right + 1) % 1_000_000))
                }
                None => code_for(slot, "123456"),
            };
            let (joiner, hello) = Joiner::start(&guess, &relay_id, &mut OsRng);
            scanner
                .send(&ClientFrame::PairJoin { slot, body: hello })
                .await;
            let Some(i) = index else {
                assert_eq!(
                    error_code(&scanner.pairing_frame().await),
                    Some(ErrorCode::PairingUnknownCode),
                    "pass {pass}, slot {slot}"
                );
                continue;
            };
            if pass == 1 {
                // The first guess burned the slot: no second one reaches the inviter.
                assert_eq!(
                    error_code(&scanner.pairing_frame().await),
                    Some(ErrorCode::PairingCodeUsed),
                    "pass {pass}, slot {slot}"
                );
                continue;
            }
            let (a, _, pake) = &mut pairings[i];
            let ServerFrame::PairPeer { body, .. } = a.pairing_frame().await else {
                panic!("slot {slot}: the scanner's hello reaches the inviter")
            };
            reached[i] += 1;
            let (_, reply) = pake.take().unwrap().handle_joiner_hello(&body).unwrap();
            a.send(&ClientFrame::PairForward { slot, body: reply })
                .await;
            let ServerFrame::PairPeer { body, .. } = scanner.pairing_frame().await else {
                panic!("slot {slot}: the inviter's hello")
            };
            // The guess was wrong: the scanner learns only that, and gives up the slot.
            let wrong = joiner
                .handle_inviter_hello(&body, &DeviceKey::generate(&mut OsRng), [9; 32], "scanner")
                .unwrap_err();
            assert_eq!(wrong, ferry_protocol::pairing::PairingError::WrongCode);
            scanner
                .send(&ClientFrame::PairClose {
                    slot,
                    success: false,
                })
                .await;
            // The inviter sees its pairing fail, and can say the code is burned.
            assert_eq!(
                a.pairing_frame().await,
                ServerFrame::PairClosed {
                    slot,
                    code: Some(ErrorCode::PairingFailed)
                }
            );
        }
    }
    assert_eq!(reached, [1, 1, 1, 1]);

    // Not even the right code gets in now.
    for (_, code, _) in &pairings {
        let (_, hello) = Joiner::start(code, &relay_id, &mut OsRng);
        scanner
            .send(&ClientFrame::PairJoin {
                slot: code.slot(),
                body: hello,
            })
            .await;
        assert_eq!(
            error_code(&scanner.pairing_frame().await),
            Some(ErrorCode::PairingCodeUsed)
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn failed_joins_are_limited_over_all_addresses() {
    // 8 a minute: a burst of 2. The per-address limit is far above, so what refuses below is
    // the node's limit (every connection of the test comes from 127.0.0.1 all the same).
    let (server, _dir) = relay(|c| {
        c.limits.pair_joins_per_ip_per_minute = 6000;
        c.limits.pair_failed_joins_per_minute = 8;
    })
    .await;
    let (addr, relay_id) = (server.local_addr(), server.relay_id());

    // Successful pairings give their token back: three in a row, more than the burst.
    let data_key = DataKey::generate(&mut OsRng);
    for _ in 0..3 {
        let laptop = Identity::new_user();
        let mut a = Client::connect(addr, relay_id, &laptop, None)
            .await
            .unwrap();
        a.replay().await;
        let mut b = Client::connect_anonymous(addr, relay_id).await.unwrap();
        pair(&mut a, &mut b, &laptop, &data_key).await;
    }

    // Failed joins (no such slot) spend the burst; then joins are refused whatever the
    // connection.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let mut b = Client::connect_anonymous(addr, relay_id).await.unwrap();
        b.send(&ClientFrame::PairJoin {
            slot: 999,
            body: vec![0],
        })
        .await;
        answers.push(error_code(&b.pairing_frame().await));
    }
    assert_eq!(
        answers,
        [
            Some(ErrorCode::PairingUnknownCode),
            Some(ErrorCode::PairingUnknownCode),
            Some(ErrorCode::RateLimited)
        ]
    );
    // A live pairing cannot be joined either, right code or not, until the bucket refills.
    let mut a = inviter(addr, relay_id).await;
    let slot = a.open_pairing().await.unwrap();
    let mut b = Client::connect_anonymous(addr, relay_id).await.unwrap();
    let (_, hello) = Joiner::start(&code_for(slot, "000000"), &relay_id, &mut OsRng);
    b.send(&ClientFrame::PairJoin { slot, body: hello }).await;
    assert_eq!(
        error_code(&b.pairing_frame().await),
        Some(ErrorCode::RateLimited)
    );
    server.shutdown().await;
}
