//! Calls: the page runs WebRTC; the SDK carries its signaling, sealed, and fetches TURN
//! credentials from the relay.

use ferry_client::CallId;
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Refusal, bad_request, body, failed, finish, no_such_request, running};
use crate::ui::app::App;
use crate::ui::http::{Reply, ok};
use crate::ui::json;

pub async fn turn(app: &App) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let credentials = handle.turn_credentials().await.map_err(|e| failed(&e))?;
    Ok(ok(json!({
        "urls": credentials.urls,
        "username": credentials.username,
        "credential": credentials.password,
        "expires_at": credentials.expires_at,
    })))
}

pub fn list(app: &App) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    Ok(ok(Value::Array(
        handle
            .calls()
            .iter()
            .map(|call| {
                json!({
                    "call": call.call.to_string(),
                    "conv": call.conv.to_string(),
                    "peer": call.peer.to_string(),
                    "outgoing": call.outgoing,
                    "video": call.video,
                    "state": json::call_state(&call.state),
                    "offer": call.offer,
                })
            })
            .collect(),
    )))
}

#[derive(Deserialize)]
struct Place {
    conv: String,
    #[serde(default)]
    video: bool,
    offer: String,
}

pub async fn place(app: &App, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let form: Place = body(request).await?;
    let conv = ferry_client::ConvId::from_hex(&form.conv)
        .map_err(|_| bad_request("That is not a conversation id."))?;
    let call = handle
        .place_call(conv, form.video, form.offer)
        .await
        .map_err(|e| failed(&e))?;
    Ok(ok(json!({ "call": call.to_string() })))
}

#[derive(Deserialize)]
struct Answer {
    answer: String,
}

#[derive(Deserialize)]
struct Candidate {
    candidate: String,
}

/// `POST /api/calls/CALL/ACTION`.
pub async fn act(
    app: &App,
    call: &str,
    action: &str,
    request: Request<Incoming>,
) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let mut id = [0; 16];
    hex::decode_to_slice(call, &mut id).map_err(|_| bad_request("That is not a call id."))?;
    let call = CallId(id);
    let result = match action {
        "accept" => {
            let form: Answer = body(request).await?;
            handle.accept_call(call, form.answer).await
        }
        "decline" => handle.decline_call(call).await,
        "hangup" => handle.hang_up(call).await,
        "candidate" => {
            let form: Candidate = body(request).await?;
            handle.send_ice_candidate(call, form.candidate).await
        }
        _ => return Err(no_such_request()),
    };
    finish(result)
}
