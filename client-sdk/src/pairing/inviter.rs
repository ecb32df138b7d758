//! The inviter: a device that has the user's keys shows a code and admits the device that
//! types it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_protocol::handshake::Credentials;
use ferry_protocol::pairing::{Inviter, InviterAwaitRequest, PairingCode};
use ferry_protocol::{ClientFrame, DeviceId, ErrorCode, RelayId};
use rand_core::OsRng;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::link::{Link, PairFrame};
use crate::error::PairingError;
use crate::options::Options;
use crate::state::{ClientState, Keys, unix_now};

/// What an inviter needs: the relay to reach and the device's keys. Taken from a
/// [`ClientState`] (which can then be closed or handed to a client) or kept by a
/// [`ClientHandle`](crate::ClientHandle).
#[derive(Debug, Clone)]
pub(crate) struct InviterDevice {
    pub relay_url: String,
    pub relay_key: RelayId,
    pub keys: Arc<Keys>,
}

impl InviterDevice {
    pub fn of(state: &ClientState) -> Self {
        Self {
            relay_url: state.relay_url().to_owned(),
            relay_key: state.relay_key(),
            keys: state.keys(),
        }
    }
}

/// Opens a pairing slot for this device's user and draws the code to show.
///
/// Connects as the device (a session of its own, beside any running
/// [`Client`](crate::Client)), asks the relay for a slot (the relay picks its number), and
/// draws the six secret digits from the operating system's random number generator.
/// The state is only read: it can be closed, or handed to a client, as soon as this returns.
///
/// Then show [`Invitation::code`] and call [`Invitation::wait`] (or
/// [`Invitation::joined`], to show the confirmation string before the keys leave).
pub async fn invite(state: &ClientState, options: &Options) -> Result<Invitation, PairingError> {
    Invitation::open(InviterDevice::of(state), options).await
}

