//! APNs wake-ups for iOS and macOS apps: HTTP/2 requests to Apple's push service
//! (`POST /3/device/<token>`), authenticated with a provider token (an ES256 JWT signed with
//! the team's APNs key, `AuthKey_<KEY ID>.p8`), on one long-lived connection per environment
//! (production and sandbox), as Apple asks.
//!
//! What a wake-up carries, and nothing more:
//! - a message: a background push (`apns-push-type: background`, priority 5, kept a day),
//!   `{"aps":{"content-available":1},"v":1,"kind":"message"}`: the app wakes and reads;
//! - a call: an alert (priority 10, kept a minute) whose text the app's own localisation
//!   gives (`loc-key` `FERRY_INCOMING_CALL`): no caller, no conversation.
//!
//! Both collapse (`apns-collapse-id: ferry`): the device keeps one. A hand-written client,
//! not the `a2` crate: `a2` cannot be pointed at a test service (only Apple's two hosts) and
//! brings a second rustls generation; this reuses the relay's hyper, rustls and P-256.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use p256::ecdsa::SigningKey;
use p256::pkcs8::DecodePrivateKey as _;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::sender::{SendOutcome, Target};

/// Apple's production push service.
pub const PRODUCTION: &str = "https://api.push.apple.com";
/// Apple's development push service.
pub const SANDBOX: &str = "https://api.sandbox.push.apple.com";

/// A provider token is made again after this (Apple refuses one older than an hour, and
/// one made more often than every 20 minutes).
const TOKEN_LIFETIME: Duration = Duration::from_secs(40 * 60);

/// Longest error body read from APNs (`{"reason":"..."}`).
const MAX_ERROR_BODY: usize = 4096;

/// What the relay needs to send APNs pushes (`--apns-*`).
pub struct ApnsKey {
    /// The team's APNs signing key.
    pub key: SigningKey,
    /// Its id (the `kid` of provider tokens).
    pub key_id: String,
    /// The Apple developer team id (their `iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
}

impl std::fmt::Debug for ApnsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsKey")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ApnsKey {
    /// Reads the `.p8` key (PKCS#8 PEM) Apple's developer site gives.
    pub fn from_pem(pem: &str, key_id: &str, team_id: &str, topic: &str) -> anyhow::Result<Self> {
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| anyhow::anyhow!("not an APNs (P-256, PKCS#8 PEM) key: {e}"))?;
        for (what, value) in [("key id", key_id), ("team id", team_id), ("topic", topic)] {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                anyhow::bail!("APNs {what} {value:?} is empty or not printable ASCII");
            }
        }
        Ok(Self {
            key,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            topic: topic.to_owned(),
        })
    }

    /// A provider token made at `iat` (unix seconds).
    fn provider_token(&self, iat: u64) -> String {
        let header = serde_json::json!({ "alg": "ES256", "kid": self.key_id });
        let claims = serde_json::json!({ "iss": self.team_id, "iat": iat });
        super::es256_jwt(&self.key, &header.to_string(), &claims.to_string())
    }
}

/// One APNs environment: where, and the connection to it once made.
struct Environment {
    target: Target,
    connection: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Environment {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let target = Target::parse(url).ok_or_else(|| {
            anyhow::anyhow!(
                "an APNs URL is https://HOST[:PORT] (http:// only to this machine, for a test service)"
            )
        })?;
        Ok(Self {
            target,
            connection: tokio::sync::Mutex::new(None),
        })
    }
}

/// Sends APNs wake-ups (see the module docs).
pub struct ApnsClient {
    key: ApnsKey,
    production: Environment,
    sandbox: Environment,
    tls: Arc<ClientConfig>,
    timeout: Duration,
    token: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for ApnsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsClient")
            .field("key", &self.key)
            .field("production", &self.production.target.host)
            .field("sandbox", &self.sandbox.target.host)
            .finish_non_exhaustive()
    }
}

