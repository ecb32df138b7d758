//! The people frames of a device session: handles, lookups, contact requests, blocks,
//! profiles and presence. Each frame gets exactly one answer (its own frame, `Done`, or an
//! `Error`), in the order the frames came, so a client matches answers to requests by order.
//!
//! Writes go through [`crate::store::PeopleStore`], which changes the users' rows and appends
//! the notices to their logs in one transaction; the notices are then handed to the hub like
//! any commit, so every session of both users, on every node, reads them.
//!
//! What a hostile client can try, and what it gets:
//! - an intro that is not its own (another user or device as sender, a forged signature) or
//!   addressed to itself: `bad_intro`;
//! - walking the handle space: lookups are exact, rate-limited per device and per client
//!   address (`lookup_limit`), and the stored form is a keyed hash;
//! - learning whether it is blocked: a blocked user's request, acceptance, decline,
//!   cancellation and removal get the answers and notices they would get if the other user
//!   had simply not answered (see `store/people.rs`); presence is not shown either way;
//! - reading chains and profiles of strangers: chains only of users with a handle or with a
//!   request or contact either way (anyone else gets an empty page, as for a user that does
//!   not exist); profiles only of its contacts (`not_a_contact`).

use std::net::IpAddr;
use std::time::Instant;

use ferry_protocol::people::{
    Handle, Intro, LAST_SEEN_GRANULARITY_S, SealedCard, SealedProfile, normalize_name,
};
use ferry_protocol::{DeviceId, ErrorCode, ErrorFrame, ServerFrame, UserId};

use crate::context::{Context, now_ms, now_s};
use crate::store::{ContactChange, Notified, StoreError};

/// Most entries in one `Contacts` page: with the largest cards, a page stays under 512 KiB.
pub(super) const CONTACTS_PER_PAGE: usize = 512;

/// Who is asking: the session's user, device and client address.
#[derive(Clone, Copy, Debug)]
pub(super) struct Asker {
    pub user: UserId,
    pub device: DeviceId,
    pub address: IpAddr,
}

/// `HandleSet`: gives the user `name.NN` (or removes its handle).
pub(super) async fn set_handle(ctx: &Context, asker: Asker, name: Option<String>) -> ServerFrame {
    let Some(name) = name else {
        return match ctx.store.clear_handle(asker.user, now_ms()).await {
            Ok(notified) => {
                wake(ctx, notified);
                ServerFrame::HandleIs { handle: None }
            }
            Err(e) => storage_error(ctx, &e),
        };
    };
    let name = match normalize_name(&name) {
        Ok(name) => name,
        Err(e) => return error(ctx, ErrorCode::HandleInvalid, e.to_string()),
    };
    let candidates = ctx.handle_key.candidates(&name);
    match ctx
        .store
        .set_handle(asker.user, &name, &candidates, now_ms())
        .await
    {
        Ok((number, notified)) => {
            wake(ctx, notified);
            ServerFrame::HandleIs {
                handle: Some(format!("{name}.{number:02}")),
            }
        }
        Err(e) => storage_error(ctx, &e),
    }
}

/// `Whois`: the user with exactly this handle, within the lookup limits.
pub(super) async fn whois(ctx: &Context, asker: Asker, handle: String) -> ServerFrame {
    let now = Instant::now();
    // Both buckets are charged, so neither many devices behind one address nor one device
    // moving between addresses gets more than its share.
    let device_ok = ctx.lookup_device_limiter.try_take(&asker.device, now);
    let address_ok = ctx.lookup_address_limiter.try_take(&asker.address, now);
    if !(device_ok && address_ok) {
        return error(
            ctx,
            ErrorCode::LookupLimit,
            ErrorCode::LookupLimit.description(),
        );
    }
    let parsed = match handle.parse::<Handle>() {
        Ok(parsed) => parsed,
        Err(e) => return error(ctx, ErrorCode::HandleInvalid, e.to_string()),
    };
    match ctx.store.find_handle(&ctx.handle_key.hash(&parsed)).await {
        Ok(user) => ServerFrame::WhoisResult { handle, user },
        Err(e) => storage_error(ctx, &e),
    }
}

