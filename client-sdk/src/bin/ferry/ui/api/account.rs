//! This user and this device: state and first start, the event stream, handle, profile,
//! presence, devices, pairing, and the sync log.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use ferry_client::{DeviceId, ProfileBody, RelayId};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Refusal, bad_request, body, failed, pairing_failed, parse_id, percent_encode, refuse, running,
};
use crate::ui::app::{App, Mode, lock};
use crate::ui::http::{Reply, bytes, done, event_stream, ok, sse_message};
use crate::ui::json;

pub fn state(app: &App) -> Reply {
    let mode = match app.mode() {
        Mode::Setup => "setup",
        Mode::Joining => "joining",
        Mode::Running(_) => "running",
    };
    ok(json!({
        "mode": mode,
        "defaults": {
            "relay_url": app.defaults.relay_url,
            "relay_key": app.defaults.relay_key,
        },
        "me": me_value(app),
        "status": app.status(),
    }))
}

/// The event stream: the status first, then every event as it happens. A page that falls
/// more than the channel's length behind is told to fetch again (`lagged`).
pub fn events(app: &App) -> Reply {
    let first = sse_message(&app.status_event());
    let receiver = app.subscribe();
    let stream = futures_util::stream::unfold(
        (Some(first), receiver),
        |(first, mut receiver)| async move {
            if let Some(first) = first {
                return Some((first, (None, receiver)));
            }
            let message = match receiver.recv().await {
                Ok(message) => message,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    sse_message(&json!({ "type": "lagged" }))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((message, (None, receiver)))
        },
    );
    // A comment every 15 s keeps proxies and the browser from thinking the stream died.
    let keepalive = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(std::time::Duration::from_secs(15)).await;
        Some((Bytes::from_static(b": keepalive\n\n"), ()))
    });
    event_stream(futures_util::stream::select(stream, keepalive))
}

#[derive(Deserialize)]
pub struct Create {
    relay_url: String,
    relay_key: String,
    device_name: String,
    #[serde(default)]
    name: String,
}

pub async fn create(app: &Arc<App>, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let form: Create = body(request).await?;
    setup_only(app)?;
    let relay_key = relay_key(&form.relay_key)?;
    app.create(
        &form.relay_url,
        relay_key,
        form.device_name.trim(),
        &form.name,
    )
    .await
    .map(ok)
    .map_err(|e| {
        refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "setup",
            &super::sentence(&format!("{e:#}")),
        )
    })
}

#[derive(Deserialize)]
pub struct JoinForm {
    relay_url: String,
    relay_key: String,
    code: String,
    device_name: String,
}

pub async fn join(app: &Arc<App>, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let form: JoinForm = body(request).await?;
    setup_only(app)?;
    let relay_key = relay_key(&form.relay_key)?;
    let confirmation = app
        .join(
            &form.relay_url,
            relay_key,
            form.code.trim(),
            form.device_name.trim(),
        )
        .await
        .map_err(|e| pairing_failed(&e))?;
    Ok(ok(json!({ "confirmation": confirmation })))
}

fn setup_only(app: &App) -> Result<(), Refusal> {
    match app.mode() {
        Mode::Setup => Ok(()),
        _ => Err(refuse(
            StatusCode::CONFLICT,
            "already_set_up",
            "This device is already set up.",
        )),
    }
}

fn relay_key(text: &str) -> Result<RelayId, Refusal> {
    text.trim().parse().map_err(|_| {
        bad_request("The relay key is 64 hex characters (the relay prints it at start).")
    })
}

pub fn me(app: &App) -> Result<Reply, Refusal> {
    running(app)?;
    Ok(ok(me_value(app)))
}

fn me_value(app: &App) -> Value {
    let prefs = app.prefs();
    let Mode::Running(handle) = app.mode() else {
        return Value::Null;
    };
    json!({
        "user": handle.user_id().to_string(),
        "device": handle.device_id().to_string(),
        "device_name": app.this_device().map(|this| this.name),
        "handle": prefs.handle,
        "name": prefs.name,
        "presence_visible": prefs.presence_visible.unwrap_or(true),
    })
}

#[derive(Deserialize)]
pub struct Name {
    name: String,
}

pub async fn set_handle(app: &App, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let form: Name = body(request).await?;
    let taken = handle
        .set_handle(form.name.trim())
        .await
        .map_err(|e| failed(&e))?;
    let saved = taken.clone();
    app.update_prefs(|prefs| prefs.handle = Some(saved));
    Ok(ok(json!({ "handle": taken })))
}

pub async fn set_profile(app: &App, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let form: Name = body(request).await?;
    let name = form.name.trim().to_owned();
    let profile = ProfileBody {
        display_name: name.clone(),
        avatar: None,
    };
    profile
        .check()
        .map_err(|e| bad_request(&super::sentence(&e.to_string())))?;
    handle.set_profile(&profile).await.map_err(|e| failed(&e))?;
    app.update_prefs(|prefs| prefs.name = Some(name));
    Ok(done())
}

