//! Push wake-ups: where the relay wakes this device when it has no session (an app asleep
//! on a phone, a browser tab closed). A wake-up says only "something is waiting" (a message)
//! or "a call rings": the app connects and reads; push is a hint, the log and the
//! conversations are the truth (docs/protocol.md §15).

use ferry_protocol::{ClientFrame, PushTarget, ServerFrame};

use crate::client::ClientHandle;
use crate::error::ClientError;
use crate::people::{Ask, unexpected};

impl ClientHandle {
    /// Registers a Web Push subscription (a browser's `PushSubscription`, or a UnifiedPush
    /// endpoint) for this device, replacing any: `endpoint` (`https://`), the subscription's
    /// `p256dh` public key (65 bytes, uncompressed P-256) and its 16-byte `auth` secret. The
    /// app subscribes with the relay's VAPID key (`ferry-relay vapid-key` prints it). Fails
    /// with [`ErrorCode::PushTargetInvalid`](ferry_protocol::ErrorCode::PushTargetInvalid)
    /// for an endpoint the relay will not post to or malformed keys.
    pub async fn register_web_push(
        &self,
        endpoint: &str,
        p256dh: &[u8],
        auth: &[u8],
    ) -> Result<(), ClientError> {
        let target = PushTarget::WebPush {
            endpoint: endpoint.to_owned(),
            p256dh: p256dh.to_vec(),
            auth: auth.to_vec(),
        };
        self.done(ClientFrame::PushRegister(target)).await
    }

    /// Registers this device's APNs device token (an iOS or macOS app's, from
    /// `didRegisterForRemoteNotificationsWithDeviceToken`; `sandbox` for a development
    /// build), replacing any target. Fails with
    /// [`ErrorCode::PushTargetInvalid`](ferry_protocol::ErrorCode::PushTargetInvalid) when
    /// the relay has no APNs key for the app.
    pub async fn register_apns(&self, token: &[u8], sandbox: bool) -> Result<(), ClientError> {
        let target = PushTarget::Apns {
            token: token.to_vec(),
            sandbox,
        };
        self.done(ClientFrame::PushRegister(target)).await
    }

    /// No more wake-ups for this device.
    pub async fn unregister_push(&self) -> Result<(), ClientError> {
        self.done(ClientFrame::PushUnregister).await
    }

    async fn done(&self, frame: ClientFrame) -> Result<(), ClientError> {
        match self.ask(frame).await? {
            ServerFrame::Done => Ok(()),
            ServerFrame::Error(e) => Err(ClientError::from_code(e.code, e.message)),
            other => Err(unexpected(&other)),
        }
    }
}
