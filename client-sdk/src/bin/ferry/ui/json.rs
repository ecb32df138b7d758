//! The SDK's types as the page reads them (docs/web-app.md names every field).

use std::collections::BTreeMap;

use ferry_client::calls::CallState;
use ferry_client::{
    CallEvent, CallOutcome, ClientError, ClientEvent, Contact, ContactState, Content,
    ConversationEvent, ConversationInfo, Device, EndReason, GroupKind, PeopleEvent, Setting,
    Status, StoredMessage, UserId,
};
use serde_json::{Value, json};

/// Names to show for users: a contact's profile name, else its handle, else the start of
/// its id.
#[derive(Debug, Default, Clone)]
pub struct Names {
    pub me: Option<UserId>,
    pub my_name: Option<String>,
    pub known: BTreeMap<UserId, String>,
}

impl Names {
    pub fn of(&self, user: &UserId) -> String {
        if self.me.as_ref() == Some(user) {
            return self.my_name.clone().unwrap_or_else(|| "You".to_owned());
        }
        self.known
            .get(user)
            .cloned()
            .unwrap_or_else(|| short(&user.to_string()))
    }

    pub fn learn(&mut self, contacts: &[Contact]) {
        for contact in contacts {
            if let Some(name) = contact_name(contact) {
                self.known.insert(contact.user, name);
            }
        }
    }
}

fn short(hex: &str) -> String {
    hex.chars().take(8).collect()
}

fn contact_name(contact: &Contact) -> Option<String> {
    contact
        .profile
        .as_ref()
        .map(|p| p.display_name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| contact.handle.clone())
}

pub fn status(status: &Status) -> Value {
    json!({
        "connected": status.connected,
        "pending": status.pending,
        "last_error": status.last_error.as_ref().map(words),
        "stopped": status.stopped.as_ref().map(words),
    })
}

/// What went wrong, for a person: the common cases in plain words (what happened and what
/// to do), the rest in the SDK's own words, as a sentence.
pub fn words(error: &ClientError) -> String {
    let plain = match error {
        ClientError::RelayUnreachable(_) | ClientError::Timeout { .. } => {
            "The relay cannot be reached right now; Ferry keeps trying, and nothing you send is lost."
        }
        ClientError::Revoked => {
            "This device was removed from your account by another of your devices: it can no longer send or read anything new."
        }
        ClientError::WrongRelayKey { .. } => {
            "The relay did not prove it is the one this device trusts: someone may be in the way. Check the relay's address."
        }
        ClientError::RateLimited => "The relay asks to slow down; try again in a moment.",
        ClientError::Closed => "Ferry stopped on this device.",
        _ => return sentence(&error.to_string()),
    };
    plain.to_owned()
}

/// `text` as a sentence: capital first letter, final full stop.
pub fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return "Something went wrong.".to_owned(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

pub fn device(device: &Device) -> Value {
    json!({
        "id": device.id.to_string(),
        "name": device.name,
        "created_at": device.created_at,
        "last_seen": device.last_seen,
        "revoked": device.revoked,
        "this_device": device.this_device,
    })
}

pub fn contact(contact: &Contact, names: &Names) -> Value {
    json!({
        "user": contact.user.to_string(),
        "state": contact_state(&contact.state),
        "handle": contact.handle,
        "name": names.of(&contact.user),
        "online": contact.online,
        "last_seen": contact.last_seen,
        "safety_number": contact.safety_number,
    })
}

fn contact_state(state: &ContactState) -> &'static str {
    match state {
        ContactState::Contact => "contact",
        ContactState::Outgoing => "outgoing",
        ContactState::Incoming => "incoming",
        ContactState::Blocked => "blocked",
    }
}