/// An open pairing slot: a code to show, waiting for a device to type it.
///
/// Dropping it closes the slot (the code is burned).
pub struct Invitation {
    link: Link,
    device: InviterDevice,
    code: PairingCode,
    inviter: Inviter,
    expires_at: SystemTime,
    deadline: Instant,
    timeout: Duration,
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitation")
            .field("code", &self.code)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Invitation {
    pub(crate) async fn open(
        device: InviterDevice,
        options: &Options,
    ) -> Result<Self, PairingError> {
        // The relay's stored cursor: this session reads no events, it only pairs. Should the
        // relay no longer keep the events after it, it says so and closes; then resume from
        // what it keeps (the stored cursor does not move: this session never acknowledges).
        let mut resume = None;
        loop {
            match Self::open_from(&device, resume, options).await? {
                Opened::Slot(link, slot, expires_at) => {
                    let code = PairingCode::generate(slot, &mut OsRng);
                    // Bound to the pinned relay key and the slot, as the joiner's is.
                    let inviter = Inviter::start(&code, &device.relay_key, &mut OsRng);
                    let (expires_at, remaining) = expiry(expires_at, options.pairing_timeout);
                    return Ok(Self {
                        link,
                        device,
                        code,
                        inviter,
                        expires_at,
                        deadline: Instant::now() + remaining,
                        timeout: options.pairing_timeout,
                    });
                }
                Opened::Resync(earliest) if resume.is_none() => resume = Some(earliest),
                Opened::Resync(_) => {
                    return Err(PairingError::Protocol(
                        "the relay asked to resync twice".to_owned(),
                    ));
                }
            }
        }
    }

    /// Connects and opens a slot.
    async fn open_from(
        device: &InviterDevice,
        resume: Option<u64>,
        options: &Options,
    ) -> Result<Opened, PairingError> {
        let credentials = Credentials::Device {
            key: &device.keys.device,
            certificate: device.keys.certificate.clone(),
            resume,
        };
        let mut link =
            Link::connect(&device.relay_url, device.relay_key, credentials, options).await?;
        let answer_within = Instant::now() + options.connect_timeout;
        link.send(ClientFrame::PairOpen).await?;
        loop {
            match link.next(answer_within).await? {
                Some(PairFrame::Opened { slot, expires_at }) => {
                    return Ok(Opened::Slot(link, slot, expires_at));
                }
                Some(PairFrame::Error(e)) => {
                    return Err(PairingError::from_code(e.code, e.message));
                }
                Some(PairFrame::Resync { earliest }) => return Ok(Opened::Resync(earliest)),
                Some(_) => continue,
                None => {
                    return Err(PairingError::RelayUnreachable(
                        "the relay did not open a pairing slot".to_owned(),
                    ));
                }
            }
        }
    }

    /// The code to show to the user (or to hand to the other device some other way):
    /// `SLOT-DDDDDD`, as in `7-402913`. The six digits are the pairing's secret: show them, do
    /// not log them.
    pub fn code(&self) -> Zeroizing<String> {
        self.code.text()
    }

    /// When the relay stops accepting the code.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Waits for a device to join, and admits it: sends it a certificate for its key, the
    /// user key and the data key, sealed under the key both devices derived from the code.
    ///
    /// The same as [`joined`](Self::joined) followed by [`PendingDevice::admit`]; use those
    /// to show the confirmation string (and the device's name) before the keys leave.
    pub async fn wait(self) -> Result<Paired, PairingError> {
        self.joined().await?.admit().await
    }

    /// Waits (until the code expires) for a device to join with the right code.
    ///
    /// Returns once the joining device has proved it holds the same code: the confirmation
    /// string is known and nothing secret has left this device yet. A wrong code fails with
    /// [`PairingError::WrongCode`] and burns the code; no device in time fails with
    /// [`PairingError::Expired`].
    pub async fn joined(self) -> Result<PendingDevice, PairingError> {
        let Self {
            mut link,
            device,
            code,
            inviter,
            deadline,
            timeout,
            ..
        } = self;
        let slot = code.slot();
        let Some(hello) = peer_message(&mut link, slot, deadline).await? else {
            return Err(PairingError::Expired);
        };
        let (waiting, reply) = match inviter.handle_joiner_hello(&hello) {
            Ok(next) => next,
            Err(e) => return Err(fail(link, slot, e.into()).await),
        };
        link.send(ClientFrame::PairForward { slot, body: reply })
            .await?;
        let confirmation = waiting.confirmation().to_owned();
        let Some(request) = peer_message(&mut link, slot, Instant::now() + timeout).await? else {
            return Err(fail(link, slot, PairingError::PeerLeft).await);
        };
        let admitted = admit_request(waiting, &request, &device.keys);
        let (admitted, grant) = match admitted {
            Ok(admitted) => admitted,
            Err(e) => return Err(fail(link, slot, e).await),
        };
        Ok(PendingDevice {
            link,
            slot,
            timeout,
            paired: Paired {
                device: admitted.device,
                name: admitted.certificate.name,
                confirmation,
            },
            grant,
        })
    }
}

/// What one connection got.
enum Opened {
    /// An open slot, its number and its expiry (Unix milliseconds).
    Slot(Link, u16, u64),
    /// The relay wants the session to resume from here.
    Resync(u64),
}

/// A device that typed the right code, waiting to be admitted.
///
/// Show [`confirmation`](Self::confirmation) and [`name`](Self::name); the new device shows
/// the same string ([`Join::confirmation`](crate::pairing::Join::confirmation)). If the
/// strings differ, someone sits between the devices: [`refuse`](Self::refuse). Dropping it
/// ends the pairing too (the other device is told this one left).
pub struct PendingDevice {
    link: Link,
    slot: u16,
    timeout: Duration,
    paired: Paired,
    /// The sealed grant (certificate, user key, data key), sent by `admit`.
    grant: Vec<u8>,
}

impl std::fmt::Debug for PendingDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDevice")
            .field("paired", &self.paired)
            .finish_non_exhaustive()
    }
}

impl PendingDevice {
    /// The short string both screens show (`1234-5678`), derived from the pairing
    /// transcript.
    pub fn confirmation(&self) -> &str {
        &self.paired.confirmation
    }

    /// The new device's key.
    pub fn device(&self) -> DeviceId {
        self.paired.device
    }

    /// The name the new device asked for (in its certificate).
    pub fn name(&self) -> &str {
        &self.paired.name
    }

