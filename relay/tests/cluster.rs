//! Several relay nodes sharing one PostgreSQL database and one wake-up bus.
//!
//! - Devices of one user connected to different nodes see each other's events live, each
//!   exactly once and in order, even on a node that gets the same events both directly (its
//!   own commits) and through the bus (its own publishes come back to it).
//! - The same over Redis, with one Redis subscriber connection per node whatever the number of
//!   devices, and no event missed by a device that joins while its node's `SUBSCRIBE` for the
//!   user is still on its way.
//! - When Redis goes away the nodes poll the log, so nothing is lost, only delayed; when it
//!   comes back they reconnect and live delivery resumes.
//!
//! PostgreSQL and Redis are shared with other tests running at the same time: every test uses
//! fresh random users and never flushes or stops anything (a Redis outage is played with a
//! proxy in front of it). Without the services a test prints "skipped" and passes, unless
//! `FERRY_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_protocol::{DeviceId, ErrorCode, Event, SealedPayload, ServerFrame, SigningKey};
use ferry_relay::bus::{Bus, LocalBusHub, RedisBus, RedisBusOptions, topic};
use ferry_relay::server::BusParts;
use ferry_relay::{Config, Server};
use support::client::{Client, Identity, revoke_body};
use support::device::{Device, exactly_once_in_order};
use support::proxy::Proxy;

/// How long anything that should happen may take.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a device must stay quiet after a burst for the test to believe nothing more (a
/// duplicate) is on its way.
const QUIET: Duration = Duration::from_millis(400);

