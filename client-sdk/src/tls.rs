//! `wss://`: rustls with the `ring` provider (installed explicitly in each configuration,
//! never through a process-wide default), trusting the platform's root certificates, or
//! only the CA of [`Options::ca_file`](crate::Options::ca_file) for a private deployment.
//!
//! TLS protects the transport (metadata, and the relay's HTTP endpoint); the relay itself is
//! still authenticated by its pinned key in the Ferry handshake, TLS or not.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::Connector;

use crate::error::ClientError;

/// The connector for `url`: `None` for `ws://` (plain TCP), rustls for `wss://`.
pub(crate) fn connector(
    url: &str,
    ca_file: Option<&Path>,
) -> Result<Option<Connector>, ClientError> {
    if !url.starts_with("wss://") {
        return Ok(None);
    }
    let config = match ca_file {
        Some(path) => config_with_roots(roots_from_file(path)?)?,
        None => platform_config()?,
    };
    Ok(Some(Connector::Rustls(config)))
}

/// The configuration trusting the platform's roots, built once per process.
fn platform_config() -> Result<Arc<ClientConfig>, ClientError> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, ClientError>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none installed".to_owned(), ToString::to_string);
                return Err(ClientError::TlsConfig(format!(
                    "no usable root certificate on this system ({why}); give a CA file"
                )));
            }
            config_with_roots(roots)
        })
        .clone()
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, ClientError> {
    let bad = |why: String| ClientError::TlsConfig(format!("CA file {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no CERTIFICATE block found".to_owned()));
    }
    Ok(roots)
}

fn config_with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS failure inside a connection error, if it was one (a certificate not trusted, a
/// name mismatch, a peer that does not speak TLS).
pub(crate) fn tls_failure(error: &tokio_tungstenite::tungstenite::Error) -> Option<String> {
    use tokio_tungstenite::tungstenite::Error;
    match error {
        Error::Tls(e) => Some(e.to_string()),
        Error::Io(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(ToString::to_string),
        _ => None,
    }
}
