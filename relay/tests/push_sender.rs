//! The Web Push sender (`ferry_relay::push::sender`) against the test push service of
//! `support::push_service`, which checks the VAPID header and opens the message with code of
//! its own: delivery (plain HTTP and HTTPS), the answers that unregister (404, 410), those that
//! retry (429 with `Retry-After`, 500, no answer, no service), and a forged VAPID header
//! refused by the service (so its checks are real).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_relay::push::sender::{SendOutcome, Sender, Urgency};
use ferry_relay::push::web_push::{self, Subscription, VapidKey};
use support::push_service::{Answer, PushService, Received};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SUBJECT: &str = "mailto:ops@ferry.example";
const WAIT: Duration = Duration::from_secs(5);

fn subscribe(service: &PushService) -> Subscription {
    let (endpoint, p256dh, auth) = service.subscribe();
    Subscription::new(&endpoint, &p256dh, &auth).unwrap()
}

/// A sender allowed to reach the test service on this machine.
fn sender(vapid: &VapidKey, timeout: Duration) -> Sender {
    Sender::new(vapid.clone(), SUBJECT.to_owned(), timeout).allow_loopback(true)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_delivered_message_opens_to_the_payload_and_carries_its_headers() {
    let service = PushService::start().await;
    let to = subscribe(&service);
    let vapid = VapidKey::generate();
    let sender = sender(&vapid, WAIT);
    let payload = br#"{"v":1,"kind":"call"}"#;
    assert_eq!(
        sender.send(&to, payload, Urgency::High, "call-7", 30).await,
        SendOutcome::Delivered
    );
    assert_eq!(
        sender
            .send(&to, b"{\"v\":1}", Urgency::Normal, "", 86_400)
            .await,
        SendOutcome::Delivered
    );
    let received = service.received(&to.endpoint);
    assert_eq!(
        received,
        vec![
            Received {
                subscription: received[0].subscription.clone(),
                ttl: 30,
                urgency: Some("high".to_owned()),
                topic: Some("call-7".to_owned()),
                payload: payload.to_vec(),
                vapid_public_key: vapid.public(),
            },
            Received {
                subscription: received[0].subscription.clone(),
                ttl: 86_400,
                urgency: Some("normal".to_owned()),
                topic: None,
                payload: b"{\"v\":1}".to_vec(),
                vapid_public_key: vapid.public(),
            },
        ]
    );
    assert!(to.endpoint.ends_with(&received[0].subscription));
    assert_eq!(service.failures(), vec![]);
    // Another subscription of the same service is another key: nothing crosses over.
    let other = subscribe(&service);
    assert_eq!(
        sender.send(&other, b"x", Urgency::Low, "t", 60).await,
        SendOutcome::Delivered
    );
    assert_eq!(service.received(&to.endpoint).len(), 2);
    assert_eq!(service.received(&other.endpoint)[0].payload, b"x");
}

#[tokio::test]
async fn https_endpoints_are_checked_against_the_trusted_roots() {
    let service = PushService::start_tls().await;
    assert!(service.origin().starts_with("https://127.0.0.1:"));
    let to = subscribe(&service);
    let vapid = VapidKey::generate();
    let trusting = sender(&vapid, WAIT)
        .with_root_certificate(service.ca_certificate().unwrap())
        .unwrap();
    assert_eq!(
        trusting.send(&to, b"hello", Urgency::Normal, "", 60).await,
        SendOutcome::Delivered
    );
    assert_eq!(service.received(&to.endpoint)[0].payload, b"hello");
    // Without the test CA (the platform's roots only) the certificate is refused: no request.
    assert_eq!(
        sender(&vapid, WAIT)
            .send(&to, b"again", Urgency::Normal, "", 60)
            .await,
        SendOutcome::RetryAfter(None)
    );
    assert_eq!(service.received(&to.endpoint).len(), 1);
}

#[tokio::test]
async fn answers_become_outcomes() {
    let service = PushService::start().await;
    let sender = sender(&VapidKey::generate(), WAIT);
    for (answer, outcome) in [
        (Answer::Status(410), SendOutcome::Gone),
        (Answer::Status(404), SendOutcome::Gone),
        (
            Answer::Retry {
                status: 429,
                after_secs: 7,
            },
            SendOutcome::RetryAfter(Some(Duration::from_secs(7))),
        ),
        (Answer::Status(500), SendOutcome::RetryAfter(None)),
        (
            Answer::Retry {
                status: 503,
                after_secs: 60,
            },
            SendOutcome::RetryAfter(Some(Duration::from_secs(60))),
        ),
        (Answer::Status(403), SendOutcome::Rejected(403)),
        (Answer::Status(413), SendOutcome::Rejected(413)),
        (Answer::Created, SendOutcome::Delivered),
    ] {
        let to = subscribe(&service);
        service.set_answer(&to.endpoint, answer);
        assert_eq!(
            sender.send(&to, b"x", Urgency::Normal, "t", 60).await,
            outcome,
            "{answer:?}"
        );
        // The message itself was sound: the service took it before answering.
        assert_eq!(service.received(&to.endpoint).len(), 1, "{answer:?}");
    }
    // A subscription the service does not know (unsubscribed, say) is gone.
    let to = subscribe(&service);
    let mut unknown = to.clone();
    unknown.endpoint = format!("{}/push/no-such-subscription", service.origin());
    assert_eq!(
        sender.send(&unknown, b"x", Urgency::Normal, "", 60).await,
        SendOutcome::Gone
    );
    assert_eq!(service.failures().len(), 1);
}

#[tokio::test]
async fn a_hanging_push_service_times_out_without_delaying_another() {
    let hanging = PushService::start().await;
    let healthy = PushService::start().await;
    let stuck = subscribe(&hanging);
    hanging.set_answer(&stuck.endpoint, Answer::Hang);
    let fine = subscribe(&healthy);
    let timeout = Duration::from_millis(300);
    let sender = sender(&VapidKey::generate(), timeout);
    let timed = |to: Subscription| {
        let sender = &sender;
        async move {
            let start = Instant::now();
            let outcome = sender.send(&to, b"x", Urgency::High, "", 60).await;
            (outcome, start.elapsed())
        }
    };
    let ((stuck_outcome, stuck_took), (fine_outcome, fine_took)) =
        tokio::join!(timed(stuck.clone()), timed(fine.clone()));
    assert_eq!(stuck_outcome, SendOutcome::RetryAfter(None));
    assert!(stuck_took >= timeout, "{stuck_took:?}");
    assert!(stuck_took < timeout * 5, "{stuck_took:?}");
    assert_eq!(fine_outcome, SendOutcome::Delivered);
    assert!(fine_took < timeout, "{fine_took:?}");
    // The hanging service did get the (sound) message; it just never answered.
    hanging.wait_for(&stuck.endpoint, 1, WAIT).await;
    healthy.wait_for(&fine.endpoint, 1, WAIT).await;

    // No service at all: refused at once, retried later.
    let gone_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut nowhere = fine.clone();
    nowhere.endpoint = format!("http://127.0.0.1:{gone_port}/push/x");
    assert_eq!(
        sender.send(&nowhere, b"x", Urgency::Normal, "", 60).await,
        SendOutcome::RetryAfter(None)
    );
}

/// `POST` `body` to `endpoint` with `authorization`, as a raw HTTP/1.1 request: the status.
async fn raw_post(endpoint: &str, authorization: &str, body: &[u8]) -> u16 {
    let rest = endpoint.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = TcpStream::connect(authority).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nTTL: 60\r\nContent-Encoding: aes128gcm\r\n\
         Content-Length: {}\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_service_refuses_forged_or_wrong_vapid_headers_and_foreign_bodies() {
    let service = PushService::start().await;
    let to = subscribe(&service);
    let key = VapidKey::generate();
    let forger = VapidKey::generate();
    let body = web_push::encrypt(&to, b"x").unwrap();
    let exp = now() + 3600;

    // The request made by hand is sound: taken.
    let sound = key.authorization(&to.endpoint, SUBJECT, exp).unwrap();
    assert_eq!(raw_post(&to.endpoint, &sound, &body).await, 201);
    assert_eq!(service.received(&to.endpoint).len(), 1);

    // A token signed by another key, presented under the first key's `k`.
    let forged = forger.authorization(&to.endpoint, SUBJECT, exp).unwrap();
    let (token, _) = forged.split_once(", k=").unwrap();
    let forged = format!("{token}, k={}", key.public());
    assert_eq!(raw_post(&to.endpoint, &forged, &body).await, 401);
    // A token for another origin, expired, or valid for more than 24 hours.
    let elsewhere = key
        .authorization("http://127.0.0.1:1/push/x", SUBJECT, exp)
        .unwrap();
    assert_eq!(raw_post(&to.endpoint, &elsewhere, &body).await, 401);
    let expired = key.authorization(&to.endpoint, SUBJECT, now() - 1).unwrap();
    assert_eq!(raw_post(&to.endpoint, &expired, &body).await, 401);
    let too_long = key
        .authorization(&to.endpoint, SUBJECT, now() + 25 * 3600)
        .unwrap();
    assert_eq!(raw_post(&to.endpoint, &too_long, &body).await, 401);
    // A body encrypted for another subscription does not open.
    let other = subscribe(&service);
    let foreign = web_push::encrypt(&other, b"x").unwrap();
    assert_eq!(raw_post(&to.endpoint, &sound, &foreign).await, 400);

    let failures = service.failures();
    assert_eq!(
        failures.iter().map(|f| f.status).collect::<Vec<_>>(),
        [401, 401, 401, 401, 400],
        "{failures:?}"
    );
    assert!(
        failures[0].reason.contains("does not verify"),
        "{failures:?}"
    );
    assert_eq!(service.received(&to.endpoint).len(), 1);
    assert!(service.received(&other.endpoint).is_empty());
}

/// Without `allow_loopback`, a name resolving to this machine is never connected to (a
/// registered public name could point there later): the message is not sent.
#[tokio::test]
async fn a_sender_never_connects_to_this_machine_unless_allowed() {
    let service = PushService::start().await;
    let to = subscribe(&service);
    let vapid = VapidKey::generate();
    let strict = Sender::new(vapid.clone(), SUBJECT.to_owned(), WAIT);
    assert!(matches!(
        strict.send(&to, b"hello", Urgency::Normal, "", 60).await,
        SendOutcome::RetryAfter(_)
    ));
    assert!(service.received(&to.endpoint).is_empty());
    assert!(service.failures().is_empty(), "no request reached it");
    assert_eq!(
        sender(&vapid, WAIT)
            .send(&to, b"hello", Urgency::Normal, "", 60)
            .await,
        SendOutcome::Delivered
    );
}