impl ApnsClient {
    /// A client for Apple's two environments at `production` and `sandbox` (normally
    /// [`PRODUCTION`] and [`SANDBOX`]; `http://` only for a test service, spoken as HTTP/2
    /// without TLS), checking TLS with `roots`.
    pub fn new(
        key: ApnsKey,
        production: &str,
        sandbox: &str,
        roots: rustls::RootCertStore,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            key,
            production: Environment::parse(production)?,
            sandbox: Environment::parse(sandbox)?,
            tls: Arc::new(tls),
            timeout,
            token: Mutex::new(None),
        })
    }

    /// The key's topic (the app's bundle id).
    pub fn topic(&self) -> &str {
        &self.key.topic
    }

    /// Wakes the device with `token` (hex) for a call (`urgent`) or a message.
    pub async fn send(&self, token_hex: &str, sandbox: bool, urgent: bool) -> SendOutcome {
        let environment = if sandbox {
            &self.sandbox
        } else {
            &self.production
        };
        let Ok(request) = self.request(environment, token_hex, urgent) else {
            return SendOutcome::Gone;
        };
        let exchange = self.exchange(environment, request);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((status, reason, retry_after))) => outcome_of(status, &reason, retry_after),
            Ok(Err(error)) => {
                tracing::debug!(%error, host = %environment.target.host, "APNs: no answer");
                *environment.connection.lock().await = None;
                SendOutcome::RetryAfter(None)
            }
            Err(_) => {
                tracing::debug!(host = %environment.target.host, "APNs timed out");
                *environment.connection.lock().await = None;
                SendOutcome::RetryAfter(None)
            }
        }
    }

    fn request(
        &self,
        environment: &Environment,
        token_hex: &str,
        urgent: bool,
    ) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let now = crate::context::now_s();
        let (push_type, priority, ttl, body) = if urgent {
            let body = r#"{"aps":{"alert":{"loc-key":"FERRY_INCOMING_CALL"},"sound":"default"},"v":1,"kind":"call"}"#;
            ("alert", "10", 60, body)
        } else {
            let body = r#"{"aps":{"content-available":1},"v":1,"kind":"message"}"#;
            ("background", "5", 86_400, body)
        };
        let scheme = if environment.target.https {
            "https"
        } else {
            "http"
        };
        let uri = format!(
            "{scheme}://{}:{}/3/device/{token_hex}",
            environment.target.host, environment.target.port
        );
        Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(
                header::AUTHORIZATION,
                format!("bearer {}", self.provider_token()),
            )
            .header("apns-topic", self.key.topic.as_str())
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .header("apns-expiration", now + ttl)
            .header("apns-collapse-id", "ferry")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
    }

    /// The current provider token, made again when it is old.
    fn provider_token(&self) -> String {
        let mut cached = self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cached {
            Some((token, made)) if made.elapsed() < TOKEN_LIFETIME => token.clone(),
            _ => {
                let iat = crate::context::now_s();
                let token = self.key.provider_token(iat);
                *cached = Some((token.clone(), Instant::now()));
                token
            }
        }
    }

    /// Sends on the environment's connection (made first if there is none, or it closed);
    /// returns the status, APNs's `reason`, and `Retry-After`.
    async fn exchange(
        &self,
        environment: &Environment,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, String, Option<HeaderValue>), BoxError> {
        let mut sender = {
            let mut connection = environment.connection.lock().await;
            match &*connection {
                Some(sender) if !sender.is_closed() => sender.clone(),
                _ => {
                    let sender = self.connect(environment).await?;
                    *connection = Some(sender.clone());
                    sender
                }
            }
        };
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let reason = if status.is_success() {
            String::new()
        } else {
            let body = Limited::new(response.into_body(), MAX_ERROR_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("reason")?.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        Ok((status, reason, retry_after))
    }

    async fn connect(
        &self,
        environment: &Environment,
    ) -> Result<SendRequest<Full<Bytes>>, BoxError> {
        let tcp =
            TcpStream::connect((environment.target.host.as_str(), environment.target.port)).await?;
        tcp.set_nodelay(true)?;
        let executor = TokioExecutor::new();
        if environment.target.https {
            let name = ServerName::try_from(environment.target.host.clone())?;
            let tls = TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, tcp)
                .await?;
            let (sender, connection) =
                hyper::client::conn::http2::handshake(executor, TokioIo::new(tls)).await?;
            tokio::spawn(connection);
            Ok(sender)
        } else {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(executor, TokioIo::new(tcp)).await?;
            tokio::spawn(connection);
            Ok(sender)
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What APNs's answer means (Apple's "Handling notification responses from APNs").
fn outcome_of(status: StatusCode, reason: &str, retry_after: Option<HeaderValue>) -> SendOutcome {
    match (status.as_u16(), reason) {
        (200, _) => SendOutcome::Delivered,
        // The app was removed, or the token belongs to another app or environment.
        (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => SendOutcome::Gone,
        (429 | 500 | 503, _) => SendOutcome::RetryAfter(
            retry_after
                .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                .map(Duration::from_secs),
        ),
        (other, reason) => {
            tracing::warn!(status = other, reason, "APNs refused a push");
            SendOutcome::Rejected(other)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::EncodePrivateKey as _;

    fn key() -> ApnsKey {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = secret.to_pkcs8_pem(Default::default()).unwrap();
        ApnsKey::from_pem(&pem, "ABC123DEFG", "DEF123GHIJ", "org.example.app").unwrap()
    }

    #[test]
    fn a_provider_token_is_an_es256_jwt_naming_the_key_and_team() {
        let key = key();
        let token = key.provider_token(1_700_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "ES256", "kid": "ABC123DEFG"})
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"iss": "DEF123GHIJ", "iat": 1_700_000_000})
        );
        let signature =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let verifying = p256::ecdsa::VerifyingKey::from(&key.key);
        let input = format!("{}.{}", parts[0], parts[1]);
        verifying.verify(input.as_bytes(), &signature).unwrap();
    }

    #[test]
    fn bad_keys_and_names_are_refused() {
        assert!(ApnsKey::from_pem("not a key", "A", "B", "c").is_err());
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = secret.to_pkcs8_pem(Default::default()).unwrap();
        assert!(ApnsKey::from_pem(&pem, "", "B", "c").is_err());
        assert!(ApnsKey::from_pem(&pem, "A", "B", "bad topic").is_err());
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(outcome_of(StatusCode::OK, "", None), SendOutcome::Delivered);
        assert_eq!(
            outcome_of(StatusCode::GONE, "Unregistered", None),
            SendOutcome::Gone
        );
        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(outcome_of(bad, "BadDeviceToken", None), SendOutcome::Gone);
        assert_eq!(
            outcome_of(bad, "BadTopic", None),
            SendOutcome::Rejected(400)
        );
        let later = Some(HeaderValue::from_static("30"));
        assert_eq!(
            outcome_of(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", later),
            SendOutcome::RetryAfter(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            outcome_of(StatusCode::SERVICE_UNAVAILABLE, "", None),
            SendOutcome::RetryAfter(None)
        );
        assert_eq!(
            outcome_of(StatusCode::FORBIDDEN, "InvalidProviderToken", None),
            SendOutcome::Rejected(403)
        );
    }
}
