//! The shapes of answers: JSON, errors in words, pages, files and the event stream.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

/// A response body: whole, or the event stream.
pub type Body = BoxBody<Bytes, std::io::Error>;
/// A response.
pub type Reply = Response<Body>;

fn whole(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Reply {
    let mut reply = Response::new(body);
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

/// 200 with a JSON body.
pub fn ok(value: Value) -> Reply {
    json_reply(StatusCode::OK, &value)
}

/// `{}`: done, nothing to say.
pub fn done() -> Reply {
    ok(json!({}))
}

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    with_type(
        status,
        "application/json",
        whole(serde_json::to_vec(value).unwrap_or_default()),
    )
}

/// An error the page shows as it is: `{"error": words, "code": code}`.
pub fn problem(status: StatusCode, code: &str, words: &str) -> Reply {
    json_reply(status, &json!({ "error": words, "code": code }))
}

/// A small HTML page of our own.
pub fn html(status: StatusCode, page: &'static str) -> Reply {
    with_type(status, "text/html; charset=utf-8", whole(page))
}

/// An embedded asset.
pub fn asset(content_type: &'static str, bytes: &'static [u8]) -> Reply {
    let mut reply = with_type(StatusCode::OK, content_type, whole(bytes));
    reply
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    reply
}

/// A body of any type, from bytes in memory.
pub fn bytes(content_type: HeaderValue, bytes: Vec<u8>) -> Reply {
    let mut reply = Response::new(whole(bytes));
    reply
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    reply
}

/// `text/event-stream` from a stream of already formatted messages.
pub fn event_stream(
    messages: impl futures_util::Stream<Item = Bytes> + Send + Sync + 'static,
) -> Reply {
    use futures_util::StreamExt;
    let frames = messages.map(|message| Ok::<_, std::io::Error>(Frame::data(message)));
    with_type(
        StatusCode::OK,
        "text/event-stream",
        BodyExt::boxed(StreamBody::new(frames)),
    )
}

/// One server-sent event carrying `value`.
pub fn sse_message(value: &Value) -> Bytes {
    let mut message = b"data: ".to_vec();
    // serde_json never writes a raw newline inside a value, so one `data:` line holds it.
    message.extend(serde_json::to_vec(value).unwrap_or_default());
    message.extend(b"\n\n");
    Bytes::from(message)
}
