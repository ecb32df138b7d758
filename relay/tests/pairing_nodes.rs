//! Pairing across relay nodes: slots shared through Redis.
//!
//! - An inviter on one node and a joiner on another pair, and the new device syncs.
//! - Two joiners racing for one slot from two nodes: exactly one gets through.
//! - One live slot per user across nodes; a burned slot is a tombstone on every node; the
//!   inviter leaving on one node burns the slot seen from the other.
//! - Against the registry itself: a node that dies (no clean shutdown) leaves nothing live
//!   beyond its heartbeat; messages arrive in order, once; a subscriber that loses its
//!   connection fails its pairings at once and the other end hears; a flood burns the slot.
//!
//! PostgreSQL and Redis are shared with other tests running at the same time: each test uses
//! its own key prefix (its own slots) and fresh users, and never flushes anything. Without the
//! services a test prints "skipped" and passes, unless `FERRY_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::pairing::{Inviter, Joiner, PairingCode};
use ferry_protocol::seal::DataKey;
use ferry_protocol::{ClientFrame, DeviceKey, ErrorCode, ServerFrame, UserId};
use ferry_relay::mailbox::Mailbox;
use ferry_relay::pairing::{PairingRegistry, Party, RedisPairing, RedisPairingOptions};
use ferry_relay::{Config, Server};
use rand_core::OsRng;
use support::client::{Client, Identity};
use support::pairing::pair;
use support::proxy::Proxy;

/// How long anything that should happen may take.
const PATIENCE: Duration = Duration::from_secs(15);

/// A key prefix no other test uses.
fn fresh_prefix() -> String {
    let id: String = support::random_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("ferry-test:{{pairing-{id}}}:")
}

/// One relay node with its own data folder (its own relay key), on the shared database and
/// Redis, with pairing keys under `prefix`.
struct Node {
    server: Server,
    _dir: tempfile::TempDir,
}

impl Node {
    /// A node; with `key_of`, holding that node's relay key (the nodes of one relay share its
    /// key, which clients pin and pairing binds).
    async fn start(database: &str, redis: &str, prefix: &str, key_of: Option<&Node>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if let Some(other) = key_of {
            let file = ferry_relay::relay_key::KEY_FILE;
            std::fs::copy(other._dir.path().join(file), dir.path().join(file)).unwrap();
        }
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
        config.database_url = Some(database.to_owned());
        config.redis_url = Some(redis.to_owned());
        config.redis_pairing_prefix = prefix.to_owned();
        // Every join of these tests comes from 127.0.0.1.
        config.limits.pair_joins_per_ip_per_minute = 6000;
        let server = Server::spawn(config).await.expect("relay node starts");
        Self { server, _dir: dir }
    }

    async fn device(&self, id: &Identity) -> Client {
        let mut client =
            Client::connect(self.server.local_addr(), self.server.relay_id(), id, None)
                .await
                .unwrap_or_else(|refused| panic!("connection refused: {refused:?}"));
        client.replay().await;
        client
    }

    async fn anonymous(&self) -> Client {
        Client::connect_anonymous(self.server.local_addr(), self.server.relay_id())
            .await
            .unwrap()
    }
}

/// Two nodes on one database and one Redis, sharing a fresh pairing prefix; `None` (skipped)
/// without the services.
async fn two_nodes() -> Option<(Node, Node)> {
    let database = support::postgres_url().await?;
    let redis = support::redis::redis_url().await?;
    let prefix = fresh_prefix();
    let one = Node::start(&database, &redis, &prefix, None).await;
    let two = Node::start(&database, &redis, &prefix, Some(&one)).await;
    assert_eq!(one.server.relay_id(), two.server.relay_id());
    Some((one, two))
}

fn error_code(frame: &ServerFrame) -> Option<ErrorCode> {
    match frame {
        ServerFrame::Error(e) => Some(e.code),
        ServerFrame::PairClosed { code, .. } => *code,
        _ => None,
    }
}

/// `slot` with six fixed digits.
fn code_for(slot: u16, digits: &str) -> PairingCode {
    PairingCode::parse(&format!("{slot}-{digits}")).unwrap()
}

