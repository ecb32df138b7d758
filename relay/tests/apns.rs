//! APNs wake-ups against a test APNs service (`support::apns_service`, which checks the
//! provider token, the headers and the payload as Apple documents them): an offline iOS
//! device gets one content-free background push for a burst of messages and an alert for a
//! call, both over one kept HTTP/2 connection; a token APNs no longer knows is unregistered;
//! and a relay without an APNs key refuses APNs targets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ferry_protocol::{ClientFrame, ErrorCode, PushTarget};
use p256::pkcs8::EncodePrivateKey as _;
use support::apns_service::{ApnsService, KEY_ID, TEAM_ID, TOPIC};
use support::client::Client;
use support::conversation::one_to_one;
use support::node::{Node, done, node};

/// A relay with an APNs key, talking to a test APNs service (returned with the folder
/// holding the key).
async fn apns_node() -> (Node, ApnsService, tempfile::TempDir) {
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let verifying = p256::ecdsa::VerifyingKey::from(p256::ecdsa::SigningKey::from(&secret));
    let service = ApnsService::start(verifying).await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("AuthKey.p8");
    let pem = secret.to_pkcs8_pem(Default::default()).unwrap();
    std::fs::write(&key_file, pem.as_bytes()).unwrap();
    let url = service.url();
    let node = node(move |config| {
        let push = &mut config.push;
        push.allow_loopback = true;
        push.delay_ms = 200;
        push.apns_key_file = Some(key_file);
        push.apns_key_id = Some(KEY_ID.into());
        push.apns_team_id = Some(TEAM_ID.into());
        push.apns_topic = Some(TOPIC.into());
        push.apns_url = Some(url);
    })
    .await;
    (node, service, keys)
}

/// Registers `token` as `client`'s APNs target; the answer.
async fn register(client: &mut Client, token: &[u8]) -> Result<(), ErrorCode> {
    let target = PushTarget::Apns {
        token: token.to_vec(),
        sandbox: false,
    };
    client.send(&ClientFrame::PushRegister(target)).await;
    done(client).await
}

#[tokio::test]
async fn an_offline_ios_device_gets_one_background_push_per_burst_and_an_alert_for_a_call() {
    let (node, service, _keys) = apns_node().await;
    let (mut alice, mut bob, conv) =
        one_to_one(node.server.local_addr(), node.server.relay_id(), 2).await;
    let token = [0xb0; 32];
    let hex_token = hex::encode(token);
    assert_eq!(register(&mut bob.client, &token).await, Ok(()));
    bob.client.close().await;

    for text in ["one", "two", "three"] {
        alice.say(conv, text).await;
    }
    let pushes = service
        .wait_for(&hex_token, 1, Duration::from_secs(10))
        .await;
    let push = &pushes[0];
    assert_eq!(push.push_type, "background");
    assert_eq!(push.priority, "5");
    assert_eq!(push.collapse_id, "ferry");
    assert_eq!(
        push.body,
        serde_json::json!({"aps": {"content-available": 1}, "v": 1, "kind": "message"})
    );
    // One push for the burst.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(service.pushes(&hex_token).len(), 1);

    alice.client.send(&ClientFrame::ConvWake { conv }).await;
    let pushes = service
        .wait_for(&hex_token, 2, Duration::from_secs(10))
        .await;
    let call = &pushes[1];
    assert_eq!(
        (call.push_type.as_str(), call.priority.as_str()),
        ("alert", "10")
    );
    assert_eq!(call.body["kind"], "call");
    assert_eq!(call.body["aps"]["alert"]["loc-key"], "FERRY_INCOMING_CALL");
    // Content-free: nothing of the conversation or the caller.
    let text = call.body.to_string();
    assert!(!text.contains(&conv.to_hex()) && !text.contains(&alice.user().to_string()));
    // Both over one connection, kept open.
    assert_eq!(service.connections(), 1);
    assert!(service.failures().is_empty(), "{:?}", service.failures());
}

#[tokio::test]
async fn a_token_apns_no_longer_knows_is_unregistered() {
    let (node, service, _keys) = apns_node().await;
    let (mut alice, mut bob, conv) =
        one_to_one(node.server.local_addr(), node.server.relay_id(), 2).await;
    let token = [0xb1; 32];
    let hex_token = hex::encode(token);
    service.set_answer(&hex_token, 410, "Unregistered");
    assert_eq!(register(&mut bob.client, &token).await, Ok(()));
    let device = bob.device();
    bob.client.close().await;
    alice.client.send(&ClientFrame::ConvWake { conv }).await;
    service
        .wait_for(&hex_token, 1, Duration::from_secs(10))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.store().push_target(device).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never unregistered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_relay_without_an_apns_key_refuses_apns_targets() {
    let node = node(|_| {}).await;
    let (_alice, mut bob, _conv) =
        one_to_one(node.server.local_addr(), node.server.relay_id(), 1).await;
    let refused = register(&mut bob.client, &[0xb2; 32]).await;
    assert_eq!(refused, Err(ErrorCode::PushTargetInvalid));
    let (node, _service, _keys) = apns_node().await;
    let (_alice, mut bob, _conv) =
        one_to_one(node.server.local_addr(), node.server.relay_id(), 1).await;
    // A token of the wrong size, too.
    assert_eq!(
        register(&mut bob.client, &[1; 4]).await,
        Err(ErrorCode::PushTargetInvalid)
    );
}
