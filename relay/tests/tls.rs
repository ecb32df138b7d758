//! TLS termination on the client port (`--tls-cert`, `--tls-key`): a certificate made here
//! for 127.0.0.1 and localhost, a WebSocket upgrade and `/healthz` over TLS, the start-up
//! errors, a plain `ws://` client on the TLS port, and a client that never starts TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_relay::server::StartError;
use ferry_relay::tls::TlsError;
use ferry_relay::{Config, Server};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

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
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
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

fn tls_config(data: &Path, pki: &Pki) -> Config {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), data);
    config.tls_cert = Some(pki.cert.clone());
    config.tls_key = Some(pki.key.clone());
    config
}

/// A rustls client trusting only the test CA (ring provider, set explicitly).
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test]
async fn the_relay_serves_websocket_and_http_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"));
    let server = Server::spawn(tls_config(&dir.path().join("relay"), &pki))
        .await
        .unwrap();
    let addr = server.local_addr();
    let client = client_config(&pki.ca);

    // A WebSocket upgrade over wss://, by 127.0.0.1 and by localhost.
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("wss://{host}:{}/ws", addr.port());
        let connector = tokio_tungstenite::Connector::Rustls(Arc::clone(&client));
        let (ws, response) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_tls_with_config(&url, None, false, Some(connector)),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(response.status().as_u16(), 101, "{url}");
        drop(ws);
    }

    // Plain HTTP inside TLS: /healthz answers.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(&client))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut answer))
        .await
        .unwrap()
        .ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    server.shutdown().await;
}

#[tokio::test]
async fn plain_clients_on_the_tls_port_fail_cleanly_and_the_relay_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"));
    let mut config = tls_config(&dir.path().join("relay"), &pki);
    config.limits.http_header_timeout_ms = 300;
    let server = Server::spawn(config).await.unwrap();
    let addr = server.local_addr();

    // ws:// (no TLS): an error, not a hang.
    let plain = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("a plain client must not hang");
    assert!(plain.is_err());

    // A client that connects and never starts TLS is dropped after the header deadline.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0_u8; 16];
    let read = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .expect("an idle connection must be closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // A proper TLS client still gets in.
    let connector = tokio_tungstenite::Connector::Rustls(client_config(&pki.ca));
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_tls_with_config(
            format!("wss://{addr}/ws"),
            None,
            false,
            Some(connector),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn tls_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"));
    let data = dir.path().join("relay");

    // One without the other.
    let mut config = tls_config(&data, &pki);
    config.tls_key = None;
    let error = Server::spawn(config).await.unwrap_err();
    assert!(
        matches!(error, StartError::Tls(TlsError::Incomplete)),
        "{error:?}"
    );
    assert!(error.to_string().contains("--tls-key"), "{error}");
    let mut config = tls_config(&data, &pki);
    config.tls_cert = None;
    let error = Server::spawn(config).await.unwrap_err();
    assert!(matches!(error, StartError::Tls(TlsError::Incomplete)));

    // A missing file, and a file that is not PEM, are named.
    let mut config = tls_config(&data, &pki);
    config.tls_cert = Some(dir.path().join("missing.pem"));
    let error = Server::spawn(config).await.unwrap_err();
    assert!(matches!(error, StartError::Tls(TlsError::File { .. })));
    assert!(error.to_string().contains("missing.pem"), "{error}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let mut config = tls_config(&data, &pki);
    config.tls_key = Some(garbage.clone());
    let error = Server::spawn(config).await.unwrap_err();
    assert!(matches!(error, StartError::Tls(TlsError::File { .. })));
    let mut config = tls_config(&data, &pki);
    config.tls_cert = Some(garbage);
    let error = Server::spawn(config).await.unwrap_err();
    assert!(matches!(error, StartError::Tls(TlsError::File { .. })));

    // The certificate's key swapped for another: rustls refuses the pair.
    let other = make_pki(&dir.path().join("other"));
    let mut config = tls_config(&data, &pki);
    config.tls_key = Some(other.key);
    let error = Server::spawn(config).await.unwrap_err();
    assert!(
        matches!(error, StartError::Tls(TlsError::Config(_))),
        "{error:?}"
    );
}

#[test]
fn the_command_line_wants_both_flags_or_neither() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }
    let parsed =
        Cli::try_parse_from(["ferry-relay", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
    assert_eq!(parsed.config.tls_cert, Some(PathBuf::from("c.pem")));
    assert_eq!(parsed.config.tls_key, Some(PathBuf::from("k.pem")));
    assert!(Cli::try_parse_from(["ferry-relay", "--tls-cert", "c.pem"]).is_err());
    assert!(Cli::try_parse_from(["ferry-relay", "--tls-key", "k.pem"]).is_err());
}
