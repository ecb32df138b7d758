//! Conversations: the list, history with receipts, sending, typing, read marks, groups,
//! and files (uploads with progress, downloads decrypted by the SDK).

use std::path::PathBuf;
use std::sync::Arc;

use ferry_client::{Content, ConvId, ConversationInfo, UserId};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{
    Refusal, bad_request, body, failed, finish, no_such_request, parse_id, query_param, refuse,
    running,
};
use crate::ui::app::App;
use crate::ui::http::{Reply, bytes, ok};
use crate::ui::json;

/// Messages per page of history.
const PAGE: usize = 50;
/// The most the page asks for at once.
const MAX_PAGE: usize = 200;
/// The largest file the app uploads or shows (the relay's default limit per file).
const MAX_FILE: u64 = 100 * 1024 * 1024;

/// The media types shown inline: raster images only. Anything else a person sent (HTML,
/// SVG with scripts) is a download, never a page of ours.
pub fn inline_image(mime: &str) -> Option<&'static str> {
    match mime {
        "image/png" => Some("image/png"),
        "image/jpeg" => Some("image/jpeg"),
        "image/gif" => Some("image/gif"),
        "image/webp" => Some("image/webp"),
        _ => None,
    }
}

pub async fn list(app: &App) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let mut convs = handle.conversations().await.map_err(|e| failed(&e))?;
    convs.sort_by_key(|c| std::cmp::Reverse(c.summary.last_activity));
    let names = app.names();
    Ok(ok(Value::Array(
        convs
            .iter()
            .map(|c| json::conversation(c, &names))
            .collect(),
    )))
}

#[derive(Deserialize)]
struct With {
    user: String,
}

pub async fn chat(app: &App, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let form: With = body(request).await?;
    let user: UserId = parse_id(&form.user, "user")?;
    // The 1:1 already there, if any (a second one would split the history).
    let conv = match handle.find_chat(user).await.map_err(|e| failed(&e))? {
        Some(conv) => conv,
        None => handle.start_chat(user).await.map_err(|e| failed(&e))?,
    };
    Ok(ok(json!({ "conv": conv.to_string() })))
}

#[derive(Deserialize)]
struct Group {
    #[serde(default)]
    title: String,
    users: Vec<String>,
}

pub async fn group(app: &App, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let form: Group = body(request).await?;
    let users = users(&form.users)?;
    let title = form.title.trim();
    let conv = handle
        .create_group((!title.is_empty()).then_some(title), &users)
        .await
        .map_err(|e| failed(&e))?;
    Ok(ok(json!({ "conv": conv.to_string() })))
}

fn users(ids: &[String]) -> Result<Vec<UserId>, Refusal> {
    ids.iter().map(|id| parse_id(id, "user")).collect()
}

async fn info(app: &App, conv: ConvId) -> Result<Option<ConversationInfo>, Refusal> {
    let handle = running(app)?;
    let convs = handle.conversations().await.map_err(|e| failed(&e))?;
    Ok(convs.into_iter().find(|info| info.conv == conv))
}

/// `GET /api/convs/CONV/messages?before=SEQ&limit=N`, oldest first, with receipts.
pub async fn messages(
    app: &App,
    conv: &str,
    request: &Request<Incoming>,
) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let conv: ConvId = conv_id(conv)?;
    let before = match query_param(request, "before") {
        Some(text) => text
            .parse()
            .map_err(|_| bad_request("`before` is a message number."))?,
        None => u64::MAX,
    };
    let limit = match query_param(request, "limit") {
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| bad_request("`limit` is a number."))?
            .clamp(1, MAX_PAGE),
        None => PAGE,
    };
    let info = info(app, conv).await?;
    let history = handle.history(conv, before, limit).await;
    let names = app.names();
    Ok(ok(Value::Array(
        history
            .iter()
            .map(|m| json::message(m, &names, info.as_ref()))
            .collect(),
    )))
}

fn conv_id(text: &str) -> Result<ConvId, Refusal> {
    ConvId::from_hex(text).map_err(|_| bad_request("That is not a conversation id."))
}

#[derive(Deserialize)]
struct Text {
    text: String,
}

#[derive(Deserialize)]
struct Seq {
    seq: u64,
}

#[derive(Deserialize)]
struct Typing {
    typing: bool,
}

#[derive(Deserialize)]
struct Title {
    title: String,
}

#[derive(Deserialize)]
struct Users {
    users: Vec<String>,
}

