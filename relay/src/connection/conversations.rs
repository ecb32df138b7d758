//! The conversation frames of a device session: the relay as MLS's Delivery Service and its
//! KeyPackage directory. Requests (`KeyPackagesUpload`, `KeyPackagesClaim`, `ConvCreate`,
//! `ConvFetch`, `ConvList`, `GroupInfoFetch`) get exactly one answer each (pages end with
//! `more: false`), in order; `ConvSend` gets `ConvSent`, `ConvStale` or `ConvRefused` naming
//! its `device_seq`; `ConvAck`, `ConvRead` and `ConvEphemeral` are not answered.
//!
//! What a hostile client can try, and what it gets:
//! - a KeyPackage, GroupInfo or commit naming another user or device, signed by someone
//!   else, for another group or epoch: `mls_refused` (the checks are in `ferry-mls`);
//! - adding or removing only some of a user's devices, adding a device its chain does not
//!   admit, or (in a group with admins) changing others without the role:
//!   `membership_refused`;
//! - reading, writing or learning anything about a conversation it is not a member of (or no
//!   longer is): `no_such_conversation`, whether or not the conversation exists;
//! - claiming a stranger's or a blocker's KeyPackages (to open a conversation with them):
//!   `not_a_contact`, as for anyone who is not a contact;
//! - draining a contact's KeyPackages: claims are rate-limited per device, and each device
//!   keeps a last-resort package that a claim never deletes.

use ferry_mls::DsGroup;
use ferry_protocol::conversations::{ConvId, ConvSend, Direction};
use ferry_protocol::{ClientFrame, ErrorCode, ErrorFrame, ServerFrame};

use super::people::{Asker, error, log_storage_error, rate_limited, storage_error, wake};
use crate::context::{Context, now_ms};
use crate::store::{ConvCursor, ConvPage, ConvSendRequest, KeyPackageRow, SendOutcome, StoreError};

/// Most conversations in one `Conversations` page.
pub(super) const CONVS_PER_PAGE: usize = 64;

/// Whether `frame` is one of this module's.
pub(super) fn is_conversation_frame(frame: &ClientFrame) -> bool {
    matches!(
        frame,
        ClientFrame::KeyPackagesUpload { .. }
            | ClientFrame::KeyPackagesClaim { .. }
            | ClientFrame::ConvCreate { .. }
            | ClientFrame::ConvSend(_)
            | ClientFrame::ConvFetch { .. }
            | ClientFrame::ConvAck { .. }
            | ClientFrame::ConvRead { .. }
            | ClientFrame::ConvList
            | ClientFrame::ConvEphemeral { .. }
            | ClientFrame::GroupInfoFetch { .. }
    )
}

/// Answers one conversation frame: the frames to send back, in order (none for acks, read
/// markers and ephemerals).
pub(super) async fn handle(ctx: &Context, asker: Asker, frame: ClientFrame) -> Vec<ServerFrame> {
    match frame {
        ClientFrame::KeyPackagesUpload {
            packages,
            last_resort,
        } => {
            if !super::people::may_write(ctx, asker) {
                return vec![rate_limited(ctx)];
            }
            vec![
                upload(
                    ctx,
                    asker,
                    &packages,
                    last_resort.as_ref().map(|p| p.as_slice()),
                )
                .await,
            ]
        }
        ClientFrame::KeyPackagesClaim { user } => {
            if !super::people::may_write(ctx, asker) {
                return vec![rate_limited(ctx)];
            }
            match ctx
                .store
                .claim_key_packages(asker.user, asker.device, user)
                .await
            {
                Ok(packages) => vec![ServerFrame::KeyPackagesClaimed { user, packages }],
                Err(e) => vec![storage_error(ctx, &e)],
            }
        }
        ClientFrame::ConvCreate { conv, group_info } => {
            if !super::people::may_write(ctx, asker) {
                return vec![rate_limited(ctx)];
            }
            vec![create(ctx, asker, conv, &group_info).await]
        }
        ClientFrame::ConvSend(send) => vec![send_message(ctx, asker, *send).await],
        ClientFrame::ConvFetch {
            conv,
            from,
            direction,
            limit,
        } => vec![fetch(ctx, asker, conv, from, direction, limit).await],
        ClientFrame::ConvAck { conv, seq } => {
            // Merged with other devices' cursors and written with the next batch.
            let cursor = ConvCursor {
                conv,
                device: asker.device,
                seq,
            };
            if let Err(e) = ctx.conv_committer.ack(cursor).await {
                tracing::debug!(error = %e, "conversation cursor not queued");
            }
            Vec::new()
        }
        ClientFrame::ConvRead { conv, seq } => {
            // Each marker is a write: limited as the log's cursors are. Markers are
            // cumulative, so the next one a device sends covers one dropped here.
            if ctx
                .ack_limiter
                .try_take(&asker.device, std::time::Instant::now())
            {
                read(ctx, asker, conv, seq).await;
            } else {
                ctx.metrics.error(ErrorCode::RateLimited);
            }
            Vec::new()
        }
        ClientFrame::ConvList => list(ctx, asker).await,
        ClientFrame::ConvEphemeral { conv, body } => {
            ephemeral(ctx, asker, conv, body).await;
            Vec::new()
        }
        ClientFrame::GroupInfoFetch { conv } => {
            match ctx.store.group_info(conv, asker.device).await {
                Ok((epoch, group_info)) => vec![ServerFrame::GroupInfo {
                    conv,
                    epoch,
                    group_info,
                }],
                Err(e) => vec![storage_error(ctx, &e)],
            }
        }
        other => {
            tracing::error!(frame = ?other, "not a conversation frame");
            vec![ServerFrame::Error(ErrorFrame::new(ErrorCode::Internal))]
        }
    }
}