pub fn conversation(info: &ConversationInfo, names: &Names) -> Value {
    let me = names.me;
    let one_to_one = info
        .policy
        .as_ref()
        .is_some_and(|p| p.kind == GroupKind::OneToOne);
    let others: Vec<UserId> = info
        .summary
        .members
        .iter()
        .map(|m| m.user)
        .filter(|user| Some(*user) != me)
        .collect();
    let peer = if one_to_one { others.first() } else { None };
    let title = match (&info.title, peer) {
        (Some(title), _) if !title.is_empty() => title.clone(),
        (_, Some(peer)) => names.of(peer),
        _ if others.is_empty() => "Just you".to_owned(),
        _ => others
            .iter()
            .map(|u| names.of(u))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let admins: Vec<UserId> = info
        .policy
        .as_ref()
        .map(|p| p.admins.clone())
        .unwrap_or_default();
    json!({
        "conv": info.conv.to_string(),
        "kind": if one_to_one { "one_to_one" } else { "group" },
        "title": title,
        "peer": peer.map(ToString::to_string),
        "unread": info.summary.unread,
        "last_activity": info.summary.last_activity,
        "head": info.summary.head,
        "members": info.summary.members.iter().map(|m| json!({
            "user": m.user.to_string(),
            "name": names.of(&m.user),
            "delivered": m.delivered,
            "read": m.read,
        })).collect::<Vec<_>>(),
        "admins": admins.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "i_am_admin": me.is_some_and(|me| admins.contains(&me)),
    })
}

/// A message; `receipts` are the conversation's members with their markers, when known.
pub fn message(message: &StoredMessage, names: &Names, info: Option<&ConversationInfo>) -> Value {
    let mine = names.me == Some(message.user);
    let (delivered, read): (Vec<String>, Vec<String>) = match info {
        Some(info) if mine => {
            let others = info
                .summary
                .members
                .iter()
                .filter(|m| m.user != message.user);
            let mut delivered = Vec::new();
            let mut read = Vec::new();
            for member in others {
                if member.delivered >= message.conv_seq {
                    delivered.push(member.user.to_string());
                }
                if member.read >= message.conv_seq {
                    read.push(member.user.to_string());
                }
            }
            (delivered, read)
        }
        _ => (Vec::new(), Vec::new()),
    };
    let (kind, text, file, call) = match &message.content {
        Content::Text(text) => ("text", text.clone(), Value::Null, Value::Null),
        Content::File(file) => (
            "file",
            String::new(),
            json!({
                "name": file.safe_name(),
                "size": file.size,
                "mime": file.mime,
                "image": super::api::inline_image(&file.mime).is_some(),
            }),
            Value::Null,
        ),
        Content::Call(record) => {
            let (outcome, seconds) = match record.outcome {
                CallOutcome::Missed => ("missed", 0),
                CallOutcome::Declined => ("declined", 0),
                CallOutcome::Busy => ("busy", 0),
                CallOutcome::Completed { seconds } => ("completed", seconds),
            };
            (
                "call",
                String::new(),
                Value::Null,
                json!({ "video": record.video, "outcome": outcome, "seconds": seconds }),
            )
        }
    };
    json!({
        "conv": message.conv.to_string(),
        "seq": message.conv_seq,
        "user": message.user.to_string(),
        "name": names.of(&message.user),
        "device": message.device.to_string(),
        "sent_at": message.sent_at,
        "mine": mine,
        "kind": kind,
        "text": text,
        "file": file,
        "call": call,
        "delivered": delivered,
        "read": read,
    })
}

pub fn call_state(state: &CallState) -> String {
    match state {
        CallState::Outgoing => "outgoing".into(),
        CallState::Incoming => "incoming".into(),
        CallState::Accepting => "accepting".into(),
        CallState::Connected => "connected".into(),
        CallState::Ended(reason) => format!("ended: {}", end_reason(*reason)),
    }
}

fn end_reason(reason: EndReason) -> &'static str {
    match reason {
        EndReason::HungUp => "hung up",
        EndReason::RemoteHungUp => "the other side hung up",
        EndReason::NoAnswer => "no answer",
        EndReason::Missed => "missed",
        EndReason::Declined => "declined",
        EndReason::Busy => "busy in another call",
        EndReason::AnsweredElsewhere => "answered on another device",
        EndReason::DeclinedElsewhere => "declined on another device",
        EndReason::Unconfirmed => "the caller did not confirm",
    }
}

/// What the event stream says about an event of the client (`None`: nothing for the page).
pub fn event(event: &ClientEvent, names: &Names) -> Option<Value> {
    Some(match event {
        ClientEvent::Event(event) => json!({
            "type": "log",
            "seq": event.seq,
            "device": event.device.to_string(),
            "device_seq": event.device_seq,
            "text": String::from_utf8_lossy(&event.plaintext),
        }),
        ClientEvent::CaughtUp { head } => json!({ "type": "caught_up", "head": head }),
        ClientEvent::People(event) => people(event),
        ClientEvent::Conversation(event) => conversation_event(event, names),
        ClientEvent::Setting(Setting::ArchiveHistory(on)) => {
            json!({ "type": "setting", "archive_history": on })
        }
        ClientEvent::Setting(Setting::DeviceName { device, name }) => {
            json!({ "type": "setting", "device": device.to_string(), "device_name": name })
        }
        ClientEvent::Call(event) => call(event),
        _ => return None,
    })
}

