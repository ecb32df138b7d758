//! A Web Push service for tests (RFC 8030), on 127.0.0.1: it hands out subscriptions (each
//! with its own P-256 key pair and auth secret, as a browser makes them) and takes messages
//! for them the way a real push service and the browser behind it would, checking everything
//! itself, without the relay's code:
//!
//! - the VAPID header (RFC 8292): `vapid t=<JWT>, k=<key>`, an ES256 JWT whose signature
//!   verifies with `k`, whose `aud` is this service's origin, whose `exp` is in the future and
//!   at most 24 hours ahead, with a `sub`; else 401;
//! - the RFC 8030 headers: `Host`, `TTL` (required), `Urgency` and `Topic` when present,
//!   `Content-Encoding: aes128gcm`; else 400;
//! - the body (RFC 8291 §3.4, the receiving side written here from the RFC): one RFC 8188
//!   record whose key id is the sender's P-256 key, opened with the subscription's private key
//!   and auth secret; else 400.
//!
//! A message passing every check is recorded as [`Received`] (with its plaintext) and then
//! answered as set for its subscription ([`Answer`]); one failing a check is answered
//! 400/401/404 and recorded as a [`Failure`] only. [`PushService::start_tls`] serves HTTPS
//! with a certificate for 127.0.0.1 from a CA made here.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::Verifier as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::{PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Longest body taken (RFC 8030 §7.2: push services take at least 4096 bytes of payload).
const MAX_BODY: usize = 4096 + 86;

/// How the service answers a message that passed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 201 Created (the default).
    Created,
    /// This status, e.g. 404, 410, 429, 500.
    Status(u16),
    /// This status with `Retry-After: <after_secs>`.
    Retry { status: u16, after_secs: u32 },
    /// No answer ever (the connection stays open until the sender gives up).
    Hang,
}

/// A message that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The subscription's id (the endpoint's last path segment).
    pub subscription: String,
    pub ttl: u32,
    /// The `Urgency` header, if sent.
    pub urgency: Option<String>,
    /// The `Topic` header, if sent.
    pub topic: Option<String>,
    /// The decrypted payload.
    pub payload: Vec<u8>,
    /// The VAPID key (`k=`) the message was signed with.
    pub vapid_public_key: String,
}

/// A message refused by a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The subscription's id, when the path named a known one.
    pub subscription: Option<String>,
    pub status: u16,
    pub reason: String,
}

struct Subscription {
    key: SecretKey,
    auth: [u8; 16],
    answer: Answer,
}

#[derive(Default)]
struct Inner {
    subscriptions: HashMap<String, Subscription>,
    received: Vec<Received>,
    failures: Vec<Failure>,
}

struct State {
    /// `http://127.0.0.1:PORT` or `https://…`: the `aud` every token must name.
    origin: String,
    /// `127.0.0.1:PORT`: the `Host` every request must name.
    authority: String,
    inner: Mutex<Inner>,
    /// Bumped on every request handled (for [`PushService::wait_for`]).
    handled: watch::Sender<u64>,
}

/// The running service; stops (with its connections) when dropped.
pub struct PushService {
    state: Arc<State>,
    ca: Option<CertificateDer<'static>>,
    task: JoinHandle<()>,
}

impl Drop for PushService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for PushService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushService")
            .field("origin", &self.state.origin)
            .finish_non_exhaustive()
    }
}

