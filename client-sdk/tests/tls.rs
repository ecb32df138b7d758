//! `wss://`: a relay terminating TLS with a certificate made here (a private CA for
//! 127.0.0.1 and localhost), clients trusting that CA through `Options::ca_file`, and the
//! refusals: a client without the CA, a client trusting another CA, a plain `ws://` client
//! on the TLS port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_client::{Client, ClientError, Options};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use support::*;

/// PEM files of a CA and of a server certificate it issued.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A new CA in `dir`, and a certificate for 127.0.0.1 and localhost signed by it.
fn make_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Ferry test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "ferry-relay test");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();

    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

fn tls_relay(data: &Path, pki: &Pki) -> TestRelay {
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    TestRelay::start_with(
        data,
        free_addr(),
        Arc::new(move |config| {
            config.tls_cert = Some(cert.clone());
            config.tls_key = Some(key.clone());
        }),
    )
}

fn wss_url(relay: &TestRelay) -> String {
    format!("wss://{}/ws", relay.addr)
}

/// Options for a connection expected to fail: one quick attempt's worth of waiting.
fn refused() -> Options {
    fast().connect_timeout(Duration::from_secs(2))
}

#[tokio::test]
async fn two_devices_sync_over_wss_with_the_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"));
    let relay = tls_relay(&dir.path().join("relay"), &pki);

    let laptop_state = new_user_at(
        &dir.path().join("laptop"),
        &wss_url(&relay),
        relay.relay_id,
        "laptop",
        &fast().ca_file(&pki.ca),
    )
    .await;
    // The phone pairs over wss:// too (the test helpers' raw sessions speak ws:// only).
    let with_ca = fast().ca_file(&pki.ca);
    let invitation = ferry_client::pairing::invite(&laptop_state, &with_ca)
        .await
        .unwrap();
    let code = invitation.code().to_string();
    let inviter = tokio::spawn(invitation.wait());
    let phone_state = ferry_client::pairing::join(
        dir.path().join("phone"),
        &wss_url(&relay),
        relay.relay_id,
        &code,
        "phone",
        &with_ca,
    )
    .await
    .unwrap();
    inviter.await.unwrap().unwrap();
    assert!(phone_state.relay_url().starts_with("wss://"));
    let laptop_id = laptop_state.device_id();

    let mut laptop = Client::connect(laptop_state, fast().ca_file(&pki.ca))
        .await
        .unwrap();
    let mut phone = Client::connect(phone_state, fast().ca_file(&pki.ca))
        .await
        .unwrap();
    assert!(until_caught_up(&mut laptop).await.is_empty());
    assert!(until_caught_up(&mut phone).await.is_empty());

    assert_eq!(laptop.append(b"over TLS").await.unwrap(), 1);
    let got = next_event(&mut phone).await;
    assert_eq!((got.seq, got.device, got.device_seq), (1, laptop_id, 1));
    assert_eq!(&got.plaintext[..], b"over TLS");

    assert_eq!(phone.append(b"and back").await.unwrap(), 2);
    let got = events(&mut laptop, 2).await;
    assert_eq!(texts(&got), ["over TLS", "and back"]);

    laptop.close().await.unwrap();
    phone.close().await.unwrap();
}

#[tokio::test]
async fn a_client_without_the_ca_or_with_another_ca_is_refused_with_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"));
    let other = make_pki(&dir.path().join("other-pki"));
    let relay = tls_relay(&dir.path().join("relay"), &pki);
    let state_dir = dir.path().join("laptop");
    drop(
        new_user_at(
            &state_dir,
            &wss_url(&relay),
            relay.relay_id,
            "laptop",
            &fast().ca_file(&pki.ca),
        )
        .await,
    );

    // The platform's roots (the default) do not include the test CA.
    let state = open_when_free(&state_dir).await;
    match Client::connect(state, refused()).await {
        Err(ClientError::Tls(why)) => assert!(why.contains("certificate"), "{why}"),
        other => panic!("expected a TLS error, got {:?}", other.err()),
    }

    // Another CA.
    let state = open_when_free(&state_dir).await;
    match Client::connect(state, refused().ca_file(&other.ca)).await {
        Err(ClientError::Tls(why)) => assert!(why.contains("certificate"), "{why}"),
        other => panic!("expected a TLS error, got {:?}", other.err()),
    }

    // A CA file that is not one: a permanent settings error, at once.
    let state = open_when_free(&state_dir).await;
    let started = std::time::Instant::now();
    match Client::connect(state, fast().ca_file(dir.path().join("missing.pem"))).await {
        Err(error @ ClientError::TlsConfig(_)) => {
            assert!(error.is_permanent());
            assert!(error.to_string().contains("missing.pem"), "{error}");
        }
        other => panic!("expected a TLS settings error, got {:?}", other.err()),
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // The relay is fine: with the right CA the same state connects.
    let state = open_when_free(&state_dir).await;
    let client = Client::connect(state, fast().ca_file(&pki.ca))
        .await
        .unwrap();
    client.close().await.unwrap();
}

#[tokio::test]
async fn plain_ws_against_the_tls_port_and_wss_against_a_plain_port_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"));
    let tls = tls_relay(&dir.path().join("tls-relay"), &pki);
    let plain = TestRelay::start(&dir.path().join("plain-relay"));

    // ws:// to the TLS port: the relay drops the connection; the client reports it.
    let a = dir.path().join("a");
    drop(
        new_user_at(
            &a,
            &wss_url(&tls),
            tls.relay_id,
            "a",
            &fast().ca_file(&pki.ca),
        )
        .await,
    );
    repoint(&a, &format!("ws://{}/ws", tls.addr), tls.relay_id);
    let state = open_when_free(&a).await;
    match Client::connect(state, refused().ca_file(&pki.ca)).await {
        Err(ClientError::RelayUnreachable(_) | ClientError::Tls(_)) => {}
        other => panic!("expected the connection to fail, got {:?}", other.err()),
    }

    // wss:// to a plain port: not TLS, a TLS error.
    let state = new_user_pointed_at(
        &dir.path().join("b"),
        &plain,
        "b",
        &format!("wss://{}/ws", plain.addr),
        plain.relay_id,
    )
    .await;
    match Client::connect(state, refused().ca_file(&pki.ca)).await {
        Err(ClientError::Tls(_)) => {}
        other => panic!("expected the connection to fail, got {:?}", other.err()),
    }

    // The TLS relay still serves a proper client afterwards.
    let state = new_user_at(
        &dir.path().join("c"),
        &wss_url(&tls),
        tls.relay_id,
        "c",
        &fast().ca_file(&pki.ca),
    )
    .await;
    let client = Client::connect(state, fast().ca_file(&pki.ca))
        .await
        .unwrap();
    client.close().await.unwrap();
}
