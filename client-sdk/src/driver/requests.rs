//! Device requests (list, revoke): queued while offline, sent when connected, answered in
//! the order sent. Both are safe to repeat, so a request cut off by a reconnect is simply
//! sent again on the next connection.

use ferry_protocol::limits::MAX_DEVICES_PER_FRAME;
use ferry_protocol::{ClientFrame, DeviceId, DeviceInfo, ErrorCode, ErrorFrame};
use tokio::sync::oneshot;

use super::{Driver, MAX_REQUESTS};
use crate::error::ClientError;

/// A device request and whoever waits for its answer.
pub(super) struct Request {
    pub frame: ClientFrame,
    pub reply: Reply,
}

pub(super) enum Reply {
    Devices(oneshot::Sender<Result<Vec<DeviceInfo>, ClientError>>),
    Revoke {
        device: DeviceId,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
}

impl Reply {
    pub(super) fn fail(self, error: ClientError) {
        match self {
            Self::Devices(reply) => drop(reply.send(Err(error))),
            Self::Revoke { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}

impl Driver {
    pub(super) fn request(&mut self, frame: ClientFrame, reply: Reply) {
        if self.requests.len() >= MAX_REQUESTS {
            reply.fail(ClientError::RateLimited);
        } else {
            // Sent when connected; both requests are safe to repeat after a reconnect.
            self.requests.push_back(Request { frame, reply });
        }
    }

    /// An error that answers no append answers the oldest request sent.
    pub(super) fn request_failed(&mut self, error: ErrorFrame) {
        if self.requests_sent > 0
            && let Some(request) = self.requests.pop_front()
        {
            self.requests_sent -= 1;
            let failure = match &request.reply {
                Reply::Revoke { device, .. } if error.code == ErrorCode::UnknownDevice => {
                    ClientError::UnknownDevice(*device)
                }
                _ => ClientError::from_code(error.code, error.message),
            };
            request.reply.fail(failure);
        } else {
            tracing::warn!(code = %error.code, message = %error.message, "relay error");
        }
    }

    pub(super) fn answer_devices(&mut self, devices: Vec<DeviceInfo>) {
        let Some(Request {
            reply: Reply::Devices(reply),
            ..
        }) = self.take_request(|r| matches!(r, Reply::Devices(_)))
        else {
            return;
        };
        let forged = devices
            .iter()
            .find(|d| d.certificate.user != self.user || d.certificate.verify().is_err());
        let answer = match forged {
            Some(forged) => Err(ClientError::InvalidCertificate {
                device: forged.certificate.device,
            }),
            None if devices.len() > MAX_DEVICES_PER_FRAME => Err(ClientError::Protocol(
                "too many devices in one answer".to_owned(),
            )),
            None => Ok(devices),
        };
        let _ = reply.send(answer);
    }

    pub(super) fn answer_revoked(&mut self, revoked: DeviceId) {
        let Some(Request {
            reply: Reply::Revoke { device, reply },
            ..
        }) = self.take_request(|r| matches!(r, Reply::Revoke { .. }))
        else {
            return;
        };
        let answer = if device == revoked {
            Ok(())
        } else {
            Err(ClientError::Protocol(format!(
                "asked to revoke {device}, the relay revoked {revoked}"
            )))
        };
        let _ = reply.send(answer);
    }

    /// The oldest request sent, if it is of the expected kind (answers come in order).
    pub(super) fn take_request(&mut self, expected: impl Fn(&Reply) -> bool) -> Option<Request> {
        let front = self.requests.front()?;
        if self.requests_sent == 0 || !expected(&front.reply) {
            tracing::warn!("the relay answered a request this client did not send; ignoring it");
            return None;
        }
        self.requests_sent -= 1;
        self.requests.pop_front()
    }
}