impl PushService {
    /// A plain-HTTP service on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// An HTTPS service on a free port of 127.0.0.1, its certificate (for 127.0.0.1 and
    /// localhost) signed by a CA made here: see [`PushService::ca_certificate`].
    pub async fn start_tls() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Ferry test push CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut service =
            Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
        service.ca = Some(ca.der().clone());
        service
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(State {
            origin: format!("{scheme}://{addr}"),
            authority: addr.to_string(),
            inner: Mutex::new(Inner::default()),
            handled: watch::channel(0).0,
        });
        let task = tokio::spawn(accept_loop(listener, tls, Arc::clone(&state)));
        Self {
            state,
            ca: None,
            task,
        }
    }

    /// The CA that signed an HTTPS service's certificate (`None` for plain HTTP).
    pub fn ca_certificate(&self) -> Option<CertificateDer<'static>> {
        self.ca.clone()
    }

    /// `http://127.0.0.1:PORT` (or `https://`).
    pub fn origin(&self) -> &str {
        &self.state.origin
    }

    /// A new subscription, as `PushSubscription.toJSON()` gives it: the endpoint and the
    /// user agent's public key and auth secret (base64url without padding).
    pub fn subscribe(&self) -> (String, String, String) {
        let key = SecretKey::random(&mut OsRng);
        let mut auth = [0; 16];
        OsRng.fill_bytes(&mut auth);
        let mut id = [0; 16];
        OsRng.fill_bytes(&mut id);
        let id = URL_SAFE_NO_PAD.encode(id);
        let endpoint = format!("{}/push/{id}", self.state.origin);
        let p256dh = URL_SAFE_NO_PAD.encode(key.public_key().to_encoded_point(false).as_bytes());
        let auth_b64 = URL_SAFE_NO_PAD.encode(auth);
        self.state.inner.lock().unwrap().subscriptions.insert(
            id,
            Subscription {
                key,
                auth,
                answer: Answer::Created,
            },
        );
        (endpoint, p256dh, auth_b64)
    }

    /// How to answer the messages to `id` (a subscription's id or its endpoint) from now on.
    pub fn set_answer(&self, id: &str, answer: Answer) {
        let id = id_of(id);
        let mut inner = self.state.inner.lock().unwrap();
        inner
            .subscriptions
            .get_mut(id)
            .unwrap_or_else(|| panic!("no subscription {id}"))
            .answer = answer;
    }

    /// The messages to `id` (a subscription's id or its endpoint) that passed the checks.
    pub fn received(&self, id: &str) -> Vec<Received> {
        let id = id_of(id);
        let inner = self.state.inner.lock().unwrap();
        inner
            .received
            .iter()
            .filter(|r| r.subscription == id)
            .cloned()
            .collect()
    }

    /// Every request refused by a check, in order.
    pub fn failures(&self) -> Vec<Failure> {
        self.state.inner.lock().unwrap().failures.clone()
    }

    /// Waits until `id` has received `count` messages; panics after `timeout`.
    pub async fn wait_for(&self, id: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let mut handled = self.state.handled.subscribe();
        let wait = async {
            loop {
                let received = self.received(id);
                if received.len() >= count {
                    return received;
                }
                handled.changed().await.unwrap();
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(received) => received,
            Err(_) => panic!(
                "{} of {count} messages to {} after {timeout:?}; failures: {:?}",
                self.received(id).len(),
                id_of(id),
                self.failures()
            ),
        }
    }
}

/// The subscription id in `id_or_endpoint`.
fn id_of(id_or_endpoint: &str) -> &str {
    id_or_endpoint.rsplit('/').next().unwrap_or(id_or_endpoint)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
) {
    // Owned here: aborting this task (dropping the service) closes every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
}

/// One request: the checks, then the record and the answer.
async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let checked = check(state, request).await;
    let answer = {
        let mut inner = state.inner.lock().unwrap();
        match checked {
            Ok(received) => {
                let answer = inner.subscriptions[&received.subscription].answer;
                inner.received.push(received);
                Ok(answer)
            }
            Err(failure) => {
                let status = failure.status;
                inner.failures.push(failure);
                Err(status)
            }
        }
    };
    state.handled.send_modify(|n| *n += 1);
    let response = |status: u16| {
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    match answer {
        Err(status) => response(status),
        Ok(Answer::Created) => response(201),
        Ok(Answer::Status(status)) => response(status),
        Ok(Answer::Retry { status, after_secs }) => {
            let mut answer = response(status);
            answer
                .headers_mut()
                .insert("retry-after", after_secs.to_string().parse().unwrap());
            answer
        }
        Ok(Answer::Hang) => std::future::pending().await,
    }
}

