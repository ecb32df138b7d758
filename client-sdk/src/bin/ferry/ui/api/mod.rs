//! The local HTTP API (docs/web-app.md): routes to the SDK, JSON in and out.

mod account;
mod calls;
mod convs;
mod people;

use std::sync::Arc;

use bytes::Bytes;
use ferry_client::{ClientError, ClientHandle, PairingError};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;

use super::app::{App, Mode};
use super::http::{Reply, problem};
use super::json::{self, sentence};

pub use convs::inline_image;

/// The largest JSON body the API reads (an SDP offer with its candidates is a few KiB).
const MAX_JSON: usize = 256 * 1024;

/// An answer that is not a success, already in words for a person (boxed: a response is
/// large, and most results are not refusals).
pub type Refusal = Box<Reply>;

fn refuse(status: StatusCode, code: &str, words: &str) -> Refusal {
    Box::new(problem(status, code, words))
}

/// Answers an API request.
pub async fn route(app: &Arc<App>, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path
        .trim_start_matches("/api/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = request.method().clone();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["state"]) => Ok(account::state(app)),
        (&Method::GET, ["events"]) => Ok(account::events(app)),
        (&Method::POST, ["setup", "create"]) => account::create(app, request).await,
        (&Method::POST, ["setup", "join"]) => account::join(app, request).await,
        (&Method::GET, ["log"]) => Ok(account::log(app)),
        (&Method::POST, ["log"]) => account::append(app, request).await,
        (&Method::GET, ["me"]) => account::me(app),
        (&Method::POST, ["handle"]) => account::set_handle(app, request).await,
        (&Method::POST, ["profile"]) => account::set_profile(app, request).await,
        (&Method::POST, ["presence"]) => account::set_presence(app, request).await,
        (&Method::GET, ["devices"]) => account::devices(app).await,
        (&Method::POST, ["devices", "rename"]) => account::rename_device(app, request).await,
        (&Method::POST, ["devices", "revoke"]) => account::revoke(app, request).await,
        (&Method::POST, ["pair", "invite"]) => account::invite(app).await,
        (&Method::GET, ["pair", "qr.svg"]) => account::qr(app),
        (&Method::POST, ["pair", "admit"]) => account::admit(app).await,
        (&Method::POST, ["pair", "refuse"]) => account::refuse_device(app).await,
        (&Method::GET, ["contacts"]) => people::list(app).await,
        (&Method::POST, ["contacts", action]) => people::act(app, action, request).await,
        (&Method::GET, ["convs"]) => convs::list(app).await,
        (&Method::POST, ["convs", "chat"]) => convs::chat(app, request).await,
        (&Method::POST, ["convs", "group"]) => convs::group(app, request).await,
        (&Method::GET, ["convs", conv, "messages"]) => convs::messages(app, conv, &request).await,
        (&Method::POST, ["convs", conv, "files"]) => convs::upload(app, conv, request).await,
        (&Method::GET, ["convs", conv, "files", seq]) => {
            convs::download(app, conv, seq, &request).await
        }
        (&Method::POST, ["convs", conv, action]) => convs::act(app, conv, action, request).await,
        (&Method::GET, ["turn"]) => calls::turn(app).await,
        (&Method::GET, ["calls"]) => calls::list(app),
        (&Method::POST, ["calls"]) => calls::place(app, request).await,
        (&Method::POST, ["calls", call, action]) => calls::act(app, call, action, request).await,
        _ => Err(no_such_request()),
    };
    result.unwrap_or_else(|refusal| *refusal)
}

fn no_such_request() -> Refusal {
    refuse(
        StatusCode::NOT_FOUND,
        "not_found",
        "The Ferry app has no such request.",
    )
}

/// `{}` once `result` is done, or the SDK's error in its words.
fn finish(result: Result<(), ClientError>) -> Result<Reply, Refusal> {
    result.map_err(|e| failed(&e))?;
    Ok(super::http::done())
}

/// The running client, or why there is none.
fn running(app: &App) -> Result<ClientHandle, Refusal> {
    match app.mode() {
        Mode::Running(handle) => Ok(handle),
        Mode::Setup | Mode::Joining => Err(refuse(
            StatusCode::CONFLICT,
            "not_set_up",
            "This device is not set up yet: create a user or join one first.",
        )),
    }
}

/// The JSON body of `request`, as `T`.
async fn body<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T, Refusal> {
    let bytes = read_body(request, MAX_JSON).await?;
    serde_json::from_slice(&bytes).map_err(|e| bad_request(&format!("Unreadable request: {e}.")))
}

async fn read_body(request: Request<Incoming>, max: usize) -> Result<Bytes, Refusal> {
    Limited::new(request.into_body(), max)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|_| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "The request is too large.",
            )
        })
}

fn bad_request(words: &str) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, "bad_request", words)
}

/// An SDK error, in words for a person (see [`json::words`]).
fn failed(error: &ClientError) -> Refusal {
    let (status, code) = match error {
        ClientError::RelayUnreachable(_) | ClientError::Timeout { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "unreachable")
        }
        ClientError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        ClientError::People(_) | ClientError::Relay { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "refused")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
    };
    refuse(status, code, &json::words(error))
}

fn pairing_failed(error: &PairingError) -> Refusal {
    refuse(
        StatusCode::UNPROCESSABLE_ENTITY,
        "pairing",
        &sentence(&error.to_string()),
    )
}

/// A hex id from the path or a body.
fn parse_id<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, Refusal> {
    text.parse()
        .map_err(|_| bad_request(&format!("That is not a {what} id.")))
}

/// The `token` of the login address `ferry ui` printed.
pub fn query_token(request: &Request<Incoming>) -> Option<String> {
    query_param(request, "token")
}

/// One query parameter, percent-decoded.
fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

/// `%XX` and `+` decoded; invalid escapes kept as they are; invalid UTF-8 replaced.
pub fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// What [`percent_encode`] leaves as it is: RFC 3986's unreserved characters (§2.3).
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Everything but unreserved characters escaped (RFC 3986 §2.3).
pub fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_coding_round_trips_and_survives_junk() {
        let text = "ws://127.0.0.1:7070/ws?a=b c&é";
        assert_eq!(percent_decode(&percent_encode(text)), text);
        assert_eq!(percent_decode("a+b%20c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            sentence("the relay is unreachable"),
            "The relay is unreachable."
        );
        assert_eq!(sentence("Done!"), "Done!");
        assert_eq!(sentence(""), "Something went wrong.");
    }
}