/// `KeyPackagesUpload`: every package checked (this device's credential, signature,
/// ciphersuite) before any is stored.
async fn upload(
    ctx: &Context,
    asker: Asker,
    packages: &[serde_bytes::ByteBuf],
    last_resort: Option<&[u8]>,
) -> ServerFrame {
    let check = |bytes: &[u8], want_last_resort: bool| -> Result<KeyPackageRow, String> {
        let info = ferry_mls::check_key_package(bytes, asker.user, asker.device)
            .map_err(|e| e.to_string())?;
        if info.last_resort != want_last_resort {
            return Err(if want_last_resort {
                "the last-resort package lacks the last_resort extension".into()
            } else {
                "a one-use package carries the last_resort extension".into()
            });
        }
        Ok(KeyPackageRow {
            reference: info.reference.to_vec(),
            package: bytes.to_vec(),
        })
    };
    let mut rows = Vec::with_capacity(packages.len());
    for (i, package) in packages.iter().enumerate() {
        match check(package, false) {
            Ok(row) => rows.push(row),
            Err(reason) => {
                return error(ctx, ErrorCode::MlsRefused, format!("package {i}: {reason}"));
            }
        }
    }
    let last_resort = match last_resort.map(|bytes| check(bytes, true)).transpose() {
        Ok(row) => row,
        Err(reason) => {
            return error(
                ctx,
                ErrorCode::MlsRefused,
                format!("last-resort package: {reason}"),
            );
        }
    };
    let limits = ctx.config.limits.conversations();
    match ctx
        .store
        .put_key_packages(
            asker.user,
            asker.device,
            &rows,
            last_resort.as_ref(),
            &limits,
            now_ms(),
        )
        .await
    {
        Ok(count) => ServerFrame::KeyPackageCount { count },
        Err(e) => storage_error(ctx, &e),
    }
}

/// `ConvCreate`: the creator's group at epoch 0, whose only leaf is this device.
async fn create(ctx: &Context, asker: Asker, conv: ConvId, group_info: &[u8]) -> ServerFrame {
    let group = match DsGroup::start(group_info, &conv.0) {
        Ok(group) => group,
        Err(e) => return error(ctx, ErrorCode::MlsRefused, e.to_string()),
    };
    if group.members() != [(asker.user, asker.device)] {
        let message = "a new conversation's group holds only the creating device";
        return error(ctx, ErrorCode::MlsRefused, message);
    }
    match ctx
        .store
        .create_conversation(conv, &group, group_info, now_ms())
        .await
    {
        Ok(()) => ServerFrame::ConvCreated { conv },
        Err(e) => storage_error(ctx, &e),
    }
}

