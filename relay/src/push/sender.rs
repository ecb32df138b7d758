//! The HTTP side of Web Push: one `POST` per message to the subscription's endpoint (RFC 8030
//! §5), the body encrypted for the subscription ([`web_push::encrypt`]), the relay named by its
//! VAPID header ([`VapidKey::authorization`]), and the push service's answer turned into what
//! the caller does next ([`SendOutcome`]).
//!
//! Each message gets its own connection (HTTP/1.1 over TCP, TLS with rustls on the `ring`
//! provider for `https://`, trusting the platform's root certificates). Wake-ups are rare and
//! tiny, so a pool would buy little and cost a stale-connection failure mode. The whole exchange
//! (connecting, TLS, request and response head) is bounded by the sender's timeout; the
//! response body is never read.
//!
//! The endpoint's path is a bearer capability at the push service (anyone holding it can wake
//! the device), so nothing here logs it: only the origin.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::web_push::{self, Subscription, VapidKey, WebPushError};

/// How long each VAPID token is valid (RFC 8292 allows up to 24 hours; half leaves room for
/// a push service whose clock is ahead of ours).
const VAPID_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A VAPID header is signed again once less than this is left of it (it is reused until
/// then: one ES256 signature per push service per few hours, not one per message).
const VAPID_RENEW_BEFORE: Duration = Duration::from_secs(6 * 3600);

/// Push services whose VAPID header is kept (devices choose them: bounded, and forgotten
/// all at once when full).
const MAX_CACHED_VAPID: usize = 1024;

/// Longest `Topic` (RFC 8030 §5.4: at most 32 characters of the base64url alphabet).
pub const MAX_TOPIC_LEN: usize = 32;

/// How urgent a message is (RFC 8030 §5.3): push services may hold back low-urgency messages
/// to save the device's battery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Urgency {
    /// `very-low`: only when the device is on power and Wi-Fi.
    VeryLow,
    /// `low`: only when the device is on power or Wi-Fi.
    Low,
    /// `normal`: when the device is on neither power nor Wi-Fi (messages).
    #[default]
    Normal,
    /// `high`: even on low battery (calls).
    High,
}

impl Urgency {
    /// The `Urgency` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VeryLow => "very-low",
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// What came of one message, and so what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// The push service took it (any 2xx; RFC 8030 says 201 Created).
    Delivered,
    /// 404 or 410: the subscription is no more. Unregister the target.
    Gone,
    /// 429, 408 or 5xx, or no answer (timeout, connection or TLS failure): try again later, not
    /// before the push service's `Retry-After` when it gave one.
    RetryAfter(Option<Duration>),
    /// Any other status (400, 401, 403, 413, and 3xx): a bug or a bad key; do not retry.
    /// Messages this side refuses to send are reported as a push service would answer them:
    /// 400 for a malformed `Topic`, 413 for a payload too large (see [`Sender::send`]).
    Rejected(u16),
}

