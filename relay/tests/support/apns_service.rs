//! An APNs service for tests, on 127.0.0.1, speaking HTTP/2 without TLS (prior knowledge),
//! that checks each push as Apple documents it, without the relay's code:
//!
//! - `POST /3/device/<hex token>`;
//! - `authorization: bearer <JWT>`: an ES256 JWT with `kid` the key id and `iss` the team id,
//!   `iat` within the last hour, whose signature verifies with the team's public key; else
//!   403 `InvalidProviderToken`;
//! - `apns-topic` the app's bundle id (else 400 `BadTopic`), `apns-push-type`,
//!   `apns-priority`, `apns-expiration` and `apns-collapse-id` present, and a JSON body with
//!   an `aps` dictionary (else 400).
//!
//! A push passing every check is recorded as [`Push`] and answered as set for its token
//! ([`ApnsService::set_answer`]: 200 by default). Connections are counted: APNs wants one
//! kept open, not one per push.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The key id, team id and topic the service expects.
pub const KEY_ID: &str = "KEY1234567";
pub const TEAM_ID: &str = "TEAM123456";
pub const TOPIC: &str = "org.example.ferry";

/// A push the service took.
#[derive(Clone, Debug)]
pub struct Push {
    pub token: String,
    pub push_type: String,
    pub priority: String,
    pub collapse_id: String,
    pub body: serde_json::Value,
}

struct State {
    key: VerifyingKey,
    pushes: Mutex<Vec<Push>>,
    failures: Mutex<Vec<String>>,
    answers: Mutex<HashMap<String, (u16, &'static str)>>,
    connections: AtomicUsize,
}

/// See the module docs.
pub struct ApnsService {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApnsService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApnsService {
    /// A service that trusts provider tokens signed by `key`.
    pub async fn start(key: VerifyingKey) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            key,
            pushes: Mutex::default(),
            failures: Mutex::default(),
            answers: Mutex::default(),
            connections: AtomicUsize::new(0),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&state)));
        Self { addr, state, task }
    }

    /// `--apns-url` for this service.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers pushes to `token` (hex) with `status` and APNs's `reason`.
    pub fn set_answer(&self, token: &str, status: u16, reason: &'static str) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(token.to_owned(), (status, reason));
    }

    /// The pushes taken for `token` so far.
    pub fn pushes(&self, token: &str) -> Vec<Push> {
        let pushes = self.state.pushes.lock().unwrap();
        pushes
            .iter()
            .filter(|p| p.token == token)
            .cloned()
            .collect()
    }

    /// Requests refused by a check, and why.
    pub fn failures(&self) -> Vec<String> {
        self.state.failures.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until `count` pushes for `token` were taken (or panics after `timeout`).
    pub async fn wait_for(&self, token: &str, count: usize, timeout: Duration) -> Vec<Push> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pushes = self.pushes(token);
            if pushes.len() >= count {
                return pushes;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {count} pushes for {token}; failures: {:?}",
                pushes.len(),
                self.failures()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
            });
            let http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, reason) = match check(state, request).await {
        Ok(push) => {
            let answer = state.answers.lock().unwrap().get(&push.token).copied();
            state.pushes.lock().unwrap().push(push);
            answer.unwrap_or((200, ""))
        }
        Err((status, reason)) => {
            state.failures.lock().unwrap().push(reason.to_owned());
            (status, reason)
        }
    };
    let body = if status == 200 {
        Bytes::new()
    } else {
        Bytes::from(serde_json::json!({ "reason": reason }).to_string())
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

async fn check(state: &State, request: Request<Incoming>) -> Result<Push, (u16, &'static str)> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let token = request
        .uri()
        .path()
        .strip_prefix("/3/device/")
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or((404, "BadPath"))?
        .to_owned();
    if request.method() != hyper::Method::POST {
        return Err((405, "MethodNotAllowed"));
    }
    let jwt = header("authorization")
        .and_then(|v| v.strip_prefix("bearer ").map(str::to_owned))
        .ok_or((403, "MissingProviderToken"))?;
    check_token(&state.key, &jwt).map_err(|()| (403, "InvalidProviderToken"))?;
    if header("apns-topic").as_deref() != Some(TOPIC) {
        return Err((400, "BadTopic"));
    }
    let (Some(push_type), Some(priority), Some(_), Some(collapse_id)) = (
        header("apns-push-type"),
        header("apns-priority"),
        header("apns-expiration"),
        header("apns-collapse-id"),
    ) else {
        return Err((400, "MissingHeader"));
    };
    let body = Limited::new(request.into_body(), 4096)
        .collect()
        .await
        .map_err(|_| (413, "PayloadTooLarge"))?
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).map_err(|_| (400, "BadJson"))?;
    if !body.get("aps").is_some_and(serde_json::Value::is_object) {
        return Err((400, "PayloadEmpty"));
    }
    Ok(Push {
        token,
        push_type,
        priority,
        collapse_id,
        body,
    })
}

/// An ES256 provider token from [`KEY_ID`] of [`TEAM_ID`], made in the last hour.
fn check_token(key: &VerifyingKey, jwt: &str) -> Result<(), ()> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(());
    };
    let json = |part: &str| -> Result<serde_json::Value, ()> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(drop)?;
        serde_json::from_slice(&bytes).map_err(drop)
    };
    let (header, claims) = (json(header)?, json(claims)?);
    if header["alg"] != "ES256" || header["kid"] != KEY_ID || claims["iss"] != TEAM_ID {
        return Err(());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims["iat"].as_u64().ok_or(())?;
    if iat > now + 60 || iat + 3600 < now {
        return Err(());
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(drop)?;
    let signature = Signature::from_slice(&signature).map_err(drop)?;
    let input = format!("{}.{}", parts[0], parts[1]);
    key.verify(input.as_bytes(), &signature).map_err(drop)
}