#[derive(Deserialize)]
pub struct Visible {
    visible: bool,
}

pub async fn set_presence(app: &App, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let form: Visible = body(request).await?;
    handle
        .set_presence_visible(form.visible)
        .await
        .map_err(|e| failed(&e))?;
    app.update_prefs(|prefs| prefs.presence_visible = Some(form.visible));
    Ok(done())
}

pub async fn devices(app: &App) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let devices = handle.list_devices().await.map_err(|e| failed(&e))?;
    Ok(ok(Value::Array(devices.iter().map(json::device).collect())))
}

pub async fn rename_device(app: &App, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let form: Name = body(request).await?;
    handle
        .rename_device(form.name.trim())
        .await
        .map_err(|e| failed(&e))?;
    app.renamed(form.name.trim());
    Ok(done())
}

#[derive(Deserialize)]
pub struct Revoke {
    device: String,
}

pub async fn revoke(app: &App, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let form: Revoke = body(request).await?;
    let device: DeviceId = parse_id(&form.device, "device")?;
    if device == handle.device_id() {
        return Err(bad_request(
            "This is the device you are using: revoke it from another of your devices.",
        ));
    }
    handle.revoke(device).await.map_err(|e| failed(&e))?;
    Ok(done())
}

/// Starts a pairing: the code to type (or scan) on the new device. When that device
/// joins, a `pairing` event with the confirmation follows.
pub async fn invite(app: &Arc<App>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let invitation = handle.invite().await.map_err(|e| pairing_failed(&e))?;
    let code = invitation.code().to_string();
    let expires_at = invitation
        .expires_at()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (relay_url, relay_key) = relay_of(app);
    let join_uri = format!(
        "ferry://join?relay={}&key={}&code={}",
        percent_encode(&relay_url),
        relay_key,
        percent_encode(&code)
    );
    let waiting_app = Arc::clone(app);
    let waiting = tokio::spawn(async move {
        let app = waiting_app;
        match invitation.joined().await {
            Ok(pending) => {
                app.publish(&json!({
                    "type": "pairing",
                    "kind": "joined",
                    "confirmation": pending.confirmation(),
                    "name": pending.name(),
                    "device": pending.device().to_string(),
                }));
                lock(&app.pairing).pending = Some(pending);
            }
            Err(error) => app.publish(&json!({
                "type": "pairing", "kind": "failed", "error": super::sentence(&error.to_string()),
            })),
        }
    });
    let mut pairing = lock(&app.pairing);
    if let Some(previous) = pairing.waiting.replace(waiting.abort_handle()) {
        previous.abort();
    }
    pairing.pending = None;
    pairing.join_uri = Some(join_uri.clone());
    Ok(ok(json!({
        "code": code,
        "expires_at": expires_at,
        "join_uri": join_uri,
    })))
}

/// The relay this device uses, from its state folder.
fn relay_of(app: &App) -> (String, String) {
    app.this_device()
        .map(|this| (this.relay_url, this.relay_key))
        .unwrap_or_default()
}

/// The QR code of the pairing in progress: what a phone scans instead of typing.
pub fn qr(app: &App) -> Result<Reply, Refusal> {
    let uri = lock(&app.pairing).join_uri.clone().ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "no_pairing",
            "No pairing is in progress.",
        )
    })?;
    let code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, "qr", &e.to_string()))?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    Ok(bytes(
        HeaderValue::from_static("image/svg+xml"),
        svg.into_bytes(),
    ))
}

pub async fn admit(app: &App) -> Result<Reply, Refusal> {
    let pending = take_pending(app)?;
    let paired = pending.admit().await.map_err(|e| pairing_failed(&e))?;
    app.publish(&json!({
        "type": "pairing", "kind": "paired", "device": paired.device.to_string(), "name": paired.name,
    }));
    Ok(done())
}

pub async fn refuse_device(app: &App) -> Result<Reply, Refusal> {
    let pending = take_pending(app)?;
    pending.refuse().await.map_err(|e| pairing_failed(&e))?;
    app.publish(&json!({ "type": "pairing", "kind": "refused" }));
    Ok(done())
}

fn take_pending(app: &App) -> Result<ferry_client::pairing::PendingDevice, Refusal> {
    let mut pairing = lock(&app.pairing);
    pairing.join_uri = None;
    pairing.pending.take().ok_or_else(|| {
        refuse(
            StatusCode::CONFLICT,
            "no_pairing",
            "No device is waiting to be admitted.",
        )
    })
}

pub fn log(app: &App) -> Reply {
    ok(Value::Array(app.log()))
}

#[derive(Deserialize)]
pub struct Text {
    text: String,
}

pub async fn append(app: &App, request: Request<Incoming>) -> Result<Reply, Refusal> {
    let handle = running(app)?;
    let form: Text = body(request).await?;
    let seq = handle
        .append(form.text.as_bytes())
        .await
        .map_err(|e| failed(&e))?;
    Ok(ok(json!({ "seq": seq })))
}