    /// Sends the grant and closes the pairing as successful.
    ///
    /// Returns once the relay has passed the grant on. Fails with
    /// [`PairingError::PeerLeft`] if the new device is gone.
    pub async fn admit(self) -> Result<Paired, PairingError> {
        let Self {
            mut link,
            slot,
            timeout,
            paired,
            grant,
        } = self;
        link.send(ClientFrame::PairForward { slot, body: grant })
            .await?;
        link.send(ClientFrame::PairClose {
            slot,
            success: true,
        })
        .await?;
        // The relay answers a forward or close only to refuse it: the Pong, which comes after
        // any refusal, says both went through.
        let nonce = link.ping().await?;
        let deadline = Instant::now() + timeout;
        loop {
            match link.next(deadline).await? {
                Some(PairFrame::Pong { nonce: n }) if n == nonce => break,
                Some(PairFrame::Closed { slot: closed, .. }) if closed == slot => {
                    return Err(PairingError::PeerLeft);
                }
                // The slot was burned under us: the joiner left.
                Some(PairFrame::Error(e)) if e.code == ErrorCode::PairingUnknownCode => {
                    return Err(PairingError::PeerLeft);
                }
                Some(PairFrame::Error(e)) => {
                    return Err(PairingError::from_code(e.code, e.message));
                }
                Some(_) => continue,
                None => {
                    return Err(PairingError::RelayUnreachable(
                        "the relay did not confirm the grant".to_owned(),
                    ));
                }
            }
        }
        link.finish().await?;
        Ok(paired)
    }

    /// Turns the device down: closes the pairing as failed. The code is burned; the other
    /// device gets [`PairingError::Refused`].
    pub async fn refuse(self) -> Result<(), PairingError> {
        close_failed(self.link, self.slot).await
    }
}

/// A device the inviter admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Paired {
    /// The new device's key.
    pub device: DeviceId,
    /// Its name, as its certificate says.
    pub name: String,
    /// The confirmation string both screens showed.
    pub confirmation: String,
}

/// Checks the joiner's proof and seals the grant (nothing is sent yet).
fn admit_request(
    waiting: InviterAwaitRequest,
    request: &[u8],
    keys: &Keys,
) -> Result<(ferry_protocol::pairing::Admitted, Vec<u8>), PairingError> {
    Ok(waiting.handle_joiner_request(request, &keys.user, &keys.data, unix_now())?)
}

/// The next body from the joiner; `None` if `deadline` passed first.
async fn peer_message(
    link: &mut Link,
    slot: u16,
    deadline: Instant,
) -> Result<Option<Vec<u8>>, PairingError> {
    loop {
        match link.next(deadline).await? {
            None => return Ok(None),
            Some(PairFrame::Peer { slot: from, body }) if from == slot => return Ok(Some(body)),
            Some(PairFrame::Closed { slot: closed, code }) if closed == slot => {
                return Err(match code {
                    Some(ErrorCode::Unavailable) => PairingError::PeerLeft,
                    Some(code) => PairingError::from_code(code, code.description()),
                    None => PairingError::Protocol(
                        "the other device closed the pairing early".to_owned(),
                    ),
                });
            }
            Some(PairFrame::Error(e)) => return Err(PairingError::from_code(e.code, e.message)),
            Some(_) => continue,
        }
    }
}

/// Closes the pairing as failed, then reports `error`.
async fn fail(link: Link, slot: u16, error: PairingError) -> PairingError {
    // The error to report is `error`, whether or not the relay heard the close: if it did
    // not, the session's end burns the slot all the same.
    let _ = close_failed(link, slot).await;
    error
}

async fn close_failed(link: Link, slot: u16) -> Result<(), PairingError> {
    link.send(ClientFrame::PairClose {
        slot,
        success: false,
    })
    .await?;
    link.finish().await
}

/// The relay's expiry (Unix milliseconds) as a time, and how long to wait for a joiner.
///
/// The relay's clock and ours may differ: the wait is at most `limit`, and `limit` when the
/// expiry looks already past (a clock ahead of the relay's).
fn expiry(expires_at_ms: u64, limit: Duration) -> (SystemTime, Duration) {
    let at = UNIX_EPOCH + Duration::from_millis(expires_at_ms);
    let remaining = at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(limit);
    (
        at,
        if remaining.is_zero() {
            limit
        } else {
            remaining
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_follows_the_relay_expiry_within_limits() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let limit = Duration::from_secs(600);
        let (_, wait) = expiry(now_ms + 60_000, limit);
        assert!(wait > Duration::from_secs(55) && wait <= Duration::from_secs(60));
        assert_eq!(expiry(now_ms + 6_000_000, limit).1, limit);
        assert_eq!(expiry(now_ms.saturating_sub(5_000), limit).1, limit);
    }
}
