//! Device requests (list, revoke): queued while offline, sent when connected and the device
//! chain is current, answered in the order sent. A request cut off by a reconnect is sent
//! again on the next connection: listing is safe to repeat, and a revocation is signed
//! anew against the chain as it is then (a revocation that did land is found in the chain
//! and answered as done).

use std::collections::BTreeMap;

use ferry_protocol::limits::MAX_DEVICES_PER_FRAME;
use ferry_protocol::{
    ClientFrame, DeviceId, DeviceInfo, ErrorCode, ErrorFrame, ServerFrame, SigningKey,
};
use rand_core::OsRng;
use tokio::sync::oneshot;

use super::{Driver, Ended, Link, MAX_REQUESTS};
use crate::error::ClientError;
use crate::event::Device;
use crate::trust::RevokeError;

/// Most contact-list entries gathered from `Contacts` pages (far above any relay's limits).
const MAX_GATHERED_CONTACTS: usize = 1_000_000;

/// Revocations signed again after the relay refused them (another device extended the
/// chain first).
const REVOKE_ATTEMPTS: u8 = 3;

/// A device request and whoever waits for its answer. `frame` is `None` for a request whose
/// frame is made when it is sent (a revocation, signed against the chain of that moment).
pub(super) struct Request {
    pub frame: Option<ClientFrame>,
    pub reply: Reply,
}

pub(super) enum Reply {
    Devices(oneshot::Sender<Result<Vec<Device>, ClientError>>),
    /// A people request; `links` gathers `UserChainLinks` pages until the last.
    People {
        reply: oneshot::Sender<Result<ServerFrame, ClientError>>,
        links: Vec<ferry_protocol::Link>,
        contacts: Vec<ferry_protocol::people::ContactInfo>,
        convs: Vec<ferry_protocol::ConvSummary>,
    },
    Revoke {
        device: DeviceId,
        reply: oneshot::Sender<Result<(), ClientError>>,
        /// The link sent on this connection, if it was.
        sent: Option<Box<ferry_protocol::Link>>,
        attempts: u8,
    },
}

