//! The push frames of a device session: registering where the device is woken
//! (`PushRegister`, `PushUnregister`, answered with `Done`) and waking a conversation's
//! other members for a call (`ConvWake`, not answered).
//!
//! What a hostile client can try, and what it gets:
//! - making the relay post to services behind its firewall: an endpoint that is not
//!   `https://` to a public host is `push_target_invalid` (see [`crate::push::check_endpoint`]);
//! - flooding push services, or someone's phone: registering is limited like people writes,
//!   `ConvWake` like ephemerals, only members of a conversation wake its members (and not
//!   those who block them), and a device has one pending wake-up however many are asked;
//! - learning anything from a wake-up: it carries a version and a kind, nothing else.

use ferry_protocol::conversations::ConvId;
use ferry_protocol::{ClientFrame, ErrorCode, PushTarget, ServerFrame};

use super::people::{Asker, error, log_storage_error, may_write, rate_limited, storage_error};
use crate::context::{Context, now_ms};
use crate::push::web_push::Subscription;
use crate::store::PushTargetRow;

/// Whether `frame` is one of this module's.
pub(super) fn is_push_frame(frame: &ClientFrame) -> bool {
    matches!(
        frame,
        ClientFrame::PushRegister(_) | ClientFrame::PushUnregister | ClientFrame::ConvWake { .. }
    )
}

/// Answers one push frame (`ConvWake` gets no answer).
pub(super) async fn handle(ctx: &Context, asker: Asker, frame: ClientFrame) -> Option<ServerFrame> {
    match frame {
        ClientFrame::PushRegister(target) => Some(register(ctx, asker, target).await),
        ClientFrame::PushUnregister => {
            if !may_write(ctx, asker) {
                return Some(rate_limited(ctx));
            }
            Some(match ctx.store.remove_push_target(asker.device).await {
                Ok(_) => ServerFrame::Done,
                Err(e) => storage_error(ctx, &e),
            })
        }
        ClientFrame::ConvWake { conv } => {
            wake(ctx, asker, conv).await;
            None
        }
        other => {
            tracing::error!(frame = ?other, "not a push frame");
            Some(ServerFrame::Error(ferry_protocol::ErrorFrame::new(
                ErrorCode::Internal,
            )))
        }
    }
}

async fn register(ctx: &Context, asker: Asker, target: PushTarget) -> ServerFrame {
    if !may_write(ctx, asker) {
        return rate_limited(ctx);
    }
    let code = ErrorCode::PushTargetInvalid;
    let row = match target {
        PushTarget::WebPush {
            endpoint,
            p256dh,
            auth,
        } => {
            if let Err(why) = crate::push::check_endpoint(&endpoint, ctx.config.push.allow_loopback)
            {
                return error(ctx, code, why);
            }
            if let Err(why) = Subscription::from_keys(&endpoint, &p256dh, &auth) {
                return error(ctx, code, why.to_string());
            }
            PushTargetRow::web_push(endpoint, p256dh, auth)
        }
        PushTarget::Apns { token, sandbox } => {
            if !ctx.pusher.has_apns() {
                return error(
                    ctx,
                    code,
                    "this relay has no APNs key: it cannot wake iOS apps",
                );
            }
            if !(8..=ferry_protocol::frames::MAX_APNS_TOKEN_LEN).contains(&token.len()) {
                return error(ctx, code, "an APNs device token is 8 to 100 bytes");
            }
            PushTargetRow::apns(&token, sandbox)
        }
    };
    match ctx
        .store
        .set_push_target(asker.user, asker.device, &row, now_ms())
        .await
    {
        Ok(()) => {
            tracing::debug!(user = %asker.user, device = %asker.device, "push target registered");
            ServerFrame::Done
        }
        Err(e) => storage_error(ctx, &e),
    }
}

/// `ConvWake`: the other members' devices with no session are woken urgently (a call).
async fn wake(ctx: &Context, asker: Asker, conv: ConvId) {
    if !ctx
        .ephemeral_limiter
        .try_take(&asker.device, std::time::Instant::now())
    {
        ctx.metrics.error(ErrorCode::RateLimited);
        return;
    }
    // Members only (anyone else learns nothing: no answer either way), and not those who
    // block the asker.
    match ctx
        .store
        .conversation_members(conv, asker.device, Some(asker.user))
        .await
    {
        Ok(members) => {
            let others: Vec<_> = members.into_iter().filter(|u| *u != asker.user).collect();
            ctx.pusher.wake(&others, &[asker.device], true);
        }
        Err(e) => log_storage_error(&e),
    }
}
