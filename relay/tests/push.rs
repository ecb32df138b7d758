//! Push wake-ups end to end: a relay, devices over real sessions, and a push service written
//! for the tests (`support::push_service`) that checks every request's VAPID signature and
//! decrypts its payload with the subscription's private key. It must see exactly one
//! content-free wake-up per burst to an offline device, none for a device online, an urgent
//! one at once for a call, the target unregistered after a 410, and a queued wake-up sent
//! by the next relay after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_protocol::{ClientFrame, ErrorCode, PushTarget, ServerFrame};
use ferry_relay::bus::LocalBusHub;
use ferry_relay::push::queue::PER_ORIGIN_SENDS;
use ferry_relay::store::PushTargetRow;
use support::client::{Client, Identity};
use support::node::{Node, done, next_frame, node, node_on, send_appends};
use support::push_service::{Answer, PushService};

const MESSAGE: &[u8] = br#"{"v":1,"kind":"message"}"#;
const CALL: &[u8] = br#"{"v":1,"kind":"call"}"#;
const DELAY_MS: u64 = 300;

async fn push_node() -> Node {
    node(|config| {
        config.push.allow_loopback = true;
        config.push.delay_ms = DELAY_MS;
    })
    .await
}

/// Registers a new subscription of `service` as `client`'s push target; its endpoint.
async fn register(client: &mut Client, service: &PushService) -> String {
    let (endpoint, p256dh, auth) = service.subscribe();
    let target = PushTarget::WebPush {
        endpoint: endpoint.clone(),
        p256dh: URL_SAFE_NO_PAD.decode(p256dh).unwrap(),
        auth: URL_SAFE_NO_PAD.decode(auth).unwrap(),
    };
    client.send(&ClientFrame::PushRegister(target)).await;
    assert_eq!(done(client).await, Ok(()));
    endpoint
}

/// A new user's phone (its session returned) and laptop, whose push target on `service`
/// (the endpoint returned) is registered before it goes offline.
async fn offline_laptop(node: &Node, service: &PushService) -> (Client, Identity, String) {
    let phone = Identity::new_user();
    let laptop = phone.another_device("laptop");
    let phone_session = node.connect(&phone, None).await;
    let mut laptop_session = node.connect(&laptop, None).await;
    let endpoint = register(&mut laptop_session, service).await;
    laptop_session.close().await;
    (phone_session, laptop, endpoint)
}

/// Reads `client`'s events up to `head` and acknowledges them, as a device with a session
/// does.
async fn read_and_ack(client: &mut Client, head: u64) {
    let mut seen = 0;
    while seen < head {
        if let ServerFrame::Events(events) = next_frame(client).await.expect("open") {
            seen = events.last().map_or(seen, |e| e.seq);
        }
    }
    client.send(&ClientFrame::Ack { seq: head }).await;
}