/// One relay node with its own data folder (its own relay key), on the shared database.
struct Node {
    server: Server,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node on `database`; with `bus` it uses that bus, otherwise the one its
    /// configuration names.
    async fn start(
        database: &str,
        adjust: impl FnOnce(&mut Config),
        bus: Option<BusParts>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path());
        config.database_url = Some(database.to_owned());
        config.redis_url = None;
        // Only the bus (or polling while it is down) may deliver between nodes in these tests:
        // the slow safety-net poll must not hide a lost wake-up.
        config.log.safety_poll_secs = 3600;
        adjust(&mut config);
        let server = match bus {
            Some(bus) => Server::spawn_with_bus(config, bus).await,
            None => Server::spawn(config).await,
        }
        .expect("relay node starts");
        Self { server, _dir: dir }
    }

    /// Connects `id` with no resume cursor, and waits for the end of its replay.
    async fn connect(&self, id: &Identity) -> Device {
        let client = Client::connect(self.server.local_addr(), self.server.relay_id(), id, None)
            .await
            .unwrap_or_else(|refused| panic!("connection refused: {refused:?}"));
        let device = Device::spawn(client, id.device.id());
        device.caught_up(PATIENCE).await;
        device
    }

    /// The `ferry_bus_up` gauge.
    fn bus_up(&self) -> i64 {
        self.server
            .metrics()
            .render()
            .lines()
            .find_map(|line| line.strip_prefix("ferry_bus_up "))
            .and_then(|value| value.trim().parse().ok())
            .expect("the metrics have ferry_bus_up")
    }

    /// Waits until `ferry_bus_up` is `up`.
    async fn bus_becomes(&self, up: i64) {
        let started = Instant::now();
        while self.bus_up() != up {
            assert!(
                started.elapsed() < PATIENCE,
                "ferry_bus_up never became {up}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/readyz` answers `status` (200 once the database and both Redis
    /// connections answer, 503 otherwise).
    async fn readiness_becomes(&self, status: u16) {
        let started = Instant::now();
        loop {
            let answer = support::http::get(self.server.local_addr(), "/readyz").await;
            if answer.as_ref().is_some_and(|(got, _)| *got == status) {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "/readyz never answered {status}; last answer {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Two nodes on one in-process bus.
fn in_process_pair() -> (BusParts, BusParts) {
    let hub = LocalBusHub::new();
    let (one, one_rx) = hub.node();
    let (two, two_rx) = hub.node();
    (
        (Arc::new(one) as Arc<dyn Bus>, one_rx),
        (Arc::new(two) as Arc<dyn Bus>, two_rx),
    )
}

/// The payload `device` sends with `device_seq`: recognisable, so a mix-up is caught.
fn payload(device: DeviceId, device_seq: u64) -> Vec<u8> {
    format!("{}:{device_seq}", &device.to_hex()[..16]).into_bytes()
}

/// Each writer appends `count` new events, all pipelined and the writers concurrently; then
/// checks that every writer got an answer for each, in order, with distinct sequences, and
/// that every device in `everyone` received each new event exactly once, in order, with the
/// right sender, device sequence and payload — and nothing else, even after a quiet period.
async fn burst(writers: &[(&Device, u64)], everyone: &[&Device]) {
    let start = everyone[0].seen().last_seq();
    let before: Vec<usize> = everyone.iter().map(|d| d.seen().events.len()).collect();
    for device in everyone {
        assert_eq!(
            device.seen().last_seq(),
            start,
            "devices in sync before a burst"
        );
    }
    let total: u64 = writers.iter().map(|(_, count)| count).sum();
    let end = start + total;

    let mut sent = Vec::new();
    for (writer, count) in writers {
        let answered = writer.seen().answers.len();
        let first = writer.highest_sent() + 1;
        for device_seq in first..first + count {
            writer.append(device_seq, &payload(writer.id, device_seq));
        }
        sent.push((writer, answered, first..first + count));
    }

    // Answers: one per append, in the order sent, every one a fresh sequence of this burst.
    let mut by_seq: HashMap<u64, (DeviceId, u64)> = HashMap::new();
    for (writer, answered, device_seqs) in &sent {
        let expected = answered + device_seqs.clone().count();
        let seen = writer
            .wait_for("an answer to every append", PATIENCE, |seen| {
                seen.answers.len() >= expected
            })
            .await;
        let answers = &seen.answers[*answered..];
        assert_eq!(
            answers.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
            device_seqs.clone().collect::<Vec<_>>(),
            "answers come back once each, in the order the appends were sent"
        );
        for (device_seq, answer) in answers {
            let seq = *answer
                .as_ref()
                .unwrap_or_else(|e| panic!("append {device_seq} refused: {e:?}"));
            assert!(
                (start + 1..=end).contains(&seq),
                "append {device_seq} got seq {seq}, outside this burst's {}..={end}",
                start + 1
            );
            assert!(
                by_seq.insert(seq, (writer.id, *device_seq)).is_none(),
                "seq {seq} given to two appends"
            );
        }
    }
    assert_eq!(by_seq.len() as u64, total);

    // Deliveries: every device, every new event, once, in order, and then nothing more.
    for device in everyone {
        device
            .wait_for("every event of the burst", PATIENCE, |seen| {
                seen.last_seq() >= end
            })
            .await;
    }
    tokio::time::sleep(QUIET).await;
    for (device, before) in everyone.iter().zip(before) {
        let seen = device.seen();
        let new = &seen.events[before..];
        if let Err(problem) = exactly_once_in_order(new, start + 1, end) {
            panic!("device {:?}: {problem}", device.id);
        }
        for event in new {
            let (sender, device_seq) = by_seq[&event.seq];
            assert_eq!((event.device, event.device_seq), (sender, device_seq));
            assert_eq!(event.payload, SealedPayload(payload(sender, device_seq)));
        }
        assert!(seen.closed.is_none(), "the connection stayed open");
    }
}

/// Three devices of one user: `a` and `c` on `one`, `b` on `two`. Appends from either side
/// reach the other live; `c` sees each event once although `one` gets its own commits both
/// directly and back from the bus, and `two`'s through the bus.
async fn two_nodes_story(one: &Node, two: &Node) {
    let laptop = Identity::new_user();
    let phone = laptop.another_device("phone");
    let tablet = laptop.another_device("tablet");
    let a = one.connect(&laptop).await;
    let b = two.connect(&phone).await;
    let c = one.connect(&tablet).await;
    let everyone = [&a, &b, &c];

    burst(&[(&a, 1)], &everyone).await;
    burst(&[(&b, 1)], &everyone).await;
    burst(&[(&a, 100), (&b, 100)], &everyone).await;
    burst(&[(&c, 50), (&b, 50)], &everyone).await;

    // A device that arrives later replays the same log, whichever node it lands on.
    let reference = c.seen().events;
    for node in [one, two] {
        let late = node.connect(&laptop.another_device("late")).await;
        let replayed = late.seen().events;
        exactly_once_in_order(&replayed, 1, 302).unwrap();
        assert_eq!(replayed, reference);
    }
}

#[test]
fn the_delivery_check_catches_duplicates_gaps_and_reordering() {
    let events = |seqs: &[u64]| -> Vec<Event> {
        seqs.iter()
            .map(|&seq| Event {
                seq,
                device: DeviceId([1; 32]),
                device_seq: seq,
                payload: SealedPayload(Vec::new()),
            })
            .collect()
    };
    assert!(exactly_once_in_order(&events(&[3, 4, 5]), 3, 5).is_ok());
    assert!(exactly_once_in_order(&events(&[]), 1, 0).is_ok());
    let duplicate = exactly_once_in_order(&events(&[3, 4, 4, 5]), 3, 5).unwrap_err();
    assert!(duplicate.contains("twice"), "{duplicate}");
    assert!(exactly_once_in_order(&events(&[3, 5]), 3, 5).is_err());
    assert!(exactly_once_in_order(&events(&[3, 5, 4]), 3, 5).is_err());
    assert!(exactly_once_in_order(&events(&[3, 4, 5, 6]), 3, 5).is_err());
    assert!(exactly_once_in_order(&events(&[3, 4]), 3, 5).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_in_process() {
    let Some(database) = support::postgres_url().await else {
        return;
    };
    let (bus_one, bus_two) = in_process_pair();
    let one = Node::start(&database, |_| {}, Some(bus_one)).await;
    let two = Node::start(&database, |_| {}, Some(bus_two)).await;
    two_nodes_story(&one, &two).await;
    one.server.shutdown().await;
    two.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_redis_and_postgres() {
    let Some(database) = support::postgres_url().await else {
        return;
    };
    let Some(redis) = support::redis::redis_url().await else {
        return;
    };
    let with_redis = |config: &mut Config| config.redis_url = Some(redis.clone());
    let one = Node::start(&database, with_redis, None).await;
    let two = Node::start(&database, with_redis, None).await;
    assert_eq!((one.bus_up(), two.bus_up()), (1, 1));
    two_nodes_story(&one, &two).await;
    one.server.shutdown().await;
    two.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holds_one_redis_subscriber_connection_whatever_its_devices() {
    let Some(database) = support::postgres_url().await else {
        return;
    };
    let Some(redis) = support::redis::redis_url().await else {
        return;
    };
    let admin = support::redis::admin(&redis).await.unwrap();
    let (bus, messages) = RedisBus::connect(&redis, RedisBusOptions::default())
        .await
        .unwrap();
    let subscriber = bus.subscriber_name().to_owned();
    let publisher = bus.publisher_name().to_owned();
    let node = Node::start(
        &database,
        |_| {},
        Some((Arc::new(bus) as Arc<dyn Bus>, messages)),
    )
    .await;

    // Five users, the first with three devices online.
    let users: Vec<Identity> = (0..5).map(|_| Identity::new_user()).collect();
    let mut devices = Vec::new();
    for user in &users {
        devices.push(node.connect(user).await);
    }
    let second = node.connect(&users[0].another_device("second")).await;
    let third = node.connect(&users[0].another_device("third")).await;

    let subscribers = support::redis::connections_named(&admin, &subscriber).await;
    assert_eq!(
        subscribers.len(),
        1,
        "one subscriber connection for 7 devices"
    );
    assert_eq!(
        support::redis::field(&subscribers[0], "sub"),
        "5",
        "one topic per user"
    );
    assert_eq!(
        support::redis::connections_named(&admin, &publisher)
            .await
            .len(),
        1,
        "one publisher connection"
    );
    for user in &users {
        let channel = topic(&user.user.id());
        assert_eq!(support::redis::subscribers(&admin, &channel).await, 1);
    }

    // The topic is kept while any of the user's devices is online, and dropped with the last.
    let first_topic = topic(&users[0].user.id());
    drop(devices.remove(0));
    drop(second);
    tokio::time::sleep(QUIET).await;
    assert_eq!(support::redis::subscribers(&admin, &first_topic).await, 1);
    drop(third);
    let started = Instant::now();
    while support::redis::subscribers(&admin, &first_topic).await != 0 {
        assert!(
            started.elapsed() < PATIENCE,
            "the last device's topic was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscribers = support::redis::connections_named(&admin, &subscriber).await;
    assert_eq!(subscribers.len(), 1);
    assert_eq!(support::redis::field(&subscribers[0], "sub"), "4");

    node.server.shutdown().await;
    let _ = fred::prelude::ClientLike::quit(&admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_polling() {
    let Some(database) = support::postgres_url().await else {
        return;
    };
    let Some(redis) = support::redis::redis_url().await else {
        return;
    };
    let proxy = Proxy::start(support::redis::address(&redis).await).await;
    let through_proxy = support::redis::with_address(&redis, proxy.addr());
    let config = |config: &mut Config| {
        config.redis_url = Some(through_proxy.clone());
        config.log.poll_interval_ms = 100;
    };
    let one = Node::start(&database, config, None).await;
    let two = Node::start(&database, config, None).await;

    let laptop = Identity::new_user();
    let a = one.connect(&laptop).await;
    let b = two.connect(&laptop.another_device("phone")).await;
    let c = one.connect(&laptop.another_device("tablet")).await;
    let everyone = [&a, &b, &c];
    burst(&[(&a, 10), (&b, 10)], &everyone).await;

    // Redis goes away: both nodes notice, say they are not ready, and poll the log.
    proxy.cut();
    one.bus_becomes(0).await;
    two.bus_becomes(0).await;
    one.readiness_becomes(503).await;
    two.readiness_becomes(503).await;
    burst(&[(&a, 50), (&b, 50)], &everyone).await;
    burst(&[(&b, 20)], &everyone).await;
    assert_eq!(
        (one.bus_up(), two.bus_up()),
        (0, 0),
        "those events were delivered by polling, with the bus still down"
    );

    // Redis is back: both nodes reconnect (subscriber and publisher), and live delivery
    // resumes. Polling is off again and the safety net is an hour away, so only the bus can
    // carry these events across.
    let forwarded = proxy.forwarded();
    proxy.restore();
    one.bus_becomes(1).await;
    two.bus_becomes(1).await;
    one.readiness_becomes(200).await;
    two.readiness_becomes(200).await;
    assert!(
        proxy.forwarded() >= forwarded + 4,
        "both nodes reconnected through the proxy"
    );
    burst(&[(&a, 50), (&b, 50)], &everyone).await;
    burst(&[(&a, 1)], &everyone).await;

    // The log has every acknowledged event exactly once.
    let late = two.connect(&laptop.another_device("late")).await;
    let replayed = late.seen().events;
    exactly_once_in_order(&replayed, 1, 241).unwrap();
    assert_eq!(replayed, c.seen().events);
    let distinct: HashSet<(DeviceId, u64)> =
        replayed.iter().map(|e| (e.device, e.device_seq)).collect();
    assert_eq!(distinct.len(), replayed.len());

    one.server.shutdown().await;
    two.server.shutdown().await;
}

/// A device joining a node while the node's `SUBSCRIBE` for the same user (sent for another
/// device that joined just before) is still on its way to Redis must not miss what is
/// committed meanwhile on another node: its replay must wait for the subscription as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_joining_while_the_subscription_is_in_flight_misses_nothing() {
    let Some(database) = support::postgres_url().await else {
        return;
    };
    let Some(redis) = support::redis::redis_url().await else {
        return;
    };
    let proxy = Proxy::start(support::redis::address(&redis).await).await;
    let through_proxy = support::redis::with_address(&redis, proxy.addr());
    let one = Node::start(
        &database,
        |config| config.redis_url = Some(through_proxy.clone()),
        None,
    )
    .await;
    let two = Node::start(
        &database,
        |config| config.redis_url = Some(redis.clone()),
        None,
    )
    .await;
    let laptop = Identity::new_user();
    let writer = two.connect(&laptop).await;

    // Both admitted first, so that nothing but their own handshakes runs between their joins.
    let ids = ["first", "second"].map(|name| laptop.another_device(name));
    for id in &ids {
        id.admit(one.server.local_addr(), one.server.relay_id())
            .await;
    }
    // Node one's commands now reach Redis 600 ms late (under its 1 s command timeout, so the
    // bus stays up). Two devices of the user join node one, one just after the other.
    proxy.delay_upstream(Duration::from_millis(600));
    let mut joined = Vec::new();
    for id in ids {
        let client = Client::connect(one.server.local_addr(), one.server.relay_id(), &id, None)
            .await
            .unwrap_or_else(|refused| panic!("connection refused: {refused:?}"));
        joined.push(Device::spawn(client, id.device.id()));
    }
    // As soon as either has caught up, the other node commits an event.
    let mut watches: Vec<_> = joined.iter().map(Device::watch).collect();
    let [first, second] = &mut watches[..] else {
        unreachable!()
    };
    tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            _ = first.wait_for(|seen| !seen.caught_up.is_empty()) => {}
            _ = second.wait_for(|seen| !seen.caught_up.is_empty()) => {}
        }
    })
    .await
    .expect("a device caught up");
    burst(&[(&writer, 1)], &[&writer]).await;

    // Both devices on node one get it, once (replayed or live, depending on when they joined).
    for device in &joined {
        device
            .wait_for("the event committed on the other node", PATIENCE, |seen| {
                seen.last_seq() >= 1 && !seen.caught_up.is_empty()
            })
            .await;
        tokio::time::sleep(QUIET).await;
        exactly_once_in_order(&device.seen().events, 1, 1).unwrap();
    }
    assert_eq!(
        one.bus_up(),
        1,
        "the bus stayed up: no poll hid a lost wake-up"
    );
    proxy.delay_upstream(Duration::ZERO);
    one.server.shutdown().await;
    two.server.shutdown().await;
}

/// A device revoked while Redis is cut: its node never hears of it, yet closes its session
/// within one safety poll (an encrypted 203, then 4203), and what a revoked device appends
/// meanwhile is refused by the store, under the same user lock the revocation took. Before
/// the cut, the chain's growth reaches the other node's sessions (`ChainGrew`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_while_redis_is_cut_is_closed_by_the_safety_poll() {
    const SAFETY_POLL: Duration = Duration::from_secs(2);
    let Some(database) = support::postgres_url().await else {
        return;
    };
    let Some(redis) = support::redis::redis_url().await else {
        return;
    };
    let proxy = Proxy::start(support::redis::address(&redis).await).await;
    let through_proxy = support::redis::with_address(&redis, proxy.addr());
    let config = |config: &mut Config| {
        config.redis_url = Some(through_proxy.clone());
        config.log.poll_interval_ms = 100;
        config.log.safety_poll_secs = SAFETY_POLL.as_secs();
    };
    let one = Node::start(&database, config, None).await;
    let two = Node::start(&database, config, None).await;

    let laptop = Identity::new_user();
    let user = laptop.user.id();
    let (phone, tablet) = (
        laptop.another_device("phone"),
        laptop.another_device("tablet"),
    );
    let mut a = Client::connect(
        one.server.local_addr(),
        one.server.relay_id(),
        &laptop,
        None,
    )
    .await
    .unwrap();
    a.replay().await;
    let p = two.connect(&phone).await;
    let t = two.connect(&tablet).await;

    // The bus carries the chain's growth to the other node.
    let watch = laptop.unadmitted_device("watch");
    let seqno = a.admit(&laptop, &watch).await.unwrap();
    for device in [&p, &t] {
        device
            .wait_for("ChainGrew from the other node", PATIENCE, |seen| {
                seen.other.contains(&ServerFrame::ChainGrew { seqno })
            })
            .await;
    }

    // Redis goes away; the laptop, on node one, revokes the phone and the tablet.
    proxy.cut();
    one.bus_becomes(0).await;
    two.bus_becomes(0).await;
    let chain = a.fetch_chain(user).await;
    let revoked = [phone.device.id(), tablet.device.id()];
    a.sign_and_append(
        user,
        revoke_body(&chain, &revoked),
        SigningKey::Device(&laptop.device),
    )
    .await
    .unwrap();
    let revoked_at = Instant::now();

    // Node two heard nothing. The tablet appends: the store refuses it, and its session ends.
    t.append(1, b"after the revocation");
    let seen = t.closed(PATIENCE).await;
    assert_eq!(seen.answers.len(), 1, "{:?}", seen.answers);
    let (device_seq, answer) = &seen.answers[0];
    let refused = answer.as_ref().unwrap_err();
    assert_eq!((*device_seq, refused.code), (1, ErrorCode::DeviceRevoked));
    assert_eq!(
        seen.closed,
        Some(Some(ErrorCode::DeviceRevoked.close_code()))
    );

    // The idle phone is closed by its next safety poll, told inside the channel first.
    let seen = p.closed(PATIENCE).await;
    let took = revoked_at.elapsed();
    assert!(
        took < SAFETY_POLL + Duration::from_millis(1500),
        "closed {took:?} after the revocation"
    );
    assert!(
        seen.other.iter().any(
            |frame| matches!(frame, ServerFrame::Error(e) if e.code == ErrorCode::DeviceRevoked)
        ),
        "{:?}",
        seen.other
    );
    assert_eq!(
        seen.closed,
        Some(Some(ErrorCode::DeviceRevoked.close_code()))
    );
    assert_eq!(two.bus_up(), 0, "the bus was down all along");

    // Nothing of theirs is in the log, and neither comes back.
    let mut check = Client::connect(
        one.server.local_addr(),
        one.server.relay_id(),
        &laptop,
        None,
    )
    .await
    .unwrap();
    assert_eq!(check.replay().await, (vec![], 0));
    for id in [&phone, &tablet] {
        let refused = Client::connect(two.server.local_addr(), two.server.relay_id(), id, None)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.code(), Some(ErrorCode::DeviceRevoked));
    }
    proxy.restore();
    one.server.shutdown().await;
    two.server.shutdown().await;
}