/// A device on `node` types `code`: returns the answer to its join.
async fn join_refused(node: &Node, code: &PairingCode) -> Option<ErrorCode> {
    let mut late = node.anonymous().await;
    let (_, hello) = Joiner::start(code, &node.server.relay_id(), &mut OsRng);
    late.send(&ClientFrame::PairJoin {
        slot: code.slot(),
        body: hello,
    })
    .await;
    error_code(&late.pairing_frame().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inviter_on_one_node_pairs_a_joiner_on_another() {
    let Some((one, two)) = two_nodes().await else {
        return;
    };
    let laptop = Identity::new_user();
    let data_key = DataKey::generate(&mut OsRng);
    let mut a = one.device(&laptop).await;
    a.append(1, b"before pairing").await.unwrap();

    // Device B types the code on the other node.
    let mut b = two.anonymous().await;
    let (code, paired) = pair(&mut a, &mut b, &laptop, &data_key).await;

    // The new device is a device of the user, on the node it paired through.
    let mut t = Client::connect(
        two.server.local_addr(),
        two.server.relay_id(),
        &paired,
        None,
    )
    .await
    .unwrap();
    let (events, _) = t.replay().await;
    assert_eq!(events[0].payload.0, b"before pairing");

    // The code is single use, on either node.
    assert_eq!(
        join_refused(&one, &code).await,
        Some(ErrorCode::PairingCodeUsed)
    );
    assert_eq!(
        join_refused(&two, &code).await,
        Some(ErrorCode::PairingCodeUsed)
    );
    two.server.shutdown().await;
    one.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_racing_from_two_nodes_have_one_winner() {
    let Some((one, two)) = two_nodes().await else {
        return;
    };
    let nodes = [&one, &two];
    let laptop = Identity::new_user();
    let phone = laptop.another_device("phone");
    let mut inviters = [one.device(&laptop).await, two.device(&phone).await];
    for round in 0..4usize {
        // The inviter on each node in turn; one racer on each node every round.
        let a = &mut inviters[round % 2];
        let slot = a.open_pairing().await.unwrap();
        let code = PairingCode::generate(slot, &mut OsRng);
        let inviter = Inviter::start(&code, &a.relay, &mut OsRng);

        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut racers = Vec::new();
        for node in nodes {
            let mut client = node.anonymous().await;
            let (joiner, hello) = Joiner::start(&code, &node.server.relay_id(), &mut OsRng);
            let barrier = Arc::clone(&barrier);
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
        let (_loser, refused) = tokio::time::timeout(PATIENCE, loser_task)
            .await
            .expect("the loser was answered")
            .unwrap();
        assert_eq!(
            error_code(&refused),
            Some(ErrorCode::PairingCodeUsed),
            "round {round}: {refused:?}"
        );

        // The inviter's answer reaches the winner, on whichever node it is.
        let (_, reply) = inviter.handle_joiner_hello(&hello).unwrap();
        a.send(&ClientFrame::PairForward {
            slot: code.slot(),
            body: reply,
        })
        .await;
        let (mut winner_client, first) = tokio::time::timeout(PATIENCE, winner_task)
            .await
            .expect("the winner got the inviter's answer")
            .unwrap();
        let ServerFrame::PairPeer { body, .. } = first else {
            panic!("round {round}: inviter hello, got {first:?}")
        };
        winner_joiner
            .handle_inviter_hello(&body, &DeviceKey::generate(&mut OsRng), [3; 32], "tablet")
            .unwrap();
        // The inviter ends the round; the winner hears, and the user may open again.
        a.send(&ClientFrame::PairClose {
            slot: code.slot(),
            success: false,
        })
        .await;
        assert_eq!(
            winner_client.pairing_frame().await,
            ServerFrame::PairClosed {
                slot: code.slot(),
                code: Some(ErrorCode::PairingFailed)
            },
            "round {round}"
        );
    }
    two.server.shutdown().await;
    one.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_live_slot_per_user_and_tombstones_hold_across_nodes() {
    let Some((one, two)) = two_nodes().await else {
        return;
    };
    let laptop = Identity::new_user();
    let phone = laptop.another_device("phone");
    let stranger = Identity::new_user();
    let mut a1 = one.device(&laptop).await;
    let mut a2 = two.device(&phone).await;
    let mut s = two.device(&stranger).await;

    let first = code_for(a1.open_pairing().await.unwrap(), "271828");
    // The same user's other device, on the other node: one live slot per user.
    assert_eq!(a2.open_pairing().await, Err(ErrorCode::RateLimited));
    // Slot numbers are assigned through Redis: another user on the other node gets another.
    let strangers = s.open_pairing().await.unwrap();
    assert_ne!(strangers, first.slot());

    // A joiner on node two joins, then gives up: the slot burns.
    let mut b = two.anonymous().await;
    let (_, hello) = Joiner::start(&first, &two.server.relay_id(), &mut OsRng);
    b.send(&ClientFrame::PairJoin {
        slot: first.slot(),
        body: hello,
    })
    .await;
    assert!(matches!(
        a1.pairing_frame().await,
        ServerFrame::PairPeer { .. }
    ));
    b.send(&ClientFrame::PairClose {
        slot: first.slot(),
        success: false,
    })
    .await;
    assert_eq!(
        a1.pairing_frame().await,
        ServerFrame::PairClosed {
            slot: first.slot(),
            code: Some(ErrorCode::PairingFailed)
        }
    );
    // A tombstone on both nodes: the code is used...
    assert_eq!(
        join_refused(&one, &first).await,
        Some(ErrorCode::PairingCodeUsed)
    );
    // ... the user may open another, from the other node (the stranger's live slot does not
    // count against it), and the burned number is not given out again.
    let second = a2.open_pairing().await.unwrap();
    assert!(second != first.slot() && second != strangers, "{second}");
    two.server.shutdown().await;
    one.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inviter_leaving_one_node_burns_the_slot_seen_from_the_other() {
    let Some((one, two)) = two_nodes().await else {
        return;
    };
    let laptop = Identity::new_user();
    let mut a = one.device(&laptop).await;
    let pairing = code_for(a.open_pairing().await.unwrap(), "577215");
    let mut b = two.anonymous().await;
    let (_, hello) = Joiner::start(&pairing, &two.server.relay_id(), &mut OsRng);
    b.send(&ClientFrame::PairJoin {
        slot: pairing.slot(),
        body: hello,
    })
    .await;
    assert!(matches!(
        a.pairing_frame().await,
        ServerFrame::PairPeer { .. }
    ));

    // The inviter's connection ends.
    drop(a);
    let closed = tokio::time::timeout(PATIENCE, b.pairing_frame())
        .await
        .expect("the joiner hears that the inviter left");
    assert_eq!(
        closed,
        ServerFrame::PairClosed {
            slot: pairing.slot(),
            code: Some(ErrorCode::Unavailable)
        }
    );
    assert_eq!(
        join_refused(&two, &pairing).await,
        Some(ErrorCode::PairingCodeUsed)
    );
    // The user's live slot is gone with it: a device on the other node may open one.
    let mut a2 = two.device(&laptop.another_device("phone")).await;
    let lonely = code_for(a2.open_pairing().await.unwrap(), "693147");
    // An inviter whose slot nobody joined leaves too: its slot burns as well, and the user's
    // live slot with it.
    drop(a2);
    let mut a3 = one.device(&laptop.another_device("desk")).await;
    tokio::time::timeout(PATIENCE, async {
        loop {
            match a3.open_pairing().await {
                Ok(_) => break,
                refused => assert_eq!(refused, Err(ErrorCode::RateLimited)),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the user may open a slot once the inviter that left is gone");
    assert_eq!(
        join_refused(&one, &lonely).await,
        Some(ErrorCode::PairingCodeUsed)
    );
    two.server.shutdown().await;
    one.server.shutdown().await;
}

// The registry itself, as two nodes would use it.

fn options(prefix: &str) -> RedisPairingOptions {
    RedisPairingOptions {
        key_prefix: prefix.to_owned(),
        ttl: Duration::from_secs(60),
        node_ttl: Duration::from_millis(1500),
        heartbeat: Duration::from_millis(100),
        ..RedisPairingOptions::default()
    }
}

fn party(session: u64) -> (Party, Arc<Mailbox>) {
    let frames = Arc::new(Mailbox::new(64));
    (
        Party {
            session,
            frames: Arc::clone(&frames),
        },
        frames,
    )
}

async fn next(mailbox: &Mailbox) -> ServerFrame {
    *tokio::time::timeout(PATIENCE, mailbox.recv())
        .await
        .expect("a frame in time")
}

fn user() -> UserId {
    UserId(support::random_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_leaves_nothing_live_and_messages_arrive_in_order() {
    let Some(redis) = support::redis::redis_url().await else {
        return;
    };
    let prefix = fresh_prefix();
    let a = RedisPairing::connect(&redis, options(&prefix))
        .await
        .unwrap();
    let b = RedisPairing::connect(&redis, options(&prefix))
        .await
        .unwrap();
    let (u, v) = (user(), user());

    // Session 1 on each node: session ids are only unique per node.
    let (inviter, inviter_rx) = party(1);
    let (joiner, joiner_rx) = party(1);
    // Fresh prefix: the first slot is 1, the next 2, and so on, whichever node opens it.
    assert_eq!(a.open(inviter, u).await.unwrap().0, 1);
    b.join(1, joiner, b"hello".to_vec()).await.unwrap();
    assert_eq!(
        next(&inviter_rx).await,
        ServerFrame::PairPeer {
            slot: 1,
            body: b"hello".to_vec()
        }
    );
    // In order, each once, both ways.
    for n in 0..20u8 {
        a.forward(1, 1, vec![n]).await.unwrap();
    }
    b.forward(1, 1, vec![99]).await.unwrap();
    for n in 0..20u8 {
        assert_eq!(
            next(&joiner_rx).await,
            ServerFrame::PairPeer {
                slot: 1,
                body: vec![n]
            }
        );
    }
    assert_eq!(
        next(&inviter_rx).await,
        ServerFrame::PairPeer {
            slot: 1,
            body: vec![99]
        }
    );
    // A stranger (another session) cannot inject.
    assert_eq!(
        b.forward(1, 2, vec![0]).await,
        Err(ErrorCode::PairingUnknownCode)
    );

    // Another user's slot on node a that nobody joined yet.
    let (lonely, _lonely_rx) = party(2);
    assert_eq!(a.open(lonely, v).await.unwrap().0, 2);
    let (other, _other_rx) = party(3);
    assert_eq!(b.open(other.clone(), v).await, Err(ErrorCode::RateLimited));

    // Node a dies: no clean shutdown, nothing burned by it.
    drop(a);
    // The joiner's node notices the inviter's node is gone.
    assert_eq!(
        next(&joiner_rx).await,
        ServerFrame::PairClosed {
            slot: 1,
            code: Some(ErrorCode::Unavailable)
        }
    );
    // Its users may open slots elsewhere: the slot nobody joined is no longer live either...
    assert_eq!(b.open(other, v).await.unwrap().0, 3);
    let (late, _late_rx) = party(4);
    assert_eq!(b.open(late, u).await.unwrap().0, 4);
    // ... but its slots stay tombstones: the codes are used, the numbers not reusable.
    let (stranger, _stranger_rx) = party(5);
    assert_eq!(
        b.join(2, stranger.clone(), vec![]).await,
        Err(ErrorCode::PairingCodeUsed)
    );
    assert_eq!(b.open(stranger, user()).await.unwrap().0, 5);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_opened_at_once_on_two_nodes_are_all_different() {
    let Some(redis) = support::redis::redis_url().await else {
        return;
    };
    let prefix = fresh_prefix();
    let nodes = [
        Arc::new(
            RedisPairing::connect(&redis, options(&prefix))
                .await
                .unwrap(),
        ),
        Arc::new(
            RedisPairing::connect(&redis, options(&prefix))
                .await
                .unwrap(),
        ),
    ];
    // Twenty users open at the same moment, half on each node: every node starts from the
    // smallest free number, so they race for the same ones; Redis settles each race.
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for n in 0..20u64 {
        let node = Arc::clone(&nodes[(n % 2) as usize]);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let (inviter, rx) = party(n + 1);
            barrier.wait().await;
            let (slot, _) = node.open(inviter, user()).await.unwrap();
            (slot, rx)
        }));
    }
    let mut slots = Vec::new();
    let mut queues = Vec::new();
    for task in tasks {
        let (slot, rx) = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("every open is answered")
            .unwrap();
        slots.push(slot);
        queues.push(rx);
    }
    slots.sort_unstable();
    assert_eq!(slots, (1..=20).collect::<Vec<u16>>());
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_loses_redis_fails_its_pairings_and_the_other_end_hears() {
    let Some(redis) = support::redis::redis_url().await else {
        return;
    };
    let prefix = fresh_prefix();
    let proxy = Proxy::start(support::redis::address(&redis).await).await;
    let through_proxy = support::redis::with_address(&redis, proxy.addr());
    let a = RedisPairing::connect(&redis, options(&prefix))
        .await
        .unwrap();
    let b = RedisPairing::connect(&through_proxy, options(&prefix))
        .await
        .unwrap();
    let (inviter, inviter_rx) = party(1);
    let (joiner, joiner_rx) = party(1);
    assert_eq!(a.open(inviter, user()).await.unwrap().0, 1);
    b.join(1, joiner, b"hello".to_vec()).await.unwrap();
    assert!(matches!(
        next(&inviter_rx).await,
        ServerFrame::PairPeer { .. }
    ));

    // Node b's connections drop: whatever was on its way to it may be lost. Its pairing
    // fails at once rather than waiting for a message that may never come...
    proxy.cut();
    assert_eq!(
        next(&joiner_rx).await,
        ServerFrame::PairClosed {
            slot: 1,
            code: Some(ErrorCode::Unavailable)
        }
    );
    // ... and once b reaches Redis again, the slot burns and the inviter hears.
    proxy.restore();
    assert_eq!(
        next(&inviter_rx).await,
        ServerFrame::PairClosed {
            slot: 1,
            code: Some(ErrorCode::Unavailable)
        }
    );
    let (late, _late_rx) = party(2);
    assert_eq!(
        a.join(1, late, vec![]).await,
        Err(ErrorCode::PairingCodeUsed)
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_through_a_slot_burns_it() {
    let Some(redis) = support::redis::redis_url().await else {
        return;
    };
    let prefix = fresh_prefix();
    let options = RedisPairingOptions {
        max_messages: 4,
        ..options(&prefix)
    };
    let a = RedisPairing::connect(&redis, options.clone())
        .await
        .unwrap();
    let b = RedisPairing::connect(&redis, options).await.unwrap();
    let (inviter, inviter_rx) = party(1);
    let (joiner, _joiner_rx) = party(1);
    assert_eq!(a.open(inviter, user()).await.unwrap().0, 1);
    b.join(1, joiner, vec![0]).await.unwrap();
    for n in 1..=4u8 {
        b.forward(1, 1, vec![n]).await.unwrap();
    }
    assert_eq!(b.forward(1, 1, vec![5]).await, Err(ErrorCode::RateLimited));
    for n in 0..=4u8 {
        assert_eq!(
            next(&inviter_rx).await,
            ServerFrame::PairPeer {
                slot: 1,
                body: vec![n]
            }
        );
    }
    assert_eq!(
        next(&inviter_rx).await,
        ServerFrame::PairClosed {
            slot: 1,
            code: Some(ErrorCode::RateLimited)
        }
    );
    assert_eq!(
        b.forward(1, 1, vec![6]).await,
        Err(ErrorCode::PairingUnknownCode)
    );
    a.shutdown().await;
    b.shutdown().await;
}
