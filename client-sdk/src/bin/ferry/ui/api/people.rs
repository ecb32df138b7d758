//! Contacts: the list with presence, requests both ways, blocks.

use std::sync::Arc;

use ferry_client::{ContactState, UserId};
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Refusal, body, failed, finish, no_such_request, parse_id, running};
use crate::ui::app::App;
use crate::ui::http::{Reply, ok};
use crate::ui::json;

pub async fn list(app: &Arc<App>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let mut contacts = handle.contacts().await.map_err(|e| failed(&e))?;
    // The SDK refreshes contacts' profiles at each catch-up; a contact who just accepted is
    // fetched here, so the list shows their name at once. (The relay shows a profile to
    // contacts only: someone asking to be one is shown by id and note until accepted.)
    for contact in &mut contacts {
        if contact.profile.is_none() && contact.state == ContactState::Contact {
            contact.profile = handle.profile(contact.user).await.ok().flatten();
        }
    }
    let names = app.learn_names(&contacts);
    Ok(ok(Value::Array(
        contacts.iter().map(|c| json::contact(c, &names)).collect(),
    )))
}

#[derive(Deserialize)]
struct ContactRequest {
    handle: String,
    #[serde(default)]
    note: String,
}

#[derive(Deserialize)]
struct Someone {
    user: String,
}

/// `POST /api/contacts/ACTION`.
pub async fn act(app: &App, action: &str, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    if action == "request" {
        let form: ContactRequest = body(request).await?;
        let user = handle
            .request_contact_by_handle(form.handle.trim(), form.note.trim())
            .await
            .map_err(|e| failed(&e))?;
        return Ok(ok(json!({ "user": user.to_string() })));
    }
    let form: Someone = body(request).await?;
    let user: UserId = parse_id(&form.user, "user")?;
    let result = match action {
        "accept" => handle.accept_contact(user).await,
        "decline" => handle.decline_contact(user).await,
        "cancel" => handle.cancel_request(user).await,
        "remove" => handle.remove_contact(user).await,
        "block" => handle.block(user).await,
        "unblock" => handle.unblock(user).await,
        _ => return Err(no_such_request()),
    };
    finish(result)
}