/// The checks of one request, in a push service's order: the subscription, the sender's
/// authorization, the headers, the body.
async fn check(state: &State, request: Request<Incoming>) -> Result<Received, Failure> {
    let fail = |subscription: Option<&str>, status: u16, reason: String| Failure {
        subscription: subscription.map(str::to_owned),
        status,
        reason,
    };
    let path = request.uri().path().to_owned();
    let Some(id) = path.strip_prefix("/push/") else {
        return Err(fail(None, 404, format!("no such path {path}")));
    };
    let (ua_key, auth) = {
        let inner = state.inner.lock().unwrap();
        match inner.subscriptions.get(id) {
            Some(s) => (s.key.clone(), s.auth),
            None => return Err(fail(None, 404, "no such subscription".to_owned())),
        }
    };
    let subscription = id.to_owned();
    let id = Some(id);
    if request.method() != hyper::Method::POST {
        return Err(fail(id, 405, format!("method {}", request.method())));
    }
    let header = |name: &str| -> Result<Option<String>, Failure> {
        match request.headers().get(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(|v| Some(v.to_owned()))
                .map_err(|_| fail(id, 400, format!("{name} is not text"))),
        }
    };

    let authorization =
        header("authorization")?.ok_or_else(|| fail(id, 401, "no Authorization".to_owned()))?;
    let vapid_public_key =
        check_vapid(&authorization, &state.origin).map_err(|why| fail(id, 401, why))?;

    if header("host")?.as_deref() != Some(state.authority.as_str()) {
        return Err(fail(id, 400, format!("Host is {:?}", header("host")?)));
    }
    let ttl = header("ttl")?
        .ok_or_else(|| fail(id, 400, "no TTL".to_owned()))?
        .parse::<u32>()
        .map_err(|_| fail(id, 400, "TTL is not a number of seconds".to_owned()))?;
    let urgency = header("urgency")?;
    if let Some(urgency) = &urgency
        && !["very-low", "low", "normal", "high"].contains(&urgency.as_str())
    {
        return Err(fail(id, 400, format!("Urgency {urgency}")));
    }
    let topic = header("topic")?;
    if let Some(topic) = &topic
        && !((1..=32).contains(&topic.len())
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(fail(id, 400, format!("Topic {topic}")));
    }
    if header("content-encoding")?.as_deref() != Some("aes128gcm") {
        return Err(fail(
            id,
            400,
            "Content-Encoding is not aes128gcm".to_owned(),
        ));
    }

    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes().to_vec(),
        Err(error) => return Err(fail(id, 413, format!("body: {error}"))),
    };
    let payload = open(&ua_key, &auth, body).map_err(|why| fail(id, 400, why))?;
    Ok(Received {
        subscription,
        ttl,
        urgency,
        topic,
        payload,
        vapid_public_key,
    })
}

fn b64(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("not base64url: {text:.20}"))
}