/// `ConvSend`: stored (and every member woken), stale, or refused.
async fn send_message(ctx: &Context, asker: Asker, send: ConvSend) -> ServerFrame {
    let (conv, device_seq) = (send.conv, send.device_seq);
    let refused = |code: ErrorCode, message: String| {
        ctx.metrics.error(code);
        ServerFrame::ConvRefused {
            conv,
            device_seq,
            error: ErrorFrame::with_message(code, message),
        }
    };
    if !ctx
        .append_limiter
        .try_take(&asker.device, std::time::Instant::now())
    {
        let code = ErrorCode::RateLimited;
        return refused(code, code.description().into());
    }
    let request = ConvSendRequest {
        user: asker.user,
        device: asker.device,
        send,
    };
    // The committer wakes the members (once per batch) before it answers.
    match ctx.conv_committer.send(request).await {
        Ok(SendOutcome::Stored {
            conv_seq, notified, ..
        }) => {
            ctx.metrics.conv_messages.inc();
            wake(ctx, notified);
            ServerFrame::ConvSent {
                conv,
                device_seq,
                conv_seq,
            }
        }
        Ok(SendOutcome::Duplicate { conv_seq }) => ServerFrame::ConvSent {
            conv,
            device_seq,
            conv_seq,
        },
        Ok(SendOutcome::Stale { epoch, head }) => {
            ctx.metrics.error(ErrorCode::StaleEpoch);
            ServerFrame::ConvStale {
                conv,
                device_seq,
                epoch,
                head,
            }
        }
        Err(e) => {
            log_storage_error(&e);
            let message = match &e {
                StoreError::RefusedBecause(_, reason) => reason.clone(),
                other => other.code().description().into(),
            };
            refused(e.code(), message)
        }
    }
}

/// `ConvFetch`: one page.
async fn fetch(
    ctx: &Context,
    asker: Asker,
    conv: ConvId,
    from: u64,
    direction: Direction,
    limit: u16,
) -> ServerFrame {
    match ctx
        .store
        .read_messages(conv, asker.device, from, direction, usize::from(limit))
        .await
    {
        Ok(ConvPage::Messages { messages, more }) => ServerFrame::ConvMessages {
            conv,
            messages,
            more,
        },
        Ok(ConvPage::Trimmed { earliest, rejoin }) => ServerFrame::ConvTrimmed {
            conv,
            earliest,
            rejoin,
        },
        Err(e) => storage_error(ctx, &e),
    }
}

/// `ConvRead`: moves the user's marker, and tells every member's devices.
async fn read(ctx: &Context, asker: Asker, conv: ConvId, seq: u64) {
    let members = match ctx
        .store
        .conversation_members(conv, asker.device, None)
        .await
    {
        Ok(members) => members,
        Err(e) => {
            log_storage_error(&e);
            return;
        }
    };
    match ctx.store.mark_read(conv, asker.user, seq).await {
        Ok(Some(seq)) => {
            let frame = ServerFrame::ConvReadBy {
                conv,
                user: asker.user,
                seq,
            };
            ctx.hub.conversation_frame(&members, &frame, None);
        }
        Ok(None) => {}
        Err(e) => log_storage_error(&e),
    }
}

/// `ConvList`: pages of at most [`CONVS_PER_PAGE`].
async fn list(ctx: &Context, asker: Asker) -> Vec<ServerFrame> {
    let convs = match ctx.store.conversations(asker.user).await {
        Ok(convs) => convs,
        Err(e) => return vec![storage_error(ctx, &e)],
    };
    let pages: Vec<_> = convs.chunks(CONVS_PER_PAGE).collect();
    let last = pages.len().saturating_sub(1);
    let mut frames: Vec<ServerFrame> = pages
        .into_iter()
        .enumerate()
        .map(|(i, page)| ServerFrame::Conversations {
            convs: page.to_vec(),
            more: i < last,
        })
        .collect();
    if frames.is_empty() {
        frames.push(ServerFrame::Conversations {
            convs: Vec::new(),
            more: false,
        });
    }
    frames
}

/// `ConvEphemeral`: to the members' online devices (not the sender), never stored. In a 1:1
/// the relay drops it when the other user blocked the sender (a block is silence).
async fn ephemeral(ctx: &Context, asker: Asker, conv: ConvId, body: Vec<u8>) {
    if !ctx
        .ephemeral_limiter
        .try_take(&asker.device, std::time::Instant::now())
    {
        ctx.metrics.error(ErrorCode::RateLimited);
        return;
    }
    let unblocked_by = Some(asker.user);
    let audience = ctx
        .store
        .conversation_members(conv, asker.device, unblocked_by)
        .await;
    let to = match audience {
        Ok(members) => members,
        Err(e) => {
            log_storage_error(&e);
            return;
        }
    };
    let frame = ServerFrame::ConvEphemeral {
        conv,
        user: asker.user,
        from: asker.device,
        body,
    };
    ctx.hub.conversation_frame(&to, &frame, Some(asker.device));
}