/// `ContactRequest` / `ContactAccept`: checks the intro is the asker's own, then stores.
pub(super) async fn introduce(
    ctx: &Context,
    asker: Asker,
    intro: &Intro,
    accept: bool,
) -> ServerFrame {
    if let Err(reason) = check_intro(asker, intro) {
        return error(ctx, ErrorCode::BadIntro, reason);
    }
    let limits = ctx.config.limits.people();
    let stored = if accept {
        ctx.store.accept_contact(intro, &limits, now_ms()).await
    } else {
        ctx.store.request_contact(intro, &limits, now_ms()).await
    };
    let answer = done(ctx, stored);
    if matches!(answer, ServerFrame::Done) {
        // Contacts made while both are online see each other's presence at once (it is
        // otherwise announced when a session starts).
        if presence_peers(ctx, asker.user).await.contains(&intro.to) {
            ctx.hub.presence_online(asker.user, &[intro.to]);
        }
    }
    answer
}

fn check_intro(asker: Asker, intro: &Intro) -> Result<(), &'static str> {
    if intro.from != asker.user || intro.device != asker.device {
        return Err("the intro must come from this session's user and device");
    }
    if intro.to == asker.user {
        return Err("a user cannot be its own contact");
    }
    intro
        .verify_signature()
        .map_err(|_| "the intro's signature does not verify")
}

/// Decline, cancel, remove, block, unblock.
pub(super) async fn change(
    ctx: &Context,
    asker: Asker,
    peer: UserId,
    change: ContactChange,
) -> ServerFrame {
    // Whether the two saw each other's presence before (only then is anything said).
    let ends_presence = matches!(change, ContactChange::Block | ContactChange::Remove);
    let saw_each_other = ends_presence && presence_peers(ctx, asker.user).await.contains(&peer);
    let limits = ctx.config.limits.people();
    let stored = ctx
        .store
        .change_contact(asker.user, peer, change, &limits, now_ms())
        .await;
    if stored.is_ok() && saw_each_other {
        // Neither sees the other's presence any more. The other user is not told why: it
        // gets the frame it gets when a contact hides its presence. A user who never saw
        // this one's presence gets nothing, so a block of a stranger is silent.
        ctx.hub.presence_hidden(asker.user, &[peer]);
        ctx.hub.presence_hidden(peer, &[asker.user]);
    }
    done(ctx, stored)
}

/// `ContactsList`: the list in `Contacts` pages of at most [`CONTACTS_PER_PAGE`] entries,
/// `more` on all but the last (so a page stays well under the frame limit, cards included).
pub(super) async fn contacts(ctx: &Context, asker: Asker) -> Vec<ServerFrame> {
    match ctx.store.contacts(asker.user).await {
        Ok(list) => {
            let pages: Vec<_> = list.contacts.chunks(CONTACTS_PER_PAGE).collect();
            let last = pages.len().saturating_sub(1);
            let mut frames: Vec<ServerFrame> = pages
                .into_iter()
                .enumerate()
                .map(|(i, page)| ServerFrame::Contacts {
                    contacts: page.to_vec(),
                    presence_visible: list.presence_visible,
                    more: i < last,
                })
                .collect();
            if frames.is_empty() {
                frames.push(ServerFrame::Contacts {
                    contacts: Vec::new(),
                    presence_visible: list.presence_visible,
                    more: false,
                });
            }
            frames
        }
        Err(e) => vec![storage_error(ctx, &e)],
    }
}

/// `ContactCard`.
pub(super) async fn set_card(
    ctx: &Context,
    asker: Asker,
    peer: UserId,
    card: &SealedCard,
) -> ServerFrame {
    match ctx.store.set_card(asker.user, peer, card, now_ms()).await {
        Ok(()) => ServerFrame::Done,
        Err(e) => storage_error(ctx, &e),
    }
}

/// Whether the device may make one more people request that writes; counted otherwise.
pub(super) fn may_write(ctx: &Context, asker: Asker) -> bool {
    let allowed = ctx
        .people_write_limiter
        .try_take(&asker.device, Instant::now());
    if !allowed {
        ctx.metrics.error(ErrorCode::RateLimited);
    }
    allowed
}

/// `ProfileSet`.
pub(super) async fn set_profile(
    ctx: &Context,
    asker: Asker,
    profile: &SealedProfile,
) -> ServerFrame {
    let stored = ctx.store.set_profile(asker.user, profile, now_ms()).await;
    if matches!(stored, Err(StoreError::Refused(ErrorCode::Conflict))) {
        let message = "a profile's version must be above the stored one; fetch it and try again";
        return error(ctx, ErrorCode::Conflict, message);
    }
    done(ctx, stored)
}