/// A Web Push client: the relay's VAPID key and contact, and a timeout per message.
#[derive(Clone)]
pub struct Sender {
    vapid: VapidKey,
    subject: String,
    timeout: Duration,
    roots: RootCertStore,
    tls: Option<Arc<ClientConfig>>,
    /// Whether addresses of this machine may be connected to (tests, a local push service).
    allow_loopback: bool,
    /// APNs, when the relay has a key for it.
    apns: Option<Arc<super::apns::ApnsClient>>,
    /// The VAPID header of each push service (its origin), and when it expires (unix s).
    vapid_headers: Arc<std::sync::Mutex<std::collections::HashMap<String, (String, u64)>>>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("vapid", &self.vapid)
            .field("subject", &self.subject)
            .field("timeout", &self.timeout)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender signing with `vapid`, naming `subject` (a `mailto:` or `https:` contact for push
    /// services' operators, RFC 8292 §2.1), giving each message at most `timeout`. `https://`
    /// endpoints are checked against the platform's root certificates (loaded once per
    /// process); with none installed, every `https://` message fails (as
    /// [`SendOutcome::RetryAfter`]) and a warning says so here.
    pub fn new(vapid: VapidKey, subject: String, timeout: Duration) -> Self {
        let roots = platform_roots().clone();
        if roots.is_empty() {
            tracing::warn!(
                "no usable root certificate on this system: Web Push to https:// endpoints \
                 will fail"
            );
        }
        let tls = tls_config(roots.clone());
        Self {
            vapid,
            subject,
            timeout,
            roots,
            tls,
            allow_loopback: false,
            apns: None,
            vapid_headers: Arc::default(),
        }
    }

    /// Also sends APNs wake-ups, through `client`.
    pub fn with_apns(mut self, client: super::apns::ApnsClient) -> Self {
        self.apns = Some(Arc::new(client));
        self
    }

    /// The APNs client, if the relay has an APNs key.
    pub fn apns(&self) -> Option<&super::apns::ApnsClient> {
        self.apns.as_deref()
    }

    /// The root certificates `https://` push services are checked against.
    pub fn roots(&self) -> &RootCertStore {
        &self.roots
    }

    /// Lets the sender connect to this machine's addresses (`--push-allow-loopback`). Off by
    /// default: a push endpoint whose name resolves to this machine or a private network is
    /// never connected to (see [`crate::push::address_allowed`]).
    pub fn allow_loopback(mut self, allow: bool) -> Self {
        self.allow_loopback = allow;
        self
    }

    /// Also trusts `ca` for `https://` endpoints (a private push service, or tests).
    pub fn with_root_certificate(
        mut self,
        ca: CertificateDer<'static>,
    ) -> Result<Self, rustls::Error> {
        self.roots.add(ca)?;
        self.tls = tls_config(self.roots.clone());
        Ok(self)
    }

    /// The timeout given to each message.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `payload` to `subscription`: `ttl_secs` is how long the push service keeps it for
    /// an unreachable device (RFC 8030 §5.2), `topic` lets a newer message with the same topic
    /// replace an undelivered older one (§5.4; `""` sends none), `urgency` as in [`Urgency`].
    ///
    /// Never fails: a message that cannot be made is [`SendOutcome::Rejected`] without any
    /// request (400 for a `topic` that is not 1 to 32 base64url characters, 413 for a payload
    /// over [`web_push::MAX_PAYLOAD_LEN`]), and an endpoint that is not a usable
    /// `https://` URL is [`SendOutcome::Gone`] (the subscription can never be reached).
    pub async fn send(
        &self,
        subscription: &Subscription,
        payload: &[u8],
        urgency: Urgency,
        topic: &str,
        ttl_secs: u32,
    ) -> SendOutcome {
        let origin = web_push::origin(&subscription.endpoint).unwrap_or("(not a push endpoint)");
        let (target, request) = match self.request(
            subscription,
            payload,
            urgency,
            topic,
            ttl_secs,
            SystemTime::now(),
        ) {
            Ok(prepared) => prepared,
            Err(outcome) => {
                tracing::warn!(%origin, ?outcome, "web push message not sent: it cannot be made");
                return outcome;
            }
        };
        let answer = tokio::time::timeout(self.timeout, self.exchange(&target, request)).await;
        let outcome = match answer {
            Ok(Ok((status, retry_after))) => {
                outcome_of(status, retry_after.as_ref(), SystemTime::now())
            }
            Ok(Err(error)) => {
                tracing::debug!(%origin, %error, "web push: no answer from the push service");
                SendOutcome::RetryAfter(None)
            }
            Err(_) => {
                tracing::debug!(%origin, timeout = ?self.timeout, "web push: the push service timed out");
                SendOutcome::RetryAfter(None)
            }
        };
        match outcome {
            SendOutcome::Delivered => tracing::trace!(%origin, "web push delivered"),
            SendOutcome::Gone => tracing::debug!(%origin, "web push subscription gone"),
            SendOutcome::RetryAfter(after) => {
                tracing::debug!(%origin, ?after, "web push to be retried");
            }
            SendOutcome::Rejected(status) => {
                tracing::warn!(%origin, status, "web push rejected by the push service");
            }
        }
        outcome
    }

    /// The request for one message, or the outcome when it cannot be made.
    fn request(
        &self,
        subscription: &Subscription,
        payload: &[u8],
        urgency: Urgency,
        topic: &str,
        ttl_secs: u32,
        now: SystemTime,
    ) -> Result<(Target, Request<Full<Bytes>>), SendOutcome> {
        if !topic.is_empty() && !valid_topic(topic) {
            return Err(SendOutcome::Rejected(400));
        }
        let target = Target::parse(&subscription.endpoint).ok_or(SendOutcome::Gone)?;
        let body = web_push::encrypt(subscription, payload).map_err(|error| match error {
            WebPushError::PayloadTooLarge => SendOutcome::Rejected(413),
            WebPushError::BadEndpoint => SendOutcome::Gone,
            // Not expected from a parsed subscription; a bug either way.
            _ => SendOutcome::Rejected(400),
        })?;
        let authorization = self.vapid_header(&subscription.endpoint, now)?;
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(target.path_and_query.as_str())
            .header(header::HOST, target.host_header.as_str())
            .header("TTL", ttl_secs)
            .header("Urgency", urgency.as_str())
            .header(header::CONTENT_ENCODING, "aes128gcm")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::AUTHORIZATION, authorization);
        if !topic.is_empty() {
            builder = builder.header("Topic", topic);
        }
        // Every part was checked above (a subject with control characters is the one way left).
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| SendOutcome::Rejected(400))?;
        Ok((target, request))
    }

    /// The VAPID header for `endpoint`'s push service: the one made for it earlier while more
    /// than [`VAPID_RENEW_BEFORE`] of it is left, else a new one.
    fn vapid_header(&self, endpoint: &str, now: SystemTime) -> Result<String, SendOutcome> {
        let origin = web_push::origin(endpoint).ok_or(SendOutcome::Gone)?;
        let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |t| t.as_secs());
        let mut cache = self
            .vapid_headers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((header, expires_at)) = cache.get(origin)
            && *expires_at > now_s + VAPID_RENEW_BEFORE.as_secs()
        {
            return Ok(header.clone());
        }
        let expires_at = now_s + VAPID_LIFETIME.as_secs();
        let header = self
            .vapid
            .authorization(endpoint, &self.subject, expires_at)
            .map_err(|_| SendOutcome::Gone)?;
        if cache.len() >= MAX_CACHED_VAPID {
            cache.clear();
        }
        cache.insert(origin.to_owned(), (header.clone(), expires_at));
        Ok(header)
    }

    /// Connects, sends, and returns the response's status and `Retry-After`.
    async fn exchange(
        &self,
        target: &Target,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Option<HeaderValue>), BoxError> {
        // The name is resolved here and every address checked: a public name that resolves
        // to a private address (at registration or since) is not connected to.
        let resolved = tokio::net::lookup_host((target.host.as_str(), target.port)).await?;
        let mut allowed = resolved.filter(|a| super::address_allowed(a.ip(), self.allow_loopback));
        let addr = allowed
            .next()
            .ok_or("the push endpoint resolves to no public address")?;
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        if target.https {
            let config = self.tls.clone().ok_or("no TLS configuration")?;
            let name = ServerName::try_from(target.host.clone())?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            round_trip(TokioIo::new(tls), request).await
        } else {
            round_trip(TokioIo::new(tcp), request).await
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request on a fresh HTTP/1.1 connection, driving the connection in this task (so that
/// dropping the future, at the timeout, closes everything).
async fn round_trip<T>(
    io: T,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Option<HeaderValue>), BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let mut response = std::pin::pin!(sender.send_request(request));
    let mut connection = std::pin::pin!(connection);
    let response = tokio::select! {
        biased;
        response = &mut response => response?,
        // The connection ended first: the response was handed over before, or the request
        // fails; either way its future is ready now.
        ended = &mut connection => {
            ended?;
            response.await?
        }
    };
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    Ok((response.status(), retry_after))
}

/// What the push service's answer means.
fn outcome_of(
    status: StatusCode,
    retry_after: Option<&HeaderValue>,
    now: SystemTime,
) -> SendOutcome {
    match status.as_u16() {
        200..=299 => SendOutcome::Delivered,
        404 | 410 => SendOutcome::Gone,
        408 | 429 | 500..=599 => {
            SendOutcome::RetryAfter(retry_after.and_then(|value| parse_retry_after(value, now)))
        }
        other => SendOutcome::Rejected(other),
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): seconds, or an HTTP date (a date already past is 0).
fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether `topic` is a valid `Topic` (RFC 8030 §5.4): 1 to 32 characters of the URL- and
/// filename-safe base64 alphabet.
pub fn valid_topic(topic: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where a message goes: the endpoint split for the connection and the request line.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) https: bool,
    /// Host to connect to and to name in TLS (no brackets around an IPv6 address).
    pub(super) host: String,
    pub(super) port: u16,
    /// The `Host` header: the endpoint's authority.
    host_header: String,
    /// The request target (origin form): path and query, as in the endpoint.
    path_and_query: String,
}

impl Target {
    /// `None` unless `endpoint` is an `https://` URL (`http://` only to loopback, as
    /// [`web_push::origin`]) with a host and no user information.
    pub(super) fn parse(endpoint: &str) -> Option<Self> {
        web_push::origin(endpoint)?;
        let uri: Uri = endpoint.parse().ok()?;
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host();
        if host.is_empty() {
            return None;
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Some(Self {
            https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            host_header: authority.as_str().to_owned(),
            path_and_query,
        })
    }
}

/// The platform's root certificates, read once per process.
fn platform_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(%error, "reading the platform's root certificates");
        }
        let mut roots = RootCertStore::empty();
        let _ = roots.add_parsable_certificates(found.certs);
        roots
    })
}

