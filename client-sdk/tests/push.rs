//! Push registration through the SDK: a Web Push subscription is taken, one the relay will
//! not post to is refused with a clear error, and unregistering works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ferry_client::{Client, ClientError, ErrorCode};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_push_subscription_is_registered_and_a_private_endpoint_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&dir.path().join("relay"));
    let state = new_user(&dir.path().join("alice"), &relay, "alice").await;
    let alice = Client::connect(state, fast()).await.unwrap();
    let api = alice.handle();
    // A P-256 point (the generator, uncompressed) and a 16-byte secret.
    let p256dh = hex::decode(
        "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296\
         4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
    )
    .unwrap();
    api.register_web_push("https://push.example.net/push/abc", &p256dh, &[7; 16])
        .await
        .unwrap();
    for (endpoint, auth) in [
        ("https://192.168.1.10/push", [7u8; 16].to_vec()),
        ("http://push.example.net/push", [7; 16].to_vec()),
        ("https://push.example.net/push", [7; 15].to_vec()),
    ] {
        let refused = api.register_web_push(endpoint, &p256dh, &auth).await;
        assert!(
            matches!(
                &refused,
                Err(ClientError::Relay {
                    code: ErrorCode::PushTargetInvalid,
                    ..
                })
            ),
            "{endpoint}: {refused:?}"
        );
    }
    api.unregister_push().await.unwrap();
    drop(alice.close().await.unwrap());
}