/// `POST /api/convs/CONV/ACTION`.
pub async fn act(
    app: &App,
    conv: &str,
    action: &str,
    request: Request<Incoming>,
) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let conv = conv_id(conv)?;
    let result = match action {
        "send" => {
            let form: Text = body(request).await?;
            if form.text.trim().is_empty() {
                return Err(bad_request("There is nothing to send."));
            }
            let seq = handle
                .send_text(conv, &form.text)
                .await
                .map_err(|e| failed(&e))?;
            return Ok(ok(json!({ "seq": seq })));
        }
        "read" => {
            let form: Seq = body(request).await?;
            handle.mark_read(conv, form.seq).await
        }
        "typing" => {
            let form: Typing = body(request).await?;
            handle.typing(conv, form.typing).await
        }
        "rename" => {
            let form: Title = body(request).await?;
            handle.rename(conv, form.title.trim()).await
        }
        "add" => {
            let form: Users = body(request).await?;
            handle.add_members(conv, &users(&form.users)?).await
        }
        "remove" => {
            let form: Users = body(request).await?;
            handle.remove_members(conv, &users(&form.users)?).await
        }
        "leave" => handle.leave(conv).await,
        _ => return Err(no_such_request()),
    };
    finish(result)
}

/// A file name from the page, made safe to create in a folder of ours.
fn upload_name(name: Option<String>) -> Result<String, Refusal> {
    let name = name.unwrap_or_default();
    let name = name.trim();
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(bad_request(
            "The file needs a name without slashes, not starting with a dot.",
        ));
    }
    Ok(name.to_owned())
}

/// `POST /api/convs/CONV/files?name=NAME`: the body is written to a private folder of the
/// state folder, then sealed and sent by the SDK in the background; `upload` events tell
/// the page how far it got.
pub async fn upload(
    app: &Arc<App>,
    conv: &str,
    request: Request<Incoming>,
) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let conv = conv_id(conv)?;
    let name = upload_name(query_param(&request, "name"))?;
    let id = app.next_upload();
    let folder = app.dir.join("ui-uploads").join(id.to_string());
    let path = folder.join(&name);
    let received = receive(request, &folder, &path).await;
    if let Err(refusal) = received {
        let _ = tokio::fs::remove_dir_all(&folder).await;
        return Err(refusal);
    }
    let app = Arc::clone(app);
    tokio::spawn(async move {
        let progress_app = Arc::clone(&app);
        let conv_text = conv.to_string();
        let progress = move |p: ferry_client::Progress| {
            progress_app.publish(&json!({
                "type": "upload", "id": id, "conv": conv_text,
                "sent": p.done, "total": p.total, "done": false,
            }));
        };
        let result = handle.send_file(conv, &path, progress).await;
        let _ = tokio::fs::remove_dir_all(&folder).await;
        let end = match result {
            Ok(seq) => json!({
                "type": "upload", "id": id, "conv": conv.to_string(), "done": true, "seq": seq,
            }),
            Err(error) => json!({
                "type": "upload", "id": id, "conv": conv.to_string(), "done": true,
                "error": json::words(&error),
            }),
        };
        app.publish(&end);
    });
    Ok(ok(json!({ "upload": id })))
}

/// Streams the request body to `path`, at most [`MAX_FILE`] bytes.
async fn receive(
    request: Request<Incoming>,
    folder: &std::path::Path,
    path: &PathBuf,
) -> Result<(), Refusal> {
    let io = |e: std::io::Error| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "io",
            &format!("Could not keep the file for sending: {e}."),
        )
    };
    tokio::fs::create_dir_all(folder).await.map_err(io)?;
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut body = request.into_body();
    let mut written: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| bad_request("The upload was cut off."))?;
        if let Some(data) = frame.data_ref() {
            written += data.len() as u64;
            if written > MAX_FILE {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "Files can be at most 100 MiB.",
                ));
            }
            file.write_all(data).await.map_err(io)?;
        }
    }
    file.flush().await.map_err(io)?;
    Ok(())
}

/// `GET /api/convs/CONV/files/SEQ`: the file of that message, decrypted. Raster images
/// inline; anything else as a download, sandboxed.
pub async fn download(
    app: &App,
    conv: &str,
    seq: &str,
    request: &Request<Incoming>,
) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let conv = conv_id(conv)?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| bad_request("That is not a message number."))?;
    let message = handle
        .history(conv, seq.saturating_add(1), 1)
        .await
        .into_iter()
        .find(|m| m.conv_seq == seq);
    let Some(Content::File(file)) = message.map(|m| m.content) else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "no_such_file",
            "This message holds no file.",
        ));
    };
    let content = handle
        .fetch_file(&file, MAX_FILE)
        .await
        .map_err(|e| failed(&e))?;
    let forced = query_param(request, "download").is_some();
    let inline = inline_image(&file.mime).filter(|_| !forced);
    let mut reply = bytes(
        HeaderValue::from_static(inline.unwrap_or("application/octet-stream")),
        content,
    );
    let headers = reply.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    if inline.is_none() {
        let disposition = format!(
            "attachment; filename*=UTF-8''{}",
            super::percent_encode(&file.safe_name())
        );
        if let Ok(value) = HeaderValue::from_str(&disposition) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    Ok(reply)
}