/// rustls on the `ring` provider (set here, never as a process default), HTTP/1.1 by ALPN;
/// `None` if rustls refuses it (not expected: ring supports the default protocol versions).
fn tls_config(roots: RootCertStore) -> Option<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;

    fn subscription(endpoint: &str) -> Subscription {
        let ua = p256::SecretKey::random(&mut rand_core::OsRng);
        let p256dh = URL_SAFE_NO_PAD.encode(ua.public_key().to_encoded_point(false).as_bytes());
        Subscription::new(endpoint, &p256dh, &URL_SAFE_NO_PAD.encode([3; 16])).unwrap()
    }

    fn sender() -> Sender {
        Sender::new(
            VapidKey::generate(),
            "mailto:ops@example.org".to_owned(),
            Duration::from_secs(1),
        )
    }

    fn header<'a>(request: &'a Request<Full<Bytes>>, name: &str) -> Option<&'a str> {
        request.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn a_request_carries_the_rfc_8030_headers_and_an_encrypted_body() {
        let sender = sender();
        let endpoint = "https://push.example.net:8443/wpush/v2/gAAAA-xyz?x=1";
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (target, request) = sender
            .request(
                &subscription(endpoint),
                b"{\"v\":1}",
                Urgency::High,
                "call-1",
                60,
                now,
            )
            .unwrap();
        assert_eq!(
            target,
            Target {
                https: true,
                host: "push.example.net".to_owned(),
                port: 8443,
                host_header: "push.example.net:8443".to_owned(),
                path_and_query: "/wpush/v2/gAAAA-xyz?x=1".to_owned(),
            }
        );
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/wpush/v2/gAAAA-xyz?x=1");
        assert_eq!(header(&request, "host"), Some("push.example.net:8443"));
        assert_eq!(header(&request, "ttl"), Some("60"));
        assert_eq!(header(&request, "urgency"), Some("high"));
        assert_eq!(header(&request, "topic"), Some("call-1"));
        assert_eq!(header(&request, "content-encoding"), Some("aes128gcm"));
        assert_eq!(
            header(&request, "content-type"),
            Some("application/octet-stream")
        );
        // Salt, record size, key id length, the 65-byte key, then one record (payload,
        // delimiter, tag).
        let length: usize = header(&request, "content-length").unwrap().parse().unwrap();
        assert_eq!(length, 16 + 4 + 1 + 65 + 7 + 1 + 16);
        // The token names the origin and expires 12 hours on.
        let authorization = header(&request, "authorization").unwrap();
        let token = authorization.strip_prefix("vapid t=").unwrap();
        let (token, key) = token.split_once(", k=").unwrap();
        assert_eq!(key, sender.vapid.public());
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net:8443");
        assert_eq!(claims["exp"], 1_700_000_000 + 12 * 3600);
        assert_eq!(claims["sub"], "mailto:ops@example.org");
    }

    #[test]
    fn an_empty_topic_sends_none_and_the_default_port_is_the_schemes() {
        let (target, request) = sender()
            .request(
                &subscription("https://fcm.googleapis.com/fcm/send/abc"),
                b"x",
                Urgency::Normal,
                "",
                0,
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(header(&request, "topic"), None);
        assert_eq!(header(&request, "urgency"), Some("normal"));
        assert_eq!(header(&request, "ttl"), Some("0"));
        assert_eq!(
            (target.port, target.host_header.as_str()),
            (443, "fcm.googleapis.com")
        );
        let target = Target::parse("http://[::1]/push/1").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("::1", 80));
        assert_eq!(target.host_header, "[::1]");
        let target = Target::parse("https://push.example.net").unwrap();
        assert_eq!(target.path_and_query, "/");
        assert_eq!(Target::parse("http://push.example.net/p"), None);
        assert_eq!(Target::parse("https://user@push.example.net/p"), None);
    }

    #[test]
    fn topics_are_1_to_32_base64url_characters() {
        for good in ["a", "conv-7_Ab", &"x".repeat(32)] {
            assert!(valid_topic(good), "{good}");
        }
        for bad in ["", &"x".repeat(33), "a b", "a=", "a+b", "a/b", "é", "a.b"] {
            assert!(!valid_topic(bad), "{bad}");
        }
        assert_eq!(Urgency::VeryLow.as_str(), "very-low");
        assert_eq!(Urgency::Low.as_str(), "low");
        assert_eq!(Urgency::default(), Urgency::Normal);
    }

    #[tokio::test]
    async fn messages_that_cannot_be_made_are_not_sent() {
        let sender = sender();
        // Port 9 (discard) on loopback: nothing is contacted for these.
        let to = subscription("http://127.0.0.1:9/push/1");
        let send = |payload: Vec<u8>, topic: &'static str| {
            let sender = sender.clone();
            let to = to.clone();
            async move { sender.send(&to, &payload, Urgency::Normal, topic, 60).await }
        };
        assert_eq!(
            send(b"x".to_vec(), "no spaces").await,
            SendOutcome::Rejected(400)
        );
        assert_eq!(
            send(b"x".to_vec(), "a-topic-of-thirty-three-character").await,
            SendOutcome::Rejected(400)
        );
        assert_eq!(
            send(vec![0; web_push::MAX_PAYLOAD_LEN + 1], "t").await,
            SendOutcome::Rejected(413)
        );
        let mut unusable = to.clone();
        unusable.endpoint = "http://push.example.net/p".to_owned();
        assert_eq!(
            sender.send(&unusable, b"x", Urgency::Low, "", 60).await,
            SendOutcome::Gone
        );
    }

    #[test]
    fn answers_map_to_outcomes() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |status: u16, retry_after: Option<&str>| {
            let value = retry_after.map(|v| HeaderValue::from_str(v).unwrap());
            outcome_of(StatusCode::from_u16(status).unwrap(), value.as_ref(), now)
        };
        assert_eq!(at(201, None), SendOutcome::Delivered);
        assert_eq!(at(200, None), SendOutcome::Delivered);
        assert_eq!(at(202, None), SendOutcome::Delivered);
        assert_eq!(at(404, None), SendOutcome::Gone);
        assert_eq!(at(410, Some("7")), SendOutcome::Gone);
        assert_eq!(
            at(429, Some("7")),
            SendOutcome::RetryAfter(Some(Duration::from_secs(7)))
        );
        assert_eq!(
            at(503, Some(" 120 ")),
            SendOutcome::RetryAfter(Some(Duration::from_secs(120)))
        );
        assert_eq!(at(500, None), SendOutcome::RetryAfter(None));
        assert_eq!(at(502, Some("soon")), SendOutcome::RetryAfter(None));
        assert_eq!(at(429, Some("-1")), SendOutcome::RetryAfter(None));
        assert_eq!(at(408, None), SendOutcome::RetryAfter(None));
        // An HTTP date: the time until then, or none when it is past.
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            at(503, Some(&later)),
            SendOutcome::RetryAfter(Some(Duration::from_secs(90)))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(
            at(503, Some(&earlier)),
            SendOutcome::RetryAfter(Some(Duration::ZERO))
        );
        for status in [400, 401, 403, 413, 301, 418] {
            assert_eq!(at(status, None), SendOutcome::Rejected(status));
        }
    }

    #[test]
    fn a_vapid_header_is_reused_per_push_service_until_half_its_life_is_left() {
        let sender = sender();
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let a = "https://push.example.net/push/one";
        let first = sender.vapid_header(a, at(1_700_000_000)).unwrap();
        // Another subscription of the same service, hours later: the same header.
        let same = sender
            .vapid_header(
                "https://push.example.net/push/two",
                at(1_700_000_000 + 5 * 3600),
            )
            .unwrap();
        assert_eq!(first, same);
        // Another service: its own (the JWT names the audience).
        let other = sender
            .vapid_header("https://other.example.org/p/1", at(1_700_000_000))
            .unwrap();
        assert_ne!(first, other);
        // With less than half its 12 hours left: a new one, valid 12 hours from then.
        let later = sender
            .vapid_header(a, at(1_700_000_000 + 7 * 3600))
            .unwrap();
        assert_ne!(first, later);
        let token = later.strip_prefix("vapid t=").unwrap();
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["exp"], 1_700_000_000 + 19 * 3600);
    }

    #[test]
    fn the_debug_form_shows_no_secret() {
        let key = VapidKey::generate();
        let secret = hex::encode(*key.secret_bytes());
        let shown = format!(
            "{:?}",
            Sender::new(
                key,
                "mailto:a@example.org".to_owned(),
                Duration::from_secs(1)
            )
        );
        assert!(!shown.contains(&secret));
        assert!(shown.contains("mailto:a@example.org"));
    }
}
