//! TLS termination for the client port (`--tls-cert`, `--tls-key`): the relay serves
//! `wss://` itself, for deployments without a reverse proxy.
//!
//! rustls with the `ring` provider, installed explicitly in the server configuration (never
//! through a process-wide default). TLS 1.2 and 1.3, ALPN `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::Config;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Only one of `--tls-cert` and `--tls-key` was given.
    #[error("--tls-cert and --tls-key go together: give both (serve wss://) or neither (ws://)")]
    Incomplete,
    /// A PEM file could not be read or holds nothing usable.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate and key (e.g. the key does not match).
    #[error("TLS certificate and key: {0}")]
    Config(String),
}

/// The acceptor for the configured certificate and key, or `None` for plain `ws://`.
pub fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, TlsError> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => return Err(TlsError::Incomplete),
    };
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no CERTIFICATE block found".to_owned()));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bad = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad(format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))
}
