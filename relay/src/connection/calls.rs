//! The call frames of a device session: TURN credentials (`TurnCredentialsFetch`), minted by
//! [`crate::turn`]. Call signaling itself travels end to end encrypted in conversations; the
//! relay's only part in a call is the TURN credentials.
//!
//! Only an authenticated device session gets here: the anonymous pairing session and the
//! recovery session answer the frame with `unexpected_frame`.
//!
//! What a hostile client can try, and what it gets:
//! - many credentials: at most `--turn-credentials-per-device-per-minute` per device (bursts
//!   up to as many), then `rate_limited`; each is valid `--turn-ttl-secs` at most;
//! - credentials after its device was revoked, from a session still open: the device's record
//!   is read again for every request, and a revoked device gets an encrypted
//!   `Error(device_revoked)` and its session ends (close code 4203), as when an append finds
//!   it revoked;
//! - learning who else calls: a credential's username is an expiry and 16 random bytes, the
//!   same for every user; the TURN servers' logs name no user or device.

use ferry_protocol::{ErrorCode, ServerFrame};

use super::people::{Asker, error, refused, storage_error};
use crate::context::{Context, now_s};

/// What a `TurnCredentialsFetch` gets.
pub(super) enum TurnAnswer {
    /// The answer: `TurnCredentials`, or an `Error` (counted in the metrics already).
    Frame(ServerFrame),
    /// The device's chain no longer admits it (revoked while this session was open): the
    /// session ends with this code.
    NotAdmitted(ErrorCode),
}

/// `TurnCredentialsFetch`: fresh credentials for the configured TURN servers.
pub(super) async fn turn_credentials(ctx: &Context, asker: Asker) -> TurnAnswer {
    let Some(turn) = &ctx.turn else {
        return TurnAnswer::Frame(refused(ctx, ErrorCode::TurnUnavailable));
    };
    if !ctx
        .turn_limiter
        .try_take(&asker.device, std::time::Instant::now())
    {
        let code = ErrorCode::RateLimited;
        return TurnAnswer::Frame(error(ctx, code, "too many TURN credentials requested"));
    }
    // The hub closes a revoked device's session, but its word may not have come (a lost bus
    // message): the stored record decides, as for an append.
    match ctx.store.device(asker.user, asker.device).await {
        Ok(Some(record)) if !record.is_revoked() => {}
        Ok(Some(_)) => return TurnAnswer::NotAdmitted(ErrorCode::DeviceRevoked),
        Ok(None) => return TurnAnswer::NotAdmitted(ErrorCode::UnknownDevice),
        Err(e) => return TurnAnswer::Frame(storage_error(ctx, &e)),
    }
    let credentials = turn.issue(now_s());
    ctx.metrics.turn_credentials_issued.inc();
    // The username (expiry and opaque id) is what the TURN server logs: it ties a TURN
    // allocation back to a device for the relay's operator only. Never the password.
    tracing::debug!(
        user = %asker.user,
        device = %asker.device,
        turn_username = %credentials.username,
        expires_at = credentials.expires_at,
        "TURN credentials issued"
    );
    TurnAnswer::Frame(ServerFrame::TurnCredentials(credentials))
}