/// `ProfileFetch`.
pub(super) async fn profile(ctx: &Context, asker: Asker, user: UserId) -> ServerFrame {
    match ctx.store.profile(asker.user, user).await {
        Ok(profile) => ServerFrame::Profile { user, profile },
        Err(e) => storage_error(ctx, &e),
    }
}

/// `PresenceSet`: shows or hides the user's presence, and tells the contacts concerned.
pub(super) async fn set_presence(ctx: &Context, asker: Asker, visible: bool) -> ServerFrame {
    // Who could see it before hiding (afterwards the store says nobody).
    let before = if visible {
        Vec::new()
    } else {
        match ctx.store.presence_peers(asker.user).await {
            Ok(peers) => peers,
            Err(e) => return storage_error(ctx, &e),
        }
    };
    let stored = ctx
        .store
        .set_presence_visible(asker.user, visible, now_ms())
        .await;
    if stored.is_ok() {
        if visible {
            let peers = presence_peers(ctx, asker.user).await;
            ctx.hub.presence_shown(asker.user, &peers);
        } else {
            ctx.hub.presence_hidden(asker.user, &before);
        }
    }
    done(ctx, stored)
}

/// A session of `user` started on this node: its last-seen time moves (written behind), and
/// the contacts who may see its presence hear that it is online (and answer with theirs).
pub(super) async fn session_online(ctx: &Context, user: UserId) {
    ctx.last_seen.user_seen(user, now_s());
    let peers = presence_peers(ctx, user).await;
    ctx.hub.presence_online(user, &peers);
}

/// The last session of `user` on this node ended.
pub(super) async fn session_offline(ctx: &Context, user: UserId) {
    let now = now_s();
    ctx.last_seen.user_seen(user, now);
    let peers = presence_peers(ctx, user).await;
    ctx.hub
        .presence_offline(user, &peers, now - now % LAST_SEEN_GRANULARITY_S);
}

/// The users who may see `user`'s presence, for a presence hint: none when the store cannot
/// say (a hint is best effort; the next session start or catch-up corrects it).
async fn presence_peers(ctx: &Context, user: UserId) -> Vec<UserId> {
    ctx.store.presence_peers(user).await.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "could not read presence peers");
        Vec::new()
    })
}

/// Hands the notices to the hub: every session of their users, here and on other nodes.
/// (Also the conversation frames' Welcomes and removal notices.)
pub(super) fn wake(ctx: &Context, notified: Notified) {
    let mut notices = notified.0;
    // Grouped per user, in commit order.
    while let Some((user, _)) = notices.first() {
        let user = *user;
        // A notice (a contact request, a Welcome into a conversation) wakes the user's
        // devices that have no session.
        ctx.pusher.wake(&[user], &[], false);
        let (mine, rest): (Vec<_>, Vec<_>) = notices.into_iter().partition(|(u, _)| *u == user);
        ctx.hub
            .committed(user, mine.into_iter().map(|(_, event)| event).collect());
        notices = rest;
    }
}

fn done(ctx: &Context, stored: Result<Notified, StoreError>) -> ServerFrame {
    match stored {
        Ok(notified) => {
            wake(ctx, notified);
            ServerFrame::Done
        }
        Err(e) => storage_error(ctx, &e),
    }
}

/// An `Error` answer, counted in the metrics.
pub(super) fn error(ctx: &Context, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    ctx.metrics.error(code);
    ServerFrame::Error(ErrorFrame::with_message(code, message))
}

/// An `Error` with `code` and its description (counted in the metrics).
pub(super) fn refused(ctx: &Context, code: ErrorCode) -> ServerFrame {
    error(ctx, code, code.description())
}

/// `Error(rate_limited)` (counted in the metrics).
pub(super) fn rate_limited(ctx: &Context) -> ServerFrame {
    refused(ctx, ErrorCode::RateLimited)
}

/// Logs a storage failure that is the relay's (not a refusal of the request).
pub(super) fn log_storage_error(e: &StoreError) {
    if matches!(e.code(), ErrorCode::Internal | ErrorCode::Unavailable) {
        tracing::warn!(error = %e, "storage error in a request");
    }
}

/// The `Error` answering a request the store failed or refused: the refusal's reason when
/// it gave one, else the code's description (never the database's own message).
pub(super) fn storage_error(ctx: &Context, e: &StoreError) -> ServerFrame {
    log_storage_error(e);
    match e {
        StoreError::RefusedBecause(code, reason) => error(ctx, *code, reason.clone()),
        other => error(ctx, other.code(), other.code().description()),
    }
}