impl Reply {
    pub(super) fn fail(self, error: ClientError) {
        match self {
            Self::Devices(reply) => drop(reply.send(Err(error))),
            Self::People { reply, .. } => drop(reply.send(Err(error))),
            Self::Revoke { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}

impl Driver {
    pub(super) fn request(&mut self, frame: Option<ClientFrame>, reply: Reply) {
        if self.requests.len() >= MAX_REQUESTS {
            reply.fail(ClientError::RateLimited);
        } else {
            self.requests.push_back(Request { frame, reply });
        }
    }

    /// Whether a request waits to be sent (and may be: the chain is current).
    pub(super) fn has_request(&self, link: &Link) -> bool {
        self.requests_sent < self.requests.len() && self.chain_current(link)
    }

    /// The next request's frame, if one waits and the chain is current.
    pub(super) fn next_request(&mut self, link: &Link) -> Option<ClientFrame> {
        while self.has_request(link) {
            let index = self.requests_sent;
            let request = self.requests.get_mut(index)?;
            if let Some(frame) = &request.frame {
                self.requests_sent += 1;
                return Some(frame.clone());
            }
            let Reply::Revoke { device, .. } = &request.reply else {
                return None;
            };
            let device = *device;
            match self.sign_revocation(device) {
                Ok(Some(signed)) => {
                    if let Some(Request {
                        reply: Reply::Revoke { sent, .. },
                        ..
                    }) = self.requests.get_mut(index)
                    {
                        *sent = Some(Box::new(signed.clone()));
                    }
                    self.requests_sent += 1;
                    return Some(ClientFrame::ChainAppend(Box::new(signed)));
                }
                // Revoked already (by an earlier attempt that landed, or another device).
                Ok(None) => {
                    if let Some(Request {
                        reply: Reply::Revoke { reply, .. },
                        ..
                    }) = self.requests.remove(index)
                    {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(error) => {
                    if let Some(request) = self.requests.remove(index) {
                        request.reply.fail(error);
                    }
                }
            }
        }
        None
    }

    /// A revocation of `device` as the next link of the chain, signed by this device; `None`
    /// if the chain has revoked it already.
    fn sign_revocation(
        &self,
        device: DeviceId,
    ) -> Result<Option<ferry_protocol::Link>, ClientError> {
        let trust = self.trust();
        match trust.chain().member(&device) {
            Some(member) if !member.is_active() => return Ok(None),
            None => return Err(ClientError::UnknownDevice(device)),
            Some(_) => {}
        }
        match trust.revoke(&[device], SigningKey::Device(&self.keys.device), &mut OsRng) {
            // The new epoch's key is taken from the link itself once the relay stored it
            // (it is sealed to this device like to every device that stays).
            Ok((link, _, _)) => Ok(Some(link)),
            Err(RevokeError::NotActive(d)) => Err(ClientError::UnknownDevice(d)),
            Err(RevokeError::WeakKey(d)) => Err(ClientError::Protocol(format!(
                "device {d} has an unusable exchange key in the chain"
            ))),
            Err(RevokeError::NotCreated) => Err(ClientError::Protocol(
                "the device chain has no recovery key".to_owned(),
            )),
        }
    }

    /// An error that answers no append answers the oldest request sent. A revocation the
    /// relay refused because the chain moved is signed again once the chain is fetched.
    pub(super) fn request_failed(
        &mut self,
        error: ErrorFrame,
        link: &mut Link,
    ) -> Result<(), Ended> {
        if self.requests_sent == 0 {
            tracing::warn!(code = %error.code, message = %error.message, "relay error");
            return Ok(());
        }
        let Some(request) = self.requests.pop_front() else {
            return Ok(());
        };
        self.requests_sent -= 1;
        let retry = error.code == ErrorCode::ChainLinkRefused;
        match request.reply {
            Reply::Revoke {
                device,
                reply,
                attempts,
                ..
            } if retry && attempts + 1 < REVOKE_ATTEMPTS => {
                tracing::info!(message = %error.message, "the relay refused our revocation; fetching the chain and signing again");
                // First among the requests not sent, so the order is kept.
                self.requests.insert(
                    self.requests_sent,
                    Request {
                        frame: None,
                        reply: Reply::Revoke {
                            device,
                            reply,
                            sent: None,
                            attempts: attempts + 1,
                        },
                    },
                );
                link.want_fetch = true;
                self.maybe_fetch(link);
            }
            Reply::Revoke { device, reply, .. } if error.code == ErrorCode::UnknownDevice => {
                let _ = reply.send(Err(ClientError::UnknownDevice(device)));
            }
            other => {
                other.fail(ClientError::from_code(error.code, error.message));
                if retry {
                    link.want_fetch = true;
                    self.maybe_fetch(link);
                }
            }
        }
        Ok(())
    }

    /// The relay's list: the devices are the chain's (verified here), the relay only adds
    /// when it last saw each one.
    pub(super) fn answer_devices(&mut self, listed: Vec<DeviceInfo>) {
        let Some(Request {
            reply: Reply::Devices(reply),
            ..
        }) = self.take_request(|r| matches!(r, Reply::Devices(_)))
        else {
            return;
        };
        if listed.len() > MAX_DEVICES_PER_FRAME {
            let _ = reply.send(Err(ClientError::Protocol(
                "too many devices in one answer".to_owned(),
            )));
            return;
        }
        let last_seen: BTreeMap<DeviceId, u64> =
            listed.iter().map(|d| (d.device, d.last_seen)).collect();
        let devices = self
            .trust()
            .devices()
            .into_iter()
            .map(|d| Device {
                id: d.device,
                name: d.name,
                created_at: d.created_at,
                admitted_at: d.admitted_at,
                revoked: d.revoked_at.is_some(),
                last_seen: last_seen.get(&d.device).copied(),
                this_device: d.device == self.device,
            })
            .collect();
        for unknown in listed
            .iter()
            .filter(|d| self.trust().chain().member(&d.device).is_none())
        {
            tracing::warn!(device = %unknown.device, "the relay lists a device the chain does not admit; ignoring it");
        }
        let _ = reply.send(Ok(devices));
    }

    /// The answer to the oldest request, a people request. `UserChainLinks` pages are
    /// gathered until the last one, then answered as one frame.
    pub(super) fn answer_people(&mut self, answer: ServerFrame) {
        let is_people = |r: &Reply| matches!(r, Reply::People { .. });
        // Pages (`UserChainLinks`, `Contacts`) are gathered until the last one.
        let more = match &answer {
            ServerFrame::UserChainLinks { more, .. }
            | ServerFrame::Contacts { more, .. }
            | ServerFrame::Conversations { more, .. } => *more,
            _ => false,
        };
        let Some(Request {
            reply:
                Reply::People {
                    links: held_links,
                    contacts: held_contacts,
                    convs: held_convs,
                    ..
                },
            ..
        }) = self.requests.front_mut().filter(|_| self.requests_sent > 0)
        else {
            tracing::warn!("the relay answered a request this client did not send; ignoring it");
            return;
        };
        let answer = match answer {
            ServerFrame::UserChainLinks { user, links, .. } => {
                held_links.extend(links);
                ServerFrame::UserChainLinks {
                    user,
                    links: Vec::new(),
                    more,
                }
            }
            ServerFrame::Contacts {
                contacts,
                presence_visible,
                ..
            } => {
                held_contacts.extend(contacts);
                ServerFrame::Contacts {
                    contacts: Vec::new(),
                    presence_visible,
                    more,
                }
            }
            ServerFrame::Conversations { convs, .. } => {
                held_convs.extend(convs);
                ServerFrame::Conversations {
                    convs: Vec::new(),
                    more,
                }
            }
            other => other,
        };
        let too_many = held_links.len() as u64 > ferry_protocol::chain::MAX_CHAIN_LINKS
            || held_contacts.len() > MAX_GATHERED_CONTACTS
            || held_convs.len() > MAX_GATHERED_CONTACTS;
        if more && !too_many {
            return;
        }
        let Some(Request {
            reply:
                Reply::People {
                    reply,
                    links,
                    contacts,
                    convs,
                },
            ..
        }) = self.take_request(is_people)
        else {
            return;
        };
        if too_many {
            let _ = reply.send(Err(ClientError::Protocol(
                "more pages than any relay may send".into(),
            )));
            return;
        }
        let whole = match answer {
            ServerFrame::UserChainLinks { user, .. } => ServerFrame::UserChainLinks {
                user,
                links,
                more: false,
            },
            ServerFrame::Contacts {
                presence_visible, ..
            } => ServerFrame::Contacts {
                contacts,
                presence_visible,
                more: false,
            },
            ServerFrame::Conversations { .. } => ServerFrame::Conversations { convs, more: false },
            other => other,
        };
        let _ = reply.send(Ok(whole));
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