/// RFC 8292 §3: checks `vapid t=<JWT>, k=<key>` and returns `k`.
fn check_vapid(authorization: &str, origin: &str) -> Result<String, String> {
    let (scheme, params) = authorization
        .split_once(' ')
        .ok_or("no scheme parameters")?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(format!("scheme {scheme}"));
    }
    let mut token = None;
    let mut key = None;
    for param in params.split(',') {
        let (name, value) = param.split_once('=').ok_or("a parameter without =")?;
        let value = value.trim().trim_matches('"').to_owned();
        match name.trim().to_ascii_lowercase().as_str() {
            "t" => token = Some(value),
            "k" => key = Some(value),
            other => return Err(format!("unknown parameter {other}")),
        }
    }
    let (token, key) = (token.ok_or("no t=")?, key.ok_or("no k=")?);
    let key_bytes = b64(&key)?;
    if key_bytes.len() != 65 || key_bytes[0] != 4 {
        return Err("k is not an uncompressed P-256 point".to_owned());
    }
    let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key_bytes)
        .map_err(|_| "k is not a P-256 point")?;

    let parts: Vec<&str> = token.split('.').collect();
    let [jwt_header, claims, signature] = parts[..] else {
        return Err("the JWT has not three parts".to_owned());
    };
    let jwt_header: serde_json::Value =
        serde_json::from_slice(&b64(jwt_header)?).map_err(|_| "the JWT header is not JSON")?;
    if jwt_header["alg"] != "ES256" {
        return Err(format!("alg {}", jwt_header["alg"]));
    }
    // ES256 (RFC 7518 §3.4): r || s, 32 bytes each, over "header.claims".
    let signature = p256::ecdsa::Signature::from_slice(&b64(signature)?)
        .map_err(|_| "the signature is not 64 bytes")?;
    let signing_input = &token[..token.rfind('.').unwrap_or(0)];
    verifying
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| "the signature does not verify with k")?;

    let claims: serde_json::Value =
        serde_json::from_slice(&b64(claims)?).map_err(|_| "the claims are not JSON")?;
    if claims["aud"] != origin {
        return Err(format!("aud {} is not {origin}", claims["aud"]));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"].as_u64().ok_or("no numeric exp")?;
    if exp <= now {
        return Err(format!("expired {} s ago", now - exp));
    }
    if exp > now + 24 * 3600 {
        return Err(format!("exp {} s ahead, over 24 h", exp - now));
    }
    match claims["sub"].as_str() {
        Some(sub) if !sub.is_empty() => {}
        _ => return Err("no sub".to_owned()),
    }
    Ok(key)
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// RFC 8291 §3.4 and §4 as a user agent does it: the header of one RFC 8188 record, the
/// sender's key from its key id, the IKM from ECDH and the auth secret, then the record.
fn open(ua_key: &SecretKey, auth: &[u8; 16], body: Vec<u8>) -> Result<Vec<u8>, String> {
    // salt (16) | rs (4) | idlen (1) | keyid (idlen) | one record
    if body.len() < 21 {
        return Err("the body is shorter than an RFC 8188 header".to_owned());
    }
    let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
    let idlen = usize::from(body[20]);
    if idlen != 65 {
        return Err(format!(
            "the key id is {idlen} bytes, not a 65-byte P-256 key"
        ));
    }
    if body.len() < 21 + 65 + 16 + 1 {
        return Err("no record after the header".to_owned());
    }
    let record_len = body.len() - 21 - 65;
    if rs < 18 {
        return Err(format!("record size {rs} under 18"));
    }
    if record_len > rs {
        return Err(format!(
            "more than one record ({record_len} bytes, rs {rs})"
        ));
    }
    let as_public = &body[21..21 + 65];
    if as_public[0] != 4 {
        return Err("the sender's key is not an uncompressed point".to_owned());
    }
    let sender =
        PublicKey::from_sec1_bytes(as_public).map_err(|_| "the key id is not a P-256 key")?;
    let shared = p256::ecdh::diffie_hellman(ua_key.to_nonzero_scalar(), sender.as_affine());
    // PRK_key = HMAC-SHA-256(auth_secret, ecdh_secret)
    let prk_key = hmac_sha256(auth, &[shared.raw_secret_bytes()]);
    // IKM = HMAC-SHA-256(PRK_key, "WebPush: info" || 0x00 || ua_public || as_public || 0x01)
    let ua_public = ua_key.public_key().to_encoded_point(false);
    let ikm = hmac_sha256(
        &prk_key,
        &[b"WebPush: info\0", ua_public.as_bytes(), as_public, &[1]],
    );
    // RFC 8188 itself (CEK and nonce from the salt and IKM, AES-128-GCM, the padding
    // delimiter 2 of a last record) by the ece-native crate.
    ece_native::decrypt(ikm, body).map_err(|e| format!("the record does not open: {e:?}"))
}