fn wake_ups(node: &Node, outcome: &str) -> u64 {
    let text = node.server.metrics().render();
    let prefix = format!("ferry_push_wake_ups_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn a_burst_to_an_offline_device_is_one_content_free_wake_up_and_an_online_one_gets_none() {
    let service = PushService::start().await;
    let node = push_node().await;
    let phone = Identity::new_user();
    let (laptop, tablet) = (
        phone.another_device("laptop"),
        phone.another_device("tablet"),
    );
    let mut phone_session = node.connect(&phone, None).await;
    let mut laptop_session = node.connect(&laptop, None).await;
    let mut tablet_session = node.connect(&tablet, None).await;
    let laptop_endpoint = register(&mut laptop_session, &service).await;
    let tablet_endpoint = register(&mut tablet_session, &service).await;
    let phone_endpoint = register(&mut phone_session, &service).await;
    laptop_session.close().await;

    // A burst of five events from the phone: the laptop is offline, the tablet reads them.
    send_appends(&mut phone_session, 1..=5).await;
    read_and_ack(&mut tablet_session, 5).await;

    let got = service
        .wait_for(&laptop_endpoint, 1, Duration::from_secs(10))
        .await;
    assert_eq!(got[0].payload, MESSAGE, "no sender, no content");
    assert_eq!(got[0].urgency.as_deref(), Some("normal"));
    assert_eq!(got[0].topic.as_deref(), Some("ferry"));
    let (vapid, _) = ferry_relay::push::load_or_create_vapid_key(node.dir.path()).unwrap();
    assert_eq!(got[0].vapid_public_key, vapid.public());
    // Well past the delay: still one for the laptop, none for the online tablet nor for the
    // phone that sent them.
    tokio::time::sleep(Duration::from_millis(DELAY_MS * 4)).await;
    assert_eq!(service.received(&laptop_endpoint).len(), 1);
    assert!(service.received(&tablet_endpoint).is_empty());
    assert!(service.received(&phone_endpoint).is_empty());
    assert!(service.failures().is_empty(), "{:?}", service.failures());
    assert_eq!(wake_ups(&node, "sent"), 1);
    assert_eq!(
        wake_ups(&node, "skipped"),
        1,
        "the tablet had read everything"
    );
    assert_eq!(node.store().queued_wake_ups().await.unwrap(), 0);

    // The next burst gets the next wake-up (the laptop still has not read anything).
    send_appends(&mut phone_session, 6..=7).await;
    service
        .wait_for(&laptop_endpoint, 2, Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn a_target_the_push_service_forgot_is_unregistered() {
    let service = PushService::start().await;
    let node = push_node().await;
    let (mut phone_session, laptop, endpoint) = offline_laptop(&node, &service).await;
    service.set_answer(&endpoint, Answer::Status(410));

    send_appends(&mut phone_session, 1..=1).await;
    let store = node.store();
    for _ in 0..100 {
        if store
            .push_target(laptop.device.id())
            .await
            .unwrap()
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.push_target(laptop.device.id()).await.unwrap(), None);
    assert_eq!(wake_ups(&node, "unregistered"), 1);
    // Nothing more is sent there.
    let asked = service.received(&endpoint).len();
    send_appends(&mut phone_session, 2..=3).await;
    tokio::time::sleep(Duration::from_millis(DELAY_MS * 4)).await;
    assert_eq!(service.received(&endpoint).len(), asked);
}

#[tokio::test]
async fn endpoints_the_relay_will_not_post_to_are_refused() {
    let service = PushService::start().await;
    // Without --push-allow-loopback, the test service on 127.0.0.1 is refused too.
    let node = node(|_| {}).await;
    let mut session = node.connect(&Identity::new_user(), None).await;
    let (endpoint, p256dh, auth) = service.subscribe();
    let (p256dh, auth) = (
        URL_SAFE_NO_PAD.decode(p256dh).unwrap(),
        URL_SAFE_NO_PAD.decode(auth).unwrap(),
    );
    for (endpoint, p256dh, auth) in [
        (endpoint.as_str(), p256dh.clone(), auth.clone()),
        (
            "https://169.254.169.254/latest",
            p256dh.clone(),
            auth.clone(),
        ),
        ("https://10.0.0.1/push", p256dh.clone(), auth.clone()),
        ("http://push.example.net/push", p256dh.clone(), auth.clone()),
        ("https://push.example.net/push", vec![4; 65], auth.clone()),
        ("https://push.example.net/push", p256dh.clone(), vec![1; 15]),
    ] {
        let target = PushTarget::WebPush {
            endpoint: endpoint.into(),
            p256dh,
            auth,
        };
        session.send(&ClientFrame::PushRegister(target)).await;
        assert_eq!(
            done(&mut session).await,
            Err(ErrorCode::PushTargetInvalid),
            "{endpoint}"
        );
    }
    // A public https endpoint with good keys is taken; unregistering removes it.
    let target = PushTarget::WebPush {
        endpoint: "https://push.example.net/push/abc".into(),
        p256dh,
        auth,
    };
    session.send(&ClientFrame::PushRegister(target)).await;
    assert_eq!(done(&mut session).await, Ok(()));
    session.send(&ClientFrame::PushUnregister).await;
    assert_eq!(done(&mut session).await, Ok(()));
}

#[tokio::test]
async fn a_call_wakes_the_other_members_devices_at_once_and_urgently() {
    let service = PushService::start().await;
    let node = node(|config| {
        config.push.allow_loopback = true;
        // Message wake-ups would come much later: what arrives is the call's.
        config.push.delay_ms = 60_000;
    })
    .await;
    let (mut alice, mut bob, conv) =
        support::conversation::one_to_one(node.server.local_addr(), node.server.relay_id(), 2)
            .await;
    let bob_endpoint = register(&mut bob.client, &service).await;
    let alice_endpoint = register(&mut alice.client, &service).await;
    bob.client.close().await;

    alice.client.send(&ClientFrame::ConvWake { conv }).await;
    let got = service
        .wait_for(&bob_endpoint, 1, Duration::from_secs(5))
        .await;
    assert_eq!(got[0].payload, CALL);
    assert_eq!(got[0].urgency.as_deref(), Some("high"));
    assert!(
        service.received(&alice_endpoint).is_empty(),
        "the caller's user"
    );
    // Only a member wakes a conversation's members.
    let mut stranger = node.connect(&Identity::new_user(), None).await;
    stranger.send(&ClientFrame::ConvWake { conv }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(service.received(&bob_endpoint).len(), 1);
    // Nor one who is blocked: Bob blocks Alice, and her calls wake his devices no more.
    let mut bob_again = node.connect(&bob.id, None).await;
    let alice_user = alice.user();
    bob_again
        .send(&ClientFrame::Block { peer: alice_user })
        .await;
    assert_eq!(done(&mut bob_again).await, Ok(()), "the block");
    alice.client.send(&ClientFrame::ConvWake { conv }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        service.received(&bob_endpoint).len(),
        1,
        "a blocked caller rang"
    );
}

#[tokio::test]
async fn a_conversation_message_wakes_the_other_members_offline_devices() {
    let service = PushService::start().await;
    let node = push_node().await;
    let (mut alice, mut bob, conv) =
        support::conversation::one_to_one(node.server.local_addr(), node.server.relay_id(), 2)
            .await;
    let bob_endpoint = register(&mut bob.client, &service).await;
    let alice_endpoint = register(&mut alice.client, &service).await;
    bob.client.close().await;

    alice.say(conv, "are you there?").await;
    let got = service
        .wait_for(&bob_endpoint, 1, Duration::from_secs(10))
        .await;
    assert_eq!(got[0].payload, MESSAGE);
    tokio::time::sleep(Duration::from_millis(DELAY_MS * 4)).await;
    assert_eq!(service.received(&bob_endpoint).len(), 1);
    assert!(service.received(&alice_endpoint).is_empty(), "the sender");
}

/// A push service that never answers holds at most its share of the sends: a wake-up for
/// another service goes out at once, while the stuck one's wait for their timeout.
#[tokio::test]
async fn a_stuck_push_service_does_not_delay_another() {
    let (stuck, healthy) = (PushService::start().await, PushService::start().await);
    let node = node(|config| {
        config.push.allow_loopback = true;
        config.push.timeout_ms = 20_000;
    })
    .await;
    let store = node.store();
    // A target of `service` in the store, for a new device of a new user.
    let target = |service: &PushService| {
        let (endpoint, p256dh, auth) = service.subscribe();
        let row = PushTargetRow::web_push(
            endpoint.clone(),
            URL_SAFE_NO_PAD.decode(p256dh).unwrap(),
            URL_SAFE_NO_PAD.decode(auth).unwrap(),
        );
        (support::storage::user(), support::storage::device(), row)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // More wake-ups for the stuck service than the node sends at once, all due first.
    let concurrency = ferry_relay::push::queue::PushSettings::default().concurrency;
    assert!(PER_ORIGIN_SENDS < concurrency);
    let mut users = Vec::new();
    for _ in 0..concurrency + 8 {
        let (user, device, row) = target(&stuck);
        stuck.set_answer(&row.endpoint, Answer::Hang);
        support::storage::admit(&**store, user, &[device]).await;
        store.set_push_target(user, device, &row, 0).await.unwrap();
        users.push(user);
    }
    store
        .queue_wake_ups(&users, &[], true, now - 1_000, u64::MAX)
        .await
        .unwrap();
    let (user, device, row) = target(&healthy);
    support::storage::admit(&**store, user, &[device]).await;
    store.set_push_target(user, device, &row, 0).await.unwrap();
    store
        .queue_wake_ups(&[user], &[], true, now, u64::MAX)
        .await
        .unwrap();
    let got = healthy
        .wait_for(&row.endpoint, 1, Duration::from_secs(3))
        .await;
    assert_eq!(got[0].payload, CALL);
}

#[tokio::test]
async fn a_queued_wake_up_survives_a_relay_restart() {
    let service = PushService::start().await;
    let bus = LocalBusHub::new();
    let first = node_on(&bus, None, |config| {
        config.push.allow_loopback = true;
        // Long enough that the relay is stopped before it is due.
        config.push.delay_ms = 5_000;
    })
    .await;
    let (mut phone_session, _, endpoint) = offline_laptop(&first, &service).await;
    send_appends(&mut phone_session, 1..=1).await;
    // Queued (the intake writes every 100 ms), not due yet: the relay stops.
    for _ in 0..50 {
        if first.store().queued_wake_ups().await.unwrap() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.store().queued_wake_ups().await.unwrap(), 1);
    let database_url = first.database_url.clone();
    let dir = first.dir;
    first.server.shutdown().await;
    assert!(service.received(&endpoint).is_empty());

    // The next relay on the same database sends it.
    let second = node_on(&bus, Some(database_url), |config| {
        config.push.allow_loopback = true;
    })
    .await;
    service
        .wait_for(&endpoint, 1, Duration::from_secs(10))
        .await;
    // Counted once the push service's answer is back.
    for _ in 0..100 {
        if wake_ups(&second, "sent") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(wake_ups(&second, "sent"), 1);
    drop(dir);
}