fn people(event: &PeopleEvent) -> Value {
    let (kind, user, extra) = match event {
        PeopleEvent::RequestReceived { from, note } => {
            ("request_received", Some(from), json!({ "note": note }))
        }
        PeopleEvent::RequestSent { to } => ("request_sent", Some(to), json!({})),
        PeopleEvent::Accepted { user } => ("accepted", Some(user), json!({})),
        PeopleEvent::Declined { user, by_me } => {
            ("declined", Some(user), json!({ "by_me": by_me }))
        }
        PeopleEvent::Cancelled { user, by_me } => {
            ("cancelled", Some(user), json!({ "by_me": by_me }))
        }
        PeopleEvent::Removed { user, by_me } => ("removed", Some(user), json!({ "by_me": by_me })),
        PeopleEvent::Blocked { user } => ("blocked", Some(user), json!({})),
        PeopleEvent::Unblocked { user } => ("unblocked", Some(user), json!({})),
        PeopleEvent::HandleChanged { handle } => {
            ("handle_changed", None, json!({ "handle": handle }))
        }
        PeopleEvent::ProfileChanged { user, .. } => ("profile_changed", Some(user), json!({})),
        PeopleEvent::PresenceVisibility { visible } => {
            ("presence_visibility", None, json!({ "visible": visible }))
        }
        PeopleEvent::PresenceChanged {
            user,
            online,
            last_seen,
        } => (
            "presence_changed",
            Some(user),
            json!({ "online": online, "last_seen": last_seen }),
        ),
        PeopleEvent::IdentityChanged { user, change } => (
            "identity_changed",
            Some(user),
            json!({ "reason": format!("{change:?}") }),
        ),
        PeopleEvent::Unverified { user, reason } => {
            ("unverified", Some(user), json!({ "reason": reason }))
        }
        _ => ("other", None, json!({})),
    };
    let mut value = json!({
        "type": "people",
        "kind": kind,
        "user": user.map(ToString::to_string),
    });
    merge(&mut value, extra);
    value
}

fn conversation_event(event: &ConversationEvent, names: &Names) -> Value {
    let (kind, conv, extra) = match event {
        ConversationEvent::Joined { conv, .. } => ("joined", conv, json!({})),
        ConversationEvent::Message(stored) => (
            "message",
            &stored.conv,
            json!({ "message": message(stored, names, None) }),
        ),
        ConversationEvent::MembersChanged {
            conv,
            added,
            removed,
        } => (
            "members_changed",
            conv,
            json!({
                "added": added.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "removed": removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        ),
        ConversationEvent::Renamed { conv, title } => ("renamed", conv, json!({ "title": title })),
        ConversationEvent::Left { conv } => ("left", conv, json!({})),
        ConversationEvent::Typing { conv, user, typing } => (
            "typing",
            conv,
            json!({ "user": user.to_string(), "name": names.of(user), "typing": typing }),
        ),
        ConversationEvent::ReadBy { conv, user, seq } => (
            "read_by",
            conv,
            json!({ "user": user.to_string(), "seq": seq }),
        ),
    };
    let mut value = json!({ "type": "conv", "kind": kind, "conv": conv.to_string() });
    merge(&mut value, extra);
    value
}

fn call(event: &CallEvent) -> Value {
    let (kind, call, extra) = match event {
        CallEvent::Incoming {
            call,
            conv,
            from,
            video,
            offer,
        } => (
            "incoming",
            call,
            json!({ "conv": conv.to_string(), "from": from.to_string(), "video": video, "offer": offer }),
        ),
        CallEvent::Ringing { call, device } => {
            ("ringing", call, json!({ "device": device.to_string() }))
        }
        CallEvent::Answered {
            call,
            device,
            answer,
        } => (
            "answered",
            call,
            json!({ "device": device.to_string(), "answer": answer }),
        ),
        CallEvent::Connected { call } => ("connected", call, json!({})),
        CallEvent::Candidate { call, candidate } => {
            ("candidate", call, json!({ "candidate": candidate }))
        }
        CallEvent::Ended { call, reason } => {
            ("ended", call, json!({ "reason": end_reason(*reason) }))
        }
    };
    let mut value = json!({ "type": "call", "kind": kind, "call": call.to_string() });
    merge(&mut value, extra);
    value
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}
